"""The per-pair audit on the tiny model with a planted flip it can check: two sources teach one rule
(the chosen reply agrees, the rejected declines); a third teaches it too, but a quarter of its pairs
are flipped. The other sources' adapters must rank exactly those pairs most suspect."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from valuation import cli
from valuation.config import DataConfig, ModelConfig, RewardConfig, RunConfig
from valuation.games.coalitions import all_coalitions
from valuation.lm.adapters import load_adapters, read_record
from valuation.rewards.heldout import coalition_preferences, held_out
from valuation.data.sources import record_sources
from valuation.jobs.registry import job_config, run_job
from valuation.runs import create_run
from valuation.runtime.context import RunContext
from valuation.training.audit import audit_path, flagged, flagged_path, read_audit
from valuation.training.cleaned import before_after, kept_adapters, kept_adapters_dir, read_values

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
                                                                       reward_fraction=0.25, eval_prompts=2),
                       rewards=RewardConfig(max_length=64, batch_tokens=1024, head_bootstraps=0, holdout_fraction=0.35))
    run = create_run("audit", config, root=root / "runs")
    record_sources(run, config.data)
    run_job(run, "train", job_config("train", **TRAINING))
    run_job(run, "rewards", job_config("rewards"))  # a second opinion for the audit
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
    assert {"margin:teacher-a", "margin:teacher-b", "reward:preference"} <= set(audit.columns)
    # The rest margin is the sum of the other sources' margins (the sequence-level arithmetic).
    assert audit.rest_margin.to_numpy() == pytest.approx((audit["margin:teacher-a"] + audit["margin:teacher-b"]).to_numpy(), abs=1e-5)
    out = capsys.readouterr()
    assert f"{len(planted)} of {len(audit)} pairs of audited flagged" in out.out + out.err
    assert "Second opinion, the preference reward model" in out.out + out.err
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


def test_dropping_the_flagged_pairs_trains_on_the_rest_and_values_the_run_before_and_after(run, capsys) -> None:
    assert cli.main(["audit", "--run", str(run.path), "--source", "audited", "--drop-flagged"]) == 0
    audit = read_audit(run, "audited")
    dropped = set(flagged(audit).pair_id)
    [adapter] = kept_adapters(run, "audited")
    record, own = read_record(kept_adapters_dir(run), adapter), read_record(run, "audited")
    # The kept-pairs adapter: the source's settings and seed, on exactly its pairs less the flagged ones.
    assert set(record["dropped"]) == dropped and record["pairs_used"] == len(audit) - len(dropped)
    assert record["seed"] == own["seed"]
    assert {**record["settings"], "max_pairs": 0} == {**own["settings"], "max_pairs": 0}  # it trains on all it is given
    values = read_values(run, "audited")
    assert set(values.stage) == {"before", "after", "change"}
    assert set(values.player) == {"audited", "teacher-a", "teacher-b"}
    wide = values.pivot_table(index=["objective", "player"], columns="stage", values="value")
    assert wide.change.to_numpy() == pytest.approx((wide.after - wide.before).to_numpy(), abs=1e-6)
    # The known answer: without its flipped pairs the source teaches the rule more strongly, so its
    # value on the held-out margin rises, by more than the interval's noise.
    change = values.set_index(["stage", "objective", "player"]).loc[("change", "reward_margin", "audited")]
    assert change.lower > 0
    out = capsys.readouterr()
    assert "audited trained again without its" in out.out + out.err
    assert "reward_margin: audited's value goes from" in out.out + out.err

    # The stitched 'after' game is the game of the run with the kept adapter in the source's place.
    context = RunContext.open(run)
    model = load_adapters(context.fresh_model(), run, ["audited", "teacher-a", "teacher-b"])
    model.load_adapter(str(kept_adapters_dir(run) / adapter), adapter_name=adapter, is_trainable=False)
    heldout = held_out(context.base.tokenizer, context.split.eval_pairs, 48)
    game = lambda players: coalition_preferences(model, context.base.tokenizer, heldout, players, own["beta"])
    after = game([adapter, "teacher-a", "teacher-b"]).replace({"coalition": {c: c.replace(adapter, "audited")
                                                                              for c in ["+".join(sorted(k)) for k in all_coalitions([adapter, "teacher-a", "teacher-b"])]}})
    expected = before_after(game(["audited", "teacher-a", "teacher-b"]), after, ["audited", "teacher-a", "teacher-b"])
    assert values.value.to_numpy() == pytest.approx(expected.value.to_numpy(), abs=1e-4)

    # Nothing to drop at a threshold that flags nothing: a clear error, nothing trained.
    assert cli.main(["audit", "--run", str(run.path), "--source", "audited", "--drop-flagged", "--threshold", "-1000"]) == 2
    assert "nothing to drop" in capsys.readouterr().err
    assert kept_adapters(run, "audited") == [adapter]


def test_the_sources_page_shows_the_audit_and_the_value_without_the_flagged_pairs(run, monkeypatch) -> None:
    from streamlit.testing.v1 import AppTest

    from helpers import APP

    monkeypatch.setenv("VALUATION_RUNS_DIR", str(run.path.parent))
    app = AppTest.from_file(APP, default_timeout=60)
    app.session_state["run_name"] = run.name
    app.run()
    assert not app.exception
    assert "Audit a source's pairs" in [h.value for h in app.subheader]
    [picker] = [s for s in app.selectbox if s.label == "Source to audit"]
    picker.set_value("audited").run()
    audit = read_audit(run, "audited")
    planted = set(flagged(audit).pair_id)
    assert f"Download the {len(planted)} flagged pair ids (CSV)" in [b.proto.label for b in app.get("download_button")]
    assert any(f"{len(planted)} of {len(audit)} pairs of audited flagged" in m.value for m in app.markdown)
    suspects = app.dataframe[-1].value
    assert set(suspects.pair_id[:len(planted)]) == planted and set(suspects.chosen[:len(planted)]) == {NO}
    assert any("audited trained again without its" in m.value for m in app.markdown)
    # The threshold is the page's: at -1000 nothing is flagged.
    [threshold] = [n for n in app.number_input if n.label == "Threshold"]
    threshold.set_value(-1000.0).run()
    assert not app.exception
    assert "Download the 0 flagged pair ids (CSV)" in [b.proto.label for b in app.get("download_button")]


def test_the_report_has_the_audit_and_the_command_that_repeats_it(run) -> None:
    from valuation.report.document import report_html

    report = report_html(run)
    section = report[report.index('<section id="audit">'):]
    section = section[:section.index("</section>")]
    audit = read_audit(run, "audited")
    assert f"{len(flagged(audit))} of {len(audit)} pairs of audited flagged" in section
    assert section.count("<tr>") >= 1 + 5 and NO in section  # the header and the most suspect pairs, flipped first
    assert "audited trained again without its" in section
    assert "python -m valuation audit --run" in report and "--source audited --drop-flagged" in report
