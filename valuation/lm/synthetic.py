"""Random stand-ins for trained adapters: for benchmarks and tests that exercise the plumbing (the
arithmetic, the estimators, the cost) rather than what DPO learns. Each adapter is a LoRA update with
random weights on the run's own base model, saved exactly the way training saves adapters."""

from __future__ import annotations

from .adapters import save_adapter
from ..runs import Run

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


def save_random_adapters(run: Run, sources: list[str], scale: float = 0.5, rank: int = 8,
                         layers: list[int] | None = None) -> None:
    """One random LoRA adapter per source (seeded by its position), B ~ N(0, scale^2), on the
    decoder layers `layers` (every layer when None)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from .models import load_model

    config = run.load_config()
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=ATTENTION, init_lora_weights=False,
                      layers_to_transform=layers)
    for index, source in enumerate(sources):
        with torch.random.fork_rng():
            torch.manual_seed(index)
            model = get_peft_model(load_model(config.model).model, lora)
            for module in model.modules():
                if hasattr(module, "lora_B"):
                    module.lora_B["default"].weight.data.normal_(0, scale)
        save_adapter(model, run, source, {"beta": 0.1, "base_model": config.model.name, "source": source})
