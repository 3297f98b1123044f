"""The Learn page, with no run (the example game) and on a run's own utilities: its numbers are the
game's, worked out by the formulas it teaches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from helpers import APP, additive_prompt_frame, labelled, run_table, write_utilities
from valuation.games.coalitions import all_coalitions, coalition_name, decode_rows
from valuation.games.axioms import number
from valuation.views.lesson import example_game, exact_values, simulate
from valuation.runs import create_run
from valuation.games.values import value_sources


def open_learn(runs: Path, monkeypatch: pytest.MonkeyPatch, run_name: str | None = None) -> AppTest:
    monkeypatch.setenv("VALUATION_RUNS_DIR", str(runs))
    monkeypatch.setattr("valuation.jobs.demo.DEMO_SOURCE", runs / "no-demo-shipped")  # no run at all
    at = AppTest.from_file(APP, default_timeout=30)
    if run_name:
        at.session_state["run_name"] = run_name
    at.run()
    at.switch_page("pages/learn.py")
    return at.run()


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def frame_with(at: AppTest, column: str) -> pd.DataFrame:
    """The one table on the page with this column."""
    (frame,) = [d.value for d in at.dataframe if column in d.value.columns]
    return frame


def shown_values(at: AppTest) -> pd.Series:
    """The exact Shapley values the page lists, by source."""
    return frame_with(at, "Shapley value").set_index("source")["Shapley value"]


def test_learn_page_works_the_example_game_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_learn(tmp_path, monkeypatch)
    assert not at.exception
    assert [t.value for t in at.title] == ["Learn"]
    assert "example game" in at.info[0].value and "no run is selected" in at.info[0].value
    table = example_game()
    players, exact = list(table.players), exact_values(table)
    v_empty, v_full = table.value(frozenset(), "helpfulness"), table.value(frozenset(players), "helpfulness")

    # 1. the game's size and ends; 6. what building its coalitions costs, as the sampler counts rows
    assert metrics(at) == {
        "Sources n": "4", "Coalitions 2ⁿ": "16", "v(∅), base model": number(v_empty), "v(N), all sources": number(v_full),
        "Adapters to train": "4", "Models without arithmetic": "15",
        "Forward passes per token": str(sum(decode_rows(c) for c in all_coalitions(players))),
        "Passes to score a fixed reply": "5"}
    assert metrics(at)["Forward passes per token"] == "44"  # 1 + 4 singletons + 6 x 3 + 4 x 4 + 5

    # 2. one order: its marginal contributions add up to v(N) - v(empty); over all orders they average to Shapley
    steps = frame_with(at, "step")
    assert steps.source.tolist() == players and steps.marginal.sum() == pytest.approx(v_full - v_empty)
    orders = frame_with(at, "order")
    assert len(orders) == 24 + 1 and orders.order.iloc[-1] == "average over all orders"
    np.testing.assert_allclose(orders[players].iloc[-1], exact[:, 0], atol=1e-12)

    # 3. the formula with the game's numbers: its terms sum to the value listed beside the others
    np.testing.assert_allclose(shown_values(at)[players], exact[:, 0], atol=1e-12)
    forum = exact[players.index("forum"), 0]
    assert frame_with(at, "product")["product"].sum() == pytest.approx(forum)
    assert any(rf"&= {number(forum)}\end{{aligned}}" in latex.value for latex in at.latex)

    # 4. every axiom holds on the exact values; 5. the Monte Carlo caption counts what the sampling evaluated
    assert len(at.success) == 4
    simulation = simulate(table, "helpfulness", permutations=200, seed=0)
    assert any(f"evaluated {simulation.n_evaluations} distinct coalitions of 16" in c.value for c in at.caption)

    labelled(at.radio, "Objective").set_value("harmlessness").run()
    assert not at.exception
    np.testing.assert_allclose(shown_values(at)[players], exact[:, 1], atol=1e-12)
    assert any("small-talk always adds 0.02 and gets 0.02" in s.value for s in at.success)
    assert any("symmetry asks nothing" in i.value for i in at.info)

    order = at.multiselect(key="learn_order")
    order.set_value(["small-talk", "refusals"]).run()
    assert not at.exception
    assert frame_with(at, "step").source.tolist() == ["small-talk", "refusals", "forum", "manuals"]
    next(b for b in at.button if b.label == "Shuffle").click().run()
    assert not at.exception and sorted(at.session_state["learn_order"]) == sorted(order.options)

    labelled(at.selectbox, "Source").set_value("refusals").run()
    refusals = exact[players.index("refusals"), 1]
    assert any(rf"&= {number(refusals)}\end{{aligned}}" in latex.value for latex in at.latex)
    labelled(at.slider, "Permutations").set_value(40).run()
    labelled(at.toggle, "Antithetic").set_value(False).run()
    assert not at.exception


def test_learn_page_plays_the_runs_game(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = create_run("demo", root=tmp_path)
    write_utilities(run.path, additive_prompt_frame(n_prompts=5))
    at = open_learn(tmp_path, monkeypatch, "demo")
    assert not at.exception
    assert "run 'demo'" in at.success[0].value
    assert at.multiselect(key="learn_order").options == ["noise", "strong", "weak"]
    assert any(r"\phi_{\text{noise}}" in latex.value for latex in at.latex)
    # the values the Shapley page computes exactly, on the mean utility over prompts
    expected = value_sources(run_table(run)).shapley
    np.testing.assert_allclose(shown_values(at)[list(expected.players)], expected.values[:, 0], atol=1e-12)
    # What the run finds, in words (utilities without adapters: no training noise to check)
    said = " ".join(m.value for m in at.markdown)
    assert "8. What this run finds" in [h.value for h in at.header]
    assert "- strong adds to helpfulness (direct sampling of every coalition): +" in said and "- noise" not in said


def test_learn_page_on_a_run_without_utilities_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    create_run("empty", root=tmp_path)
    at = open_learn(tmp_path, monkeypatch, "empty")
    assert not at.exception
    assert "example game" in at.info[0].value and "no coalition utilities yet" in at.info[0].value


def test_learn_page_on_six_sources_hides_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = create_run("six", root=tmp_path)
    players = tuple("abcdef")
    write_utilities(run.path, pd.DataFrame([{"coalition": coalition_name(s), "quality": len(s) ** 0.5 + 0.1 * ("a" in s)}
                                            for s in all_coalitions(players)]))
    at = open_learn(tmp_path, monkeypatch, "six")
    assert not at.exception
    assert not [r for r in at.radio if r.label == "Objective"]  # one objective: no selector
    assert any("the text is hidden beyond 5 sources" in c.value for c in at.caption)
    assert any(r"\tfrac{1}{6}\bigl(" in latex.value for latex in at.latex)  # the formula grouped by size
    assert not any(e.label.startswith("All ") for e in at.expander)  # 720 orders are not listed
    assert metrics(at)["Forward passes per token"] == str(6 * 2 ** 5 + 2 ** 6 - 6)
    np.testing.assert_allclose(shown_values(at)[list(players)], exact_values(run_table(run))[:, 0], atol=1e-12)
