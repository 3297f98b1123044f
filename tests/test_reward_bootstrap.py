"""The reward model's own noise in the Shapley intervals: bootstrap heads, stored per response,
turned into per-head utilities by the evaluation itself and folded into the intervals by a nested
bootstrap."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import additive_prompt_frame, evaluation_folder, random_adapter_run, run_table, utilities_csv
from valuation.config import ConfigError, RewardConfig, RewardObjective
from valuation.evaluation.settings import EvaluationConfig
from valuation.games.intervals import bootstrap_intervals
from valuation.games.utility_table import RewardHeads, UtilityTable, with_combined
from valuation.games.values import value_sources
from valuation.jobs.registry import run_job
from valuation.progress import Reporter
from valuation.rewards.cards import BOOTSTRAP_FILE, read_reward_card, rewards_dir
from valuation.rewards.models import BootstrapHeads, BradleyTerryHead
from valuation.rewards.store import reward_models
from valuation.runs import Run
from valuation.runtime.context import RunContext

DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo-run"


def separable_pairs(n: int, d: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    truth = torch.randn(d, generator=generator)
    a, b = torch.randn(n, d, generator=generator), torch.randn(n, d, generator=generator)
    a_wins = (a @ truth > b @ truth)[:, None]
    return torch.where(a_wins, a, b), torch.where(a_wins, b, a)


def test_bootstrap_heads_are_refits_on_resamples_stored_as_one_matrix(tmp_path):
    chosen, rejected = separable_pairs(300)
    heads = BootstrapHeads.fit(chosen, rejected, l2=0.01, heads=6, seed=3)
    assert heads.weight.shape == (6, 12) and len(heads) == 6
    again = BootstrapHeads.fit(chosen, rejected, l2=0.01, heads=6, seed=3)
    assert torch.equal(heads.weight, again.weight)  # seeded
    assert not torch.allclose(heads.weight[0], heads.weight[1])  # different resamples, different heads
    # Each is the main head's fit on its resample, folded into an affine map: it ranks pairs alike.
    scores = heads(torch.cat([chosen, rejected]))
    assert scores.shape == (600, 6) and ((scores[:300] > scores[300:]).float().mean(0) > 0.9).all()
    main = BradleyTerryHead.fit(chosen, rejected, l2=0.01)
    agreement = np.corrcoef(main(chosen).numpy(), scores[:300, 0].numpy())[0, 1]
    assert agreement > 0.9
    heads.save(tmp_path / BOOTSTRAP_FILE)
    assert torch.equal(BootstrapHeads.load(tmp_path / BOOTSTRAP_FILE)(chosen), heads(chosen))
    assert BootstrapHeads.load(tmp_path / "absent.safetensors") is None  # optional: never an error
    with pytest.raises(ConfigError, match="head_bootstraps"):
        RewardConfig(head_bootstraps=1).validate()


def heads_table(disagreement: float, k: int = 20, seed: int = 1) -> UtilityTable:
    """The additive per-prompt game, with helpfulness also under k heads that each shift every
    source's contribution by its own amount (heads that disagree); harmlessness has none."""
    table = UtilityTable.from_frame(additive_prompt_frame())
    rng = np.random.default_rng(seed)
    shift = {p: rng.normal(0, disagreement, k) for p in table.players}
    per_head = {c: table.per_prompt[c][0][None] + sum((shift[p] for p in c), np.zeros(k))[:, None]
                for c in table.per_prompt}
    return replace(table, heads=RewardHeads({"helpfulness": per_head}, {"harmlessness": "a hub reward model cannot be refit"}))


def test_heads_that_disagree_widen_the_intervals_and_leave_the_rest_alone():
    table = heads_table(disagreement=0.3)
    plain = value_sources(replace(table, heads=None)).shapley
    nested = value_sources(table).shapley
    np.testing.assert_array_equal(nested.values, plain.values)  # the main head's values
    width = lambda r: r.upper - r.lower  # noqa: E731
    assert (width(nested)[:, 0] >= width(plain)[:, 0]).all() and (width(nested)[:, 0] > 1.5 * width(plain)[:, 0]).all()
    np.testing.assert_array_equal(nested.lower[:, 1], plain.lower[:, 1])  # no heads: the same prompt-only interval
    np.testing.assert_array_equal(nested.upper[:, 1], plain.upper[:, 1])
    assert nested.reward_heads == {"helpfulness": 20} and "20 reward heads (helpfulness)" in nested.describe()
    note = value_sources(table).interval_note()
    assert "helpfulness (20 heads)" in note and "over prompts only for harmlessness: a hub reward model cannot be refit" in note
    # Heads that agree add nothing.
    same = value_sources(heads_table(disagreement=0.0)).shapley
    np.testing.assert_allclose(width(same), width(plain), rtol=0.1)
    # The t-interval adds the between-head variance.
    t_plain = bootstrap_intervals(table.players, replace(table, heads=None), interval="t")
    t_nested = bootstrap_intervals(table.players, table, interval="t")
    assert (width(t_nested)[:, 0] > width(t_plain)[:, 0]).all()
    # A combined objective mixes head k of one with the other's main utilities.
    combined = with_combined(table, 0.5, "helpfulness", "harmlessness")
    assert combined.heads.count("combined") == 20
    both = value_sources(combined).shapley
    assert (width(both)[:, 2] >= width(value_sources(replace(combined, heads=None)).shapley)[:, 2]).all()


def noise_pairs(path: Path, sources: list[str], n: int = 90) -> Path:
    """Pairs whose labels carry no signal: chosen and rejected are drawn from one pool of replies."""
    rng = np.random.default_rng(0)
    replies = ["Sure.", "I think so, yes.", "Maybe later.", "That depends on the weather.", "No idea, sorry.",
               "Here is one way to do it: slowly.", "Ask a friend.", "It is hard to say."]
    rows = []
    for source in sources:
        for i in range(n):
            a, b = rng.choice(len(replies), 2, replace=False)
            rows.append({"source": source, "prompt": f"{source} question {i}: what would you do?",
                         "chosen": replies[a], "rejected": replies[b]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_pure_noise_reward_model_gives_intervals_that_include_zero(tmp_path):
    sources = ["alpha", "beta"]
    rewards = RewardConfig(objectives=[RewardObjective("noise", sources)], max_pairs=0, max_length=48,
                           batch_tokens=1024, l2=0.3)
    run = random_adapter_run(tmp_path, "noise", sources, rewards=rewards, dataset=str(noise_pairs(tmp_path / "n.jsonl", sources)),
                             eval_prompts=8)
    run_job(run, "evaluate", EvaluationConfig(prompts=8, pool_per_anchor=3, max_new_tokens=6, chunk_prompts=4, ess_floor=0))
    card = read_reward_card(run, "noise")
    assert card["bootstrap"]["heads"] == 20 and (rewards_dir(run) / "noise" / BOOTSTRAP_FILE).exists()
    scores = json.loads(next((evaluation_folder(run) / "scores" / "noise").rglob("chunk-0000.json")).read_text())
    assert len(scores["bootstrap"]) == 20 and all(len(h) == len(scores["scores"]) for h in scores["bootstrap"])

    for target in ("token", "sequence"):
        table = run_table(run, target)
        assert table.heads.count("noise") == 20 and not table.heads.missing
        valuation = value_sources(table)
        assert "20 reward heads (noise)" in valuation.shapley.describe()
        assert valuation.spans_zero().all(), valuation.values_frame()  # no source is told apart from no effect
        prompt_only = value_sources(replace(table, heads=None)).shapley
        assert ((valuation.shapley.upper - valuation.shapley.lower) >= (prompt_only.upper - prompt_only.lower)).all()
        # What the heads add: over prompts alone, this noise head "finds" an effect of beta.
        assert not prompt_only.spans_zero().all()

    # Coalitions the pool reaches poorly are sampled directly: their heads come from those samples.
    run_job(run, "evaluate", EvaluationConfig(prompts=8, pool_per_anchor=3, samples=1, max_new_tokens=6,
                                              chunk_prompts=4, ess_floor=100))
    assert set(pd.read_csv(evaluation_folder(run) / "estimation.csv").query("target == 'token'").estimator) == {"direct"}
    assert run_table(run).heads.count("noise") == 20
    # A changed number of heads keeps the trained reward model (its main head does not depend on them).
    config = run.load_config()
    config.rewards = replace(config.rewards, head_bootstraps=0)
    context = RunContext.open(run)
    context.config = config
    assert reward_models(context, Reporter(tmp_path / "again.jsonl"))["noise"].bootstrap_key == card["bootstrap"]["key"]

    # The evaluation wrote every head's utilities beside the table: reading the values reads them, no estimator runs.
    heads = pd.read_csv(evaluation_folder(run) / "utilities.heads.csv", keep_default_na=False)
    assert [f"noise@{k}" for k in range(20)] == [c for c in heads.columns if c.startswith("noise@")]
    # Heads refit after the evaluation did not score it: their utilities would not be this table's.
    card_path = rewards_dir(run) / "noise" / "reward.json"
    card_path.write_text(json.dumps(card | {"bootstrap": card["bootstrap"] | {"key": "refit"}}))
    assert "not the ones that scored this evaluation" in run_table(run).heads.missing["noise"]
    card_path.write_text(json.dumps(card))
    # An evaluation made before they were kept (or whose heads' utilities were lost) is prompt-only, and says so.
    (evaluation_folder(run) / "utilities.heads.csv").unlink()
    table = run_table(run)
    assert table.heads.count("noise") == 0 and "were not kept" in table.heads.missing["noise"]
    assert "prompts only" in value_sources(table).interval_note()


def test_a_run_without_bootstrap_heads_loads_with_prompt_only_intervals(tmp_path):
    run = shutil.copytree(DEMO, tmp_path / "demo")
    for card_path in (run / "rewards").glob("*/reward.json"):  # reward models trained before bootstrap heads existed
        card_path.write_text(json.dumps({k: v for k, v in json.loads(card_path.read_text()).items() if k != "bootstrap"}))
    for heads in (run / "evaluation").glob("*.heads.csv"):
        heads.unlink()
    table = run_table(run)
    assert table.heads is not None and not table.heads.per_prompt
    assert set(table.heads.missing) == {"helpfulness", "harmlessness"}
    valuation = value_sources(table)
    plain = value_sources(replace(table, heads=None)).shapley  # the same table (its 3 seeds too), no heads
    np.testing.assert_array_equal(valuation.shapley.lower, plain.lower)
    np.testing.assert_array_equal(valuation.shapley.upper, plain.upper)
    assert not valuation.shapley.reward_heads and "reward heads" not in valuation.shapley.describe()
    assert "over prompts (helpfulness, harmlessness: trained without bootstrap heads, which retraining adds)" \
        in valuation.interval_note()
    # A hub reward model cannot be refit: said, and its intervals stay prompt-only.
    card_path = rewards_dir(Run(run)) / "helpfulness" / "reward.json"
    card = json.loads(card_path.read_text())
    card_path.write_text(json.dumps(card | {"kind": "hub", "hub_model": "Ray2333/gpt2-large-helpful-reward_model"}))
    hub = value_sources(run_table(run))
    assert "helpfulness: a hub reward model cannot be refit" in hub.interval_note()
    np.testing.assert_array_equal(hub.shapley.lower, plain.lower)
    # The reward-free preference table has no reward model at all.
    assert run_table(run, "preference").heads is None
    assert pd.read_csv(utilities_csv(run)).shape[0] == len(table.values) * len(table.prompts)
