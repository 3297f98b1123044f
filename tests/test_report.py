"""The HTML report of a run (valuation.report), built from a copy of the shipped demo run: its sections,
no network reference, a reward model at chance said in words and not drawn, escaped text, and commands
that the command line accepts and that give back the run's recorded settings."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from valuation.cli import build_parser, main
from valuation.config import settings_of
from valuation.jobs.demo import DEMO_SOURCE, install_demo
from valuation.jobs.flags import overrides_from
from valuation.jobs.registry import JOBS, job_config
from valuation.report.document import SECTIONS, report_html
from valuation.runs import Run, create_run

pytestmark = pytest.mark.skipif(not (DEMO_SOURCE / "config.yaml").exists(), reason="no demo run shipped yet")

INTERVAL = r"[+-]\d+\.\d{3} \[[+-]\d+\.\d{3}, [+-]\d+\.\d{3}\]"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Run:
    return install_demo(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def report(demo) -> str:
    return report_html(demo)


def section_of(report: str, anchor: str) -> str:
    start = report.index(f'<section id="{anchor}">')
    return report[start:report.index("</section>", start)]


def plain(fragment: str) -> str:
    """A fragment's text without tags (entities left as they are)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", fragment))


def with_reward_at_chance(run: Run, objective: str) -> None:
    """Rewrite one reward model's card as if its held-out accuracy were 52% [44%, 60%]."""
    path = run.path / "rewards" / objective / "reward.json"
    card = json.loads(path.read_text())
    card |= {"heldout_accuracy": 0.52, "interval": [0.44, 0.60]}
    path.write_text(json.dumps(card))


def test_the_report_has_every_section_and_reads_the_run(demo, report):
    for anchor, _ in SECTIONS:
        assert f'<section id="{anchor}">' in report, anchor
    split = demo.load_split()
    sources = plain(section_of(report, "sources"))
    for source, pairs in split["train_pairs"].items():
        assert f"{source} {pairs} " in sources  # each source with its training pairs
    assert "held-out reward margin [95%]" in section_of(report, "training")
    assert "indistinguishable from the base" in section_of(report, "training")
    assert "69.3% [62.4%, 75.4%]" in section_of(report, "rewards")  # the harmlessness reward model, with its interval
    assert "Validation &#x27;quick&#x27;" in section_of(report, "validation")
    assert "How do I make a simple vegetable soup?" in section_of(report, "generations")  # from the prompts file


def test_every_shapley_value_carries_its_interval(report):
    values = section_of(report, "values")
    cells = re.findall(r"<td>([^<]*)</td><td>(not distinguishable|adds to|takes from)", values)
    assert len(cells) == 3 * 2 * 4  # three targets, two objectives each, four sources
    assert all(re.fullmatch(INTERVAL, value) for value, _ in cells)


def test_the_report_fetches_nothing(report):
    tags = re.findall(r"<(?:script|link|img|iframe|source|video|audio|embed|object)\b[^>]*>", report)
    assert not [t for t in tags if re.search(r"\b(src|href|data)\s*=", t)]  # every script is inline
    assert "<link" not in report and "@import" not in report and "@font-face" not in report
    assert report.count("* plotly.js v") == 1  # embedded once, with the first chart
    assert report.count('class="plotly-graph-div"') == 2  # the bars and the scatter
    assert "default-src &#x27;none&#x27;" in report  # and the browser is told to refuse any request
    assert "MathJax.Hub" not in report


def test_caveats_are_said(report):
    caveats = plain(section_of(report, "caveats"))
    assert "average over 3 training seeds of every source&#x27;s adapter, and the intervals include the spread" in caveats
    assert "bootstrap resamples) for helpfulness (20 heads), harmlessness (20 heads)" in caveats
    assert ("Adapters that did not learn, on held-out pairs of their own source: helpful-base@seed2, helpful-base@seed3, "
            "helpful-online, helpful-online@seed2, helpful-online@seed3") in caveats
    assert "pooled, sequence-level target: harmless-base on helpfulness" in caveats  # an interval spanning zero


def test_a_reward_model_at_chance_is_said_in_words_not_drawn(tmp_path, report):
    run = install_demo(tmp_path)
    with_reward_at_chance(run, "harmlessness")
    chance = report_html(run)
    values = section_of(chance, "values")
    assert "harmlessness: not shown. Its reward model is at chance" in plain(values)
    assert "52.0% [44.0%, 60.0%]" in values
    assert '"legendgroup":"harmlessness"' in report and '"legendgroup":"harmlessness"' not in chance  # no bar
    assert chance.count('class="plotly-graph-div"') == 1  # no second objective with signal: no scatter
    assert "<td>harmlessness</td><td>" not in values  # nor a row of numbers
    assert "<td>helpfulness</td><td>" in values
    assert "harmlessness reward" not in section_of(chance, "generations")
    assert "at chance: its interval includes 50%" in section_of(chance, "rewards")


def test_text_from_the_run_is_escaped(tmp_path):
    run = install_demo(tmp_path)
    chunk = sorted((run.path / "evaluation" / "samples").glob("*/chunk-0000.jsonl"))[0]
    rows = [json.loads(line) for line in chunk.read_text().splitlines()]
    rows[0]["text"] = "<script>alert('x')</script> & <b>bold</b>"
    chunk.write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = report_html(run)
    assert "<script>alert" not in page and "<b>bold" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page


def test_a_hostile_source_name_is_escaped(tmp_path):
    """The sources command refuses such a name (tests/test_runs.py); a table written by hand can still
    hold one, and every place the report shows a source escapes it."""
    from helpers import glove_frame, write_utilities

    hostile = "<img src=x onerror=alert(1)>"
    run = create_run("hostile", root=tmp_path)
    frame = glove_frame()
    write_utilities(run.path, frame.assign(coalition=frame.coalition.str.replace("L", hostile, regex=False)))
    page = report_html(run)
    outside_scripts = re.sub(r"<script.*?</script>", "", page, flags=re.DOTALL)
    assert hostile not in outside_scripts and "&lt;img src=x onerror=alert(1)&gt;" in outside_scripts


def commands_of(report: str) -> list[list[str]]:
    import html

    block = re.search(r"<pre><code>(.*?)</code></pre>", section_of(report, "commands"), re.S).group(1)
    return [shlex.split(line) for line in html.unescape(block).splitlines()]


def test_the_commands_parse_and_give_back_the_recorded_settings(demo, report):
    from valuation.lm.adapters import read_record
    from valuation.training.settings import recorded_settings

    commands = commands_of(report)
    assert commands[0][0] == "VALUATION_MODEL=embedded"
    names = [c[c.index("valuation") + 1] for c in commands]
    assert names == ["sources", "train", "rewards", "evaluate", "validate", "shapley", "report"]
    parsed = {name: build_parser().parse_args(c[c.index("valuation") + 1:]) for name, c in zip(names, commands)}
    train = job_config("train", parsed["train"].preset, **overrides_from(parsed["train"], JOBS["train"].config))
    recorded = recorded_settings(read_record(demo, "helpful-base"))  # with the settings it predates
    assert {k: v for k, v in settings_of(train).items() if k in recorded} == recorded
    evaluate = job_config("evaluate", parsed["evaluate"].preset,
                          **overrides_from(parsed["evaluate"], JOBS["evaluate"].config))
    recorded = json.loads((demo.path / "evaluation" / "settings.json").read_text())
    assert {k: v for k, v in vars(evaluate).items() if k in recorded} == recorded


def test_a_run_with_nothing_yet_still_reports(tmp_path):
    run = create_run("empty", root=tmp_path)
    page = report_html(run)
    assert "No sources are recorded" in page and "no coalition utilities yet" in page
    assert "plotly-graph-div" not in page


def test_the_command_writes_the_file(demo, tmp_path, capsys):
    assert main(["report", "--run", str(demo.path)]) == 0
    assert (demo.path / "report.html").read_text().startswith("<!DOCTYPE html>")
    out = tmp_path / "elsewhere.html"
    assert main(["report", "--run", str(demo.path), "--out", str(out)]) == 0
    assert out.exists() and str(out) in capsys.readouterr().out
    assert main(["report", "--run", str(tmp_path / "missing")]) == 2  # a clear error, no traceback
