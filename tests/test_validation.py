"""Validation experiments on the tiny random model. The trained-model comparisons run on random
adapters placed where training would put them (copies of a run's adapters, their updates scaled), so
their results are known: models that coincide compare at zero, a different pooled model shows
exactly the KL and margin gaps computed directly. One test trains for real: a sequential stage on
the merged earlier stage. Then the accuracy utility, Monte Carlo scaling on a synthetic game, rank
correlations, the settings, the command and the page (on the shipped demo's results)."""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from streamlit.testing.v1 import AppTest

from helpers import APP, random_adapter_run
from valuation import cli
from valuation.lm.adapters import RECORD_FILE, WEIGHTS_FILE, adapter_dir, load_adapters
from valuation.jobs.background import job_session
from valuation.games.coalitions import BASE, coalition_name, formula_terms
from valuation.config import ConfigError, DataConfig, ModelConfig, RunConfig
from valuation.evaluation.job import evaluate_preferences
from valuation.evaluation.store import EvaluationStore
from valuation.runtime.context import RunContext
from valuation.jobs.demo import DEMO_SOURCE
from valuation.jobs.flags import overrides_from
from valuation.jobs.registry import command, job_config
from valuation.lm.models import load_model
from valuation.progress import Reporter
from valuation.runs import create_run
from valuation.lm.scoring import score_variants
from valuation.training.settings import PRESETS as TRAINING_PRESETS, TrainConfig
from valuation.games.utility_table import UtilityTable
from valuation.validation.job import current_experiment, run_validate
from valuation.validation.results import comparisons, method_shapley, summary
from valuation.validation.settings import PRESETS, ValidationConfig, ValidationError, accuracy_path, results_dir
from valuation.rewards.heldout import preference_utilities, responses_of
from valuation.validation.inputs import Inputs, read_inputs, train_adapter
from valuation.validation.scaling import monte_carlo_errors, rank_correlations
from valuation.validation.trained import compare_trained

SOURCES = ["harmless-base", "helpful-base"]
H, K = SOURCES
TINY = job_config("validate", training_preset="tiny", max_pairs=4, epochs=[1.0], heldout_pairs=4, response_tokens=6)


@pytest.fixture(scope="module", autouse=True)
def tiny_training():
    """Training settings for the tiny model: one optimiser step per adapter, short sequences."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(TRAINING_PRESETS, "tiny", TrainConfig(batch_size=8, max_length=64, max_prompt_length=48, train_layers=1,
                                                            precompute_ref=False, warmup_ratio=0.0, learning_rate=1e-2))
        yield


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return random_adapter_run(tmp_path_factory.mktemp("runs"), "val", SOURCES, eval_prompts=4)


@pytest.fixture(scope="module")
def inputs(run) -> Inputs:
    return read_inputs(RunContext.open(run), TINY)


@pytest.fixture
def reporter(tmp_path) -> Reporter:
    return Reporter(tmp_path / "progress.jsonl")


def placed(inputs: Inputs, folder: str, layout: dict[str, tuple[str, float]]) -> Inputs:
    """The inputs with results in their own folder, holding validation adapters that need no training:
    name -> (source, scale), a copy of the run's random adapter of that source with its update scaled
    (scale 0: no update, the base model itself)."""
    mine = replace(inputs, config=replace(inputs.config, folder=folder))
    for name, (source, scale) in layout.items():
        target = adapter_dir(mine.adapters, name)
        shutil.copytree(adapter_dir(inputs.context.run, source), target)
        weights = target / WEIGHTS_FILE
        save_file({key: value * scale if "lora_B" in key else value for key, value in load_file(weights).items()}, weights)
    return mine


# Sequential and pooled models that all equal source H: K's adapter is the base, so arithmetic(H, K) =
# log pi_H + log pi_0 - log pi_0 = pi_H; both sequential orders sum H's update and a zero one; pooled is H.
COINCIDING = {f"e1:{H}": (H, 1.0), f"e1:{K}": (K, 0.0), f"e1:{H}>{K}": (K, 0.0), f"e1:{K}>{H}": (H, 1.0),
              f"e1:{H}+{K}": (H, 1.0)}


def test_models_that_coincide_compare_at_zero(inputs, reporter) -> None:
    mine = placed(inputs, "coinciding", COINCIDING)
    for kind in ("sequential", "pooled"):
        compare_trained(mine, SOURCES, 1.0, kind, reporter)
    table = comparisons(mine.folder).set_index(["reference", "model"])
    coalition = f"{H}+{K}"
    assert sorted(table.index) == [(f"arithmetic:{coalition}", f"pooled:{coalition}"),
                                   (f"arithmetic:{coalition}", f"sequential:{H}>{K}"),
                                   (f"arithmetic:{coalition}", f"sequential:{K}>{H}"),
                                   (f"sequential:{H}>{K}", f"sequential:{K}>{H}")]  # the order gap
    assert (table.coalition == coalition).all()
    np.testing.assert_allclose(table[["kl_reference_model", "kl_model_reference"]], 0, atol=1e-6)
    assert (table.accuracy_gap == 0).all()
    np.testing.assert_allclose(table.margin_gap, 0, atol=1e-5)
    assert (table.margin_reference != 0).any()  # H itself is not the base: the zeros are not trivial

    shapley = method_shapley(mine.folder).pivot_table(index=["objective", "player"], columns="method", values="value")
    np.testing.assert_allclose(shapley.sequential, shapley.arithmetic, atol=1e-5)
    np.testing.assert_allclose(shapley.pooled, shapley.arithmetic, atol=1e-5)
    assert summary(mine.folder)["sequential_vs_arithmetic_by_epochs"][0]["epochs"] == 1.0


def test_a_pooled_model_unlike_the_arithmetic_shows_its_gaps_both_ways(inputs, reporter) -> None:
    # arithmetic(H, K) = pi_H as above; the pooled model is H's update four times over.
    pooled = f"e1:{H}+{K}"
    mine = placed(inputs, "different", {f"e1:{H}": (H, 1.0), f"e1:{K}": (K, 0.0), pooled: (H, 4.0)})
    compare_trained(mine, SOURCES, 1.0, "pooled", reporter)
    row = comparisons(mine.folder).iloc[0]
    assert (row.reference, row.model) == (f"arithmetic:{H}+{K}", f"pooled:{H}+{K}")

    loaded = load_model(ModelConfig(name="tiny"))
    model = load_adapters(loaded, mine.adapters, [f"e1:{H}", f"e1:{K}", pooled])
    variants = {"base": [(BASE, 1.0)], "arithmetic": formula_terms([f"e1:{H}", f"e1:{K}"]), "pooled": [(pooled, 1.0)]}
    direct = score_variants(model, loaded.tokenizer, responses_of(mine.heldout), variants,
                            [("arithmetic", "pooled"), ("pooled", "arithmetic")])
    tokens = sum(len(reply) for _, reply in responses_of(mine.heldout))
    forward, backward = (direct.kls[pair].sum() / tokens for pair in [("arithmetic", "pooled"), ("pooled", "arithmetic")])
    assert row.kl_reference_model == pytest.approx(forward, rel=1e-5)
    assert row.kl_model_reference == pytest.approx(backward, rel=1e-5)
    assert abs(forward / backward - 1) > 3e-5  # the directions differ by 3x the tolerance above: a swap would show

    def margin(name: str) -> float:  # beta * mean over pairs of the log-ratio gap against the base
        gain = direct.log_likelihoods[name] - direct.log_likelihoods["base"]
        return 0.1 * float(np.mean(gain[0::2] - gain[1::2]))  # responses_of: chosen, rejected

    assert row.margin_reference == pytest.approx(margin("arithmetic"), abs=1e-5)
    assert row.margin_gap == pytest.approx(margin("pooled") - margin("arithmetic"), abs=1e-5)


def test_a_sequential_stage_trains_on_the_model_with_the_earlier_stage_merged_in(inputs, reporter) -> None:
    stage, pairs = f"e1:{H}>{K}", inputs.train[K][:4]
    on_h = placed(inputs, "stage-on-h", {f"e1:{H}": (H, 1.0)})
    on_base = placed(inputs, "stage-on-base", {})
    train_adapter(on_h, stage, pairs, 1.0, reporter, below=[f"e1:{H}"])
    train_adapter(on_base, stage, pairs, 1.0, reporter)  # the same name, pairs and seed, on the bare base
    record = json.loads((adapter_dir(on_h.adapters, stage) / RECORD_FILE).read_text(encoding="utf-8"))
    assert record["merged_below"] == [f"e1:{H}"] and record["steps"] == 1
    # The new adapter starts at zero, so at the first step the policy is its reference (itself, adapter off):
    # the implicit reward margin is zero. Its gradient, taken at the merged model, is not the bare base's.
    assert record["history"][0]["margin"] == pytest.approx(0, abs=1e-6)
    weights = [load_file(adapter_dir(folder.adapters, stage) / WEIGHTS_FILE) for folder in (on_h, on_base)]
    assert any(not torch.equal(weights[0][key], weights[1][key]) for key in weights[0] if "lora_B" in key)
    train_adapter(on_h, stage, [], 1.0, reporter, below=[f"e1:{H}"])  # present: kept, not trained again


def test_the_accuracy_utility_ties_half_for_the_base_and_matches_direct_scores(run, reporter) -> None:
    context = RunContext.open(run)
    prompts = [p.prompt_id for p in context.split.eval_prompts]
    config = replace(TINY, experiments=["accuracy"])
    assert run_validate(context, config, reporter) == [accuracy_path(run)]
    table = pd.read_csv(accuracy_path(run), dtype={"coalition": str, "prompt": str}).fillna({"coalition": ""})
    inputs = read_inputs(context, config)
    assert len(table) == 4 * len(inputs.evaluation) == 4 * len(prompts)
    assert (table[table.coalition == ""].preference_accuracy == 0.5).all()  # the base against itself: a tie

    loaded = load_model(ModelConfig(name="tiny"))
    variants = {"base": [(BASE, 1.0)], K: [(K, 1.0)]}
    scores = score_variants(load_adapters(loaded, run), loaded.tokenizer, responses_of(inputs.evaluation), variants)
    wide = pd.DataFrame([{"model": name, "prompt": pair.prompt_id, "chosen": values[2 * k], "rejected": values[2 * k + 1]}
                         for name, values in scores.log_likelihoods.items() for k, pair in enumerate(inputs.evaluation)])
    direct = preference_utilities(wide, 0.1).set_index(["model", "prompt"])
    for prompt, row in table[table.coalition == K].set_index("prompt").iterrows():
        assert row.preference_accuracy == direct.loc[(K, prompt)].preference_accuracy
        assert row.reward_margin == pytest.approx(direct.loc[(K, prompt)].reward_margin, abs=1e-4)

    # The evaluate job writes the same reward-free utility for the Shapley page, from the same pairs.
    loaded = load_model(ModelConfig(name="tiny"))
    context.base = loaded
    store = EvaluationStore(run)
    evaluate_preferences(context, store, load_adapters(loaded, run), config.response_tokens, reporter)
    path = store.table_path("preference")
    evaluated = pd.read_csv(path, dtype={"coalition": str, "prompt": str}).fillna({"coalition": ""})
    pd.testing.assert_frame_equal(evaluated, table)
    stamp = path.stat().st_mtime_ns
    evaluate_preferences(context, store, context.base.model, config.response_tokens, reporter)  # unchanged: kept
    assert path.stat().st_mtime_ns == stamp


def test_results_are_reused_only_with_their_settings(tmp_path, run, reporter) -> None:
    context = RunContext.open(run)
    first = replace(TINY, folder="settings", experiments=["accuracy"])
    run_validate(context, first, reporter)
    recorded = json.loads((results_dir(run, "settings") / "settings.json").read_text())
    assert "sources" not in recorded and "experiments" not in recorded and recorded["max_pairs"] == 4
    run_validate(context, replace(first, sources=[K, H], n_sources=3), reporter)  # what it works on may change
    with pytest.raises(ValidationError, match="other settings"):
        run_validate(context, replace(first, max_pairs=5), reporter)


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


def test_rank_correlations_of_known_orders() -> None:
    exact = np.array([1.0, 2, 3, 4, 5])
    assert rank_correlations(exact * 10, exact) == pytest.approx((1.0, 1.0))  # the same order
    assert rank_correlations(-exact, exact) == pytest.approx((-1.0, -1.0))  # reversed
    # One adjacent swap: rho = 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 12/120; tau = (9 - 1) / 10 pairs.
    assert rank_correlations(np.array([1.0, 3, 2, 4, 5]), exact) == pytest.approx((0.9, 0.8))
    # A tie in the estimate: average ranks (0.5, 0.5, 2) give rho = 1.5 / sqrt(1.5 * 2); tau-b = 2 / sqrt(2 * 3).
    assert rank_correlations(np.array([1.0, 1, 2]), np.array([1.0, 2, 3])) == pytest.approx((np.sqrt(3) / 2, 2 / np.sqrt(6)))
    assert all(np.isnan(rank_correlations(np.ones(3), np.array([1.0, 2, 3]))))  # no order at all: undefined


def test_configs_and_their_command_lines(run) -> None:
    assert PRESETS["gpu"].folder == "gpu" and job_config("validate").experiments == ["sequential", "pooled", "epochs",
                                                                                     "accuracy", "scaling"]
    for wrong, word in [({"experiments": ["nope"]}, "experiments"), ({"experiments": []}, "experiments"),
                        ({"sources": [H]}, "2 sources"), ({"folder": "../x"}, "folder")]:
        with pytest.raises(ConfigError, match=word):
            job_config("validate", **wrong)
    config = job_config("validate", "gpu", experiments=["accuracy", "scaling"], sources=[K, H])
    argv = command(run, "validate", config)
    assert argv[:5] == ["validate", "--run", str(run.path), "--preset", "gpu"] and "--folder" not in argv
    args = cli.build_parser().parse_args(argv)
    assert job_config("validate", args.preset, **overrides_from(args, ValidationConfig)) == config


def test_current_experiment_reads_the_events() -> None:
    events = [{"event": "experiment_start", "experiment": "accuracy"}, {"event": "step", "stage": "accuracy", "done": 1, "total": 4},
              {"event": "experiment_done", "experiment": "accuracy"}, {"event": "experiment_start", "experiment": "sequential"}]
    assert current_experiment(events) == "sequential"
    assert current_experiment([]) is None


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


def test_page_empty_and_on_the_demo_results(runs_dir) -> None:
    create_run("empty", RunConfig(model=ModelConfig(name="tiny"), data=DataConfig(sources=SOURCES)))
    app = _page("empty")
    assert not app.exception
    assert any("No validation results" in i.value for i in app.info)
    assert "python -m valuation validate --run" in " ".join(c.value for c in app.caption)

    shutil.copytree(DEMO_SOURCE, runs_dir / "shipped")  # results made before the job had a folder setting
    app = _page("shipped")
    assert not app.exception
    assert [h.value.split(" · ")[0] for h in app.main.subheader] == ["1", "2", "3", "4", "5", "6"]
    assert len(app.dataframe) == 5
