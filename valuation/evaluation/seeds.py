"""Training noise: the same game played again with every source's adapter trained under another seed.

A run trained with `seeds` k > 1 holds, for each source, its adapter and k - 1 more (`<source>@seed2`,
...; `lm.adapters.seed_adapter`). Replica r of the game is the game whose players are the sources'
seed-r adapters. The evaluation measures every replica on the same prompts and the store writes
each of its tables again beside the first, coalitions named by their sources (`<table>.seed<r + 1>.csv`).
Loading a table averages the replicas (Shapley is linear: the mean of the replicas' values is the
value of their mean utility) and keeps them for the intervals (`UtilityTable.seeds`).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..games.coalitions import Coalition
from ..lm.adapters import seed_adapter, trained_seeds
from ..runs import Run


def on_seed(coalitions: Sequence[Coalition], replica: int) -> list[Coalition]:
    """The coalitions of replica `replica`: each source replaced by its adapter under that seed."""
    return [frozenset(seed_adapter(source, replica) for source in coalition) for coalition in coalitions]


def replica_sources(sources: Sequence[str], replica: int) -> list[str]:
    """Replica `replica`'s players: the sources' adapters under that seed, in the sources' order."""
    return [seed_adapter(source, replica) for source in sources]


def every_seed(run: Run, sources: Sequence[str]) -> list[str]:
    """The adapters of every replica the run can evaluate: each seed that every source was trained under."""
    return [adapter for replica in range(trained_seeds(run, list(sources))) for adapter in replica_sources(sources, replica)]
