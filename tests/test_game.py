"""Coalition utilities: every coalition sampled on the same prompts, scored, cached and resumable."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers import TINY_EVALUATION as TINY, TINY_REWARDS as REWARDS, evaluation_folder, random_adapter_run, run_table, store
from valuation.config import ConfigError, RewardConfig, RewardObjective
from valuation.evaluation.job import TYPICAL_PROMPT_TOKENS, coalitions_to_evaluate, evaluation_cost
from valuation.evaluation.settings import EvaluationConfig, EvaluationError
from valuation.games.values import value_sources
from valuation.jobs.registry import launch, run_job

SOURCES = ["harmless-base", "helpful-base"]


def test_evaluation_writes_utilities_resumes_and_rescores_without_sampling(tmp_path):
    run = random_adapter_run(tmp_path, "eval", SOURCES, rewards=REWARDS, eval_prompts=4)
    path = run_job(run, "evaluate", TINY)
    table = pd.read_csv(path, keep_default_na=False)
    assert set(table.coalition) == {"", "harmless-base", "helpful-base", "harmless-base+helpful-base"}
    assert len(table) == 4 * 2 and {"helpfulness", "harmlessness"} <= set(table.columns)
    valuation = value_sources(run_table(run))
    assert valuation.players == tuple(sorted(SOURCES))

    samples = sorted((evaluation_folder(run) / "samples").rglob("chunk-*.jsonl"))
    stamps = [p.stat().st_mtime_ns for p in samples]
    run_job(run, "evaluate", TINY)  # everything cached: nothing sampled again
    assert [p.stat().st_mtime_ns for p in samples] == stamps

    samples[1].unlink()  # a chunk lost (a killed job): only it is sampled again
    run_job(run, "evaluate", TINY)
    assert samples[1].exists() and samples[0].stat().st_mtime_ns == stamps[0]

    more = RewardConfig(objectives=REWARDS.objectives + [RewardObjective("overall", [])], max_pairs=80, max_length=64,
                        batch_tokens=1024)
    config = run.load_config()
    config.rewards = more
    run.save_config(config)
    run_job(run, "evaluate", TINY)  # a new reward model re-scores the stored samples
    assert [p.stat().st_mtime_ns for p in samples][0] == stamps[0]
    assert "overall" in pd.read_csv(path).columns
    audit = store(run).samples()
    assert len(audit) == 4 * 2 * 2 and {"text", "helpfulness", "overall"} <= set(audit.columns)


def test_common_random_numbers_same_prompts_and_seeds_for_every_coalition(tmp_path):
    run = random_adapter_run(tmp_path, "crn", SOURCES, rewards=REWARDS, eval_prompts=4)
    run_job(run, "evaluate", EvaluationConfig(estimator="direct", prompts=1, samples=1, max_new_tokens=3, temperature=0))
    audit = store(run).samples()
    assert audit.prompt_id.nunique() == 1 and len(audit) == 4


def test_monte_carlo_evaluates_the_coalitions_the_estimator_will_ask_for():
    sources = [f"s{i}" for i in range(14)]
    config = EvaluationConfig(estimator="direct", method="auto", permutations=10)
    coalitions = coalitions_to_evaluate(sources, config)
    assert frozenset() in coalitions and frozenset(sources) in coalitions
    assert len(coalitions) < 2 ** 14 and len(coalitions) <= 10 * 14 + 1
    # Pooled, a coalition costs n numbers a response: every one of them is valued up to 16 sources.
    assert len(coalitions_to_evaluate(sources, EvaluationConfig(permutations=10))) == 2 ** 14
    assert EvaluationConfig().resolved_method(17) == "permutation"


def test_evaluation_needs_trained_adapters(tmp_path):
    from valuation.config import DataConfig, ModelConfig, RunConfig
    from valuation.runs import create_run
    from valuation.data.sources import record_sources

    run = create_run("untrained", RunConfig(model=ModelConfig(name="tiny"), data=DataConfig(sources=SOURCES)), root=tmp_path)
    record_sources(run, run.load_config().data)
    with pytest.raises(EvaluationError, match="No trained adapter"):
        run_job(run, "evaluate", TINY)


@pytest.mark.slow  # evaluate jobs in processes of their own
def test_an_evaluation_killed_mid_run_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL after the first chunk (no chance to clean up): the job reads failed, no partial file
    is used, and a relaunch finishes with the utilities of a run that was never interrupted."""
    import os
    import signal
    import time

    from valuation.jobs.background import job_status, wait_for_job

    settings = EvaluationConfig(estimator="direct", prompts=3, samples=1, max_new_tokens=4, chunk_prompts=1, temperature=0)
    uninterrupted = random_adapter_run(tmp_path, "whole", SOURCES, rewards=REWARDS, eval_prompts=4)
    killed = random_adapter_run(tmp_path, "killed", SOURCES, rewards=REWARDS, eval_prompts=4)
    for run in (uninterrupted, killed):  # reward models first, so the kill lands in sampling
        run_job(run, "evaluate", EvaluationConfig(estimator="direct", prompts=1, samples=1, max_new_tokens=1))

    job = launch(killed, "evaluate", settings)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((evaluation_folder(killed) / "samples").rglob("chunk-*.jsonl"))) < 2:
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGKILL)
    wait_for_job(killed, timeout_s=30)
    assert job_status(killed).state == "failed"

    for run in (killed, uninterrupted):
        launch(run, "evaluate", settings)
        assert wait_for_job(run, timeout_s=300).state == "done", job_status(run).log_tail
    read = lambda run: pd.read_csv(evaluation_folder(run) / "utilities.csv", keep_default_na=False)  # noqa: E731
    pd.testing.assert_frame_equal(read(killed), read(uninterrupted))


def test_pooled_evaluation_values_every_coalition_from_one_pool_and_resumes(tmp_path):
    run = random_adapter_run(tmp_path, "pooled", SOURCES, rewards=REWARDS, eval_prompts=4)
    config = EvaluationConfig(prompts=2, pool_per_anchor=3, max_new_tokens=4, chunk_prompts=1, ess_floor=0)
    path = run_job(run, "evaluate", config)
    table = pd.read_csv(path, keep_default_na=False)
    assert set(table.coalition) == {"", "harmless-base", "helpful-base", "harmless-base+helpful-base"}
    assert len(table) == 4 * 2 and {"helpfulness", "harmlessness"} <= set(table.columns)
    audit = store(run).samples()
    assert len(audit) == 2 * 4 * 3  # prompts x anchors (base, each source, both) x pool per anchor: nothing else
    estimation = pd.read_csv(evaluation_folder(run) / "estimation.csv", keep_default_na=False)
    assert set(estimation.target) == {"token", "sequence"} and set(estimation.estimator) == {"pooled"}
    assert ((estimation.ess_min >= 1 - 1e-9) & (estimation.ess_mean <= 12 + 1e-9)).all()  # 1 <= ESS <= M
    sequence = pd.read_csv(evaluation_folder(run) / "utilities-sequence.csv", keep_default_na=False)
    assert len(sequence) == len(table) and value_sources(run_table(run)).players == tuple(sorted(SOURCES))
    assert list(store(run).targets) == ["token", "sequence", "preference"]  # reward-free utilities on every run
    preference = run_table(run, "preference")
    assert preference.objectives == ("preference_accuracy", "reward_margin") and len(preference.prompts) == 4
    assert preference.value(frozenset(), "preference_accuracy") == 0.5  # the base against itself: ties

    stamps = {p: p.stat().st_mtime_ns for p in (evaluation_folder(run) / "weights").rglob("chunk-*.json")}
    run_job(run, "evaluate", config)  # resumes: nothing sampled or weighed again
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    pd.testing.assert_frame_equal(pd.read_csv(path, keep_default_na=False), table)


def test_pooled_falls_back_to_direct_sampling_below_the_ess_floor(tmp_path):
    run = random_adapter_run(tmp_path, "floor", SOURCES, rewards=REWARDS, eval_prompts=4)
    # A floor above the pool size: no coalition can reach it, so every one is sampled directly.
    config = EvaluationConfig(prompts=2, samples=2, pool_per_anchor=2, max_new_tokens=4, chunk_prompts=1, ess_floor=100)
    run_job(run, "evaluate", config)
    estimation = pd.read_csv(evaluation_folder(run) / "estimation.csv", keep_default_na=False).set_index(["target", "coalition"])
    assert set(estimation.loc["token"].estimator) == {"direct"}
    assert set(estimation.loc["sequence"].estimator) == {"pooled"}  # a product of experts cannot be sampled directly
    direct = run_job(run, "evaluate", EvaluationConfig(estimator="direct", prompts=2, samples=2, max_new_tokens=4,
                                                       chunk_prompts=1, top_p=1.0))
    pooled_then_direct = pd.read_csv(direct, keep_default_na=False)
    assert not (evaluation_folder(run) / "estimation.csv").exists()  # a direct evaluation leaves no pooled record
    assert len(pooled_then_direct) == 8


def test_pooled_needs_the_untruncated_model():
    with pytest.raises(ConfigError, match="top_p"):
        EvaluationConfig(top_p=0.9).validate()
    EvaluationConfig(estimator="direct", top_p=0.9).validate()


def test_the_cost_model_counts_what_each_estimator_pays():
    sources = ["a", "b", "c", "d"]
    coalitions = coalitions_to_evaluate(sources, EvaluationConfig())
    direct = evaluation_cost(sources, coalitions, EvaluationConfig(estimator="direct", prompts=3, samples=2,
                                                                   max_new_tokens=10))
    # Per (prompt, sample): 1 (base) + 4 (singletons) + 6 x 3 + 4 x 4 + 5 = 44 rows, not sum(|S| + 1) = 48.
    assert direct.decode_row_tokens == 44 * 2 * 3 * 10 and direct.reward_calls == 16 * 2 * 3
    pooled = evaluation_cost(sources, coalitions, EvaluationConfig(prompts=3, pool_per_anchor=4, max_new_tokens=10))
    # Anchors: the base, 4 singletons (1 row each) and all four (5 rows): 10 rows per draw, 6 responses.
    assert pooled.decode_row_tokens == 10 * 4 * 3 * 10 and pooled.reward_calls == 6 * 4 * 3
    assert pooled.teacher_forced_tokens == 6 * 4 * 3 * 5 * (TYPICAL_PROMPT_TOKENS + 10)  # every response, 5 models


def test_beyond_the_token_level_limit_only_the_sequence_level_is_weighed(tmp_path, monkeypatch):
    import valuation.evaluation.estimators as estimators
    import valuation.rewards.heldout as heldout

    for module in (estimators, heldout):
        monkeypatch.setattr(module, "TOKEN_LEVEL_MAX_PLAYERS", 1)  # as if two sources were too many
    run = random_adapter_run(tmp_path, "sequence", SOURCES, rewards=REWARDS, eval_prompts=4)
    run_job(run, "evaluate", EvaluationConfig(prompts=1, pool_per_anchor=2, max_new_tokens=3, ess_floor=0))
    assert list(store(run).targets) == ["sequence", "preference"]
    assert len(pd.read_csv(evaluation_folder(run) / "utilities.csv", keep_default_na=False)) == 4
    # Under the product of experts the implicit reward margin adds up exactly across sources.
    margins = run_table(run, "preference")
    both, alone = frozenset(SOURCES), [frozenset([s]) for s in SOURCES]
    np.testing.assert_allclose(margins.per_prompt[both][1], sum(margins.per_prompt[c][1] for c in alone), atol=1e-5)  # 6 digits in the CSV
