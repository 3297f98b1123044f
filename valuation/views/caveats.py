"""What keeps the run's values from being findings, as typed records: written once here, rendered
by the Shapley and Training pages, the report and the command line alike.

    at_chance       an objective whose reward model is at chance: its values are said, never drawn
    spans_zero      values whose interval includes zero: not distinguishable from no effect
    unchecked       values whose interval excludes zero, of a run trained under one seed: not findings
                    yet, as the intervals leave out training noise
    coverage        what the intervals cover (prompts, reward heads) and what they leave out
    training_noise  how many training seeds the values average (one: training noise is not in them)
    below_floor     coalitions the pooled evaluation reached with too few effective responses
    did_not_learn   adapters indistinguishable from the base (or learning the opposite) on held-out pairs
    pairs_dropped   sources that lost more than a fifth of their training pairs to the prompt length cap
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from ..games.coalitions import shown_name
from ..rewards.cards import at_chance
from ..training.pairs import dropped_warning
from .values import TARGET_LABELS

if TYPE_CHECKING:
    from ..games.values import Valuation
    from .snapshot import RunSnapshot

AT_CHANCE, SPANS_ZERO, UNCHECKED = "at_chance", "spans_zero", "unchecked"
COVERAGE, TRAINING_NOISE = "coverage", "training_noise"
BELOW_FLOOR, DID_NOT_LEARN, PAIRS_DROPPED = "below_floor", "did_not_learn", "pairs_dropped"
NOTES = (COVERAGE, TRAINING_NOISE)  # what the intervals hold: notes to read beside the values, not warnings


@dataclass(frozen=True)
class Caveat:
    kind: str  # one of the kinds above
    text: str  # the sentence every face shows
    about: tuple[str, ...] = ()  # what it concerns: objectives, 'source on objective', coalitions, adapters or sources

    @property
    def is_note(self) -> bool:
        return self.kind in NOTES


def chance_caveats(accuracies: pd.DataFrame, hidden: set[str] = frozenset(),
                   objectives: set[str] | None = None) -> list[Caveat]:
    """One per objective whose reward model is at chance (of `objectives`, when given), and per
    objective in `hidden` that mixes one in."""
    caveats = []
    for row in accuracies[accuracies.near_chance].itertuples() if not accuracies.empty else ():
        if objectives is not None and row.objective not in objectives:
            continue
        caveats.append(Caveat(AT_CHANCE, (
            f"{row.objective}: not shown. Its reward model is at chance on held-out pairs (accuracy {row.accuracy:.1%} "
            f"[{row.lower:.1%}, {row.upper:.1%}] includes 50%), so its Shapley values would be noise dressed as "
            "findings; read the other objectives, or train a better reward model (more pairs, a hub model)."),
            (row.objective,)))
    for objective in sorted(hidden - at_chance(accuracies)):
        caveats.append(Caveat(AT_CHANCE, f"{objective}: not shown. It mixes in an objective whose reward model is at "
                                         "chance, so its values would be noise too.", (objective,)))
    return caveats


def not_distinguishable(valuation: Valuation, hidden: set[str] = frozenset(), spans: bool = True) -> list[str]:
    """'source on objective' for every value whose interval includes zero (with `spans` False: excludes
    it), objectives in `hidden` left out."""
    found = valuation.spans_zero() == spans
    return [f"{player} on {objective}" for k, objective in enumerate(valuation.objectives) if objective not in hidden
            for i, player in enumerate(valuation.players) if found[i, k] and valuation.has_intervals]


def unchecked_caveats(valuations: Mapping[str, Valuation], hidden: set[str] = frozenset()) -> list[Caveat]:
    """For a run trained under one seed, the values whose interval excludes zero: not findings yet.
    The intervals leave out training noise, and the same pairs trained under another seed can move a
    value as far (identical pairs under two seeds have come out 0.14 apart)."""
    caveats = []
    for target, valuation in valuations.items():
        apparent = not_distinguishable(valuation, hidden, spans=False)
        if valuation.shapley.seeds == 1 and apparent:
            label = f", {TARGET_LABELS.get(target, target)}" if len(valuations) > 1 else ""
            caveats.append(Caveat(UNCHECKED, (
                f"Not findings yet{label}: {', '.join(apparent)}. Their intervals exclude 0, but each source has one "
                "adapter (one training seed), so the intervals leave out training noise: the same pairs trained under "
                "another seed can move a value as far. Train a second seed (Seeds per source on the Training page, "
                "train --seeds 2) to check them."), tuple(apparent)))
    return caveats


def unchecked(caveats: list[Caveat]) -> set[str]:
    """'source on objective' for every value the caveats say is not a finding yet (one training seed)."""
    return {item for caveat in caveats if caveat.kind == UNCHECKED for item in caveat.about}


def value_caveats(valuations: Mapping[str, Valuation], hidden: set[str] = frozenset()) -> list[Caveat]:
    """What the values themselves say of their certainty: values that span zero, per target, and what
    the intervals of the first (the primary target) cover, training seeds included."""
    caveats = []
    for target, valuation in valuations.items():
        unclear = not_distinguishable(valuation, hidden)
        if unclear:
            label = f", {TARGET_LABELS.get(target, target)}" if len(valuations) > 1 else ""
            caveats.append(Caveat(SPANS_ZERO, f"Not distinguishable from no effect (the {valuation.confidence:.0%} "
                                              f"interval includes 0){label}: {', '.join(unclear)}.", tuple(unclear)))
    if valuations:
        first = next(iter(valuations.values()))
        caveats += [Caveat(COVERAGE, first.coverage_note()), Caveat(TRAINING_NOISE, first.seeds_note())]
    return caveats


def estimation_caveats(estimation: pd.DataFrame, target: str) -> list[Caveat]:
    """The coalitions a pooled evaluation reached with too few effective responses, at `target`."""
    shown = estimation[estimation.target == target].assign(coalition=lambda f: f.coalition.map(shown_name))
    direct = shown[shown.estimator == "direct"].coalition.tolist()
    weak = shown[(shown.estimator == "pooled") & shown.below_floor.astype(bool)].coalition.tolist()
    caveats = []
    if direct:
        caveats.append(Caveat(BELOW_FLOOR, f"{len(direct)} coalition(s) were sampled directly: the pool reached them "
                                           f"with an effective sample size below the floor ({_listed(direct)}).",
                              tuple(direct)))
    if weak:
        caveats.append(Caveat(BELOW_FLOOR, f"{len(weak)} coalition(s) rest on few effective responses (ESS below the "
                                           f"floor) and cannot be sampled directly at the {target} level: read their "
                                           f"values with care ({_listed(weak)}).", tuple(weak)))
    return caveats


def _listed(names: list[str], most: int = 6) -> str:
    return ", ".join(names[:most]) + (", …" if len(names) > most else "")


def training_caveats(snapshot: RunSnapshot) -> list[Caveat]:
    """Adapters that did not learn on held-out pairs of their own source, and sources whose prompt
    length cap dropped too many of their training pairs."""
    caveats = []
    verdicts = snapshot.verdicts
    unlearned = verdicts[verdicts.verdict != "learned"] if not verdicts.empty else verdicts
    if not unlearned.empty:
        named = [r.source + ("" if r.verdict.startswith("indistinguishable") else f" ({r.verdict})")
                 for r in unlearned.itertuples()]
        caveats.append(Caveat(DID_NOT_LEARN, "Adapters that did not learn, on held-out pairs of their own source: "
                                             f"{', '.join(named)} (indistinguishable from the base unless said). Their "
                                             "values say more about training noise than about their data: train longer "
                                             "or on more pairs.", tuple(unlearned.source)))
    counts = {adapter: (record["pairs_used"], record["pairs_dropped_by_length"])
              for adapter, record in snapshot.records.items()
              if record.get("pairs_used") is not None and record.get("pairs_dropped_by_length") is not None}
    warning = dropped_warning(counts)
    if warning:
        caveats.append(Caveat(PAIRS_DROPPED, warning, tuple(counts)))
    return caveats


def run_caveats(snapshot: RunSnapshot, valuations: Mapping[str, Valuation] | None = None,
                hidden: set[str] | None = None) -> list[Caveat]:
    """Every caveat of the run, in the order to say them: reward models at chance, values that are
    not findings yet (one training seed), what the values (`valuations`, by target, the primary
    first) say of their certainty, the pooled evaluation's thin coalitions, and the training's. `hidden`: the objectives not drawn (default: those at chance).
    With `valuations`, only the objectives they value are said to be at chance."""
    valuations = valuations or {}
    hidden = snapshot.at_chance if hidden is None else hidden
    valued = {o for valuation in valuations.values() for o in valuation.objectives} if valuations else None
    caveats = chance_caveats(snapshot.accuracies, hidden, valued)
    caveats += unchecked_caveats(valuations, hidden) if snapshot.trained else []  # values of trained adapters
    caveats += value_caveats(valuations, hidden)
    if valuations:
        caveats += estimation_caveats(snapshot.store.estimation(), next(iter(valuations)))
    return caveats + training_caveats(snapshot)
