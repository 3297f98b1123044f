"""Reward models: the Bradley-Terry head, caching in the run, hub plumbing, and disjoint training data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from valuation.config import ConfigError, DataConfig, ModelConfig, RewardConfig, RewardObjective, RunConfig
from valuation.runtime.context import RunContext
from valuation.lm.models import load_model, load_tokenizer, tiny_model_dir
from valuation.lm.tokens import chat_prompt, prompt_ids, reply_ids
from valuation.progress import Reporter, read_progress
from valuation.rewards.models import BradleyTerryHead, FeatureExtractor, HubRewardModel, RewardError, cut_left
from valuation.data.preferences import HARMLESS_HUB_ID
from valuation.rewards.cards import (HEAD_FILE, accuracy_table, is_near_chance, read_cards, read_reward_card, rewards_dir,
                                    wilson_interval)
from valuation.rewards.job import default_reward_config
from valuation.rewards.store import load_reward, objective_pairs, reward_models
from valuation.runs import create_run
from valuation.data.sources import record_sources

TOPICS = ["gardening", "cooking", "travel"]


@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelConfig(name="tiny"))


@pytest.fixture
def dataset(tmp_path):
    """Three sources of 60 pairs each; the chosen reply is a polite full answer, the rejected one curt."""
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"source": topic, "prompt": f"Question {i} about {topic}: what should I do first?",
         "chosen": f"A good first step in {topic} is to plan carefully; here is how, step {i}.",
         "rejected": "No." if i % 2 else "Figure it out yourself."}
        for topic in TOPICS for i in range(60)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return DataConfig(dataset=str(path), eval_prompts=8)


def test_bradley_terry_head_learns_a_separable_problem():
    generator = torch.Generator().manual_seed(0)
    truth = torch.randn(20, generator=generator)

    def pairs(n):
        a, b = torch.randn(n, 20, generator=generator) * 3 + 1, torch.randn(n, 20, generator=generator) * 3 + 1
        a_wins = (a @ truth > b @ truth)[:, None]
        return torch.where(a_wins, a, b), torch.where(a_wins, b, a)

    head = BradleyTerryHead.fit(*pairs(400), l2=1e-3)
    chosen, rejected = pairs(400)
    assert (head(chosen) > head(rejected)).float().mean() > 0.95


def test_head_roundtrip_gives_identical_scores(tmp_path):
    head = BradleyTerryHead(torch.randn(8), torch.randn(8), torch.rand(8) + 0.5)
    head.save(tmp_path / HEAD_FILE)
    features = torch.randn(5, 8)
    assert torch.equal(head(features), BradleyTerryHead.load(tmp_path / HEAD_FILE)(features))
    with pytest.raises(RewardError, match="missing"):
        BradleyTerryHead.load(tmp_path / "absent.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(RewardError, match="cannot be read"):
        BradleyTerryHead.load(tmp_path / "bad.safetensors")


def test_left_truncation_keeps_the_reply(tiny):
    tokenizer = tiny.tokenizer
    prompt = [{"role": "user", "content": "tell me a long story " * 40}]

    def transcript(reply: str) -> tuple[list[int], list[int]]:
        return cut_left(prompt_ids(tokenizer, prompt), reply_ids(tokenizer, reply, end=True), max_length=32)

    seen, reply = transcript("The end.")
    assert reply == tokenizer("The end.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    full_prompt = tokenizer(chat_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    assert len(seen) + len(reply) == 32 and seen == full_prompt[-len(seen):]
    seen, reply = transcript("word " * 100)
    assert seen == [] and len(reply) == 32 and reply[-1] == tokenizer.eos_token_id


def test_packed_replies_get_the_features_they_get_alone(tiny):
    extract = FeatureExtractor(tiny, layers=[1, 2], max_length=48, autocast="float32")
    prompts = [[{"role": "user", "content": "Where should I travel " + "far " * n + "?"}] for n in (1, 30)]
    replies = ["To the sea.", "Anywhere you like, really, as long as it is warm.", "Home."]
    together = extract([prompts[0], prompts[1], prompts[0]], replies)
    alone = torch.stack([extract([p], [r])[0] for p, r in zip([prompts[0], prompts[1], prompts[0]], replies)])
    assert together.shape == (3, 2 * 2 * 32) and torch.allclose(together, alone, atol=1e-5)


def context_with(run, tiny, rewards: RewardConfig) -> RunContext:
    """The run read once, on the module's tiny model, with these reward settings."""
    context = RunContext.open(run)
    context.base = tiny
    context.config.rewards = rewards
    return context


def steps(reporter: Reporter) -> list[str]:
    return [e["stage"] for e in read_progress(reporter.events) if e["event"] == "step"]


def test_trained_rewards_are_cached_in_the_run_and_reload_identically(tmp_path, tiny, dataset):
    run = create_run("r", RunConfig(model=ModelConfig(name="tiny"), data=dataset), root=tmp_path)
    record_sources(run, dataset)
    config = RewardConfig(batch_size=8, l2=0.1)
    context = context_with(run, tiny, config)
    reporter = Reporter(tmp_path / "first.jsonl")
    models = reward_models(context, reporter)
    assert list(models) == ["preference"] and steps(reporter)
    card = read_reward_card(run, "preference")
    assert 0 <= card["interval"][0] <= card["heldout_accuracy"] <= card["interval"][1] <= 1
    assert card["train"]["count"] + card["heldout"]["count"] <= sum(len(p) for p in context.split.reward.values())
    assert accuracy_table(read_cards(run)).set_index("objective").loc["preference", "accuracy"] == card["heldout_accuracy"]
    prompts = [[{"role": "user", "content": "How do I start?"}]] * 3
    replies = ["Plan carefully, step by step.", "No.", "Figure it out yourself."]
    scores = models["preference"].score(prompts, replies)
    assert scores.shape == (3,) and np.array_equal(scores, load_reward(run, "preference", tiny).score(prompts, replies))
    # Unchanged settings reuse the cache; a changed setting retrains.
    again = Reporter(tmp_path / "again.jsonl")
    assert reward_models(context, again)["preference"].key == models["preference"].key and not steps(again)
    changed = Reporter(tmp_path / "changed.jsonl")
    retrained = reward_models(context_with(run, tiny, RewardConfig(batch_size=8, l2=0.2)), changed)
    assert steps(changed) and read_reward_card(run, "preference")["key"]["l2"] == 0.2
    assert retrained["preference"].key != models["preference"].key  # stored scores are not reused
    # A missing head file is a user error, as is an objective the run never trained.
    (rewards_dir(run) / "preference" / HEAD_FILE).unlink()
    with pytest.raises(RewardError, match="missing"):
        load_reward(run, "preference", tiny)
    with pytest.raises(RewardError, match="no reward model 'helpfulness'"):
        load_reward(run, "helpfulness", tiny)


def test_reward_pairs_are_disjoint_from_training_pairs_and_eval_prompts(tmp_path, dataset):
    # The run values one source only; its reward models still train on every source's reward pairs.
    run = create_run("one", RunConfig(model=ModelConfig(name="tiny"), data=dataset), root=tmp_path)
    record_sources(run, DataConfig(**{**dataset.__dict__, "sources": ["cooking"]}))
    split = RunContext.open(run).split
    reward = split.reward
    assert sorted(reward) == sorted(TOPICS) and sorted(split.train) == ["cooking"]
    pairs = objective_pairs(reward, RewardObjective("preference"), RewardConfig(max_pairs=0))
    everything = RunContext.open(record_run(tmp_path, dataset)).split  # every source valued
    train_keys = {p.prompt_key for source in everything.train.values() for p in source}
    eval_keys = {" ".join(e.messages[0]["content"].lower().split()) for e in everything.eval_prompts}
    reward_keys = {p.prompt_key for p in pairs.train + pairs.heldout}
    assert reward_keys and not reward_keys & train_keys and not reward_keys & eval_keys
    assert not {p.prompt_key for p in pairs.train} & {p.prompt_key for p in pairs.heldout}
    with pytest.raises(RewardError, match="unknown source"):
        objective_pairs(reward, RewardObjective("helpfulness", ["helpful-base"]), RewardConfig())


def test_hh_defaults_and_config_errors():
    hh = default_reward_config(DataConfig())
    assert [(o.name, o.sources) for o in hh.objectives] == [
        ("helpfulness", ["helpful-base", "helpful-online", "helpful-rejection-sampled"]),
        ("harmlessness", ["harmless-base"]),
    ]
    assert hh.objectives[1].hub_model == HARMLESS_HUB_ID
    assert [o.name for o in default_reward_config(DataConfig(dataset="x.jsonl")).objectives] == ["preference"]
    hh.validate()
    bad = [dict(kind="linear"), dict(l2=0.0), dict(holdout_fraction=1.0), dict(max_length=4), dict(layers=[]),
           dict(autocast="fp8"), dict(max_pairs=-1), dict(objectives=[RewardObjective("Bad Name")]),
           dict(objectives=[RewardObjective("a"), RewardObjective("a")]),
           dict(kind="hub", objectives=[RewardObjective("preference")])]
    for values in bad:
        with pytest.raises(ConfigError):
            RewardConfig(**values).validate()


def record_run(root, data: DataConfig):
    run = create_run("all", RunConfig(model=ModelConfig(name="tiny"), data=data), root=root)
    record_sources(run, data)
    return run


def test_wilson_interval_and_near_chance():
    low, high = wilson_interval(260, 400)
    assert low < 0.65 < high and abs((high - low) / 2 - 0.047) < 0.003
    assert is_near_chance((0.48, 0.58)) and is_near_chance((0.40, 0.50))  # the interval holds 0.5
    assert not is_near_chance((0.51, 0.57)) and not is_near_chance(wilson_interval(260, 400))


def test_reward_cards_are_read_once_with_one_near_chance_rule(tmp_path):
    from valuation.runs import Run

    run = Run(tmp_path)
    for name, card in {"helpfulness": {"heldout_accuracy": 0.55, "interval": [0.48, 0.62], "heldout_pairs": 200},
                       "harmlessness": {"heldout_accuracy": 0.70, "interval": [0.63, 0.76]}}.items():
        (rewards_dir(run) / name).mkdir(parents=True)
        (rewards_dir(run) / name / "reward.json").write_text(json.dumps(card))
    (rewards_dir(run) / "broken").mkdir()
    (rewards_dir(run) / "broken" / "reward.json").write_text("{not json")
    frame = accuracy_table(read_cards(run)).set_index("objective")
    assert list(frame.index) == ["harmlessness", "helpfulness"]  # the unreadable card is skipped
    assert frame.near_chance.to_dict() == {"harmlessness": False, "helpfulness": True}
    assert np.isnan(frame.loc["harmlessness", "pairs"])
    assert accuracy_table(read_cards(Run(tmp_path / "nothing"))).empty


def test_hub_reward_model_plumbing_with_a_tiny_local_classifier(tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    tokenizer = load_tokenizer(tiny_model_dir())
    tokenizer.chat_template = None  # no chat template: the HH "Human/Assistant" format is used
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=16, n_layer=1, n_head=2, num_labels=1)
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    model = HubRewardModel(str(tmp_path / "rm"), max_length=64, batch_size=4)
    assert model.render([{"role": "user", "content": "Hi"}], "Hello") == "\n\nHuman: Hi\n\nAssistant: Hello"
    prompts = [[{"role": "user", "content": "Hi " * n}] for n in (1, 5, 200)]
    replies = ["Hello", "Hello there, how can I help?", "Bye"]
    together = model.score(prompts, replies)
    alone = np.array([model.score([p], [r])[0] for p, r in zip(prompts, replies)])
    assert together.shape == (3,) and np.allclose(together, alone, atol=1e-5)  # padding does not change a score


def test_unknown_hub_reward_model_is_a_user_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RewardError, match="Offline, use rewards.kind='features'"):
        HubRewardModel("nobody/no-such-reward-model")
