"""Adapter training on the tiny random model, through the real background process and the CLI."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from valuation import cli
from valuation.lm.adapters import (AdapterError, adapter_dir, check_adapter_name, check_compatible, load_adapters,
                                seed_adapter, source_and_replica, trained_adapters, trained_seeds, trained_sources)
from valuation.config import ConfigError, DataConfig, ModelConfig, RunConfig
from valuation.jobs.background import job_status, read_job, wait_for_job
from valuation.jobs.registry import command, job_config, launch
from valuation.rewards.heldout import judged
from valuation.training.verdicts import VERDICT_PAIRS, read_verdicts
from valuation.runs import Run, create_run
from valuation.data.sources import record_sources
from valuation.training.dpo import source_seed
from valuation.training.pairs import select_pairs
from valuation.training.settings import PRESETS, TrainConfig
from valuation.training.progress import source_progress, training_curves
from valuation.views.snapshot import RunSnapshot

SOURCES = ["harmless-base", "helpful-base"]
# Seconds per source on the tiny model: two or three optimiser steps on short sequences.
TINY = {"train_layers": 1, "max_pairs": 4, "batch_size": 2, "gradient_accumulation": 1, "max_length": 64, "max_prompt_length": 48, "epochs": 1.0}


@pytest.fixture
def run(runs_dir: Path) -> Run:
    run = create_run("train", RunConfig(model=ModelConfig(name="tiny"), data=DataConfig(sources=SOURCES)), root=runs_dir)
    record_sources(run, run.load_config().data)
    return run


def tiny(**overrides) -> TrainConfig:
    return job_config("train", **{**TINY, **overrides})


def test_presets_overrides_and_validation() -> None:
    quick = job_config("train")
    assert (quick.beta, quick.lora_r, quick.lora_alpha) == (0.1, 8, 16)
    assert quick.lora_targets == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert quick.train_layers == 4  # the top 4 layers over a cached trunk
    paper = job_config("train", "paper")
    assert (paper.max_pairs, paper.train_layers) == (0, 0)  # whole sources, every layer
    assert job_config("train", epochs=2, max_pairs=10).epochs == 2.0
    with pytest.raises(ConfigError, match="max_prompt_length"):
        job_config("train", max_length=64, max_prompt_length=64)
    with pytest.raises(ConfigError, match="preset"):
        job_config("train", "huge")
    with pytest.raises(ConfigError, match="expected int"):  # overrides are type-checked
        job_config("train", max_pairs="many")


def test_seed_depends_on_run_seed_and_name_only() -> None:
    assert source_seed(0, "helpful-base") == source_seed(0, "helpful-base")
    assert len({source_seed(0, "a"), source_seed(0, "b"), source_seed(1, "a")}) == 3


def test_a_config_round_trips_through_the_command_line() -> None:
    from valuation.jobs.flags import overrides_from

    config = job_config("train", "paper", max_pairs=7, learning_rate=1e-3, precompute_ref=False,
                        lora_targets=["q_proj", "v_proj"], sources=["a", "b"], retrain=True)
    argv = command(Run(Path("runs/x")), "train", config)
    assert argv[:5] == ["train", "--run", "runs/x", "--preset", "paper"]  # then the flags that differ from it
    args = cli.build_parser().parse_args(argv)
    assert job_config("train", args.preset, **overrides_from(args, TrainConfig)) == config
    assert args.beta is None  # not different: the preset's value applies


def test_select_pairs_caps_and_counts() -> None:
    from valuation.data.preferences import PreferencePair
    from valuation.lm.models import load_tokenizer, model_path

    tokenizer = load_tokenizer(model_path("tiny"))
    long, short = "word " * 200, "hi"
    pairs = [PreferencePair("s", [{"role": "user", "content": text}], "yes", "no", i)
             for i, text in enumerate([long, short, long, short, short])]
    selected = select_pairs(pairs, tokenizer, TrainConfig(max_pairs=2, max_prompt_length=64, max_length=96))
    assert len(selected.rows) == 2 and (selected.truncated, selected.dropped) == (1, 0)  # stops once two are kept
    assert selected.rows[0]["chosen"] == [{"role": "assistant", "content": "yes"}]


@pytest.mark.slow  # a train job in a process of its own
def test_two_sources_train_in_the_background_and_load(run: Run) -> None:
    launch(run, "train", tiny())
    assert job_status(run).state in ("queued", "running")
    status = wait_for_job(run, timeout_s=300)
    assert status.state == "done", status.log_tail

    assert trained_sources(run) == SOURCES
    progress = source_progress(status.events)
    assert [(p.source, p.state, p.fraction) for p in progress] == [(s, "done", 1.0) for s in SOURCES]
    steps = [e for e in status.events if e["event"] == "step" and "loss" in e]
    assert {"stage", "done", "total", "loss", "accuracy", "margin", "eta"} <= set(steps[0])
    # TRL's reference pass reports through the job's own progress, not a bar of its own in the log
    reference = [e for e in status.events if e["event"] == "step" and e["stage"].endswith("reference log-probs")]
    assert {e["stage"] for e in reference} == {f"{s}: reference log-probs" for s in SOURCES}
    assert all(e["done"] <= e["total"] for e in reference) and reference[-1]["done"] == reference[-1]["total"]
    assert "Computing reference log probs" not in (run.path / "job" / "log.txt").read_text()
    assert set(training_curves(RunSnapshot(run).records, status.events).source) == set(SOURCES)

    verdicts = read_verdicts(run).set_index("source")  # did each adapter learn? judged on held-out pairs
    assert list(verdicts.index) == SOURCES and (verdicts.pairs > 0).all()
    assert set(verdicts.verdict) <= {"learned", "learned the opposite", "indistinguishable from the base"}
    assert ((verdicts.margin_lower <= verdicts.margin) & (verdicts.margin <= verdicts.margin_upper)).all()

    record = json.loads((adapter_dir(run, "helpful-base") / "training.json").read_text())
    assert record["beta"] == 0.1 and record["base_model"] == "tiny"
    assert record["seed"] == source_seed(0, "helpful-base")
    assert record["pairs_used"] == 4 and record["pairs_dropped_by_length"] >= 0 and record["pairs_truncated"] >= 0
    assert record["settings"]["max_length"] == 64 and record["history"]
    assert "sources" not in record["settings"] and "base_model_path" not in record  # no machine path in a run
    assert not list(adapter_dir(run, "helpful-base").glob("*.bin"))

    from valuation.lm.models import load_model

    model = load_adapters(load_model(ModelConfig(name="tiny")), run)
    assert sorted(model.peft_config) == SOURCES and not model.training
    assert read_job(run).argv[:3] == ["train", "--run", str(run.path)]  # outside the project: absolute


@pytest.mark.slow  # a train job in a process of its own
def test_a_killed_job_leaves_no_adapter_and_a_relaunch_completes_it(run: Run) -> None:
    job = launch(run, "train", tiny(max_pairs=6))  # three steps a source
    deadline = time.monotonic() + 300
    while not any(e["event"] == "step" for e in job_status(run).events):
        assert time.monotonic() < deadline and job_status(run).active
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)  # as the OOM killer would: no chance to clean up
    status = wait_for_job(run, timeout_s=30)
    assert status.state == "failed" and "without recording a result" in status.error
    assert "harmless-base" not in trained_sources(run)  # it was mid-training
    with pytest.raises(AdapterError):
        load_adapters(object(), run, ["harmless-base"])
    leftover = run.path / "adapters" / ".harmless-base.tmp-killed"  # as if killed while saving
    leftover.mkdir(parents=True)
    (leftover / "adapter_config.json").write_text("{}")
    assert trained_sources(run) in ([], ["helpful-base"])

    # The relaunch (here from the command line) trains what is missing and cleans the leftovers.
    argv = command(run, "train", tiny(max_pairs=6))
    assert cli.main(argv) == 0
    assert trained_sources(run) == SOURCES and not leftover.exists()
    assert job_status(run).state == "done"

    # Nothing left to do: a second relaunch skips both; other settings are refused, not mixed in.
    assert cli.main(argv) == 0
    assert [p.state for p in source_progress(job_status(run).events)] == ["skipped", "skipped"]
    assert cli.main(command(run, "train", tiny(max_pairs=6, max_length=80))) == 2
    assert "other settings" in job_status(run).error


def test_a_second_seed_trains_every_source_again_under_its_own_seed(run: Run) -> None:
    assert cli.main(command(run, "train", tiny(sources=["helpful-base"]))) == 0
    assert cli.main(command(run, "train", tiny(seeds=2))) == 0  # the missing three, first seeds first
    progress = source_progress(job_status(run).events)
    assert [(p.source, p.state) for p in progress] == [
        ("harmless-base", "done"), ("helpful-base", "skipped"), ("harmless-base@seed2", "done"),
        ("helpful-base@seed2", "done")]
    assert trained_sources(run) == SOURCES and trained_seeds(run, SOURCES) == 2
    assert trained_adapters(run) == ["harmless-base", "harmless-base@seed2", "helpful-base", "helpful-base@seed2"]
    seeds = {a: json.loads((adapter_dir(run, a) / "training.json").read_text())["seed"] for a in trained_adapters(run)}
    assert seeds["helpful-base"] == source_seed(0, "helpful-base") != seeds["helpful-base@seed2"]
    assert seeds["helpful-base@seed2"] == source_seed(0, "helpful-base", 1)
    verdicts = read_verdicts(run)
    assert list(verdicts.source) == trained_adapters(run)  # every adapter judged, on its source's pairs
    assert set(verdicts.pairs) == {VERDICT_PAIRS}  # these sources have more pairs no adapter trained on
    stages = {e.get("stage") for e in job_status(run).events}
    assert "harmless-base: held-out pairs, base" in stages  # its first verdict
    assert "helpful-base: held-out pairs, base" not in stages  # scored by the first job: read, not computed again
    assert source_and_replica("helpful-base@seed2") == ("helpful-base", 1) and seed_adapter("a", 0) == "a"
    with pytest.raises(AdapterError, match="@seed"):
        check_adapter_name("vendor@seed2")


def test_adapters_with_another_beta_or_base_are_refused() -> None:
    same = {"beta": 0.1, "base_model": "tiny"}
    check_compatible({"a": same, "b": dict(same)}, "tiny")
    with pytest.raises(AdapterError, match="beta"):
        check_compatible({"a": same, "b": {**same, "beta": 0.2}})
    with pytest.raises(AdapterError, match="base model"):
        check_compatible({"a": same, "b": same}, "embedded")
    with pytest.raises(AdapterError, match="base model"):
        check_compatible({"a": same, "b": {**same, "base_model": "embedded"}})


def test_presets_are_valid() -> None:
    for name, preset in PRESETS.items():
        preset.validate()


def test_a_verdict_says_learned_only_when_the_margin_interval_is_above_zero() -> None:
    import numpy as np

    assert judged(np.array([0.3, 0.5, 0.4, 0.6]))["verdict"] == "learned"
    assert judged(np.array([-0.3, -0.5, -0.4, -0.6]))["verdict"] == "learned the opposite"
    noise = judged(np.array([0.3, -0.5, 0.4, -0.2]))
    assert noise["verdict"] == "indistinguishable from the base" and noise["accuracy"] == 0.5
    assert noise["accuracy_lower"] < 0.5 < noise["accuracy_upper"]


def test_a_verdict_on_few_pairs_says_they_cannot_tell_a_weak_effect_from_none() -> None:
    import numpy as np

    few = judged(np.array([0.3, -0.5, 0.4, -0.2]), enough=256)
    assert few["verdict"] == "indistinguishable from the base (only 4 pairs: too few to tell a weak effect from none)"
    assert judged(np.array([0.3, 0.5, 0.4, 0.6]), enough=256)["verdict"] == "learned"  # a clear effect needs no caveat


def test_verdict_pairs_are_every_pair_no_adapter_read_the_eval_part_first() -> None:
    from valuation.data.preferences import load_preferences
    from valuation.data.splits import judging_pairs, split_preferences, verdict_pairs

    config = DataConfig(sources=SOURCES)
    data = load_preferences(config)
    split = split_preferences(data, config)
    pairs = verdict_pairs("helpful-base", data, split, config, read=100)
    eval_part = judging_pairs("helpful-base", data, split, config)
    assert pairs[:len(eval_part)] == eval_part and len(pairs) > 256
    trained = {p.prompt_key for p in split.train["helpful-base"][:100]}
    assert all(p.source == "helpful-base" and p.prompt_key not in trained for p in pairs)
    assert {p.pair_id for p in split.train["helpful-base"][100:110]} <= {p.pair_id for p in pairs}  # never read


def test_an_adapter_recorded_before_a_setting_existed_reads_as_what_it_did_then(run: Run) -> None:
    """Records written before `train_layers` and the loss settings existed trained every layer with
    the sigmoid loss: a relaunch keeps them under those settings and refuses the new default."""
    every_layer = tiny(sources=["helpful-base"], train_layers=0)
    assert cli.main(command(run, "train", every_layer)) == 0
    path = adapter_dir(run, "helpful-base") / "training.json"
    record = json.loads(path.read_text())
    for name in ("train_layers", "loss_type", "label_smoothing"):
        del record["settings"][name]
    path.write_text(json.dumps(record))
    assert cli.main(command(run, "train", every_layer)) == 0
    assert [p.state for p in source_progress(job_status(run).events)] == ["skipped"]
    assert cli.main(command(run, "train", tiny(sources=["helpful-base"]))) == 2  # the top layer alone: other settings
    assert "train_layers" in job_status(run).error


def test_sources_judged_on_one_trusted_held_out_set_share_the_base_scores(runs_dir: Path, tmp_path: Path) -> None:
    """With a trusted held-out file every source is judged on the same gold pairs: the base scores them once."""
    from helpers import table_rows, write_jsonl

    data = DataConfig(dataset=str(write_jsonl(tmp_path / "vendors.jsonl", table_rows("a", 12) + table_rows("b", 12))),
                      heldout_file=str(write_jsonl(tmp_path / "gold.jsonl", table_rows("gold", 16))))
    gold_run = create_run("gold", RunConfig(model=ModelConfig(name="tiny"), data=data), root=runs_dir)
    record_sources(gold_run, data)
    assert cli.main(command(gold_run, "train", tiny())) == 0
    verdicts = read_verdicts(gold_run)
    assert list(verdicts.source) == ["a", "b"] and verdicts.pairs.nunique() == 1
    stages = {e.get("stage") for e in job_status(gold_run).events}
    assert "a: held-out pairs, base" in stages and "b: held-out pairs, base" not in stages
