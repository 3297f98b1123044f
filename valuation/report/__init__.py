"""A run in one self-contained HTML file: what was asked and how, the sources, the training and
whether each adapter learned, the reward models, the Shapley values with their intervals and
caveats, the validation, a few generations, and the commands that reproduce the run.

    python -m valuation report --run runs/NAME [--out file.html]     (default: <run>/report.html)

The file opens offline in any browser and fetches nothing: plotly.js is embedded once, with the
first chart, the other charts are fragments that reuse it, there is no web font and no MathJax,
and a Content-Security-Policy tells the browser to refuse any request. The charts are the Shapley
page's own (`valuation.figures`).

Honesty rules, the dashboard's: every number shown as a finding carries its interval; a reward model
at chance (`rewards.is_near_chance`) is said in words, and its Shapley values are neither drawn nor
tabulated; values whose interval spans zero, adapters indistinguishable from the base and the single
training seed are said where they matter. All text is escaped (`html.escape`).

The parts: `facts` reads the run once, `html` holds the markup and the page shell, `sections`
describes the run, `findings` holds the values and caveats, `validation` how far the method holds,
and `reproduce` the commands.
"""

from __future__ import annotations

from pathlib import Path

from ..runs import Run
from .facts import gather
from .findings import caveats_section, values_section, valuations_of
from .html import Charts, page, paragraph
from .reproduce import commands_section
from .sections import generations_section, intro_section, rewards_section, sources_section, training_section
from .validation import validation_section

__all__ = ["REPORT_FILE", "SECTIONS", "report_html", "write_report"]

REPORT_FILE = "report.html"
# (anchor, label) of every section, in the report's order: the navigation bar
SECTIONS = (("question", "Question"), ("sources", "Sources"), ("training", "Training"), ("rewards", "Reward models"),
            ("values", "Shapley values"), ("caveats", "Caveats"), ("validation", "Validation"),
            ("generations", "Generations"), ("commands", "Reproduce"))


def report_html(run: Run) -> str:
    """The whole report of `run` as one HTML document."""
    facts, charts = gather(run), Charts()
    valuations = valuations_of(facts)
    body = [paragraph(f"Run '{run.name}', made by python -m valuation report. Every value carries its "
                      f"{facts.confidence} interval; what is at chance is said in words.", "meta"),
            intro_section(facts), sources_section(facts), training_section(facts), rewards_section(facts),
            values_section(facts, valuations, charts), caveats_section(facts, valuations), validation_section(facts),
            generations_section(facts), commands_section(facts)]
    return page(f"Source Shapley report: {run.name}", SECTIONS, body)


def write_report(run: Run, out: Path | None = None) -> Path:
    """Write the report to `out` (default <run>/report.html), atomically; returns where it went."""
    from ..storage import atomic_write_text

    target = Path(out) if out else run.path / REPORT_FILE
    atomic_write_text(target, report_html(run))
    return target
