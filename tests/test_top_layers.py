"""DPO on the top layers over a frozen trunk, on the tiny model: it learns a planted preference, its
steps, loss and cache behave, and the adapter it saves is an ordinary one."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from valuation.config import ModelConfig
from valuation.data.preferences import PreferencePair
from valuation.lm.adapters import load_adapters, save_adapter
from valuation.lm.models import load_model
from valuation.lm.trunk import Tokens, judged_replies, trunk_states
from valuation.progress import Reporter
from valuation.rewards.heldout import judged
from valuation.training.dpo import fit_adapter
from valuation.training.settings import TrainConfig, TrainingError
from valuation.training.top_layers import batches, dpo_loss, pair_tokens
from valuation.training.pairs import select_pairs

TOP = TrainConfig(train_layers=1, max_pairs=0, epochs=4.0, learning_rate=2e-2, batch_size=4, gradient_accumulation=1,
                  max_length=48, max_prompt_length=32, lora_targets=["q_proj", "v_proj", "up_proj", "down_proj"])


def planted(n: int, offset: int = 0) -> list[PreferencePair]:
    """Pairs whose label is one rule a model can learn: the chosen reply agrees, the rejected declines."""
    return [PreferencePair("planted", [{"role": "user", "content": f"Question number {offset + k}?"}],
                           "Yes, gladly.", "No, never.", offset + k) for k in range(n)]


def heldout_margin(model, tokenizer, pairs: list[PreferencePair], first: int) -> dict:
    """The adapter's implicit reward margin on `pairs` (chosen minus rejected gain over the base), judged."""
    tokens = pair_tokens(select_pairs(pairs, tokenizer, TOP).rows, tokenizer, TOP.max_length)
    with model.disable_adapter():
        trunks = trunk_states(model, tokens, first)
        base = judged_replies(model, trunks, tokens, first)
    gain = judged_replies(model, trunks, tokens, first) - base
    return judged((0.1 * (gain[0::2] - gain[1::2])).numpy())


def test_top_layer_dpo_learns_a_planted_preference_and_saves_an_ordinary_adapter(tmp_path: Path) -> None:
    loaded = load_model(ModelConfig(name="tiny"))
    reporter = Reporter(tmp_path / "events.jsonl")
    model, record = fit_adapter(loaded, "planted", planted(24), TOP, seed=1, reporter=reporter, cache=tmp_path / "cache")
    assert record["steps"] == math.ceil(24 * 4 / 4) and record["settings"]["train_layers"] == 1
    assert record["history"][-1]["loss"] < record["history"][0]["loss"] - 0.1  # it trained
    verdict = heldout_margin(model, loaded.tokenizer, planted(16, offset=100), first=1)
    assert verdict["verdict"] == "learned" and verdict["accuracy"] == 1.0  # on prompts it never saw
    # Only the top layer carries the adapter, and it loads like any other.
    assert all(".layers.1." in name for name, _ in model.named_parameters() if "lora_" in name)
    save_adapter(model, tmp_path / "adapters", "planted", record)
    fresh = load_model(ModelConfig(name="tiny"))
    loaded_again = load_adapters(fresh, tmp_path / "adapters", ["planted"], records={"planted": record})
    assert heldout_margin(loaded_again, fresh.tokenizer, planted(16, offset=100), first=1)["margin"] == pytest.approx(
        verdict["margin"], abs=1e-4)


def test_a_second_seed_reads_the_trunk_from_the_cache(tmp_path: Path) -> None:
    config = TrainConfig(**{**TOP.__dict__, "epochs": 1.0})
    stages = []

    class Listening(Reporter):
        def step(self, stage, done, total, **fields):
            stages.append(stage)

    for seed in (1, 2):
        fit_adapter(load_model(ModelConfig(name="tiny")), "planted", planted(8), config, seed,
                    Listening(tmp_path / "events.jsonl"), cache=tmp_path / "cache")
    assert stages.count("planted: trunk") == 1  # the second seed read the first one's trunk
    assert stages.count("planted: reference log-probs") == 2 and len(list((tmp_path / "cache").iterdir())) == 1


def test_steps_cover_the_epochs_in_a_seeded_order() -> None:
    config = TrainConfig(epochs=1.5, batch_size=2, gradient_accumulation=2)
    steps = batches(10, config, seed=3)
    visited = [p for step in steps for micro in step for p in micro]
    assert len(visited) == 15 and sorted(visited[:10]) == list(range(10))  # a whole pass, then half of another
    assert [len(step) for step in steps] == [2, 2, 2, 2]  # 8 micro-batches of at most 2 pairs, 2 per step
    assert batches(10, config, seed=3) == steps != batches(10, config, seed=4)


def test_the_losses_are_dpos_and_its_robust_form() -> None:
    margin = torch.tensor([-1.0, 0.0, 2.0])
    assert dpo_loss(margin, TrainConfig()) == pytest.approx(float(-F.logsigmoid(margin).mean()))
    robust = TrainConfig(loss_type="robust", label_smoothing=0.0)
    assert dpo_loss(margin, robust) == pytest.approx(float(dpo_loss(margin, TrainConfig())))
    e = 0.2  # rDPO: an unbiased estimate of the clean loss when labels flip at rate e
    flipped = TrainConfig(loss_type="robust", label_smoothing=e)
    expected = ((-(1 - e) * F.logsigmoid(margin) + e * F.logsigmoid(-margin)) / (1 - 2 * e)).mean()
    assert dpo_loss(margin, flipped) == pytest.approx(float(expected))


def test_bad_training_settings_are_refused_with_what_to_change(tmp_path: Path) -> None:
    from valuation.config import ConfigError

    with pytest.raises(ConfigError, match="SimPO"):
        TrainConfig(loss_type="simpo").validate()
    with pytest.raises(ConfigError, match="robust"):
        TrainConfig(label_smoothing=0.1).validate()
    with pytest.raises(ConfigError, match="train_layers"):
        TrainConfig(train_layers=-1).validate()
    with pytest.raises(TrainingError, match="at most 2"):
        fit_adapter(load_model(ModelConfig(name="tiny")), "planted", planted(4), TrainConfig(train_layers=3, max_pairs=4),
                    1, Reporter(tmp_path / "events.jsonl"))


def test_pair_tokens_close_each_reply_and_cut_it_to_the_length() -> None:
    tokenizer = load_model(ModelConfig(name="tiny")).tokenizer
    rows = select_pairs(planted(2), tokenizer, TOP).rows
    tokens = pair_tokens(rows, tokenizer, max_length=1000)
    assert len(tokens) == 4 and tokens.ids[0][-1] == tokenizer.eos_token_id
    prompt = len(tokens.ids[0]) - tokens.replies[0]
    short = pair_tokens(rows, tokenizer, max_length=prompt + 2)
    assert short.replies == [2, 2, 2, 2] and isinstance(short, Tokens)
