"""The whole report of a run: its sections in order, from the run read once."""

from __future__ import annotations

from pathlib import Path

from ..runs import Run
from ..storage import atomic_write_text
from ..views.snapshot import RunSnapshot
from ..views.values import target_valuations
from .audit import audit_section
from .findings import caveats_section, values_section
from .html import Charts, page, paragraph
from .reproduce import commands_section
from .sections import generations_section, intro_section, rewards_section, sources_section, training_section
from .validation import validation_section

REPORT_FILE = "report.html"
# (anchor, label) of every section, in the report's order: the navigation bar
SECTIONS = (("question", "Question"), ("sources", "Sources"), ("training", "Training"), ("rewards", "Reward models"),
            ("values", "Shapley values"), ("caveats", "Caveats"), ("validation", "Validation"),
            ("audit", "Pair audit"),
            ("generations", "Generations"), ("commands", "Reproduce"))


def report_html(run: Run) -> str:
    """The whole report of `run` as one HTML document."""
    snapshot, charts = RunSnapshot(run), Charts()
    valuations = target_valuations(snapshot)
    body = [paragraph(f"Run '{run.name}', made by python -m valuation report. Every value carries its "
                      f"{snapshot.confidence} interval; what is at chance is said in words.", "meta"),
            intro_section(snapshot), sources_section(snapshot), training_section(snapshot), rewards_section(snapshot),
            values_section(snapshot, valuations, charts), caveats_section(snapshot, valuations),
            validation_section(snapshot), audit_section(snapshot, charts), generations_section(snapshot), commands_section(snapshot)]
    return page(f"Source Shapley report: {run.name}", SECTIONS, body)


def write_report(run: Run, out: Path | None = None) -> Path:
    """Write the report to `out` (default <run>/report.html), atomically; returns where it went."""
    target = Path(out) if out else run.path / REPORT_FILE
    atomic_write_text(target, report_html(run))
    return target
