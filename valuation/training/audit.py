"""Which pairs of a source does the rest of the data disagree with? Each pair a source's adapter
trained on, scored by the adapters of every other source:

    <run>/audit/<source>.csv          pair_id, rest_margin, own_margin, own_loss, each other source's margin
    <run>/audit/<source>.json         what produced it (the adapters, the pairs, the scoring rule)
    <run>/audit/<source>-flagged.csv  the flagged pairs' ids and scores, for the vendor
    <run>/audit/<source>-suspects.csv the most suspect pairs with their text (what the page and report show)

Source l's adapter gives each pair (x, y_w, y_l) an implicit reward margin, DPO's own measure of
which reply it prefers:

    m_l = beta [(log pi_l(y_w|x) - log pi_0(y_w|x)) - (log pi_l(y_l|x) - log pi_0(y_l|x))]

The coalition of all the other sources, built by the arithmetic in its sequence-level form (DPO's
product of experts), has log pi_rest - log pi_0 = sum_{l != s} (log pi_l - log pi_0) up to a
normaliser of x that cancels in a margin, so its margin is exactly sum_{l != s} m_l. A pair whose
rest margin is below zero is one the rest of the data would label the other way round: the audit
ranks pairs by that margin, lowest (most suspect) first. The baseline a practitioner would try first,
the source's own adapter's DPO loss on the pair, -log sigmoid(m_s), is kept beside it.

Every pair's sequences go through the base's lower layers once (the trunks training cached), and
each adapter runs only its top layers: n + 1 top-layer passes per pair.

A second opinion, where the run has reward models: each one's reward of the chosen reply minus the
rejected's (`reward:<objective>` columns). They are trained on the run's reward part, which is the
trusted held-out set when the run has one, else pairs of every source (the audited one included).
Dropping the flagged pairs and valuing the source again is `training.cleaned`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..config import ConfigError, helped
from ..errors import UserError
from ..games.coalitions import BASE
from ..lm.adapters import load_adapters, read_record, trained_sources
from ..rewards.cards import describe_card, read_cards
from ..storage import atomic_write_json, atomic_write_text, digest
from .pairs import fitting_pairs, select_pairs
from .settings import recorded_config
from .verdicts import pair_log_likelihoods, read_pairs

if TYPE_CHECKING:
    from ..data.preferences import PreferencePair
    from ..progress import Reporter
    from ..runs import Run
    from ..runtime.context import RunContext

AUDIT_RULE = ("the implicit reward margin of the coalition of all other sources (sequence-level arithmetic: the sum "
              "of their adapters' margins), chosen minus rejected; below the threshold, the rest of the data prefers "
              "the rejected reply")


class AuditError(UserError):
    """An audit that cannot run; the message says what to do instead."""


@dataclass
class AuditConfig:
    source: str = helped("", "The source whose pairs to audit (one the run has trained).")
    threshold: float = helped(0.0, "A pair is flagged when the other sources' margin on it is below this (0: they "
                                   "prefer its rejected reply).")
    show: int = helped(5, "The most suspect pairs to print with their text.")
    reward_models: bool = helped(True, "Also score each pair by the run's reward models, where it has them: chosen "
                                       "minus rejected reward, a second opinion beside the adapters'.")
    drop_flagged: bool = helped(False, "Then train an adapter on the source's pairs less the flagged ones (same settings "
                                       "and seed) and value the run again with it in the source's place: the "
                                       "source's value before and after, with intervals (nothing is overwritten).")
    game_sources: list[str] = helped([], "The sources of the game valued before and after dropping the flagged "
                                           "pairs (the audited one among them; default: every trained source).")
    reply_tokens: int = helped(48, "Held-out replies are cut to this many tokens when the run is valued again (the "
                                   "evaluation's default).")

    def validate(self) -> None:
        if not self.source:
            raise ConfigError("audit.source is empty: name the source to audit (--source NAME).")
        if self.show < 0:
            raise ConfigError(f"audit.show={self.show}: use 0 or more.")
        if self.game_sources and self.source not in self.game_sources:
            raise ConfigError(f"audit.game_sources={self.game_sources} leaves out the audited source {self.source!r}: "
                              "add it, or leave the list empty for every trained source.")
        if self.reply_tokens < 1:
            raise ConfigError(f"audit.reply_tokens={self.reply_tokens}: use 1 or more.")


PRESETS = {"default": AuditConfig()}


def audit_path(run: Run, source: str) -> Path:
    return run.path / "audit" / f"{source}.csv"


def audited_pairs(context: RunContext, source: str) -> list[PreferencePair]:
    """The pairs the source's adapter trained on, in order, with their prompts cut as training cut them."""
    run = context.run
    trained = trained_sources(run)
    if source not in context.split.train:
        raise AuditError(f"No source {source!r} in run {run.name!r}: audit one of {sorted(context.split.train)}.")
    if source not in trained:
        raise AuditError(f"Source {source!r} has no adapter yet: train it first (the audit reads the pairs it trained on).")
    if len(trained) < 2:
        raise AuditError(f"Run {run.name!r} has one trained source: the audit judges a source's pairs by the other "
                         "sources' adapters, so train at least one more.")
    settings = recorded_config(read_record(run, source))
    pool = context.split.train[source]
    pairs = fitting_pairs(pool, context.base.tokenizer, settings.max_prompt_length, settings.max_pairs or len(pool))
    if len(pairs) < 2:
        raise AuditError(f"Source {source!r} has {len(pairs)} pair(s) its adapter trained on: an audit ranks pairs, "
                         "so it needs at least 2.")
    return pairs


def audit_source(context: RunContext, source: str, reporter: Reporter, reward_models: bool = True) -> pd.DataFrame:
    """Every pair `source`'s adapter trained on, scored by every other source's adapter and by its
    own (and by the run's reward models, with `reward_models`); written to <run>/audit/<source>.csv
    (reused while the adapters, reward models and pairs are the same), most suspect first."""
    run = context.run
    pairs = audited_pairs(context, source)
    others = [s for s in trained_sources(run) if s != source]
    records = {s: read_record(run, s) for s in [source, *others]}
    path = audit_path(run, source)
    cards = read_cards(run) if reward_models else {}
    key = digest({"records": {s: digest(r) for s, r in records.items()}, "pairs": [p.pair_id for p in pairs],
                  "rule": AUDIT_RULE, "rewards": {o: digest(card) for o, card in cards.items()}})
    record = path.with_suffix(".json")
    if path.exists() and record.exists() and json.loads(record.read_text()).get("key") == key:
        return read_audit(run, source)
    started = time.time()
    rewards = reward_margins(context, pairs, cards, reporter)  # before the adapters join the base
    settings = recorded_config(records[source])
    rows = select_pairs(pairs, context.base.tokenizer, replace(settings, max_pairs=len(pairs))).rows
    judged = read_pairs(context, rows, settings, reporter, f"{source}: its training pairs")
    base = pair_log_likelihoods(context.base.model, judged, BASE, reporter)
    model = load_adapters(context.base, run, [source, *others], records=records)
    margins = {}
    for adapter in [source, *others]:
        gain = pair_log_likelihoods(model, judged, adapter, reporter) - base  # log pi_l(y) - log pi_0(y)
        margins[adapter] = records[adapter]["beta"] * (gain[0::2] - gain[1::2])  # chosen, then rejected
    frame = pd.DataFrame({"pair_id": [str(p.pair_id) for p in pairs],
                          "rest_margin": sum(margins[s] for s in others),
                          "own_margin": margins[source],
                          "own_loss": np.logaddexp(0.0, -margins[source]),  # -log sigmoid(m_s): DPO's loss on the pair
                          **{f"margin:{s}": margins[s] for s in others},
                          **{f"reward:{o}": r for o, r in rewards.items()}}).sort_values("rest_margin", kind="stable")
    atomic_write_text(path, frame.to_csv(index=False, float_format="%.6g"))
    atomic_write_json(path.with_suffix(".json"), {"key": key, "source": source, "judges": others, "rule": AUDIT_RULE,
                                                  "rewards": {o: describe_card(c) for o, c in cards.items()},
                                                  "seconds": round(time.time() - started, 1)})
    reporter.log(f"audit: {len(frame)} pairs of {source} scored by {', '.join(others)} in {time.time() - started:.0f} s")
    return frame


def reward_margins(context: RunContext, pairs: list[PreferencePair], cards: dict[str, dict],
                   reporter: Reporter) -> dict[str, np.ndarray]:
    """Per reward model of the run: r(x, chosen) - r(x, rejected) of every pair."""
    from ..rewards.store import load_reward

    margins = {}
    for objective, card in cards.items():
        model = load_reward(context.run, objective, context.base, card)
        prompts = [p.prompt for p in pairs]
        progress = reporter.stage(f"{objective} reward model: chosen, then rejected")
        scores = model.score(prompts + prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs], progress)
        margins[objective] = scores[:len(pairs)] - scores[len(pairs):]
    return margins


def read_audit(run: Run, source: str) -> pd.DataFrame:
    """The audit of `source` (empty when none): one row per pair, most suspect first."""
    path = audit_path(run, source)
    return pd.read_csv(path, dtype={"pair_id": str}) if path.exists() else pd.DataFrame()


def flagged(audit: pd.DataFrame, threshold: float = 0.0) -> pd.DataFrame:
    """The pairs whose rest margin is below `threshold`: those the rest of the data labels the other way."""
    return audit[audit.rest_margin < threshold]


def flagged_path(run: Run, source: str) -> Path:
    return run.path / "audit" / f"{source}-flagged.csv"


def audit_findings(run: Run, source: str, threshold: float) -> list[str]:
    """What the audit of `source` says at `threshold`, in words (for the page, the report and the
    command line); empty before there is one."""
    audit, path = read_audit(run, source), audit_path(run, source).with_suffix(".json")
    if audit.empty:
        return []
    described = json.loads(path.read_text()).get("rewards", {}) if path.exists() else {}
    judges = [c.removeprefix("margin:") for c in audit.columns if c.startswith("margin:")]
    suspect = flagged(audit, threshold)
    agree = rank_agreement(audit.rest_margin, -audit.own_loss)
    lines = [f"Scored by {AUDIT_RULE} ({', '.join(judges)}).",
             f"{len(suspect)} of {len(audit)} pairs of {source} flagged ({len(suspect) / len(audit):.0%}): "
             f"the other sources' margin is below {threshold:g}.",
             f"The baseline, {source}'s own adapter's training loss per pair, ranks the pairs with Spearman "
             f"{agree:+.2f} against the audit."]
    for column in [c for c in audit.columns if c.startswith("reward:")]:
        objective, against = column.removeprefix("reward:"), audit[column] < 0
        lines.append(f"Second opinion, the {objective} reward model ({described.get(objective, 'no card')}): it prefers "
                     f"the rejected reply on {int(against.sum())} of the {len(audit)} pairs, "
                     f"{int((against & (audit.rest_margin < threshold)).sum())} of them flagged; Spearman "
                     f"{rank_agreement(audit.rest_margin, audit[column]):+.2f} against the audit.")
    return lines


def rank_agreement(first: pd.Series, second: pd.Series) -> float:
    """Spearman's rho of two scores of the same pairs (NaN for fewer than 3)."""
    return float(np.corrcoef(first.rank(), second.rank())[0, 1]) if len(first) > 2 else float("nan")


def suspect_pairs(audit: pd.DataFrame, pairs: Iterable[PreferencePair], count: int) -> pd.DataFrame:
    """The audit's `count` most suspect pairs with their text (`pairs`: the source's, any order):
    pair_id, rest_margin, own_loss, prompt (its last turn), chosen, rejected."""
    texts = {str(p.pair_id): p for p in pairs}
    rows = audit.head(count)
    return pd.DataFrame({"pair_id": rows.pair_id, "rest_margin": rows.rest_margin, "own_loss": rows.own_loss,
                         "prompt": [texts[i].prompt[-1]["content"] for i in rows.pair_id],
                         "chosen": [texts[i].chosen for i in rows.pair_id],
                         "rejected": [texts[i].rejected for i in rows.pair_id]})


SUSPECTS_KEPT = 50  # the most suspect pairs kept with their text


def suspects_path(run: Run, source: str) -> Path:
    return run.path / "audit" / f"{source}-suspects.csv"


def read_suspects(run: Run, source: str) -> pd.DataFrame:
    """The most suspect pairs of `source` with their text, as the audit job kept them (empty when none)."""
    path = suspects_path(run, source)
    return pd.read_csv(path, dtype={"pair_id": str}, keep_default_na=False) if path.exists() else pd.DataFrame()


def audited_sources(run: Run) -> list[str]:
    """The run's trained sources that have an audit."""
    return [source for source in trained_sources(run) if audit_path(run, source).exists()]


def flagged_csv(audit: pd.DataFrame, threshold: float) -> str:
    """The pairs flagged at `threshold`, for the vendor: their ids and scores as CSV."""
    return flagged(audit, threshold)[["pair_id", "rest_margin", "own_loss"]].to_csv(index=False, float_format="%.6g")


def export_flagged(run: Run, source: str, audit: pd.DataFrame, threshold: float) -> Path:
    """The pairs flagged at `threshold` written to <run>/audit/<source>-flagged.csv."""
    path = flagged_path(run, source)
    atomic_write_text(path, flagged_csv(audit, threshold))
    return path


def shorten(text: str, width: int = 80) -> str:
    """One line of at most `width` characters."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"
