"""The retrain experiment on the tiny model: one adapter per coalition, trained on exactly its
members' pairs with the run's own settings, and the same game valued three ways (retrained,
arithmetic, weight-space merge). One test trains for real and checks the bookkeeping; one plants
union models whose game is known (every union is the same model) and checks the values."""

from __future__ import annotations

import json
import shutil
from html import escape
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from helpers import APP, TINY_REWARDS, random_adapter_run, store, table_rows, write_jsonl
from valuation import cli
from valuation.config import ModelConfig, settings_of
from valuation.evaluation.settings import EvaluationConfig
from valuation.games.coalitions import coalition_name
from valuation.games.shapley import exact_shapley
from valuation.games.utility_table import UtilityTable
from valuation.jobs.background import job_dir
from valuation.jobs.registry import job_config, run_job
from valuation.lm.adapters import RECORD_FILE, adapter_dir, load_adapters
from valuation.lm.models import load_model
from valuation.lm.tokens import fit_prompt
from valuation.progress import Reporter
from valuation.rewards.heldout import coalition_preferences, held_out
from valuation.report.document import report_html
from valuation.runtime.context import RunContext
from valuation.training.settings import TrainConfig
from valuation.validation.job import run_validate
from valuation.validation.results import retrain_agreement, retrain_coalitions, retrain_findings, retrain_values
from valuation.validation.retrain import METHODS, retrain_sources, unions
from valuation.validation.retrain_rewards import pool_reach, reach_finding
from valuation.validation.inputs import judged_evenly
from valuation.validation.settings import ValidationError, retrain_dir

H, K, O = "harmless-base", "helpful-base", "helpful-online"
RETRAIN = job_config("validate", experiments=["retrain"], response_tokens=6)
TINY_TRAINING = TrainConfig(max_pairs=4, batch_size=8, max_length=64, max_prompt_length=48, train_layers=1,
                            warmup_ratio=0.0, learning_rate=1e-2)


def tiny_run(tmp_path, sources: list[str]):
    """A run of random adapters whose records say they trained with TINY_TRAINING: what the unions train with."""
    run = random_adapter_run(tmp_path, "retrain", sources, eval_prompts=4)
    for source in sources:
        path = adapter_dir(run, source) / RECORD_FILE
        path.write_text(json.dumps({**json.loads(path.read_text()), "settings": settings_of(TINY_TRAINING)}))
    return run


def read_table(run) -> pd.DataFrame:
    return pd.read_csv(retrain_dir(run) / "utilities.csv", dtype={"coalition": str, "prompt": str}).fillna({"coalition": ""})


def test_a_union_trains_on_exactly_its_members_pairs_and_a_relaunch_trains_nothing(tmp_path) -> None:
    run = tiny_run(tmp_path, [H, K])
    context, reporter = RunContext.open(run), Reporter(tmp_path / "progress.jsonl")
    path = retrain_dir(run) / "utilities.csv"
    assert run_validate(context, RETRAIN, reporter) == [path]

    union = coalition_name([H, K])
    record = json.loads((adapter_dir(retrain_dir(run) / "adapters", union) / RECORD_FILE).read_text())
    tokenizer = context.base.tokenizer
    trained_on = [p.pair_id for s in (H, K)  # what each member's adapter takes: its first 4 pairs whose prompt fits
                  for p in [p for p in context.split.train[s] if fit_prompt(tokenizer, p.prompt, 48) is not None][:4]]
    assert record["members"] == [H, K] and record["pair_ids"] == trained_on and record["pairs_used"] == 8
    assert record["settings"]["train_layers"] == 1 and record["settings"]["learning_rate"] == 1e-2  # the run's own

    table = read_table(run)
    assert sorted(table.method.unique()) == sorted(METHODS) and (table.seed == 0).all()
    shared = table[table.coalition != union].pivot_table(index=["coalition", "prompt"], columns="method",
                                                         values="reward_margin")
    assert (shared.nunique(axis=1) == 1).all()  # the base and each source alone: one model whatever the method
    grand = table[table.coalition == union].pivot_table(index="prompt", columns="method", values="reward_margin")
    assert (grand.retrained != grand.arithmetic).all()  # the trained union is a model of its own

    # The arithmetic here is the coalition model of the reward-free utilities, pair by pair, on the
    # eval part's pairs taken evenly across sources (prompts cut as training cuts them).
    heldout = held_out(tokenizer, judged_evenly(context, 48, RETRAIN.retrain_pairs), RETRAIN.response_tokens)
    assert 0 < len(heldout) <= RETRAIN.retrain_pairs and table.prompt.nunique() == len(heldout)
    loaded = load_model(ModelConfig(name="tiny"))
    direct = coalition_preferences(load_adapters(loaded, run), loaded.tokenizer, heldout, [H, K], 0.1)
    arithmetic = table[table.method == "arithmetic"].drop(columns=["method", "seed"])
    merged = arithmetic.merge(direct, on=["coalition", "prompt"], suffixes=("", "_direct"))
    assert len(merged) == len(direct) == 4 * len(heldout)
    np.testing.assert_allclose(merged.reward_margin, merged.reward_margin_direct, atol=1e-4)

    stamps = {p: p.stat().st_mtime_ns for p in retrain_dir(run).rglob("*") if p.is_file()}
    run_validate(context, RETRAIN, reporter)  # a relaunch: every adapter and the table are there
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_when_every_union_is_one_model_no_source_adds_anything_last(runs_dir, tmp_path) -> None:
    # Plant each union's adapter as a copy of H's: the retrained game is v(S) = v({H}) for |S| >= 2.
    # Leave-one-out is then exactly zero for every source (all of N less one is still a union) and
    # Shapley is the known game's; the arithmetic and the merge stay their own games. Then the page,
    # the report and the command line show it.
    sources = [H, K, O]
    run = tiny_run(runs_dir, sources)
    for coalition in unions(sources):
        shutil.copytree(adapter_dir(run, H), adapter_dir(retrain_dir(run) / "adapters", coalition_name(coalition)))
    run_validate(RunContext.open(run), RETRAIN, Reporter(tmp_path / "progress.jsonl"))

    values = retrain_values(run).set_index(["method", "index", "objective", "player"]).sort_index()
    loo = values.loc[("retrained", "leave-one-out")]
    np.testing.assert_allclose(loo[["value", "lower", "upper"]], 0, atol=1e-9)
    table = read_table(run)
    retrained = UtilityTable.from_frame(table[table.method == "retrained"].drop(columns=["method", "seed"]))
    alone = table[(table.method == "retrained") & (table.coalition == H)].drop(columns=["method", "seed", "coalition"])
    for size_two_or_more in (c for c in retrained.values if len(c) >= 2):
        np.testing.assert_allclose(retrained(size_two_or_more), alone[["preference_accuracy", "reward_margin"]].mean())
    exact = exact_shapley(retrained.players, retrained, objectives=retrained.objectives).to_frame().set_index(["objective", "player"])
    np.testing.assert_allclose(values.loc[("retrained", "shapley")].value.sort_index(), exact.value.sort_index())
    assert values.loc[("arithmetic", "leave-one-out")].value.abs().max() > 1e-3  # the arithmetic is not that game

    agreement = retrain_agreement(retrain_values(run))
    assert set(agreement.method) == {"arithmetic", "merged"} and set(agreement["index"]) == {"shapley", "leave-one-out"}
    scatter = retrain_coalitions(run)
    assert len(scatter) == 2 ** 3 * 2 and (scatter[scatter["size"] < 2].retrained == scatter[scatter["size"] < 2].arithmetic).all()

    findings = retrain_findings(agreement)
    assert len(findings) == 2 * 2 * 2 and all("half-widths" in line for line in findings)
    def shown_lines(page: str) -> list[str]:  # every markdown line of the page, bullets unmarked
        app.switch_page(page)
        app.run()
        assert not app.exception
        return [line.removeprefix("- ") for m in app.markdown for line in m.value.splitlines()]

    app = AppTest.from_file(APP, default_timeout=60)
    app.session_state["run_name"] = run.name
    assert findings[0] in shown_lines("pages/validate.py")
    assert app.main.subheader[-1].value.startswith("6 · Retrained on every coalition's data")
    assert findings[0] in shown_lines("pages/learn.py")
    report = report_html(run)
    assert escape("Retrained on every coalition's data") in report and escape(findings[0]) in report
    assert cli.main(["validate", "--run", str(run.path), "--experiments", "retrain", "--response-tokens", "6"]) == 0  # all there: reports, trains nothing
    assert findings[0] in (job_dir(run) / "log.txt").read_text()


def test_the_retrain_experiment_refuses_what_it_cannot_do(tmp_path) -> None:
    run = tiny_run(tmp_path, [H, K, O])
    shutil.rmtree(adapter_dir(run, O))  # O has data but no adapter yet
    with pytest.raises(ValidationError, match=r"\['helpful-online'\] lack an adapter .* train them first"):
        run_validate(RunContext.open(run), replace(RETRAIN, sources=[H, O]), Reporter(tmp_path / "progress.jsonl"))
    with pytest.raises(ValidationError, match=r"\['a', 'b', 'helpful-online'\] lack an adapter"):
        retrain_sources(replace(RETRAIN, sources=[H, K, O, "a", "b"]), run)


def test_beyond_four_sources_it_retrains_what_leave_one_out_reads_and_values_by_it(tmp_path) -> None:
    sources = [f"vendor-{k}" for k in range(5)]
    data = write_jsonl(tmp_path / "pairs.jsonl", [row for s in sources for row in table_rows(s, 16)])
    run = random_adapter_run(tmp_path, "five", sources, dataset=str(data), eval_fraction=0.25, eval_prompts=4)
    for source in sources:
        path = adapter_dir(run, source) / RECORD_FILE
        path.write_text(json.dumps({**json.loads(path.read_text()), "settings": settings_of(TINY_TRAINING)}))
    grand = frozenset(sources)
    assert unions(sources) == [grand - {s} for s in sources] + [grand]  # 6 adapters, not 26
    run_validate(RunContext.open(run), replace(RETRAIN, sources=sources), Reporter(tmp_path / "progress.jsonl"))
    table = read_table(run)
    assert table.groupby("method").coalition.nunique().to_dict() == dict.fromkeys(METHODS, 1 + 5 + 6)
    values = retrain_values(run)
    assert set(values["index"]) == {"leave-one-out"}  # Shapley needs every coalition
    # Leave-one-out is v(N) - v(N less i), read off the table, for every method.
    mean = table.groupby(["method", "coalition"]).reward_margin.mean()
    for row in values[values.objective == "reward_margin"].itertuples():
        expected = mean[(row.method, coalition_name(grand))] - mean[(row.method, coalition_name(grand - {row.player}))]
        assert row.value == pytest.approx(expected, abs=1e-6)
        assert row.lower <= row.value <= row.upper
    assert len(retrain_agreement(values)) == 2 * 2  # arithmetic and merged, on two objectives


def test_the_reward_objectives_are_read_off_the_evaluation_pool(runs_dir, tmp_path, capsys) -> None:
    # Plant the union's adapter as a copy of H's: on the pool, the retrained v({H, K}) must be v({H})
    # prompt by prompt, and the arithmetic must be the evaluation's own token-level utilities.
    run = random_adapter_run(runs_dir, "rewarded", [H, K], rewards=TINY_REWARDS, eval_prompts=4)
    for source in (H, K):
        path = adapter_dir(run, source) / RECORD_FILE
        path.write_text(json.dumps({**json.loads(path.read_text()), "settings": settings_of(TINY_TRAINING)}))
    union = coalition_name([H, K])
    shutil.copytree(adapter_dir(run, H), adapter_dir(retrain_dir(run) / "adapters", union))
    context, progress = RunContext.open(run), tmp_path / "progress.jsonl"
    run_validate(context, RETRAIN, Reporter(progress))
    assert not (retrain_dir(run) / "rewards.csv").exists() and "the reward objectives are left out" in capsys.readouterr().out

    run_job(run, "evaluate", EvaluationConfig(prompts=2, pool_per_anchor=2, max_new_tokens=4, chunk_prompts=1, ess_floor=0))
    run_validate(context, RETRAIN, Reporter(progress))
    rewards = pd.read_csv(retrain_dir(run) / "rewards.csv", dtype={"coalition": str, "prompt": str}).fillna({"coalition": ""})
    assert list(rewards.columns) == ["method", "seed", "coalition", "prompt", "helpfulness", "harmlessness"]
    assert len(rewards) == len(METHODS) * 4 * 2  # three methods, four coalitions, two prompts
    by = rewards.set_index(["method", "coalition", "prompt"]).sort_index()[["helpfulness", "harmlessness"]]
    evaluated = store(run).frame_of().set_index(["coalition", "prompt"]).sort_index()[["helpfulness", "harmlessness"]]
    np.testing.assert_allclose(by.loc["arithmetic"], evaluated, atol=1e-6)
    np.testing.assert_allclose(by.loc[("retrained", union)], by.loc[("retrained", H)], atol=1e-6)
    assert not np.allclose(by.loc[("merged", union)], by.loc[("retrained", union)])  # the merge is a model of its own

    values = retrain_values(run)
    assert {"helpfulness", "harmlessness", "preference_accuracy"} <= set(values.objective)
    assert (values.lower <= values.value).all() and (values.value <= values.upper).all()
    reach = pool_reach(run)
    assert reach["prompts"] == 2 and reach["pool"] == 4 * 2 and set(reach["ess"]) == set(METHODS)
    assert all(0 < ess <= reach["pool"] for ess in reach["ess"].values())
    assert reach_finding(reach) in capsys.readouterr().out
    app = AppTest.from_file(APP, default_timeout=60)
    app.session_state["run_name"] = run.name
    app.switch_page("pages/validate.py")
    app.run()
    assert not app.exception and any(reach_finding(reach) in m.value for m in app.markdown)
    assert escape(reach_finding(reach)) in report_html(run)

    stamps = {p: p.stat().st_mtime_ns for p in retrain_dir(run).rglob("*") if p.is_file()}
    run_validate(context, RETRAIN, Reporter(progress))  # a relaunch: nothing weighed again
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
