"""Training noise in the values: adapters under several training seeds, evaluated as replicas of
the game, averaged, with the spread between seeds in the intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers import TINY_REWARDS as REWARDS, evaluation_folder, random_adapter_run, run_table, store
from valuation import cli
from valuation.config import ModelConfig
from valuation.evaluation.settings import EvaluationConfig
from valuation.evaluation.store import by_sources
from valuation.games.intervals import bootstrap_intervals
from valuation.games.utility_table import UtilityError, UtilityTable, with_seeds
from valuation.games.values import value_sources
from valuation.jobs.registry import run_job
from valuation.lm.adapters import load_adapters
from valuation.lm.models import load_model
from valuation.lm.synthetic import save_random_adapters
from valuation.report.reproduce import train_configs
from valuation.rewards.heldout import coalition_preferences, held_out
from valuation.runtime.context import RunContext
from valuation.views.snapshot import RunSnapshot

SOURCES = ["harmless-base", "helpful-base"]
PROMPTS = 40


def additive(values: dict[str, float], noise: float, seed: int) -> UtilityTable:
    """v_x(S) = sum of the members' values plus per-prompt noise shared by all coalitions of a prompt
    and one member's (so that each prompt's Shapley values differ): known values, known spread."""
    rng = np.random.default_rng(seed)
    shift, wobble = rng.normal(0, 1, PROMPTS), rng.normal(0, noise, PROMPTS)
    rows = []
    for coalition in ("", "a", "b", "a+b"):
        members = [m for m in coalition.split("+") if m]
        for p in range(PROMPTS):
            utility = shift[p] + sum(values[m] + (wobble[p] if m == "a" else 0) for m in members)
            rows.append({"coalition": coalition, "prompt": f"p{p:02d}", "u": utility})
    return UtilityTable.from_frame(pd.DataFrame(rows))


def test_the_values_average_the_seeds_and_the_intervals_hold_their_spread() -> None:
    # Two seeds that disagree about source a (+1 and -1), agree about b (0.5), with little prompt noise.
    first, second = additive({"a": 1.0, "b": 0.5}, 0.05, 0), additive({"a": -1.0, "b": 0.5}, 0.05, 0)
    table = with_seeds(first, [second], ["second"])
    result = bootstrap_intervals(("a", "b"), table, n_boot=2000)
    alone = bootstrap_intervals(("a", "b"), first, n_boot=2000)
    mean = (alone.values + bootstrap_intervals(("a", "b"), second, n_boot=2000).values) / 2
    np.testing.assert_allclose(result.values, mean)  # the mean of the seeds' values: about 0 and 0.5
    assert result.values[:, 0] == pytest.approx([0.0, 0.5], abs=0.05)
    assert result.seeds == 2 and "2 training seeds" in result.describe()
    a_low, a_high = result.lower[0, 0], result.upper[0, 0]
    assert a_low < -1 and a_high > 1  # the seeds' disagreement is in a's interval: it spans zero
    assert result.upper[1, 0] - result.lower[1, 0] < 0.1  # b, on which they agree, stays sharp

    # One seed, or seeds that agree: exactly the prompts-only interval.
    twins = bootstrap_intervals(("a", "b"), with_seeds(first, [first], ["twin"]), n_boot=2000)
    np.testing.assert_allclose(twins.lower, alone.lower)
    np.testing.assert_allclose(twins.upper, alone.upper)
    t = bootstrap_intervals(("a", "b"), table, interval="t")
    assert t.lower[0, 0] < -1 and t.upper[0, 0] > 1


def test_a_seed_table_of_another_game_is_refused() -> None:
    first = additive({"a": 1.0, "b": 0.5}, 0.05, 0)
    fewer = UtilityTable.from_frame(first.to_frame().drop(columns="size").query("coalition != 'a+b'"))
    with pytest.raises(ValueError, match="seed2.csv does not match"):
        with_seeds(first, [fewer], ["utilities.seed2.csv"])


@pytest.mark.parametrize("estimator", ["pooled", "direct"])
def test_an_evaluation_plays_every_seed_and_the_values_average_them(tmp_path, estimator, capsys) -> None:
    run = random_adapter_run(tmp_path, estimator, SOURCES, rewards=REWARDS, eval_prompts=4)
    save_random_adapters(run, [*SOURCES, "harmless-base@seed2", "helpful-base@seed2"])  # seed 2: other weights
    config = EvaluationConfig(estimator=estimator, prompts=2, samples=2, pool_per_anchor=2, max_new_tokens=3,
                              chunk_prompts=1, ess_floor=0)
    path = run_job(run, "evaluate", config)
    folder = evaluation_folder(run)
    first = pd.read_csv(path, keep_default_na=False)
    second = pd.read_csv(store(run).table_path("utilities", 1), keep_default_na=False)
    assert set(second.coalition) == set(first.coalition) and set(second.prompt) == set(first.prompt)
    assert not np.allclose(first.helpfulness, second.helpfulness)  # other adapters, other utilities
    # The reward-free utilities too, every seed's game scored in one pass: each equals its game scored alone.
    context, seeded = RunContext.open(run), [f"{s}@seed2" for s in SOURCES]
    loaded = load_model(ModelConfig(name="tiny"))
    alone = coalition_preferences(load_adapters(loaded, run, seeded), loaded.tokenizer,
                                  held_out(loaded.tokenizer, context.split.eval_pairs, config.max_new_tokens), seeded, 0.1)
    joint = pd.read_csv(store(run).table_path("preference", 1), keep_default_na=False).set_index(["coalition", "prompt"])
    alone = by_sources(alone).set_index(["coalition", "prompt"]).loc[joint.index]
    np.testing.assert_allclose(joint[["preference_accuracy", "reward_margin"]], alone[["preference_accuracy", "reward_margin"]],
                               atol=1e-5)
    if estimator == "pooled":
        assert store(run).table_path("utilities-sequence", 1).is_file()
        assert len(store(run).samples()) == 2 * 4 * 2  # one pool (prompts x anchors x draws): the seed is weighed, not sampled
    for target in store(run).targets:
        valuation = value_sources(run_table(run, target))
        assert valuation.shapley.seeds == 2 and "2 training seeds" in valuation.shapley.describe()
        assert "average over 2 training seeds" in valuation.interval_note()
        assert "over prompts only" not in valuation.interval_note()  # the seeds are in them too
    assert cli.main(["shapley", "--run", str(run.path), "--target", "preference"]) == 0  # the reward-free target
    assert "average over 2 training seeds" in capsys.readouterr().out
    mean = (first.set_index(["coalition", "prompt"]).helpfulness + second.set_index(["coalition", "prompt"]).helpfulness) / 2
    assert run_table(run).value(frozenset(SOURCES), "helpfulness") == pytest.approx(
        mean.xs("harmless-base+helpful-base").mean())

    # Without the further seed's adapters, an evaluation plays one seed and removes the other's tables.
    for adapter in ("harmless-base@seed2", "helpful-base@seed2"):
        (run.path / "adapters" / adapter / "training.json").unlink()
    run_job(run, "evaluate", config)
    assert not list(folder.glob("*.seed2.csv"))
    assert "one training seed" in value_sources(run_table(run)).interval_note()


def test_a_damaged_seed_table_says_which_file(tmp_path) -> None:
    run = random_adapter_run(tmp_path, "damaged", SOURCES, rewards=REWARDS, eval_prompts=4)
    path = run_job(run, "evaluate", EvaluationConfig(estimator="direct", prompts=2, samples=1, max_new_tokens=2))
    pd.read_csv(path, keep_default_na=False).iloc[:-1].to_csv(store(run).table_path("utilities", 1), index=False)
    with pytest.raises(UtilityError, match="seed2.csv"):
        run_table(run)


def test_the_reports_train_command_names_the_seeds(tmp_path) -> None:
    run = random_adapter_run(tmp_path, "report", SOURCES)
    assert train_configs(RunSnapshot(run))[0].seeds == 1
    save_random_adapters(run, [*SOURCES, "harmless-base@seed2", "helpful-base@seed2"])
    assert train_configs(RunSnapshot(run))[0].seeds == 2


def test_one_seed_gives_no_finding_until_a_second_seed_checks_it(tmp_path, capsys) -> None:
    """A run's values under one training seed: intervals that exclude zero are 'not findings yet' on
    every surface (the caveats, the command line, the report's reading); a second seed's table, whose
    spread is then in the intervals, makes the one that survives a finding."""
    from helpers import additive_prompt_frame, write_utilities
    from valuation.report.document import report_html
    from valuation.views.caveats import UNCHECKED, run_caveats, unchecked
    from valuation.views.findings import findings, findings_text

    run = random_adapter_run(tmp_path, "one-seed", SOURCES)  # trained adapters, one seed each
    write_utilities(run.path, additive_prompt_frame())  # 'strong' adds about 1: its interval excludes zero
    snapshot = RunSnapshot(run)
    valuation = value_sources(snapshot.store.load())
    assert valuation.players[1] == "strong" and not valuation.spans_zero()[1, 0]  # sorted: noise, strong, weak
    said = run_caveats(snapshot, {"direct": valuation})
    assert "strong on helpfulness" in unchecked(said) and "noise on helpfulness" not in unchecked(said)
    assert any(c.kind == UNCHECKED and c.text.startswith("Not findings yet") for c in said)
    assert cli.main(["shapley", "--run", str(run.path)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[:6] if line.startswith("  ")}
    assert "not yet checked against training noise" in rows["strong"] and "spans zero" in rows["noise"]
    assert "not yet checked against training noise (one training seed)" in (html := report_html(run))
    assert "What the run finds" in html and "No finding yet: each source has one adapter" in html
    assert findings_text(snapshot, {"direct": valuation})[0].startswith("No finding yet: each source has one adapter")

    # A second seed that agrees: the intervals now hold the seeds' spread, and 'strong' is a finding.
    additive_prompt_frame(seed=0).to_csv(store(run).table_path("utilities", 1), index=False)
    snapshot = RunSnapshot(run)
    valuation = value_sources(snapshot.store.load())
    assert valuation.shapley.seeds == 2 and not unchecked(run_caveats(snapshot, {"direct": valuation}))
    found = findings(snapshot, {"direct": valuation})
    assert {(f.source, f.objective) for f in found} == {(s, o) for s in ("strong", "weak") for o in ("helpfulness", "harmlessness")}
    assert all(f.agreeing == 2 for f in found)  # 'noise', exactly zero on average, is no finding
    said = findings_text(snapshot, {"direct": valuation})
    assert "strong takes from harmlessness (direct sampling of every coalition): -0.4" in " ".join(said)
    assert said[0].endswith("the same sign under each of its 2 training seeds alone")
    assert cli.main(["shapley", "--run", str(run.path)]) == 0
    out = capsys.readouterr().out
    assert "not yet checked" not in out and "findings:\n- strong adds to helpfulness" in out


def test_two_sources_with_identical_pairs_are_no_finding_at_the_default_settings(tmp_path, capsys) -> None:
    """Twins (the same pairs under two names) trained by DPO at the default number of seeds: whatever
    training noise makes of them, no surface presents a value of theirs as a finding."""
    import json

    from helpers import table_rows, write_jsonl
    from valuation.config import DataConfig, ModelConfig, RunConfig
    from valuation.data.sources import record_sources
    from valuation.jobs.registry import job_config
    from valuation.runs import create_run

    rows = table_rows("twin-a", 40) + [r | {"source": "twin-b"} for r in table_rows("twin-a", 40)]
    rows += [r | {"chosen": r["rejected"], "rejected": r["chosen"]} for r in table_rows("flipped", 40)]
    data = DataConfig(dataset=str(write_jsonl(tmp_path / "twins.jsonl", rows)), eval_prompts=4)
    run = create_run("twins", RunConfig(model=ModelConfig(name="tiny"), data=data), root=tmp_path)
    record_sources(run, data)
    # The default recipe's shape, scaled to the tiny model: its top layer of 2 over the cached trunk.
    train = job_config("train", train_layers=1, max_pairs=8, batch_size=4, gradient_accumulation=1, max_length=64,
                       max_prompt_length=32)
    assert train.seeds == 1  # the default
    run_job(run, "train", train)
    run_job(run, "evaluate", EvaluationConfig(estimator="direct", prompts=4, samples=1, max_new_tokens=3))
    capsys.readouterr()  # the jobs' log lines
    assert cli.main(["shapley", "--run", str(run.path), "--target", "preference", "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    not_yet = {item for c in result["caveats"] if c["kind"] == "unchecked" for item in c["about"]}
    for objective, values in result["shapley"].items():
        for twin in ("twin-a", "twin-b"):
            value = values[twin]
            spans = value["lower"] <= 0 <= value["upper"]
            assert spans or f"{twin} on {objective}" in not_yet, (objective, twin, value)
