"""The audit job: score a source's pairs by the other sources' adapters (`training.audit`), export
the flagged ones for the vendor, print the findings and the most suspect pairs with their text;
with --drop-flagged, train the source again without them and value the run before and after
(`training.cleaned`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from ..storage import atomic_write_text
from .audit import (SUSPECTS_KEPT, AuditConfig, audit_findings, audit_source, export_flagged, shorten, suspect_pairs,
                    suspects_path)
from .cleaned import cleaned_findings, train_without_flagged, values_without

if TYPE_CHECKING:
    from ..progress import Reporter
    from ..runtime.context import RunContext


def run_audit(context: RunContext, config: AuditConfig, reporter: Reporter) -> pd.DataFrame:
    """Audit `config.source`; its audit, most suspect first."""
    source = config.source
    audit = audit_source(context, source, reporter, config.reward_models)
    exported = export_flagged(context.run, source, audit, config.threshold)
    for line in audit_findings(context.run, source, config.threshold):
        reporter.log(line)
    suspects = suspect_pairs(audit, context.split.train[source], SUSPECTS_KEPT)
    atomic_write_text(suspects_path(context.run, source), suspects.to_csv(index=False, float_format="%.6g"))
    for row in suspects.head(config.show).itertuples():
        reporter.log(f"pair {row.pair_id} (rest margin {row.rest_margin:+.3f}): {shorten(row.prompt)!r} "
                     f"chosen {shorten(row.chosen)!r} rejected {shorten(row.rejected)!r}")
    reporter.log(f"flagged pair ids: {exported}")
    if config.drop_flagged:
        adapter = train_without_flagged(context, source, audit, config.threshold, reporter)
        values_without(context, source, adapter, config.reply_tokens, reporter, config.game_sources)
        for line in cleaned_findings(context.run, source):
            reporter.log(line)
    return audit

