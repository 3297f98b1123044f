"""The train job's settings: one dataclass, shared by every adapter of a run, and its presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import ConfigError, helped
from ..errors import UserError

ATTENTION_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj"]
LINEAR_PROJECTIONS = [*ATTENTION_PROJECTIONS, "gate_proj", "up_proj", "down_proj"]


class TrainingError(UserError):
    """Training cannot start or continue; the message says what to change."""


@dataclass
class TrainConfig:
    sources: list[str] = helped([], "Sources to train (default: the run's sources).", setting=False)
    retrain: bool = helped(False, "Train the chosen sources again even if they are trained already.", setting=False)
    seeds: int = helped(1, "Adapters per source, each under its own training seed: 2 or more average the values over "
                           "seeds and put training noise in the intervals (each seed costs one more training of every "
                           "source, and each more pooled evaluation scoring pass).", setting=False)
    max_pairs: int = helped(1024, "Training pairs per source, taken in the split's seeded order (0: every pair of the split).")
    epochs: float = helped(1.0, "Passes over each source's pairs.")
    learning_rate: float = helped(4e-3, "Peak AdamW learning rate (LoRA wants far more than full fine-tuning's 1e-6).")
    batch_size: int = helped(4, "Preference pairs per forward pass.")
    gradient_accumulation: int = helped(2, "Forward passes per optimiser step (effective batch = batch_size x this).")
    warmup_ratio: float = helped(0.1, "Share of the steps spent warming the learning rate up from zero.")
    scheduler: str = helped("cosine", "Learning-rate schedule after warm-up: 'cosine', 'linear' or 'constant'.")
    weight_decay: float = helped(0.0, "AdamW weight decay.")
    max_length: int = helped(96, "Tokens of prompt plus reply; a longer reply is cut at the end.")
    max_prompt_length: int = helped(64, "Prompt tokens (through the chat template): a longer prompt keeps its last user turn "
                                        "and the earlier turns that fit, and a last user turn longer on its own keeps its "
                                        "end (cut from the left within the turn). Both are counted as truncated.")
    beta: float = helped(0.1, "DPO beta: the KL strength. Adapters combine only when trained with the same beta.")
    lora_r: int = helped(8, "LoRA rank.")
    lora_alpha: int = helped(16, "LoRA scaling alpha (the update is scaled by alpha / r).")
    lora_dropout: float = helped(0.0, "Dropout on the LoRA input.")
    lora_targets: list[str] = helped(LINEAR_PROJECTIONS, "Modules that get a LoRA update (default: every linear projection "
                                                        "of a layer, attention and MLP).")
    train_layers: int = helped(4, "Adapt only the top N decoder layers: the frozen layers below run once per pair (kept in the "
                                  "run's cache) and every step runs the top N alone. 0: every layer, trained by TRL's "
                                  "DPOTrainer.")
    loss_type: str = helped("sigmoid", "'sigmoid' (DPO) or 'robust' (rDPO: DPO corrected for labels flipped at rate "
                                       "label_smoothing). Both keep the reference-relative form the arithmetic needs.")
    label_smoothing: float = helped(0.0, "The share of flipped labels the 'robust' loss corrects for, in [0, 0.5).")
    precision: str = helped("bfloat16", "'bfloat16' (float32 weights, bfloat16 autocast: faster here and on GPUs) or 'float32'.")
    precompute_ref: bool = helped(True, "Compute the reference log-probs once before training (a step costs about 1/4 less).")

    def validate(self) -> None:
        positive = ("seeds", "batch_size", "gradient_accumulation", "max_length", "max_prompt_length", "lora_r", "lora_alpha")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"training.{name} must be at least 1, got {getattr(self, name)}.")
        if self.max_pairs < 0:
            raise ConfigError("training.max_pairs must be 0 (every pair) or positive.")
        if self.epochs <= 0 or self.learning_rate <= 0 or self.beta <= 0:
            raise ConfigError("training.epochs, training.learning_rate and training.beta must be positive.")
        if self.max_prompt_length >= self.max_length:
            raise ConfigError(
                f"training.max_prompt_length ({self.max_prompt_length}) leaves no room for the reply within "
                f"training.max_length ({self.max_length}): make it smaller."
            )
        if not 0 <= self.warmup_ratio < 1 or not 0 <= self.lora_dropout < 1:
            raise ConfigError("training.warmup_ratio and training.lora_dropout must lie in [0, 1).")
        if self.scheduler not in ("cosine", "linear", "constant"):
            raise ConfigError(f"training.scheduler={self.scheduler!r}: use cosine, linear or constant.")
        if self.precision not in ("bfloat16", "float32"):
            raise ConfigError(f"training.precision={self.precision!r}: use bfloat16 or float32.")
        if self.train_layers < 0:
            raise ConfigError(f"training.train_layers must be 0 (every layer) or positive, got {self.train_layers}.")
        if self.loss_type not in ("sigmoid", "robust"):
            raise ConfigError(f"training.loss_type={self.loss_type!r}: use sigmoid or robust (losses without a reference "
                              "model, such as SimPO or ORPO, would break the arithmetic).")
        if not 0 <= self.label_smoothing < 0.5 or (self.label_smoothing and self.loss_type != "robust"):
            raise ConfigError(f"training.label_smoothing={self.label_smoothing}: it must lie in [0, 0.5), and only the "
                              "robust loss uses it.")
        if not self.lora_targets:
            raise ConfigError("training.lora_targets is empty: name the modules to adapt, e.g. q_proj v_proj.")


# What an adapter trained before a setting existed did, for records that lack it: TRL on every
# layer, the sigmoid loss (a relaunch then keeps such adapters only under the same settings).
SETTINGS_BEFORE_RECORDED = {"train_layers": 0, "loss_type": "sigmoid", "label_smoothing": 0.0}


def recorded_settings(record: dict[str, Any]) -> dict[str, Any]:
    """The settings an adapter's training record says it was trained with, those it predates included."""
    return {**SETTINGS_BEFORE_RECORDED, **record.get("settings", {})}


def recorded_config(record: dict[str, Any]) -> TrainConfig:
    """The training config an adapter's record says it was trained with (`recorded_settings`)."""
    return TrainConfig(**{k: v for k, v in recorded_settings(record).items() if k in TrainConfig.__dataclass_fields__})


# `quick`: a CPU in minutes. The top 4 of the model's layers over a frozen trunk (run once per pair
# and cached), LoRA on every linear projection, up to 1,024 pairs of 96 tokens seen once, learning
# rate 4e-3 in steps of 8 pairs. On the offline HH-RLHF subsets 3 of 4 sources told 256 held-out
# pairs apart from the base under the first seed, 2 of 4 under each of three; the old preset
# (attention LoRA on every layer through TRL, 120 pairs of 128 tokens) got 1 of 4 in about 2/3 of a
# first seed's time (bench/README.md, "Training recipes").
# `paper`: a GPU, whole sources, longer sequences, every layer, the paper's beta and LoRA shape.
PRESETS: dict[str, TrainConfig] = {
    "quick": TrainConfig(),
    "paper": TrainConfig(max_pairs=0, epochs=3.0, learning_rate=2e-4, batch_size=8, gradient_accumulation=2,
                         max_length=512, max_prompt_length=384, train_layers=0, lora_targets=ATTENTION_PROJECTIONS),
}
