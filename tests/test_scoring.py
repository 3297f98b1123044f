"""The teacher-forced scorer on the tiny random model with random LoRA adapters, against brute force:
each adapter merged into its own plain copy of the base, each sequence run alone, no PEFT batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import PeftModel

from helpers import random_adapter_run
from valuation.lm.adapters import adapter_dir, load_adapters
from valuation.games.coalitions import BASE, all_coalitions, formula_terms
from valuation.config import ModelConfig
from valuation.lm.models import load_model
from valuation.lm.tokens import prompt_ids, reply_ids
from valuation.lm.adapters import AdapterError
from valuation.lm.scoring import score_coalitions, score_variants, variant_log_likelihoods
from valuation.lm import scoring
from valuation.lm.trunk import TrunkError, shared_depth

SOURCES = ["harmless-base", "helpful-base", "helpful-online"]
A, B, C = SOURCES
PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Tell me something about the sea and the mountains, please."}],
    [{"role": "user", "content": "How do plants grow?"}],
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return random_adapter_run(tmp_path_factory.mktemp("runs"), "scoring", SOURCES)


def engine(run, dtype: str = "float32"):
    """The scorer's model: one PeftModel holding every adapter."""
    loaded = load_model(ModelConfig(name="tiny", dtype=dtype))
    return load_adapters(loaded, run), loaded.tokenizer


@pytest.fixture(scope="module")
def tiny(run):
    return engine(run)


@pytest.fixture(scope="module")
def responses(tiny):
    _, tokenizer = tiny
    reply = reply_ids(tokenizer, " The sea is deep and blue.")
    return [(PROMPTS[0], reply), (PROMPTS[1], reply[:4]), (PROMPTS[2], reply_ids(tokenizer, " Water and light."))]


def plain_models(run, dtype: str = "float32") -> dict[str, torch.nn.Module]:
    """The base, and each adapter merged into the weights of its own copy of the base."""
    def base() -> torch.nn.Module:
        return load_model(ModelConfig(name="tiny", dtype=dtype)).model

    return {BASE: base(), **{s: PeftModel.from_pretrained(base(), adapter_dir(run, s)).merge_and_unload() for s in SOURCES}}


@pytest.fixture(scope="module")
def plain(run):
    return plain_models(run)


def brute_force(models, tokenizer, messages, reply: list[int], terms) -> torch.Tensor:
    """log p_t of a variant at each reply token [tokens, vocab]: log_softmax(sum_k c_k log pi_k)."""
    prompt = prompt_ids(tokenizer, messages)
    ids = torch.tensor([prompt + reply])
    with torch.no_grad():
        mixed = sum(c * models[name](input_ids=ids).logits[0].float().log_softmax(-1) for name, c in terms)
    return mixed[len(prompt) - 1:-1].log_softmax(-1)


def brute_log_likelihood(models, tokenizer, messages, reply: list[int], terms) -> float:
    return float(brute_force(models, tokenizer, messages, reply, terms)[torch.arange(len(reply)), reply].sum())


def test_every_coalition_matches_brute_force(tiny, plain, responses) -> None:
    model, tokenizer = tiny
    coalitions = all_coalitions(SOURCES)
    scores = score_coalitions(model, tokenizer, responses, coalitions, max_batch_rows=8)  # 2 responses a batch, padded
    for coalition in coalitions:
        for r, (messages, reply) in enumerate(responses):
            expected = brute_log_likelihood(plain, tokenizer, messages, reply, formula_terms(coalition))
            assert scores[coalition][r] == pytest.approx(expected, abs=1e-3), coalition
    assert len({round(float(scores[c][0]), 3) for c in coalitions}) == len(coalitions)  # the adapters matter


@pytest.mark.parametrize("split", [True, False])
def test_adapters_on_the_top_layer_share_the_layer_below_and_match_brute_force(tmp_path, responses, monkeypatch,
                                                                                 split) -> None:
    top = random_adapter_run(tmp_path, "top", SOURCES, layers=[1])  # the tiny model's second of 2 layers
    model, tokenizer = engine(top)
    assert shared_depth(model, SOURCES) == 1 and shared_depth(engine(random_adapter_run(tmp_path, "all", SOURCES))[0], SOURCES) == 0
    if not split:  # a decoder the trunk cannot split: every model reads every (prompt, reply) in mixed batches
        monkeypatch.setattr(scoring, "decoder", lambda model: (_ for _ in ()).throw(TrunkError("not split")))
    # Replies of several lengths under one prompt: read together on its cached keys and values, right-padded.
    messages, reply = responses[1]
    responses = [*responses, (messages, reply[:1]), (messages, reply + reply), (responses[0][0], reply[:2])]
    coalitions = all_coalitions(SOURCES)
    scores = score_coalitions(model, tokenizer, responses, coalitions, max_batch_rows=8)
    models = plain_models(top)
    for coalition in coalitions:
        for r, (messages, reply) in enumerate(responses):
            expected = brute_log_likelihood(models, tokenizer, messages, reply, formula_terms(coalition))
            assert scores[coalition][r] == pytest.approx(expected, abs=1e-3), coalition
    assert len({round(float(scores[c][0]), 3) for c in coalitions}) == len(coalitions)  # the adapters matter
    assert model.active_adapter == A  # the adapter the model had before scoring


def test_any_variant_and_its_kls_match_brute_force(tiny, plain, responses) -> None:
    model, tokenizer = tiny
    variants = {"base": [(BASE, 1.0)], "mix": [(A, 0.5), (B, 0.5)], "far": [(A, 20.0), (BASE, -19.0)],
                "sharp": [(A, 2.0), (BASE, -1.0)],
                "sharp again": [(BASE, -1.0), (A, 1.0), (A, 1.0)]}  # a model named twice: its coefficients add
    pairs = [("base", "far"), ("far", "base"), ("mix", "far"), ("sharp", "sharp again")]
    scores = score_variants(model, tokenizer, responses, variants, pairs, max_batch_rows=3)
    for r, (messages, reply) in enumerate(responses):
        log_p = {name: brute_force(plain, tokenizer, messages, reply, terms) for name, terms in variants.items()}
        for name, per_token in log_p.items():
            expected = float(per_token[torch.arange(len(reply)), reply].sum())
            assert scores.log_likelihoods[name][r] == pytest.approx(expected, abs=1e-3), name
        for p, q in pairs[:3]:
            expected = float((log_p[p].exp() * (log_p[p] - log_p[q])).sum())
            assert scores.kls[p, q][r] == pytest.approx(expected, rel=1e-4), (p, q)
    # Far apart, KL is not symmetric (close by it nearly is: symmetric to second order), so a swap would show.
    assert scores.kls["base", "far"].sum() > 1.02 * scores.kls["far", "base"].sum()
    assert (scores.kls["sharp", "sharp again"] == 0).all()  # the same coefficients: the same distribution, exactly


def test_a_singleton_is_its_adapter_and_the_empty_coalition_the_base(tiny, responses) -> None:
    model, tokenizer = tiny
    variants = {"alone": [(A, 1.0)], frozenset([A]): formula_terms([A]), "base": [(BASE, 1.0)],
                frozenset(): formula_terms([])}
    scores = score_variants(model, tokenizer, responses, variants, [("alone", frozenset([A])), ("base", frozenset())])
    np.testing.assert_array_equal(scores.log_likelihoods["alone"], scores.log_likelihoods[frozenset([A])])
    np.testing.assert_array_equal(scores.log_likelihoods["base"], scores.log_likelihoods[frozenset()])
    assert all((kl == 0).all() for kl in scores.kls.values())


def test_batches_and_blocks_do_not_change_the_scores(tiny, responses) -> None:
    model, tokenizer = tiny
    coalitions = all_coalitions(SOURCES)
    heard = []
    alone = score_coalitions(model, tokenizer, responses, coalitions, max_batch_rows=1,
                             progress=lambda done, total: heard.append((done, total)))
    together = score_coalitions(model, tokenizer, responses, coalitions, max_batch_rows=64)
    for coalition in coalitions:
        np.testing.assert_allclose(alone[coalition], together[coalition], atol=1e-4)
    assert heard == [(1, 3), (2, 3), (3, 3)]  # one response a batch: a report after each

    log_probs = torch.randn(4, 5, 7).log_softmax(-1)  # [models, tokens, vocab]
    coefficients = torch.randn(9, 4)
    blocked = variant_log_likelihoods(log_probs, [0, 6, 3, 3, 1], coefficients, max_floats=2 * 5 * 7)
    np.testing.assert_allclose(blocked, variant_log_likelihoods(log_probs, [0, 6, 3, 3, 1], coefficients), rtol=1e-6)


def coalition_coefficients(sources: int, seeds: int, temperature: float) -> torch.Tensor:
    """Every coalition of `sources` adapters under each of `seeds` training seeds, at `temperature`:
    rows over [base, seed 1's adapters, seed 2's, ...], as the pooled weights and the seeds' game use them."""
    rows = []
    for seed in range(seeds):
        for coalition in all_coalitions(range(sources)):
            row = torch.zeros(1 + sources * seeds)
            row[0] = (1 - len(coalition)) / temperature
            row[[1 + seed * sources + i for i in coalition]] = 1 / temperature
            rows.append(row)
    return torch.stack(rows)


def test_the_normalisers_of_every_coalition_match_float64() -> None:
    torch.manual_seed(0)
    float64 = lambda log_probs, c: torch.logsumexp(
        torch.einsum("vm,mtk->vtk", c.double(), log_probs.double()), -1).sum(-1)
    # 2^6 coalitions under two seeds (the halves' patterns and the seeds apart), and dense random variants.
    for coefficients in (coalition_coefficients(6, 2, 0.7), torch.randn(9, 13)):
        log_probs = (3 * torch.randn(13, 5, 3000)).log_softmax(-1)
        for max_floats in (scoring.MAX_COMBINED_FLOATS, 3000):  # by token blocks too
            np.testing.assert_allclose(scoring.log_normalisers(log_probs, coefficients, max_floats),
                                       float64(log_probs, coefficients), atol=2e-5)
    # Two adapters sure of different tokens: the halves' shifted sums fall below float32's range,
    # and those variants are read exactly instead.
    log_probs = torch.full((3, 2, 50), -200.0)
    log_probs[0] = 0
    log_probs[1, :, 0] = log_probs[2, :, 1] = 0
    log_probs = log_probs.log_softmax(-1)
    coefficients = coalition_coefficients(2, 1, 1.0)
    np.testing.assert_allclose(scoring.log_normalisers(log_probs, coefficients), float64(log_probs, coefficients),
                               atol=1e-5)


def test_an_unknown_model_is_a_user_error(tiny, responses) -> None:
    model, tokenizer = tiny
    with pytest.raises(AdapterError, match="nope"):
        score_variants(model, tokenizer, responses, {"x": [("nope", 1.0)]})


def test_bfloat16_models_are_combined_in_float32(run, responses) -> None:
    model, tokenizer = engine(run, "bfloat16")
    coalition = frozenset(SOURCES)
    messages, reply = responses[2]
    score = score_coalitions(model, tokenizer, [(messages, reply)], [coalition])[coalition][0]
    # Against each model alone, combined in float32: 0.002 per token here (bfloat16 rounds differently in a
    # batch and in a merge); combining in bfloat16 instead would be 0.016 per token off.
    expected = brute_log_likelihood(plain_models(run, "bfloat16"), tokenizer, messages, reply, formula_terms(coalition))
    assert score == pytest.approx(expected, abs=0.006 * len(reply))
