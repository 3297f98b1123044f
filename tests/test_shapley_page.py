"""The Shapley page shows the library's values for known games, with their intervals and checks, and
says what to do when there is nothing to show."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from helpers import (APP, GLOVE_SHAPLEY, GLOVES, additive_prompt_frame, frame_convergence, glove_frame, labelled, run_table,
                     write_sampled_evaluation, write_utilities)
from valuation.jobs.background import job_session, job_status
from valuation.runs import Run, create_run
from valuation.games.utility_table import with_combined
from valuation.games.values import ValuationConfig, value_sources

SAMPLED = [f"source-{i:02d}" for i in range(13)]  # one more than exact evaluation takes


def demo_run(runs: Path) -> Run:
    """A run whose harmlessness reward model is near chance: 52% [44%, 60%] on held-out pairs."""
    run = create_run("demo", root=runs)
    (run.path / "rewards" / "harmlessness").mkdir(parents=True)
    (run.path / "rewards" / "harmlessness" / "reward.json").write_text(
        json.dumps({"heldout_accuracy": 0.52, "interval": [0.44, 0.60], "heldout_pairs": 150}))
    return run


def open_page(runs: Path, monkeypatch: pytest.MonkeyPatch, frame: pd.DataFrame | None = None) -> AppTest:
    """The page on run 'demo', with `frame` as its coalition utilities (made by `demo_run` if missing)."""
    monkeypatch.setenv("VALUATION_RUNS_DIR", str(runs))
    run = Run(runs / "demo") if (runs / "demo").exists() else demo_run(runs)
    if frame is not None:
        write_utilities(run.path, frame)
    at = AppTest.from_file(APP, default_timeout=30)
    at.session_state["run_name"] = "demo"
    at.run()
    at.switch_page("pages/shapley.py")
    return at.run()


def numbers(values) -> np.ndarray:
    """An array of a chart's JSON: a list, or plotly's typed array {dtype, bdata (base64), shape}."""
    if not isinstance(values, dict):
        return np.asarray(values, dtype=float)
    array = np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"])
    return array.reshape([int(k) for k in values["shape"].split(",")]) if "shape" in values else array


def traces(at: AppTest, kind: str) -> list[dict]:
    """The traces of type `kind` (bar, waterfall, heatmap, scatter) of every chart on the page."""
    charts = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    return [trace for chart in charts for trace in chart["data"] if trace.get("type", "scatter") == kind]


def bars(at: AppTest) -> dict[str, dict]:
    """The value bars, one trace per objective."""
    return {trace["name"]: trace for trace in traces(at, "bar")}


def test_page_shows_the_librarys_values_with_intervals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(tmp_path, monkeypatch, additive_prompt_frame())
    assert not at.exception
    assert [t.value for t in at.title] == ["Shapley"]
    # the page combines helpfulness and harmlessness half and half, and bootstraps over prompts
    table = with_combined(run_table(tmp_path / "demo"), 0.5, "helpfulness", "harmlessness")
    expected = value_sources(table).shapley
    # harmlessness's reward model is at chance: it and the mix that includes it are said in words, not drawn
    assert expected.lower is not None and list(bars(at)) == ["helpfulness"]
    said = " ".join(i.value for i in at.info)
    assert "harmlessness: not shown" in said and "combined: not shown" in said
    for k, objective in enumerate(table.objectives[:1]):
        trace = bars(at)[objective]
        assert trace["x"] == list(expected.players)
        np.testing.assert_allclose(numbers(trace["y"]), expected.values[:, k])
        np.testing.assert_allclose(numbers(trace["error_y"]["array"]), expected.upper[:, k] - expected.values[:, k])
        np.testing.assert_allclose(numbers(trace["error_y"]["arrayminus"]), expected.values[:, k] - expected.lower[:, k])

    # the values no interval tells from zero are named in words: 'noise' (its weights average zero), no other;
    # of the objectives shown only (harmlessness and the mix are said in words instead)
    (unclear,) = [w.value for w in at.warning if w.value.startswith("Not distinguishable")]
    assert "noise on helpfulness" in unclear and "harmlessness" not in unclear and "combined" not in unclear
    assert "strong on helpfulness" not in unclear and "weak on helpfulness" not in unclear
    # a reward model near chance is said so, with its held-out accuracy
    assert labelled(at.metric, "harmlessness reward model").value == "52.0%"
    assert "interval [44.0%, 60.0%] on 150 held-out pairs" in [c.value for c in at.caption]
    assert any(w.value.startswith("The harmlessness reward model is near chance (its interval includes 50%: held-out "
                                  "accuracy 52.0% [44.0%, 60.0%])") for w in at.warning)

    # from v(empty), one step per value, to v(N); the efficiency check says the same in numbers
    (waterfall,) = traces(at, "waterfall")
    v_empty, v_full = table.value(frozenset(), "helpfulness"), table.value(frozenset(expected.players), "helpfulness")
    np.testing.assert_allclose(numbers(waterfall["y"]), [v_empty, *expected.values[:, 0], 0])
    assert (f"Efficiency check: the values sum to {expected.values[:, 0].sum():.4f}; v(N) − v(∅) = {v_full:.4f} − "
            f"{v_empty:.4f}") in " ".join(c.value for c in at.caption)
    (interactions,) = traces(at, "heatmap")
    np.testing.assert_allclose(numbers(interactions["z"]), 0, atol=1e-12)  # an additive game has no synergy
    assert len(at.get("download_button")) == 3  # values as CSV and JSON, the HTML report


    labelled(at.radio, "Method").set_value("Monte Carlo").run()
    assert not at.exception
    # each order's marginals in an additive game are the values: the estimate is exact
    np.testing.assert_allclose(numbers(bars(at)["helpfulness"]["y"]), expected.values[:, 0], atol=1e-12)
    assert any("Monte Carlo convergence" in h.value for h in at.subheader)
    assert "1000 permutations, 8 distinct coalitions; bands are ± one standard error." in [c.value for c in at.caption]


def test_page_shows_the_glove_game(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(tmp_path, monkeypatch, glove_frame().drop(columns="harmlessness"))
    assert not at.exception
    (trace,) = bars(at).values()
    assert trace["x"] == list(GLOVES)
    np.testing.assert_allclose(numbers(trace["y"]), list(GLOVE_SHAPLEY.values()))
    assert any("No intervals" in c.value for c in at.caption)
    assert any("Only one objective" in c.value for c in at.caption)
    # Banzhaf: L is pivotal in 3 of the 4 coalitions of the others, each right glove in 1
    (methods,) = [d.value for d in at.dataframe if "banzhaf" in d.value.columns]
    np.testing.assert_allclose(methods.banzhaf, [3 / 4, 1 / 4, 1 / 4])
    np.testing.assert_allclose(methods.shapley, list(GLOVE_SHAPLEY.values()))
    # the right gloves substitute for each other; the left glove completes either
    (interactions,) = traces(at, "heatmap")
    np.testing.assert_allclose(numbers(interactions["z"]), [[0, 1 / 2, 1 / 2], [1 / 2, 0, -1 / 2], [1 / 2, -1 / 2, 0]])
    assert any(c.value.startswith("Efficiency check: the values sum to 1.0000; v(N) − v(∅) = 1.0000 − 0.0000")
               for c in at.caption)


def test_page_values_a_sampled_evaluation_with_its_permutations_and_seed(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    worth = write_sampled_evaluation(demo_run(tmp_path).path, SAMPLED, permutations=10, seed=7)
    at = open_page(tmp_path, monkeypatch)
    assert not at.exception and not at.error
    assert labelled(at.radio, "Method").value == "Monte Carlo"
    budget = labelled(at.number_input, "Permutations")
    assert budget.value == 10 and budget.proto.disabled  # fixed: other permutations ask for unevaluated coalitions
    (trace,) = bars(at).values()
    np.testing.assert_allclose(numbers(trace["y"]), [worth[s] for s in trace["x"]])
    evaluated = len(run_table(tmp_path / "demo").values)
    assert f"10 permutations, {evaluated} distinct coalitions; bands are ± one standard error." in [
        c.value for c in at.caption]


def test_page_empty_state_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(tmp_path, monkeypatch)
    assert not at.exception
    assert "Train adapters on the Training page, then evaluate coalitions on the Evaluate page" in at.info[0].value
    assert not at.get("plotly_chart")


def test_page_shows_bad_table_as_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frame = glove_frame()
    at = open_page(tmp_path, monkeypatch, frame[frame.coalition != "L+R1"])
    assert not at.exception
    assert "lacks 1 of the 8 coalitions" in at.error[0].value


def test_a_pooled_evaluation_shows_its_target_its_ess_and_its_fallback(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    frame = additive_prompt_frame(n_prompts=4)
    at = open_page(tmp_path, monkeypatch, frame)
    folder = tmp_path / "demo" / "evaluation"
    objectives = [c for c in frame.columns if c not in ("coalition", "prompt")]
    frame.assign(**{c: frame[c] * 2 for c in objectives}).to_csv(folder / "utilities-sequence.csv", index=False)
    last = frame.coalition.unique()[-1]
    rows = [{"coalition": c, "target": t, "estimator": "direct" if (t, c) == ("token", last) else "pooled",
             "ess_mean": 3.0, "ess_min": 1.5, "below_floor": (t, c) == ("sequence", last)}
            for t in ("token", "sequence") for c in frame.coalition.unique()]
    pd.DataFrame(rows).to_csv(folder / "estimation.csv", index=False)
    at.run()
    assert not at.exception
    assert at.radio[0].options == ["pooled, token-level target", "pooled, sequence-level target"]
    assert "1 coalition(s) were sampled directly" in " ".join(w.value for w in at.warning)
    token = bars(at)
    at.radio[0].set_value("sequence").run()
    assert not at.exception and "utilities-sequence.csv" in " ".join(c.value for c in at.caption)
    assert "cannot be sampled directly" in " ".join(w.value for w in at.warning)
    sequence = bars(at)  # the sequence table doubles every utility, so every value doubles
    for objective in ["helpfulness"]:  # harmlessness's reward model is at chance: not drawn
        assert np.allclose(numbers(sequence[objective]["y"]), 2 * numbers(token[objective]["y"]))


def evaluated_order(frame: pd.DataFrame, prompts: list[str]) -> pd.DataFrame:
    """The rows of `prompts`, prompt by prompt in that order: how an evaluation writes its chunks."""
    return pd.concat([frame[frame.prompt == p] for p in prompts], ignore_index=True)


def prompt_traces(at: AppTest, objective: str) -> dict[str, dict]:
    """The lines of the chart of values against prompts finished, by source."""
    charts = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    def title(chart: dict, axis: str) -> str | None:
        return chart["layout"].get(axis, {}).get("title", {}).get("text")

    (figure,) = [c for c in charts if (title(c, "xaxis"), title(c, "yaxis")) == ("prompts finished",
                                                                                 f"{objective} Shapley value")]
    return {t["name"]: t for t in figure["data"] if "name" in t}


def test_while_an_evaluation_runs_the_values_so_far_converge_live(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    run = demo_run(tmp_path)
    frame = evaluated_order(additive_prompt_frame(n_prompts=8), ["p7", "p0", "p3", "p1", "p6", "p2"])  # 6 of 8 done
    write_utilities(run.path, additive_prompt_frame(n_prompts=30, seed=1))  # the last evaluation's table
    (run.path / "evaluation" / "settings.json").write_text(json.dumps({"prompts": 8, "chunk_prompts": 2}))
    with job_session(run, "evaluate") as reporter:  # this process plays the evaluation
        reporter.step("sampling chunk 4", 5, 24)
        at = open_page(tmp_path, monkeypatch)
        assert not at.exception
        assert any("Values so far" in h.value for h in at.subheader)
        assert any("Waiting for the first chunk" in i.value for i in at.info)  # not the last evaluation's values
        assert not at.get("plotly_chart")

        write_utilities(run.path, frame)  # chunks 1-3 rewrote it
        at.run()  # a poll
        assert not at.exception
        assert [p.value for p in at.get("progress")] == [20]  # sampling chunk 4: 5/24
        assert "From the 6 of 8 prompts finished so far" in " ".join(c.value for c in at.caption)
        expected = value_sources(run_table(run.path)).shapley
        assert list(bars(at)) == ["helpfulness"]  # harmlessness's reward model is at chance
        np.testing.assert_allclose(numbers(bars(at)["helpfulness"]["y"]), expected.values[:, 0])
        # the intervals as prompts were added, at the chunk boundaries, in the order the prompts were evaluated
        trace = frame_convergence(frame, ValuationConfig(), chunk=2).query("objective == 'helpfulness'")
        lines = prompt_traces(at, "helpfulness")
        assert set(lines) == set(expected.players)
        for player, line in lines.items():
            rows = trace[trace.player == player]
            np.testing.assert_allclose(numbers(line["x"]), [2, 4, 6])
            np.testing.assert_allclose(numbers(line["y"]), rows.value)
        assert not traces(at, "waterfall")  # the rest of the page waits for the end
        assert any("appears when the evaluation ends" in c.value for c in at.caption)
    assert job_status(run).state == "done"
    at.run()  # the next poll sees it ended: the whole page, with the static convergence chart
    assert not at.exception
    assert not any("Values so far" in h.value for h in at.subheader)
    assert any("Values as prompts were added" in h.value for h in at.subheader) and traces(at, "waterfall")
    final = value_sources(run_table(run.path)).shapley  # the finished table: the last point is its value
    for i, line in enumerate(prompt_traces(at, "helpfulness").values()):
        assert numbers(line["x"])[-1] == 6 and np.isclose(numbers(line["y"])[-1], final.values[i, 0])


def test_a_partial_table_that_lacks_coalitions_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = demo_run(tmp_path)
    frame = additive_prompt_frame(n_prompts=4)
    with job_session(run, "evaluate") as reporter:
        reporter.log("direct evaluation")
        write_utilities(run.path, frame[frame.coalition != frame.coalition.iloc[-1]])  # the grand coalition not yet
        at = open_page(tmp_path, monkeypatch)
        assert not at.exception
        (said,) = [i.value for i in at.info if i.value.startswith("Values are not available yet")]
        assert "lacks 1 of the 8 coalitions" in said
        assert not at.get("plotly_chart")


def test_values_over_two_training_seeds_say_so_beside_the_verdicts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(tmp_path, monkeypatch, additive_prompt_frame())
    assert any("one training seed" in c.value for c in at.caption)  # one seed: training noise is not in the intervals
    run = Run(tmp_path / "demo")
    additive_prompt_frame(seed=1).to_csv(run.path / "evaluation" / "utilities.seed2.csv", index=False)
    (run.path / "adapters").mkdir()
    pd.DataFrame([{"source": "strong", "pairs": 64, "accuracy": 0.6, "accuracy_lower": 0.5, "accuracy_upper": 0.7,
                   "margin": 0.2, "margin_lower": 0.1, "margin_upper": 0.3, "verdict": "learned"},
                  {"source": "noise", "pairs": 64, "accuracy": 0.5, "accuracy_lower": 0.4, "accuracy_upper": 0.6,
                   "margin": 0.0, "margin_lower": -0.1, "margin_upper": 0.1, "verdict": "indistinguishable from the base"}]
                 ).to_csv(run.path / "adapters" / "heldout.csv", index=False)
    at.run()
    assert not at.exception
    assert any("average over 2 training seeds" in c.value and "spread between them" in c.value for c in at.caption)
    (verdicts,) = [d.value for d in at.dataframe if "verdict" in d.value.columns]
    assert list(verdicts.verdict) == ["learned", "indistinguishable from the base"]
    assert any(w.value.startswith("Adapters that did not learn") and "noise (indistinguishable from the base unless said)"
               in w.value for w in at.warning)
    expected = value_sources(with_combined(run_table(run), 0.5, "helpfulness", "harmlessness")).shapley
    np.testing.assert_allclose(numbers(bars(at)["helpfulness"]["y"]), expected.values[:, 0])  # the seeds' mean
