"""The frozen trunk: log-likelihoods read off the top layers equal the whole model's, and the cache keeps them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from valuation.config import ModelConfig
from valuation.games.coalitions import BASE
from valuation.lm.models import load_model
from valuation.lm.scoring import score_variants
from valuation.lm.tokens import prompt_ids
from valuation.lm.trunk import Tokens, cached_trunk_states, layer_count, reply_log_likelihoods, trunk_states

CONVERSATIONS = [[{"role": "user", "content": "Name a colour."}], [{"role": "user", "content": "Say hi to my cat, please."}]]


def responses(tokenizer):
    """(conversation, reply ids) pairs of different lengths, and the same as Tokens."""
    replies = [[300, 301, 302], [400, 401, 402, 403, 404, 405], [500]]
    pairs = [(CONVERSATIONS[k % 2], reply) for k, reply in enumerate(replies)]
    return pairs, Tokens([prompt_ids(tokenizer, c) + r for c, r in pairs], [len(r) for _, r in pairs])


def top_layer_adapter(model, first: int):
    """A random LoRA adapter on the layers from `first` up, on every linear module."""
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
                      layers_to_transform=list(range(first, layer_count(model))), init_lora_weights=False)
    return get_peft_model(model, lora, adapter_name="top")


@pytest.mark.parametrize("first", [0, 1])
def test_the_top_layers_on_the_trunk_give_the_whole_models_log_likelihoods(first):
    loaded = load_model(ModelConfig(name="tiny"))
    pairs, tokens = responses(loaded.tokenizer)
    trunks = trunk_states(loaded.model, tokens, first)  # the base's, before any adapter exists
    assert [len(t) for t in trunks] == [len(ids) for ids in tokens.ids]
    model = top_layer_adapter(loaded.model, first).eval()
    whole = score_variants(model, loaded.tokenizer, pairs, {m: [(m, 1.0)] for m in (BASE, "top")}).log_likelihoods
    with torch.no_grad():
        on_top = reply_log_likelihoods(model, trunks, tokens, first).numpy()
        with model.disable_adapter():
            base = reply_log_likelihoods(model, trunks, tokens, first).numpy()
    # The trunk is kept in bfloat16: equal to that rounding.
    np.testing.assert_allclose(on_top, whole["top"], atol=0.01)
    np.testing.assert_allclose(base, whole[BASE], atol=0.01)
    assert np.abs(on_top - base).max() > 0.1  # the adapter does change the reply's likelihood


def test_gradients_reach_only_the_top_layers_adapter():
    loaded = load_model(ModelConfig(name="tiny"))
    _, tokens = responses(loaded.tokenizer)
    trunks = trunk_states(loaded.model, tokens, 1)
    model = top_layer_adapter(loaded.model, 1)
    reply_log_likelihoods(model, trunks, tokens, 1).sum().backward()
    trained = {name for name, p in model.named_parameters() if p.grad is not None}
    assert trained and all("lora_" in name and ".layers.0." not in name for name in trained)


def test_trunks_are_cached_per_sequence(tmp_path):
    loaded = load_model(ModelConfig(name="tiny"))
    _, tokens = responses(loaded.tokenizer)
    computed = cached_trunk_states(loaded.model, "tiny", tokens, 1, tmp_path)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 1
    calls = []
    again = cached_trunk_states(loaded.model, "tiny", tokens, 1, tmp_path, progress=lambda d, t: calls.append(d))
    assert not calls  # read, not computed
    assert all(torch.equal(a, b) for a, b in zip(computed, again))
    # A subset, reordered and repeated, is read too: a union of sources or a source less some pairs.
    rows = [2, 0, 2]
    subset = cached_trunk_states(loaded.model, "tiny", tokens.take(rows), 1, tmp_path, progress=lambda d, t: calls.append(d))
    assert not calls and all(torch.equal(a, computed[r]) for a, r in zip(subset, rows))
    # New sequences beside known ones: only the new ones are computed, as one more file.
    extra = Tokens(tokens.ids[:1] + [tokens.ids[0] + [5]], tokens.replies[:1] + [tokens.replies[0] + 1])
    mixed = cached_trunk_states(loaded.model, "tiny", extra, 1, tmp_path, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (1, 1) and len(list(tmp_path.rglob("*.safetensors"))) == 2
    assert torch.equal(mixed[0], computed[0])
    assert torch.allclose(mixed[1].float(), trunk_states(loaded.model, extra.take([1]), 1)[0].float())
    # Another layer (or model) is another key.
    cached_trunk_states(loaded.model, "tiny", tokens, 2, tmp_path)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 3
