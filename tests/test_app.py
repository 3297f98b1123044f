"""The app and the Sources page, driven by Streamlit's AppTest (no browser)."""

from __future__ import annotations

import pandas as pd
from streamlit.testing.v1 import AppTest

from helpers import APP, table_rows, write_jsonl
from valuation.jobs.demo import DEMO_SOURCE
from valuation.runs import Run, create_run, list_runs


def _app(run_name: str | None = None) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=60)
    if run_name:
        app.session_state["run_name"] = run_name
    return app.run()


def test_app_without_runs_says_what_to_do(runs_dir, monkeypatch, tmp_path):
    monkeypatch.setattr("valuation.jobs.demo.DEMO_SOURCE", tmp_path / "no-demo-shipped")
    app = _app()
    assert not app.exception
    assert any("Pick or create a run" in i.value for i in app.info)


def test_a_fresh_runs_folder_opens_on_the_shipped_demo(runs_dir):
    app = _app()
    assert not app.exception
    if (DEMO_SOURCE / "config.yaml").exists():
        assert [r.name for r in list_runs()] == ["demo"]
        assert app.session_state["run_name"] == "demo"


def test_sources_page_shows_the_offline_default_and_saves_the_choice(runs_dir):
    create_run("demo")
    app = _app("demo")
    assert not app.exception
    assert app.multiselect[0].options == ["harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled"]
    app.multiselect[0].set_value(["harmless-base", "helpful-base"]).run()
    next(b for b in app.button if b.label.startswith("Save")).click().run()
    assert not app.exception and app.success
    assert Run.named("demo").load_config().data.sources == ["harmless-base", "helpful-base"]
    assert len(app.dataframe) == 1 and len(app.get("plotly_chart")) == 1  # the sources; the cap's counts on request
    assert [t.label for t in app.toggle] == ["Count what the cap keeps of each source"] and not app.toggle[0].value


def test_sources_page_reports_a_bad_file_without_a_traceback(runs_dir, tmp_path):
    create_run("bad")
    app = _app("bad")
    app.radio[0].set_value("A local file or folder").run()
    app.text_input[0].set_value(str(tmp_path / "nope.csv")).run()
    assert not app.exception
    assert any("file not found" in e.value for e in app.error)


def test_sources_page_reads_a_local_table(runs_dir, tmp_path):
    path = tmp_path / "pairs.csv"
    pd.DataFrame(table_rows("crawl", 5) + table_rows("vendor", 4)).to_csv(path, index=False)
    create_run("local")
    app = _app("local")
    app.radio[0].set_value("A local file or folder").run()
    app.text_input[0].set_value(str(path)).run()
    assert not app.exception
    assert app.multiselect[0].options == ["crawl", "vendor"]


def test_sources_page_counts_what_the_prompt_length_cap_keeps(runs_dir, tmp_path):
    from valuation.config import ModelConfig, RunConfig

    turn = lambda role, text: {"role": role, "content": text}
    chat = [turn("user", "tell me " * 30), turn("assistant", "well " * 30)]  # over 80 tokens: only the end fits
    rows = ([{"prompt": f"short {i}?", "chosen": "a", "rejected": "b", "source": "short"} for i in range(40)]
            + [{"prompt": [turn("user", f"opening {i}"), *chat, turn("user", "so?")], "chosen": "a", "rejected": "b",
                "source": "chat"} for i in range(40)]
            + [{"prompt": f"{i} " + "essay " * 150, "chosen": "a", "rejected": "b", "source": "essay"} for i in range(40)])
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    create_run("capped", RunConfig(model=ModelConfig(name="tiny")))
    app = _app("capped")
    app.radio[0].set_value("A local file or folder").run()
    app.text_input[0].set_value(str(path)).run()
    app.toggle[0].set_value(True).run()
    assert not app.exception
    fit = app.dataframe[1].value.set_index("source")
    assert list(fit.columns) == ["whole", "truncated", "dropped", "kept share"]
    train = fit.whole + fit.truncated + fit.dropped
    assert (train > 0).all() and (fit.dropped == 0).all()  # chat, essay, short: no pair lost to a long prompt
    assert fit.truncated.chat == train.chat and fit.truncated.essay == train.essay and fit.whole.short == train.short
    assert fit["kept share"].tolist() == [1.0, 1.0, 1.0]
    assert not app.warning  # nothing dropped, nothing to warn about
