"""Coalition utilities: every coalition sampled on the same prompts, scored, cached and resumable."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import random_adapter_run
from valuation.game import (EvaluationConfig, EvaluationError, coalitions_to_evaluate, evaluate_run,
                                  evaluation_dir, load_samples)
from valuation.values import load_run_utilities, value_sources
from valuation.config import RewardConfig, RewardObjective

SOURCES = ["harmless-base", "helpful-base"]
TINY = EvaluationConfig(prompts=2, samples=2, max_new_tokens=4, chunk_prompts=1)
REWARDS = RewardConfig(objectives=[RewardObjective("helpfulness", ["helpful-base"]),
                                   RewardObjective("harmlessness", ["harmless-base"])], max_pairs=80, max_length=64,
                       batch_tokens=1024)


def test_evaluation_writes_utilities_resumes_and_rescores_without_sampling(tmp_path):
    run = random_adapter_run(tmp_path, "eval", SOURCES, rewards=REWARDS, eval_prompts=4)
    path = evaluate_run(run, TINY, log=lambda _: None)
    table = pd.read_csv(path, keep_default_na=False)
    assert set(table.coalition) == {"", "harmless-base", "helpful-base", "harmless-base+helpful-base"}
    assert len(table) == 4 * 2 and {"helpfulness", "harmlessness"} <= set(table.columns)
    valuation = value_sources(load_run_utilities(run))
    assert valuation.players == tuple(sorted(SOURCES))

    samples = sorted((evaluation_dir(run) / "samples").rglob("chunk-*.jsonl"))
    stamps = [p.stat().st_mtime_ns for p in samples]
    evaluate_run(run, TINY, log=lambda _: None)  # everything cached: nothing sampled again
    assert [p.stat().st_mtime_ns for p in samples] == stamps

    samples[1].unlink()  # a chunk lost (a killed job): only it is sampled again
    evaluate_run(run, TINY, log=lambda _: None)
    assert samples[1].exists() and samples[0].stat().st_mtime_ns == stamps[0]

    more = RewardConfig(objectives=REWARDS.objectives + [RewardObjective("overall", [])], max_pairs=80, max_length=64,
                        batch_tokens=1024)
    config = run.load_config()
    config.rewards = more
    run.save_config(config)
    evaluate_run(run, TINY, log=lambda _: None)  # a new reward model re-scores the stored samples
    assert [p.stat().st_mtime_ns for p in samples][0] == stamps[0]
    assert "overall" in pd.read_csv(path).columns
    audit = load_samples(run)
    assert len(audit) == 4 * 2 * 2 and {"text", "helpfulness", "overall"} <= set(audit.columns)


def test_common_random_numbers_same_prompts_and_seeds_for_every_coalition(tmp_path):
    run = random_adapter_run(tmp_path, "crn", SOURCES, rewards=REWARDS, eval_prompts=4)
    evaluate_run(run, EvaluationConfig(prompts=1, samples=1, max_new_tokens=3, temperature=0), log=lambda _: None)
    audit = load_samples(run)
    assert audit.prompt_id.nunique() == 1 and len(audit) == 4


def test_monte_carlo_evaluates_the_coalitions_the_estimator_will_ask_for():
    sources = [f"s{i}" for i in range(14)]
    config = EvaluationConfig(method="auto", permutations=10)
    coalitions = coalitions_to_evaluate(sources, config)
    assert () in coalitions and tuple(sources) in coalitions
    assert len(coalitions) < 2 ** 14 and len(coalitions) <= 10 * 14 + 1


def test_evaluation_needs_trained_adapters(tmp_path):
    from valuation.config import DataConfig, ModelConfig, RunConfig
    from valuation.runs import create_run

    run = create_run("untrained", RunConfig(model=ModelConfig(name="tiny"), data=DataConfig(sources=SOURCES)), root=tmp_path)
    with pytest.raises(EvaluationError, match="No trained adapter"):
        evaluate_run(run, TINY, log=lambda _: None)


def test_an_evaluation_killed_mid_run_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL after the first chunk (no chance to clean up): the job reads failed, no partial file
    is used, and a relaunch finishes with the utilities of a run that was never interrupted."""
    import os
    import signal
    import time

    from valuation.jobs import job_status, launch_job, wait_for_job

    settings = ["--prompts", "3", "--samples", "1", "--max-new-tokens", "4", "--chunk-prompts", "1", "--temperature", "0"]
    uninterrupted = random_adapter_run(tmp_path, "whole", SOURCES, rewards=REWARDS, eval_prompts=4)
    killed = random_adapter_run(tmp_path, "killed", SOURCES, rewards=REWARDS, eval_prompts=4)
    for run in (uninterrupted, killed):  # reward models first, so the kill lands in sampling
        evaluate_run(run, EvaluationConfig(prompts=1, samples=1, max_new_tokens=1), log=lambda _: None)

    job = launch_job(killed, "evaluate", ["evaluate", "--run", str(killed.path), *settings])
    deadline = time.time() + 240
    while time.time() < deadline and len(list((evaluation_dir(killed) / "samples").rglob("chunk-*.jsonl"))) < 2:
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGKILL)
    wait_for_job(killed, timeout_s=30)
    assert job_status(killed).state == "failed"

    for run in (killed, uninterrupted):
        launch_job(run, "evaluate", ["evaluate", "--run", str(run.path), *settings])
        assert wait_for_job(run, timeout_s=300).state == "done", job_status(run).log_tail
    read = lambda run: pd.read_csv(evaluation_dir(run) / "utilities.csv", keep_default_na=False)  # noqa: E731
    pd.testing.assert_frame_equal(read(killed), read(uninterrupted))
