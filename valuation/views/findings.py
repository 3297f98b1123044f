"""What a run finds, in words: the values that survive every caveat. Written once here for the
Learn page, the report and the command line.

A value is a finding when its interval excludes zero, on an objective whose reward model is not at
chance, and a second training seed has checked it (with one seed the intervals leave out training
noise: `views.caveats.unchecked`). Under several seeds each finding also says in how many of them
the source's value, computed from that seed's adapters alone, has the same sign.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..games.shapley import exact_shapley
from .caveats import run_caveats, unchecked
from .values import TARGET_LABELS

if TYPE_CHECKING:
    from ..games.values import Valuation
    from .snapshot import RunSnapshot


@dataclass(frozen=True)
class Finding:
    target: str
    objective: str
    source: str
    value: float
    lower: float
    upper: float
    seeds: int  # training seeds the value averages
    agreeing: int | None  # seeds whose own value has the same sign (None: not computable, a sampled table)

    def sentence(self) -> str:
        verb = "adds to" if self.value > 0 else "takes from"
        said = (f"{self.source} {verb} {self.objective} ({TARGET_LABELS.get(self.target, self.target)}): "
                f"{self.value:+.3f} [{self.lower:+.3f}, {self.upper:+.3f}]")
        if self.agreeing is not None:
            said += (f", the same sign under each of its {self.seeds} training seeds alone" if self.agreeing == self.seeds
                     else f", the same sign under {self.agreeing} of its {self.seeds} training seeds alone")
        return said


def seed_values(valuation: Valuation) -> np.ndarray | None:
    """Each training seed's own exact Shapley values [seeds, n, m], or None without seeds or coalitions."""
    table, replicas = valuation.table, valuation.table.seeds
    if replicas is None or table.missing_coalitions():
        return None
    return np.stack([exact_shapley(table.players, lambda c, r=r: replicas.per_prompt[frozenset(c)][r].mean(-1),
                                   objectives=table.objectives).values for r in range(replicas.count)])


def findings(snapshot: RunSnapshot, valuations: Mapping[str, Valuation]) -> list[Finding]:
    """Every value that is a finding, target by target."""
    not_yet = unchecked(run_caveats(snapshot, valuations))
    found = []
    for target, valuation in valuations.items():
        if not valuation.has_intervals:
            continue
        per_seed = seed_values(valuation)
        shapley = valuation.shapley
        for k, objective in enumerate(shapley.objectives):
            for i, source in enumerate(shapley.players):
                value, lower, upper = (float(a[i, k]) for a in (shapley.values, shapley.lower, shapley.upper))
                if objective in snapshot.at_chance or lower <= 0 <= upper or f"{source} on {objective}" in not_yet:
                    continue
                agreeing = None if per_seed is None else int((np.sign(per_seed[:, i, k]) == np.sign(value)).sum())
                found.append(Finding(target, objective, source, value, lower, upper, shapley.seeds, agreeing))
    return found


def findings_text(snapshot: RunSnapshot, valuations: Mapping[str, Valuation]) -> list[str]:
    """The findings as sentences; when there is none, the one sentence that says so and why."""
    found = findings(snapshot, valuations)
    if found:
        return [finding.sentence() for finding in found]
    if not valuations:
        return ["No finding yet: this run has no coalition utilities (train adapters, then evaluate)."]
    if all(v.shapley.seeds == 1 for v in valuations.values()):
        return ["No finding yet: each source has one adapter (one training seed), so no interval holds training "
                "noise. Train a second seed to check the values."]
    return ["Nothing survives: every value's interval holds zero (or its objective's reward model is at chance), "
            "so no source can be told apart from no effect on this run's evaluation."]
