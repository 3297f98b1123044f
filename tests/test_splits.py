"""Splits are deterministic, seeded and disjoint by prompt; evaluation prompts are spread evenly."""

from __future__ import annotations

from collections import Counter

from valuation.config import DataConfig
from valuation.data.preferences import load_preferences
from valuation.data.splits import split_preferences


def _keys(pairs_by_source):
    return {p.prompt_key for pairs in pairs_by_source.values() for p in pairs}


def test_default_split_is_disjoint_even_and_deterministic():
    config = DataConfig(eval_prompts=40)
    data = load_preferences(config)
    split = split_preferences(data, config)
    train, reward = _keys(split.train), _keys(split.reward)
    evaluation = {" ".join(p.messages[0]["content"].lower().split()) for p in split.eval_prompts}
    assert not train & reward and not train & evaluation and not reward & evaluation
    assert len(split.eval_prompts) == 40
    assert set(Counter(p.source for p in split.eval_prompts).values()) == {10}
    again = split_preferences(data, config)
    assert again.summary() == split.summary()
    other_seed = split_preferences(data, DataConfig(eval_prompts=40, seed=1))
    assert other_seed.summary()["eval_prompt_ids"] != split.summary()["eval_prompt_ids"]


def test_caps_keep_a_fixed_subset_and_do_not_depend_on_other_sources():
    config = DataConfig(train_pairs_per_source=50, reward_pairs_per_source=20)
    split = split_preferences(load_preferences(config), config)
    assert set(split.summary()["train_pairs"].values()) == {50}
    assert set(split.summary()["reward_pairs"].values()) == {20}
    alone = DataConfig(train_pairs_per_source=50, sources=["helpful-base"])
    alone_split = split_preferences(load_preferences(alone), alone)
    assert [p.pair_id for p in alone_split.train["helpful-base"]] == [p.pair_id for p in split.train["helpful-base"]]
