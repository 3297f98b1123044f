"""Pooled evaluation against the exact answer.

A Llama with a vocabulary of 8 tokens and responses of at most 2 tokens has 1 + 7 * 8 = 57 possible
responses (the end token first, or a word and then any token), so the expected
reward of every coalition is known exactly under both targets:
  token level     p~_S(y) = prod_t softmax(z_S,t / T)[y_t], read off the teacher-forced scorer;
  sequence level  pi_S(y) proportional to exp([l_0(y) + sum_{l in S} (l_l(y) - l_0(y))] / T).
The pool is drawn by the real sampler from the anchors, weighed by the real scorer, and valued by
the estimator the evaluate job uses.
"""

from __future__ import annotations

from itertools import product

import numpy as np
import pandas as pd
import pytest
import torch

from valuation.lm.arithmetic import SamplingSettings, coalition_requests, sample_coalitions
from valuation.games.coalitions import all_coalitions, coalition_name
from valuation.evaluation.estimators import pool_utilities, pool_variants, weigh
from valuation.evaluation.importance import anchor_coalitions, sequence_utilities
from valuation.games.coalitions import membership

WORDS = ["a", "b", "c", "d", "e", "f"]
SOURCES = ["s1", "s2", "s3"]
PROMPT = [{"role": "user", "content": "a b"}]
MAX_TOKENS = 2


@pytest.fixture(scope="module")
def small():
    """The 8-word model with three random LoRA adapters, in eval mode; its tokenizer."""
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        base = LlamaForCausalLM(LlamaConfig(vocab_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=1, eos_token_id=1,
                                            pad_token_id=0, bos_token_id=None))
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
        model = get_peft_model(base, lora, adapter_name=SOURCES[0])
        for source in SOURCES[1:]:
            model.add_adapter(source, lora)
        for module in model.modules():
            if hasattr(module, "lora_B"):
                for name in SOURCES:
                    module.lora_B[name].weight.data.normal_(0, 2.0)
    return model.eval(), tokenizer


def every_response() -> list[list[int]]:
    """All responses the sampler can give within MAX_TOKENS: the end token (1) stops a response;
    any other token of the 8, the padding one included, is a word the model may say."""
    words = [0, *range(2, 8)]
    return [[1]] + [[w, v] for w, v in product(words, range(8))]


def reward_of(tokens: list[int]) -> float:
    """A reward with a known value on every response: 'a' is good, 'b' is bad, ending early costs."""
    return sum({2: 1.0, 3: -1.0}.get(t, 0.0) for t in tokens) + 0.5 * (len(tokens) == MAX_TOKENS and tokens[-1] != 1)


def exact_utilities(small, temperature: float) -> dict[str, dict[str, float]]:
    """Expected reward of every coalition under each target, by enumeration."""
    model, tokenizer = small
    responses = every_response()
    coalitions = all_coalitions(SOURCES)
    weights = weigh(model, tokenizer, [(PROMPT, r) for r in responses], pool_variants([], coalitions, SOURCES, temperature),
                    max_batch_rows=64)
    rewards = np.array([reward_of(r) for r in responses])
    token = {name: np.exp(np.array(ll)) for name, ll in weights["token"].items()}
    assert all(abs(p.sum() - 1) < 1e-5 for p in token.values())  # every response is enumerated
    models = np.array([weights["model"][m] for m in ["__base__", *SOURCES]])
    sequence = (models[0] + membership(coalitions, SOURCES).astype(float) @ (models[1:] - models[0])) / temperature
    sequence = np.exp(sequence - sequence.max(1, keepdims=True))
    sequence /= sequence.sum(1, keepdims=True)
    return {"token": {name: float(p @ rewards) for name, p in token.items()},
            "sequence": {coalition_name(c): float(p @ rewards) for c, p in zip(coalitions, sequence)}}


def pooled_estimates(small, per_anchor: int, temperature: float, seed: int = 0) -> dict[str, pd.DataFrame]:
    """The evaluate job's pooled estimator on one prompt: a pool of per_anchor draws from each anchor."""
    model, tokenizer = small
    anchors = anchor_coalitions(SOURCES)
    settings = SamplingSettings(temperature=temperature, top_p=1.0, max_new_tokens=MAX_TOKENS, seed=seed,
                                max_batch_rows=4096)
    pool = sample_coalitions(model, tokenizer, coalition_requests([PROMPT], anchors, per_anchor), settings)
    coalitions = all_coalitions(SOURCES)
    weights = weigh(model, tokenizer, [(PROMPT, g.token_ids) for g in pool],
                    pool_variants(anchors, coalitions, SOURCES, temperature), max_batch_rows=256)
    frame = pd.DataFrame({"prompt_id": "x", "reward": [reward_of(g.token_ids) for g in pool]})
    return pool_utilities(frame, weights, SOURCES, anchors, coalitions, ["reward"], temperature)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_pooled_estimates_converge_to_the_exact_expected_reward(small, temperature):
    exact = exact_utilities(small, temperature)
    errors = {}
    for per_anchor in (8, 64, 512):
        estimates = pooled_estimates(small, per_anchor, temperature)
        for target in ("token", "sequence"):
            table = estimates[target].set_index("coalition")
            errors[target, per_anchor] = max(abs(table.loc[c, "reward"] - v) for c, v in exact[target].items())
            assert (table.ess >= 1 - 1e-9).all() and (table.ess <= 5 * per_anchor + 1e-9).all()
    for target in ("token", "sequence"):
        assert errors[target, 512] < errors[target, 8]
        assert errors[target, 512] < 0.12  # about 3 standard errors at 2,560 draws


def test_token_level_pooled_agrees_with_direct_sampling(small):
    """Direct sampling (each coalition on its own, 400 draws) and the pooled estimate (5 anchors x
    200 draws) estimate the same token-level expectation: they agree within their sampling errors."""
    model, tokenizer = small
    settings = SamplingSettings(temperature=1.0, top_p=1.0, max_new_tokens=MAX_TOKENS, seed=1, max_batch_rows=4096)
    coalitions = all_coalitions(SOURCES)
    direct = sample_coalitions(model, tokenizer, coalition_requests([PROMPT], coalitions, 400), settings)
    frame = pd.DataFrame({"coalition": [coalition_name(g.coalition) for g in direct],
                          "reward": [reward_of(g.token_ids) for g in direct]})
    direct_mean, direct_se = frame.groupby("coalition").reward.mean(), frame.groupby("coalition").reward.sem()
    pooled = pooled_estimates(small, 200, 1.0, seed=2)["token"].set_index("coalition")
    spread = frame.reward.std()
    for name in direct_mean.index:
        pooled_se = spread / np.sqrt(pooled.loc[name, "ess"])  # the self-normalised estimate's error, ESS draws' worth
        assert abs(pooled.loc[name, "reward"] - direct_mean[name]) < 4 * np.hypot(direct_se[name], pooled_se), name


def test_when_every_coalition_is_the_base_the_weights_are_equal(small):
    """Adapters switched to zero updates: every target equals the proposal, so ESS = M exactly and
    the pooled value is the pool's plain mean reward."""
    model, tokenizer = small
    saved = {}
    for module_name, module in model.named_modules():
        if hasattr(module, "lora_B"):
            for name in SOURCES:
                saved[module_name, name] = module.lora_B[name].weight.data.clone()
                module.lora_B[name].weight.data.zero_()
    try:
        estimates = pooled_estimates(small, 6, 1.0)
    finally:
        for module_name, module in model.named_modules():
            if hasattr(module, "lora_B"):
                for name in SOURCES:
                    module.lora_B[name].weight.data.copy_(saved[module_name, name])
    for table in estimates.values():
        assert np.allclose(table.ess, 5 * 6) and np.allclose(table.reward, table.reward.iloc[0])


def test_sequence_utilities_are_blocked_without_changing_them():
    """2^10 coalitions weighed in blocks of a few give the values of one block."""
    import valuation.evaluation.importance as pooled

    rng = np.random.default_rng(0)
    models, rewards = rng.normal(-20, 3, (11, 40)), rng.normal(0, 1, (40, 2))
    members = membership(all_coalitions([f"s{i}" for i in range(10)]), [f"s{i}" for i in range(10)])
    whole = sequence_utilities(models, members, models[0], rewards, 0.7)
    saved, pooled.BLOCK_FLOATS = pooled.BLOCK_FLOATS, 40 * 7
    try:
        blocked = sequence_utilities(models, members, models[0], rewards, 0.7)
    finally:
        pooled.BLOCK_FLOATS = saved
    assert np.allclose(whole[0], blocked[0]) and np.allclose(whole[1], blocked[1])
