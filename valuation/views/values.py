"""A run's values as the pages, the report and the command line read them: each target's table
valued with the run's own valuation config, what each target measures, which objectives are drawn
and which two go against each other, and what one value says in words."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..games.values import Valuation, ValuationConfig, value_sources

if TYPE_CHECKING:
    from .snapshot import RunSnapshot

TARGET_LABELS = {"direct": "direct sampling of every coalition", "token": "pooled, token-level target",
                 "sequence": "pooled, sequence-level target",
                 "preference": "held-out preference pairs (no reward model)"}
COMBINED = "combined"  # the name of the Shapley page's weighted mix of two objectives


def target_valuations(snapshot: RunSnapshot, config: ValuationConfig | None = None) -> dict[str, Valuation]:
    """Each target's values (the primary first), with the run's valuation config unless another is given."""
    config = config or snapshot.valuation_config
    return {target: value_sources(snapshot.store.load(target), config) for target in snapshot.store.targets}


def objective_pair(objectives: Sequence[str]) -> tuple[str, str] | None:
    """The two objectives to set against each other (a scatter, a combined objective): helpfulness and
    harmlessness where both are there, else the first two; None with fewer than two."""
    if {"helpfulness", "harmlessness"} <= set(objectives):
        return "helpfulness", "harmlessness"
    return (objectives[0], objectives[1]) if len(objectives) >= 2 else None


def hidden_objectives(objectives: Sequence[str], at_chance: set[str],
                      combined: tuple[str, str] | None = None) -> set[str]:
    """The objectives said in words instead of drawn: those whose reward model is at chance, and the
    combined objective when it mixes one of them in (`combined`: its two parts)."""
    hidden = at_chance & set(objectives)
    if combined is not None and COMBINED in objectives and hidden & set(combined):
        hidden.add(COMBINED)
    return hidden


def reading(row: Any, unchecked: set[str] = frozenset()) -> str:
    """What one value (a row of `Valuation.values_frame`) says, in words: it adds, it takes, or it
    cannot be told from no effect; and whether it is a finding yet (`unchecked`: the values a run
    trained under one seed cannot claim, `views.caveats.unchecked`)."""
    if pd.isna(row.lower) or pd.isna(row.upper):
        return "no interval: cannot tell from no effect"
    if row.spans_zero:
        return "not distinguishable from no effect"
    said = f"adds to {row.objective}" if row.value > 0 else f"takes from {row.objective}"
    if f"{row.player} on {row.objective}" in unchecked:
        return f"{said}? not yet checked against training noise (one training seed)"
    return said
