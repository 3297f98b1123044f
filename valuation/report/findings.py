"""The findings: each target's Shapley values with their intervals, drawn with the Shapley page's own
charts, and the caveats that say how far to trust them (`views.caveats`). A reward model at chance
is said in words: its values are neither drawn nor tabulated."""

from __future__ import annotations

import pandas as pd

from ..games.values import Valuation
from ..views.caveats import AT_CHANCE, run_caveats, unchecked
from ..views.figures import bars_figure, scatter_figure
from ..views.findings import findings_text
from ..views.snapshot import RunSnapshot
from ..views.values import TARGET_LABELS, objective_pair, reading
from .html import Charts, bullets, paragraph, section, subheading, table, with_interval


def values_table(frame: pd.DataFrame, confidence: str, not_yet: set[str]) -> str:
    """One row per value: objective, source, value with its interval, and its reading (`not_yet`: the
    values not checked against training noise)."""
    rows = [[r.objective, r.player, with_interval(r.value, r.lower, r.upper), reading(r, not_yet)]
            for r in frame.itertuples()]
    return table(["objective", "source", f"Shapley value [{confidence} interval]", "reading"], rows)


def figures_parts(snapshot: RunSnapshot, valuation: Valuation, charts: Charts) -> list[str]:
    """The Shapley page's bars (objectives with signal only) and its two-objective scatter."""
    drawn = [o for o in valuation.objectives if o not in snapshot.at_chance]
    parts = [charts.embed(bars_figure(valuation, drawn))] if drawn else []
    parts += [paragraph(c.text, "caveat") for c in run_caveats(snapshot, {"": valuation}) if c.kind == AT_CHANCE]
    pair = objective_pair(drawn)
    if pair is not None:
        parts += [subheading(f"Sources on two objectives: {pair[0]} against {pair[1]}"),
                  charts.embed(scatter_figure(valuation, *pair))]
    else:
        parts.append(paragraph("No two objectives with signal to plot against each other.", "caveat"))
    return parts


def coverage_sentence(snapshot: RunSnapshot, valuation: Valuation, target: str) -> str:
    """Which table the values come from, how much of it there is, and the method."""
    table_, n = valuation.table, len(valuation.players)
    prompts = len(table_.prompts) if table_.prompts else 1
    return (f"Utilities: {TARGET_LABELS.get(target, target)} ({snapshot.store.targets[target]}.csv): "
            f"{len(table_.values)} of the 2^{n} = {2 ** n} coalitions, {prompts} prompt(s). Method: "
            f"{valuation.shapley.describe()}; {snapshot.confidence} intervals.")


def values_section(snapshot: RunSnapshot, valuations: dict[str, Valuation], charts: Charts) -> str:
    """The first target's charts, then every target's table of values."""
    if not valuations:
        return section("values", "Shapley values", [paragraph("This run has no coalition utilities yet: train "
                                                              "adapters, then evaluate the coalitions.")])
    main, valuation = next(iter(valuations.items()))
    not_yet = unchecked(run_caveats(snapshot, valuations))
    parts = [subheading("What the run finds"), bullets(findings_text(snapshot, valuations), "findings"),
             paragraph(coverage_sentence(snapshot, valuation, main)), *figures_parts(snapshot, valuation, charts)]
    for target, each in valuations.items():
        frame = each.values_frame()
        shown = frame[~frame.objective.isin(snapshot.at_chance)]
        parts.append(subheading(f"Values: {TARGET_LABELS.get(target, target)}"))
        parts.append(values_table(shown, snapshot.confidence, not_yet) if not shown.empty else
                     paragraph("Every objective of this target is at chance: no value to show.", "caveat"))
    return section("values", "Shapley values", parts)


def caveats_section(snapshot: RunSnapshot, valuations: dict[str, Valuation]) -> str:
    """Reward models at chance, values that span zero, what the intervals cover, thin estimates and
    the training's caveats: every one of the run's, as the pages say them."""
    said = [caveat.text for caveat in run_caveats(snapshot, valuations)]
    return section("caveats", "Caveats", [bullets(said, "caveats")] if said else [paragraph("None recorded.")])
