"""Training noise: the same game played again with every source's adapter trained under another seed.

A run trained with `seeds` k > 1 holds, for each source, its adapter and k - 1 more (`<source>@seed2`,
...; `adapters.seed_adapter`). Replica r of the game is the game whose players are the sources'
seed-r adapters. The evaluation measures every replica on the same prompts and writes each of its
tables again beside the first, coalitions named by their sources:

    <run>/evaluation/utilities.csv         replica 0 (the sources' own adapters)
    <run>/evaluation/utilities.seed2.csv   replica 1, the same coalitions and prompts
    ...                                    (so too utilities-sequence, preference and estimation)

`values.load_utilities` averages the replicas (Shapley is linear: the mean of the replicas' values
is the value of their mean utility) and keeps them for the intervals (`UtilityTable.seeds`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .adapters import seed_adapter, source_and_replica, trained_seeds
from .coalitions import Coalition, coalition_name, parse_coalition
from .runs import Run

_SEED_SUFFIX = re.compile(r"\.seed(\d+)$")


def seed_table(path: Path, replica: int) -> Path:
    """Where replica `replica`'s version of the evaluation file `path` lives (replica 0: `path` itself)."""
    return path if replica == 0 else path.with_name(f"{path.stem}.seed{replica + 1}{path.suffix}")


def seed_tables(path: Path) -> list[Path]:
    """The further replicas' versions of `path` that exist, in seed order, stopping at the first missing."""
    tables = []
    while (table := seed_table(path, len(tables) + 1)).is_file():
        tables.append(table)
    return tables


def table_stamps(path: Path) -> tuple[float, ...]:
    """When `path` and its further seeds' tables last changed: what a cache of the table must watch."""
    return tuple(table.stat().st_mtime for table in [path, *seed_tables(path)])


def remove_seed_tables(folder: Path, replicas: int) -> None:
    """Before an evaluation of `replicas` seeds: delete every further seed's utility and estimation
    tables (each is written again when its seed has been evaluated, so none from an earlier
    evaluation is ever averaged in), and the reward-free tables of seeds `replicas` and beyond
    (the others are kept while what produced them is unchanged)."""
    for path in folder.glob("*.seed*.*"):
        number = _SEED_SUFFIX.search(path.stem)
        if number and (not path.name.startswith("preference.") or int(number.group(1)) - 1 >= replicas):
            path.unlink(missing_ok=True)


def on_seed(coalitions: Sequence[Coalition], replica: int) -> list[Coalition]:
    """The coalitions of replica `replica`: each source replaced by its adapter under that seed."""
    return [frozenset(seed_adapter(source, replica) for source in coalition) for coalition in coalitions]


def replica_sources(sources: Sequence[str], replica: int) -> list[str]:
    """Replica `replica`'s players: the sources' adapters under that seed, in the sources' order."""
    return [seed_adapter(source, replica) for source in sources]


def every_seed(run: Run, sources: Sequence[str]) -> list[str]:
    """The adapters of every replica the run can evaluate: each seed that every source was trained under."""
    return [adapter for replica in range(trained_seeds(run, list(sources))) for adapter in replica_sources(sources, replica)]


def by_sources(table: pd.DataFrame) -> pd.DataFrame:
    """A replica's table with its coalitions named by their sources, as replica 0's are."""
    names = {name: coalition_name(frozenset(source_and_replica(a)[0] for a in parse_coalition(name)))
             for name in table.coalition.unique()}
    return table.assign(coalition=table.coalition.map(names))
