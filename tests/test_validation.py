"""Validation experiments on the tiny random model: sequential DPO, KL identities, the accuracy
utility's tie rule, Monte Carlo scaling on a synthetic game, the command's lock, and the page."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from conftest import APP, random_adapter_run
from valuation import cli
from valuation.config import DataConfig, ModelConfig, RunConfig
from valuation.jobs import job_session
from valuation.runs import create_run
from valuation.shapley import UtilityTable, coalition_name
from valuation.training import PRESETS, TrainConfig
from valuation.validation import (BASE, ValidationConfig, accuracy_path, comparisons, compare_trained, latest_progress,
                                  method_shapley, monte_carlo_errors, preference_utilities, rank_correlations, read_inputs,
                                  run_accuracy, score_models, validation_dir)

SOURCES = ["harmless-base", "helpful-base"]
TINY = ValidationConfig(training_preset="tiny", max_pairs=4, epochs=[1.0], heldout_pairs=4, response_tokens=6)


@pytest.fixture(scope="module", autouse=True)
def tiny_training():
    """Training settings for the tiny model: one optimiser step per adapter, short sequences."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(PRESETS, "tiny", TrainConfig(batch_size=8, max_length=64, max_prompt_length=48, precompute_ref=False,
                                                   warmup_ratio=0.0, learning_rate=1e-2))
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run whose sequential and pooled comparisons are trained and scored once for the module."""
    root = tmp_path_factory.mktemp("runs")
    run = create_run("val", RunConfig(model=ModelConfig(name="tiny"), data=DataConfig(sources=SOURCES, eval_prompts=4)),
                     root=root)
    inputs = read_inputs(run, TINY)
    with job_session(run, "validate") as session:
        for kind in ("sequential", "pooled"):
            compare_trained(inputs, TINY, "quick", SOURCES, 1.0, kind, session)
    return run, inputs


def test_sequential_and_pooled_are_trained_scored_and_compared(trained) -> None:
    run, _ = trained
    folder = validation_dir(run, "quick")
    names = sorted(p.name for p in (folder / "adapters").iterdir())
    assert names == ["e1:harmless-base", "e1:harmless-base+helpful-base", "e1:harmless-base>helpful-base",
                     "e1:helpful-base", "e1:helpful-base>harmless-base"]
    table = comparisons(folder)
    assert set(table.model) == {"pooled:harmless-base+helpful-base", "sequential:harmless-base>helpful-base",
                                "sequential:helpful-base>harmless-base"}
    assert (table[["kl_reference_model", "kl_model_reference"]] >= 0).all().all()
    shapley = method_shapley(folder)
    assert set(shapley.method) == {"arithmetic", "sequential", "pooled"}


def test_kl_identities_on_the_same_models(trained) -> None:
    run, inputs = trained
    from valuation.adapters import load_adapters
    from valuation.models import load_model
    from valuation.runs import Run

    loaded = load_model(ModelConfig(name="tiny"))
    a, b = "e1:harmless-base", "e1:helpful-base"
    model = load_adapters(loaded, Run(validation_dir(run, "quick")), [a, b])
    variants = {"base": [(BASE, 1.0)], "arithmetic:a": [(a, 1.0)], "adapter:a": [(a, 1.0)],
                "arithmetic:a+b": [(BASE, -1.0), (a, 1.0), (b, 1.0)], "again:a+b": [(b, 1.0), (a, 1.0), (BASE, -1.0)]}
    pairs = [("arithmetic:a", "adapter:a"), ("arithmetic:a+b", "again:a+b"), ("base", "adapter:a")]
    scores, kls = score_models(model, loaded.tokenizer, inputs.heldout, variants, pairs)
    kl = kls.groupby(["reference", "model"]).kl.sum()
    assert kl["arithmetic:a", "adapter:a"] == pytest.approx(0, abs=1e-6)  # a singleton is its adapter
    assert kl["arithmetic:a+b", "again:a+b"] == pytest.approx(0, abs=1e-5)  # a coalition against itself
    assert kl["base", "adapter:a"] > 0


def test_accuracy_utility_ties_half_for_the_empty_coalition_and_matches_singletons(tmp_path) -> None:
    run = random_adapter_run(tmp_path, "acc", SOURCES, eval_prompts=4)
    inputs = read_inputs(run, TINY)
    with job_session(run, "validate") as session:
        run_accuracy(inputs, session)
    table = pd.read_csv(accuracy_path(run), dtype={"coalition": str, "prompt": str}).fillna({"coalition": ""})
    assert len(table) == 4 * len(inputs.evaluation)
    assert (table[table.coalition == ""].preference_accuracy == 0.5).all()  # the base against itself: a tie

    from valuation.adapters import load_adapters
    from valuation.models import load_model

    loaded = load_model(ModelConfig(name="tiny"))
    model = load_adapters(loaded, run)
    variants = {"base": [(BASE, 1.0)], "helpful-base": [("helpful-base", 1.0)]}
    scores, _ = score_models(model, loaded.tokenizer, inputs.evaluation, variants, [])
    wide = scores.pivot_table(index=["model", "prompt"], columns="response", values="log_likelihood").reset_index()
    direct = preference_utilities(wide, 0.1).set_index(["model", "prompt"])
    mine = table[table.coalition == "helpful-base"].set_index("prompt")
    for prompt, row in mine.iterrows():
        assert row.preference_accuracy == direct.loc[("helpful-base", prompt)].preference_accuracy
        assert row.reward_margin == pytest.approx(direct.loc[("helpful-base", prompt)].reward_margin, abs=1e-4)


def test_monte_carlo_error_falls_with_the_budget_on_an_8_player_game() -> None:
    players = [f"p{i}" for i in range(8)]
    rng = np.random.default_rng(0)
    weights, pair_bonus = rng.normal(size=8), rng.normal(size=(8, 8))
    rows = []
    for size in range(9):
        for members in itertools.combinations(range(8), size):
            value = weights[list(members)].sum() + sum(pair_bonus[i, j] for i, j in itertools.combinations(members, 2)) / 4
            rows.append({"coalition": coalition_name(players[i] for i in members), "u": np.tanh(value)})
    errors = monte_carlo_errors(UtilityTable.from_frame(pd.DataFrame(rows)), "u", [10, 100, 1000], repeats=5)
    mean = errors.groupby(["sampling", "permutations"]).rmse.mean()
    for sampling in ("antithetic", "plain"):
        assert mean[sampling, 10] > mean[sampling, 100] > mean[sampling, 1000]
    assert rank_correlations(np.array([1.0, 2, 3]), np.array([1.0, 2, 3])) == (1.0, 1.0)
    assert rank_correlations(np.array([3.0, 2, 1]), np.array([1.0, 2, 3])) == (-1.0, -1.0)


def test_latest_progress_reads_training_and_scoring_steps() -> None:
    events = [{"event": "experiment_start", "experiment": "sequential"}, {"event": "step", "source": "e1:a", "step": 2, "total": 4}]
    assert latest_progress(events) == ("sequential", "training e1:a", 2, 4)
    events.append({"event": "step", "stage": "scoring", "done": 3, "total": 8})
    assert latest_progress(events) == ("sequential", "scoring", 3, 8)
    assert latest_progress([]) == (None, None, 0, 0)


def test_the_command_refuses_a_busy_run(tmp_path, capsys) -> None:
    run = create_run("busy", RunConfig(model=ModelConfig(name="tiny"), data=DataConfig(sources=SOURCES)), root=tmp_path)
    with job_session(run, "train"):
        assert cli.main(["validate", "--run", str(run.path), "--experiments", "accuracy"]) == 2
    assert "busy" in capsys.readouterr().err


def _page(name: str) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=60)
    app.session_state["run_name"] = name
    app.switch_page("pages/validate.py")
    return app.run()


def test_page_empty_and_with_results(runs_dir, trained) -> None:
    import shutil

    create_run("empty", RunConfig(model=ModelConfig(name="tiny"), data=DataConfig(sources=SOURCES)))
    app = _page("empty")
    assert not app.exception
    assert any("No validation results" in i.value for i in app.info)

    run, _ = trained
    shutil.copytree(run.path, runs_dir / "full")
    app = _page("full")
    assert not app.exception
    assert len(app.dataframe) >= 2
