"""Which pairs of a source does the rest of the data disagree with? Each pair a source's adapter
trained on, scored by the adapters of every other source:

    <run>/audit/<source>.csv          pair_id, rest_margin, own_margin, own_loss, each other source's margin
    <run>/audit/<source>.json         what produced it (the adapters, the pairs, the scoring rule)
    <run>/audit/<source>-flagged.csv  the flagged pairs' ids and scores, for the vendor

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
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..config import ConfigError, helped
from ..errors import UserError
from ..games.coalitions import BASE
from ..lm.adapters import load_adapters, read_record, trained_sources
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

    def validate(self) -> None:
        if not self.source:
            raise ConfigError("audit.source is empty: name the source to audit (--source NAME).")
        if self.show < 0:
            raise ConfigError(f"audit.show={self.show}: use 0 or more.")


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


def audit_source(context: RunContext, source: str, reporter: Reporter) -> pd.DataFrame:
    """Every pair `source`'s adapter trained on, scored by every other source's adapter and by its
    own; written to <run>/audit/<source>.csv (reused while the adapters and pairs are the same),
    most suspect first."""
    run = context.run
    pairs = audited_pairs(context, source)
    others = [s for s in trained_sources(run) if s != source]
    records = {s: read_record(run, s) for s in [source, *others]}
    path = audit_path(run, source)
    key = digest({"records": {s: digest(r) for s, r in records.items()}, "pairs": [p.pair_id for p in pairs],
                  "rule": AUDIT_RULE})
    record = path.with_suffix(".json")
    if path.exists() and record.exists() and json.loads(record.read_text()).get("key") == key:
        return read_audit(run, source)
    started = time.time()
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
                          **{f"margin:{s}": margins[s] for s in others}}).sort_values("rest_margin", kind="stable")
    atomic_write_text(path, frame.to_csv(index=False, float_format="%.6g"))
    atomic_write_json(path.with_suffix(".json"), {"key": key, "source": source, "judges": others, "rule": AUDIT_RULE,
                                                  "seconds": round(time.time() - started, 1)})
    reporter.log(f"audit: {len(frame)} pairs of {source} scored by {', '.join(others)} in {time.time() - started:.0f} s")
    return frame


def read_audit(run: Run, source: str) -> pd.DataFrame:
    """The audit of `source` (empty when none): one row per pair, most suspect first."""
    path = audit_path(run, source)
    return pd.read_csv(path, dtype={"pair_id": str}) if path.exists() else pd.DataFrame()


def flagged(audit: pd.DataFrame, threshold: float = 0.0) -> pd.DataFrame:
    """The pairs whose rest margin is below `threshold`: those the rest of the data labels the other way."""
    return audit[audit.rest_margin < threshold]


def flagged_path(run: Run, source: str) -> Path:
    return run.path / "audit" / f"{source}-flagged.csv"


def audit_findings(audit: pd.DataFrame, source: str, threshold: float) -> list[str]:
    """What an audit says, in words (for the page, the report and the command line)."""
    judges = [c.removeprefix("margin:") for c in audit.columns if c.startswith("margin:")]
    suspect = flagged(audit, threshold)
    agree = float(np.corrcoef(audit.rest_margin.rank(), (-audit.own_loss).rank())[0, 1]) if len(audit) > 2 else float("nan")
    return [f"Scored by {AUDIT_RULE} ({', '.join(judges)}).",
            f"{len(suspect)} of {len(audit)} pairs of {source} flagged ({len(suspect) / len(audit):.0%}): "
            f"the other sources' margin is below {threshold:g}.",
            f"The baseline, {source}'s own adapter's training loss per pair, ranks the pairs with Spearman "
            f"{agree:+.2f} against the audit."]


def run_audit(context: RunContext, config: AuditConfig, reporter: Reporter) -> pd.DataFrame:
    """The audit job: score the source's pairs, export the flagged ones, print the findings and the
    most suspect pairs with their text."""
    audit = audit_source(context, config.source, reporter)
    suspect = flagged(audit, config.threshold)
    atomic_write_text(flagged_path(context.run, config.source),
                      suspect[["pair_id", "rest_margin", "own_loss"]].to_csv(index=False, float_format="%.6g"))
    for line in audit_findings(audit, config.source, config.threshold):
        reporter.log(line)
    texts = {str(p.pair_id): p for p in context.split.train[config.source]}
    for row in audit.head(config.show).itertuples():
        pair = texts[row.pair_id]
        reporter.log(f"pair {row.pair_id} (rest margin {row.rest_margin:+.3f}): {shorten(pair.prompt[-1]['content'])!r} "
                     f"chosen {shorten(pair.chosen)!r} rejected {shorten(pair.rejected)!r}")
    reporter.log(f"flagged pair ids: {flagged_path(context.run, config.source)}")
    return audit


def shorten(text: str, width: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"
