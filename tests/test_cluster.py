"""The Ray backend, on a cluster of several Ray nodes started on this machine (`ray.cluster_utils`).

A node is removed in the middle of training and of an evaluation: both jobs finish, and their
results equal the local backend's, bitwise, because every Ray worker here runs one thread, as the
local runs do below. Cancelling a job stops every one of its Ray tasks.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from helpers import TINY_REWARDS as REWARDS, evaluation_folder, random_adapter_run
from valuation import cli
from valuation.jobs.background import cancel_job, job_status, wait_for_job
from valuation.runtime.cluster import ClusterError, check_resources, reachable_cluster, worker_slots
from valuation.config import BackendConfig, ConfigError, DataConfig, ModelConfig, RunConfig
from valuation.jobs.flags import overrides_from
from valuation.evaluation.settings import EvaluationConfig
from valuation.jobs.registry import command, job_config, launch, run_job
from valuation.runs import Run, create_run
from valuation.data.sources import record_sources

SOURCES = ["harmless-base", "helpful-base"]
TRAIN = {"train_layers": 1, "max_pairs": 8, "batch_size": 2, "gradient_accumulation": 1, "max_length": 64, "max_prompt_length": 48}
# The lost node must take a source's training with it. Over the top layer the tiny model's 4 steps
# take a few milliseconds, done before the node goes: there, train every layer through TRL (slower),
# for 20 steps, so that a source is still stepping when its node goes (4 steps sometimes finished first).
EVERY_LAYER = {**TRAIN, "train_layers": 0, "max_pairs": 40}


# ---------------------------------------------------------------- settings, without a cluster


def test_the_backend_is_a_setting_of_every_job_and_its_flags_round_trip(tmp_path: Path) -> None:
    run = create_run("flags", RunConfig(model=ModelConfig(name="tiny")), root=tmp_path)
    backend = BackendConfig(backend="ray", address="auto", gpus_per_task=1.0, cpus_per_task=4.0)
    for job in ("train", "rewards", "evaluate", "validate"):
        argv = command(run, job, job_config(job), backend)
        assert argv[-8:] == ["--backend", "ray", "--address", "auto", "--gpus-per-task", "1.0", "--cpus-per-task", "4.0"]
        assert BackendConfig(**overrides_from(cli.build_parser().parse_args(argv), BackendConfig)) == backend
    assert command(run, "train", job_config("train"), BackendConfig()) == command(run, "train", job_config("train"))
    with pytest.raises(ConfigError, match="--backend ray"):
        BackendConfig(address="auto").validate()
    with pytest.raises(ConfigError, match="'local' or 'ray'"):
        BackendConfig(backend="spark").validate()


def test_a_request_no_node_can_hold_is_refused_not_left_waiting() -> None:
    nodes = [{"CPU": 4.0, "GPU": 1.0}, {"CPU": 8.0}]
    check_resources(BackendConfig(backend="ray", gpus_per_task=1.0, cpus_per_task=8.0), nodes)
    with pytest.raises(ClusterError, match=r"2 GPU.*no node .* more than 1: Ray would wait forever"):
        check_resources(BackendConfig(backend="ray", gpus_per_task=2.0), nodes)
    with pytest.raises(ClusterError, match="--cpus-per-task"):
        check_resources(BackendConfig(backend="ray", cpus_per_task=16.0), nodes)
    assert worker_slots(BackendConfig(backend="ray", cpus_per_task=2.0), nodes) == 2 + 4
    assert worker_slots(BackendConfig(backend="ray", gpus_per_task=1.0), nodes) == 1  # the second has no GPU


def test_no_cluster_is_offered_when_none_runs(monkeypatch, tmp_path: Path) -> None:
    import valuation.runtime.cluster as cluster

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(cluster, "CURRENT_CLUSTER", tmp_path / "ray_current_cluster")
    assert reachable_cluster() is None
    (tmp_path / "ray_current_cluster").write_text("127.0.0.1:9\n")  # a stale file: nothing listens there
    assert reachable_cluster() is None
    with pytest.raises(ClusterError, match="Nothing answers at the Ray address '127.0.0.1:9'"):
        with cluster.connected(BackendConfig(backend="ray", address="127.0.0.1:9")):
            pass


def test_a_job_without_parallel_parts_says_it_runs_where_it_starts(tmp_path: Path) -> None:
    from valuation.jobs.background import job_dir

    run = random_adapter_run(tmp_path, "rewards", SOURCES, rewards=REWARDS)
    run_job(run, "rewards", job_config("rewards"), BackendConfig(backend="ray"))  # no Ray is started for it
    assert "rewards has no part to spread over a cluster" in (job_dir(run) / "log.txt").read_text()


# ---------------------------------------------------------------- a cluster of three nodes


@pytest.fixture
def cluster():
    """A head that runs no task (the driver's node), and two nodes of one CPU each."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    cluster.workers = nodes
    yield cluster
    cluster.shutdown()


@pytest.fixture
def one_thread():
    """Ray gives a one-CPU worker one thread: local runs compared bitwise with it use one too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def on_ray(cluster, **settings) -> BackendConfig:
    return BackendConfig(backend="ray", address=cluster.address, **settings)


def wait_until(condition, run: Run, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition(job_status(run).events):
        assert time.monotonic() < deadline and job_status(run).active, job_status(run).log_tail
        time.sleep(0.1)


def started(events: list[dict], event: str, stage: str = "source") -> set:
    return {e.get(stage) for e in events if e["event"] == event}


def training_run(root: Path, name: str) -> Run:
    run = create_run(name, RunConfig(model=ModelConfig(name="tiny"), data=DataConfig(sources=SOURCES)), root=root)
    record_sources(run, run.load_config().data)
    return run


@pytest.mark.slow  # a Ray cluster of three nodes
def test_training_survives_a_lost_node_and_equals_the_local_backend(cluster, one_thread, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    config = job_config("train", **EVERY_LAYER)
    on_cluster = training_run(tmp_path, "ray")
    launch(on_cluster, "train", config, on_ray(cluster))
    # Both nodes are taking optimiser steps (the head runs none): take one away. A source's stages
    # before its steps ("<source>: trunk", "<source>: reference log-probs") do not count.
    wait_until(lambda events: set(SOURCES) <= started(events, "step", "stage"), on_cluster)
    cluster.remove_node(cluster.workers[0])
    status = wait_for_job(on_cluster, timeout_s=300)
    assert status.state == "done", f"{status.error}\n{status.log_tail}"
    starts = [e["source"] for e in status.events if e["event"] == "source_start"]
    assert len(starts) > len(SOURCES), "no task was running on the removed node"  # one source started again

    here = training_run(tmp_path, "local")
    run_job(here, "train", config)
    for source in SOURCES:
        ours, theirs = (load_file(r.path / "adapters" / source / "adapter_model.safetensors") for r in (here, on_cluster))
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
        assert any(v.abs().max() > 0 for k, v in ours.items() if "lora_B" in k)  # trained: B left zero
    progress = {e["stage"] for e in status.events if e["event"] == "step"}
    assert set(SOURCES) <= progress  # every task's progress reached the job's own progress file


@pytest.mark.slow  # a Ray cluster of three nodes
def test_an_evaluation_survives_a_lost_worker_and_equals_the_local_backend(cluster, one_thread, tmp_path: Path) -> None:
    config = EvaluationConfig(prompts=6, pool_per_anchor=2, max_new_tokens=6, chunk_prompts=1, ess_floor=0)
    here = random_adapter_run(tmp_path, "local", SOURCES, rewards=REWARDS, eval_prompts=6)
    run_job(here, "evaluate", config)
    # The same run (adapters, reward models) evaluated again on the cluster, from nothing.
    on_cluster = Run.at(shutil.copytree(here.path, tmp_path / "ray"))
    shutil.rmtree(evaluation_folder(on_cluster))
    launch(on_cluster, "evaluate", config, on_ray(cluster, workers=2))
    wait_until(lambda events: len(started(events, "step", "stage")) >= 2, on_cluster)  # both workers busy
    cluster.remove_node(cluster.workers[0])
    status = wait_for_job(on_cluster, timeout_s=300)
    assert status.state == "done", f"{status.error}\n{status.log_tail}"
    assert "a Ray worker was lost" in status.log_tail
    for name in ("utilities.csv", "utilities-sequence.csv", "estimation.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(evaluation_folder(on_cluster) / name),
                                      pd.read_csv(evaluation_folder(here) / name))

    # A relaunch finds every shard stored: it samples nothing.
    samples = {p: p.stat().st_mtime_ns for p in (evaluation_folder(on_cluster) / "samples").rglob("chunk-*")}
    run_job(on_cluster, "evaluate", config, on_ray(cluster))
    assert {p: p.stat().st_mtime_ns for p in samples} == samples


def ray_tasks_running(name: str) -> list[str]:
    """Ray worker processes now running `name` (Ray titles a busy worker's process "ray::<task>")."""
    listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in listing.splitlines() if line.startswith(f"ray::{name}")]


@pytest.mark.slow  # a Ray cluster of three nodes
def test_cancelling_a_job_stops_every_ray_task(cluster, tmp_path: Path) -> None:
    run = training_run(tmp_path, "cancel")
    launch(run, "train", job_config("train", **{**TRAIN, "max_pairs": 40}), on_ray(cluster))
    wait_until(lambda events: started(events, "source_start"), run)  # a task is training
    assert ray_tasks_running("train_task")
    assert cancel_job(run)
    assert job_status(run).state == "cancelled"
    deadline = time.monotonic() + 30
    while ray_tasks_running("train_task"):
        assert time.monotonic() < deadline, ray_tasks_running("train_task")
        time.sleep(0.2)
