"""The pair audit section: for each audited source, which of its pairs the other sources label the
other way, the most suspect with their text, and its value without the flagged ones."""

from __future__ import annotations

from ..training.audit import AuditConfig, audit_findings, audited_sources, read_suspects, shorten
from ..training.cleaned import cleaned_findings, read_values
from ..views.figures import intervals_figure
from ..views.snapshot import RunSnapshot
from .html import Charts, bullets, paragraph, section, subheading, table

SHOWN_SUSPECTS = 5  # the most suspect pairs shown with their text
TEXT_WIDTH = 160


def audit_section(snapshot: RunSnapshot, charts: Charts) -> str:
    run, threshold = snapshot.run, AuditConfig().threshold
    sources = audited_sources(run)
    if not sources:
        return section("audit", "Pair audit", [paragraph(
            "No source has been audited (Sources page, or python -m valuation audit --run RUN --source S).")])
    parts = [paragraph(f"Flag counts are at threshold {threshold:g}: the pairs the other sources' adapters label the "
                       "other way.")]
    for source in sources:
        parts += [subheading(source), bullets(audit_findings(run, source, threshold))]
        suspects = read_suspects(run, source).head(SHOWN_SUSPECTS)
        if not suspects.empty:
            parts.append(table(["pair", "others' margin", "own loss", "prompt (last turn)", "chosen", "rejected"],
                               [[r.pair_id, f"{r.rest_margin:+.3f}", f"{r.own_loss:.3f}",
                                 *(shorten(t, TEXT_WIDTH) for t in (r.prompt, r.chosen, r.rejected))]
                                for r in suspects.itertuples()]))
        findings = cleaned_findings(run, source)
        if findings:
            values = read_values(run, source)
            parts += [bullets(findings), charts.embed(intervals_figure(values[values.stage != "change"], color="stage"))]
    return section("audit", "Pair audit", parts)
