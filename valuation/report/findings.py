"""The findings: each target's Shapley values with their intervals, drawn with the Shapley page's own
charts, and the caveats that say how far to trust them. A reward model at chance is said in words:
its values are neither drawn nor tabulated."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..runs import Run
from ..values import TARGET_LABELS, Valuation, not_distinguishable
from .facts import Facts
from .html import Charts, bullets, paragraph, section, subheading, table, with_interval


def chance_sentence(facts: Facts, objective: str) -> str:
    """Why the values on `objective` are not shown: its reward model's accuracy interval includes 50%."""
    row = facts.accuracies.set_index("objective").loc[objective]
    return (f"{objective}: not shown. Its reward model is at chance on held-out pairs (accuracy "
            f"{with_interval(row.accuracy, row.lower, row.upper, '.1%')} includes 50%), so its Shapley values would be "
            "noise dressed as findings; read the other objectives, or train a better reward model.")


# -----------------------------------------------------------------------------
# Shapley values


def reading(row: Any) -> str:
    """What one value says, in words: it adds, it takes, or it cannot be told from no effect."""
    if pd.isna(row.lower) or pd.isna(row.upper):
        return "no interval: cannot tell from no effect"
    if row.spans_zero:
        return "not distinguishable from no effect"
    return f"adds to {row.objective}" if row.value > 0 else f"takes from {row.objective}"


def values_table(frame: pd.DataFrame, confidence: str) -> str:
    """One row per value: objective, source, value with its interval, and its reading."""
    rows = [[r.objective, r.player, with_interval(r.value, r.lower, r.upper), reading(r)]
            for r in frame.itertuples()]
    return table(["objective", "source", f"Shapley value [{confidence} interval]", "reading"], rows)


def figures_parts(facts: Facts, valuation: Valuation, charts: Charts) -> list[str]:
    """The Shapley page's bars (objectives with signal only) and its two-objective scatter."""
    from ..figures import bars_figure, scatter_figure

    drawn = [o for o in valuation.objectives if o not in facts.at_chance]
    parts = [charts.embed(bars_figure(valuation, drawn))] if drawn else []
    parts += [paragraph(chance_sentence(facts, o), "caveat") for o in valuation.objectives if o in facts.at_chance]
    pair = ["helpfulness", "harmlessness"] if {"helpfulness", "harmlessness"} <= set(drawn) else drawn[:2]
    if len(pair) == 2:
        parts += [subheading(f"Sources on two objectives: {pair[0]} against {pair[1]}"),
                  charts.embed(scatter_figure(valuation, *pair))]
    else:
        parts.append(paragraph("No two objectives with signal to plot against each other.", "caveat"))
    return parts


def coverage_sentence(facts: Facts, valuation: Valuation, target: str) -> str:
    """Which table the values come from, how much of it there is, and the method."""
    table_, n = valuation.table, len(valuation.players)
    prompts = len(table_.prompts) if table_.prompts else 1
    return (f"Utilities: {TARGET_LABELS.get(target, target)} ({facts.tables[target].name}): {len(table_.values)} of the "
            f"2^{n} = {2 ** n} coalitions, {prompts} prompt(s). Method: {valuation.shapley.method}; {facts.confidence} "
            "intervals.")


def valuations_of(facts: Facts) -> dict[str, Valuation]:
    """Each target's values (the first is the one drawn), with the evaluation's method, budget and seed."""
    from ..values import load_utilities, value_sources

    return {target: value_sources(load_utilities(path), facts.valuation_config)
            for target, path in facts.tables.items()}


def values_section(facts: Facts, valuations: dict[str, Valuation], charts: Charts) -> str:
    """The first target's charts, then every target's table of values."""
    if not valuations:
        return section("values", "Shapley values", [paragraph("This run has no coalition utilities yet: train "
                                                              "adapters, then evaluate the coalitions.")])
    main, valuation = next(iter(valuations.items()))
    parts = [paragraph(coverage_sentence(facts, valuation, main)), *figures_parts(facts, valuation, charts)]
    for target, each in valuations.items():
        frame = each.values_frame()
        shown = frame[~frame.objective.isin(facts.at_chance)]
        parts.append(subheading(f"Values: {TARGET_LABELS.get(target, target)}"))
        parts.append(values_table(shown, facts.confidence) if not shown.empty else
                     paragraph("Every objective of this target is at chance: no value to show.", "caveat"))
    return section("values", "Shapley values", parts)


# -----------------------------------------------------------------------------
# caveats


def estimation_caveats(run: Run, target: str) -> list[str]:
    """The coalitions a pooled evaluation reached with too few effective responses."""
    from ..values import estimation

    shown = estimation(run)
    shown = shown[shown.target == target].assign(coalition=lambda f: f.coalition.replace("", "∅ (base)"))
    direct = shown[shown.estimator == "direct"].coalition.tolist()
    weak = shown[(shown.estimator == "pooled") & shown.below_floor].coalition.tolist()
    said = [f"{len(direct)} coalition(s) were sampled directly: the pool reached them with an effective sample size "
            f"below the floor ({', '.join(direct)})."] if direct else []
    return said + ([f"{len(weak)} coalition(s) rest on few effective responses (ESS below the floor) and cannot be "
                    f"sampled directly at the {target} level: read their values with care ({', '.join(weak)})."]
                   if weak else [])


def caveats_section(facts: Facts, valuations: dict[str, Valuation]) -> str:
    """Reward models at chance, values that span zero, the single training seed, thin estimates and
    adapters that did not learn."""
    said = [chance_sentence(facts, o) for o in sorted(facts.at_chance)]
    for target, each in valuations.items():
        unclear = [item for item in not_distinguishable(each) if item.rsplit(" on ", 1)[1] not in facts.at_chance]
        if unclear:
            said.append(f"Not distinguishable from no effect (the {facts.confidence} interval includes 0), "
                        f"{TARGET_LABELS.get(target, target)}: {', '.join(unclear)}.")
    if valuations:
        valuation = next(iter(valuations.values()))
        said.append(valuation.interval_note())  # what the intervals cover: prompts, reward heads, training seeds
        said += estimation_caveats(facts.run, next(iter(facts.tables)))
    if not facts.verdicts.empty:
        unlearned = facts.verdicts[facts.verdicts.verdict != "learned"]
        if not unlearned.empty:
            said.append("Adapters that did not learn, on held-out pairs of their own source: "
                        + ", ".join(r.source + ("" if r.verdict.startswith("indistinguishable") else f" ({r.verdict})")
                                    for r in unlearned.itertuples())
                        + " (indistinguishable from the base unless said). Their values say more about training noise "
                          "than about their data.")
    return section("caveats", "Caveats", [bullets(said, "caveats")] if said else [paragraph("None recorded.")])
