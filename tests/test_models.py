"""Model loading: the tiny random model for tests, the embedded GGUF once for real, clear errors."""

from __future__ import annotations

import pytest
import torch

from valuation.config import ConfigError, ModelConfig
from valuation.lm.models import ModelLoadError, load_model, pick_dtype
from valuation.lm.tokens import chat_prompt


def test_tiny_model_is_identical_across_loads_and_uses_the_chat_template():
    first, second = load_model(ModelConfig(name="tiny")), load_model(ModelConfig(name="tiny"))
    for a, b in zip(first.model.parameters(), second.model.parameters()):
        assert torch.equal(a, b)
    prompt = chat_prompt(first.tokenizer, [{"role": "user", "content": "Hello?"}])
    assert prompt.endswith("<|im_start|>assistant\n") and "Hello?" in prompt
    assert first.tokenizer.padding_side == "left" and first.device.type == "cpu"


def test_auto_dtype_is_float32_on_cpu():
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


def test_unknown_model_offline_says_what_to_use(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="embedded"):
        load_model(ModelConfig(name="no-such-org/no-such-model"))


@pytest.mark.parametrize("field, value", [("dtype", "float8"), ("device", "tpu"), ("name", " ")])
def test_bad_model_settings_are_refused(field, value):
    with pytest.raises(ConfigError, match=field if field != "name" else "empty"):
        ModelConfig(**{field: value}).validate()


@pytest.mark.slow  # the real embedded model
def test_embedded_model_converts_from_the_gguf_and_generates(tmp_path, monkeypatch):
    monkeypatch.setenv("VALUATION_CACHE", str(tmp_path))  # a fresh cache: exercise the conversion
    loaded = load_model(ModelConfig(name="embedded"))
    assert (tmp_path / "smollm2-135m-instruct" / "model.safetensors").exists()
    assert loaded.model.config.num_hidden_layers == 30
    prompt = chat_prompt(loaded.tokenizer, [{"role": "user", "content": "What is the capital of France?"}])
    inputs = loaded.tokenizer(prompt, return_tensors="pt")
    output = loaded.model.generate(**inputs, max_new_tokens=8, do_sample=False)
    reply = loaded.tokenizer.decode(output[0, inputs.input_ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in reply
