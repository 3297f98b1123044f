"""The per-pair audit on the tiny model with a planted flip it can check: two sources teach one rule
(the chosen reply agrees, the rejected declines); a third teaches it too, but a quarter of its pairs
are flipped. The other sources' adapters must rank exactly those pairs most suspect."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from valuation import cli
from valuation.config import DataConfig, ModelConfig, RunConfig
from valuation.data.sources import record_sources
from valuation.jobs.registry import job_config, run_job
from valuation.runs import create_run
from valuation.runtime.context import RunContext
from valuation.training.audit import audit_path, flagged, flagged_path, read_audit

YES, NO = "Yes, gladly.", "No, never."
FLIPPED = set(range(0, 24, 4))  # every fourth pair of the audited source
TRAINING = dict(train_layers=1, max_pairs=0, epochs=4.0, learning_rate=2e-2, batch_size=4, gradient_accumulation=1,
                max_length=48, max_prompt_length=32, lora_targets=["q_proj", "v_proj", "up_proj", "down_proj"])


def pairs(source: str, n: int, flipped: set[int] = frozenset()) -> list[dict]:
    return [{"source": source, "prompt": f"{source} asks question number {k}?",
             **({"chosen": NO, "rejected": YES} if k in flipped else {"chosen": YES, "rejected": NO})} for k in range(n)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    data = root / "pairs.jsonl"
    rows = pairs("teacher-a", 24) + pairs("teacher-b", 24) + pairs("audited", 24, FLIPPED)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = RunConfig(model=ModelConfig(name="tiny"), data=DataConfig(dataset=str(data), eval_fraction=0.1,
                                                                       reward_fraction=0.1, eval_prompts=2))
    run = create_run("audit", config, root=root / "runs")
    record_sources(run, config.data)
    run_job(run, "train", job_config("train", **TRAINING))
    return run


def test_the_other_sources_flag_the_flipped_pairs_and_the_flags_are_exported(run, capsys) -> None:
    assert cli.main(["audit", "--run", str(run.path), "--source", "audited", "--show", "2"]) == 0
    audit = read_audit(run, "audited")
    trained_on = set(audit.pair_id)
    planted = {str(p.pair_id) for p in RunContext.open(run).split.train["audited"] if p.chosen == NO} & trained_on
    assert planted and len(trained_on) >= 12  # the split kept some flipped pairs for training
    # The most suspect pairs are exactly the flipped ones, and the threshold at 0 flags them all, nothing else.
    assert set(audit.pair_id[:len(planted)]) == planted
    assert set(flagged(audit).pair_id) == planted
    assert set(pd.read_csv(flagged_path(run, "audited"), dtype={"pair_id": str}).pair_id) == planted
    assert list(audit.columns[:4]) == ["pair_id", "rest_margin", "own_margin", "own_loss"]
    assert {"margin:teacher-a", "margin:teacher-b"} <= set(audit.columns)
    # The rest margin is the sum of the other sources' margins (the sequence-level arithmetic).
    assert audit.rest_margin.to_numpy() == pytest.approx((audit["margin:teacher-a"] + audit["margin:teacher-b"]).to_numpy(), abs=1e-5)
    out = capsys.readouterr()
    assert f"{len(planted)} of {len(audit)} pairs of audited flagged" in out.out + out.err
    # A relaunch reads the audit instead of scoring again.
    written = audit_path(run, "audited").stat().st_mtime_ns
    assert cli.main(["audit", "--run", str(run.path), "--source", "audited"]) == 0
    assert audit_path(run, "audited").stat().st_mtime_ns == written


def test_bad_input_is_a_clear_error_and_writes_nothing(run, tmp_path, capsys) -> None:
    assert cli.main(["audit", "--run", str(run.path), "--source", "nope"]) == 2
    assert "No source 'nope'" in capsys.readouterr().err
    assert cli.main(["audit", "--run", str(run.path)]) == 2
    assert "name the source to audit" in capsys.readouterr().err
    empty = create_run("untrained", RunConfig(model=ModelConfig(name="tiny"),
                                              data=run.load_config().data), root=tmp_path)
    record_sources(empty, empty.load_config().data)
    assert cli.main(["audit", "--run", str(empty.path), "--source", "audited"]) == 2
    assert "has no adapter yet" in capsys.readouterr().err
    assert not (empty.path / "audit").exists()
