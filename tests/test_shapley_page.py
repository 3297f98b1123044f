"""The Shapley page renders a run's utilities (and says what to do when there are none)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from valuation.values import utilities_path
from valuation.runs import create_run

from test_report import additive_prompt_frame, glove_frame

APP = str(Path(__file__).parents[1] / "app.py")


def open_page(runs: Path, monkeypatch: pytest.MonkeyPatch, frame: pd.DataFrame | None) -> AppTest:
    monkeypatch.setenv("VALUATION_RUNS_DIR", str(runs))
    run = create_run("demo", root=runs)
    if frame is not None:
        utilities_path(run).parent.mkdir(parents=True)
        frame.to_csv(utilities_path(run), index=False)
    (run.path / "rewards" / "harmlessness").mkdir(parents=True)
    (run.path / "rewards" / "harmlessness" / "reward.json").write_text(
        json.dumps({"heldout_accuracy": 0.52, "interval": [0.44, 0.60], "heldout_pairs": 150}))
    at = AppTest.from_file(APP, default_timeout=30)
    at.session_state["run_name"] = "demo"
    at.run()
    at.switch_page("pages/shapley.py")
    return at.run()


def labelled(widgets, label: str):
    """The one widget whose label starts with `label`."""
    (widget,) = [w for w in widgets if w.label.startswith(label)]
    return widget


def plotly_charts(at: AppTest) -> list:
    return at.get("plotly_chart")


def test_page_shows_values_intervals_and_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(tmp_path, monkeypatch, additive_prompt_frame())
    assert not at.exception
    assert [t.value for t in at.title] == ["Shapley"]
    # bars, scatter, waterfall, interactions (exact: no convergence plot)
    assert len(plotly_charts(at)) == 4
    warnings = " ".join(w.value for w in at.warning)
    assert "Not distinguishable from no effect" in warnings and "noise on helpfulness" in warnings
    assert "harmlessness reward model is near chance" in warnings
    assert any("Efficiency check" in c.value for c in at.caption)
    assert "combined" in labelled(at.selectbox, "Objective").options
    assert len(at.get("download_button")) == 2

    labelled(at.slider, "Weight w").set_value(1.0).run()  # all weight on helpfulness
    assert not at.exception

    labelled(at.radio, "Method").set_value("Monte Carlo").run()
    assert not at.exception
    assert len(plotly_charts(at)) == 5  # plus the convergence plot
    assert any("Monte Carlo convergence" in h.value for h in at.subheader)


def test_page_without_intervals_or_second_objective(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(tmp_path, monkeypatch, glove_frame().drop(columns="harmlessness"))
    assert not at.exception
    assert any("Only one objective" in c.value for c in at.caption)
    assert any("No intervals" in c.value for c in at.caption)


def test_page_empty_state_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(tmp_path, monkeypatch, None)
    assert not at.exception
    assert "Train adapters on the Training page, then evaluate coalitions on the Evaluate page" in at.info[0].value
    assert not plotly_charts(at)


def test_page_shows_bad_table_as_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frame = glove_frame()
    at = open_page(tmp_path, monkeypatch, frame[frame.coalition != "L+R1"])
    assert not at.exception
    assert "lacks 1 of the 8 coalitions" in at.error[0].value
