"""The Learn page, with no run (the example game) and on a run's own utilities."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from valuation.values import utilities_path
from valuation.runs import create_run
from valuation.shapley import coalition_name
from valuation.lesson import coalitions_by_size

from test_report import additive_prompt_frame

APP = str(Path(__file__).parents[1] / "app.py")


def open_learn(runs: Path, monkeypatch: pytest.MonkeyPatch, run_name: str | None = None) -> AppTest:
    monkeypatch.setenv("VALUATION_RUNS_DIR", str(runs))
    monkeypatch.setattr("valuation.demo.DEMO_SOURCE", runs / "no-demo-shipped")  # no run at all
    at = AppTest.from_file(APP, default_timeout=30)
    if run_name:
        at.session_state["run_name"] = run_name
    at.run()
    at.switch_page("pages/learn.py")
    return at.run()


def test_learn_page_without_a_run_teaches_the_example_game(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_learn(tmp_path, monkeypatch)
    assert not at.exception
    assert [t.value for t in at.title] == ["Learn"]
    assert "example game" in at.info[0].value and "no run is selected" in at.info[0].value
    # lattice, walkthrough, Monte Carlo, costs
    assert len(at.get("plotly_chart")) == 4
    assert len(at.success) == 4  # every axiom holds on the example game's helpfulness
    assert any(r"\phi_{\text{forum}}" in latex.value for latex in at.latex)

    at.radio[0].set_value("harmlessness").run()
    assert not at.exception
    assert any("small-talk always adds 0.02 and gets 0.02" in s.value for s in at.success)
    assert any("symmetry asks nothing" in i.value for i in at.info)

    order = at.multiselect(key="learn_order")
    order.set_value(["small-talk", "refusals"]).run()
    assert not at.exception
    next(b for b in at.button if b.label == "Shuffle").click().run()
    assert not at.exception and sorted(at.session_state["learn_order"]) == sorted(at.multiselect[0].options)

    at.selectbox[0].set_value("refusals").run()
    at.slider[0].set_value(40).run()
    at.toggle[0].set_value(False).run()
    assert not at.exception


def test_learn_page_plays_the_runs_game(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = create_run("demo", root=tmp_path)
    utilities_path(run).parent.mkdir(parents=True)
    additive_prompt_frame(n_prompts=5).to_csv(utilities_path(run), index=False)
    at = open_learn(tmp_path, monkeypatch, "demo")
    assert not at.exception
    assert "run 'demo'" in at.success[0].value
    assert at.multiselect(key="learn_order").options == ["noise", "strong", "weak"]
    assert any(r"\phi_{\text{noise}}" in latex.value for latex in at.latex)


def test_learn_page_on_a_run_without_utilities_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    create_run("empty", root=tmp_path)
    at = open_learn(tmp_path, monkeypatch, "empty")
    assert not at.exception
    assert "example game" in at.info[0].value and "no coalition utilities yet" in at.info[0].value


def test_learn_page_on_six_sources_hides_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = create_run("six", root=tmp_path)
    utilities_path(run).parent.mkdir(parents=True)
    players = tuple("abcdef")
    pd.DataFrame([{"coalition": coalition_name(s), "quality": len(s) ** 0.5 + 0.1 * ("a" in s)}
                  for s in coalitions_by_size(players)]).to_csv(utilities_path(run), index=False)
    at = open_learn(tmp_path, monkeypatch, "six")
    assert not at.exception
    assert not at.radio  # one objective: no selector
    assert any("the text is hidden beyond 5 sources" in c.value for c in at.caption)
    assert any(r"\tfrac{1}{6}\bigl(" in latex.value for latex in at.latex)  # the formula grouped by size
    assert not any(e.label.startswith("All ") for e in at.expander)  # 720 orders are not listed
