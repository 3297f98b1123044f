"""DPO training of one LoRA adapter per source, all with the same settings.

Each source's adapter pi_l is trained by TRL's DPOTrainer against the base pi_0 (the reference is
the same model with the adapter switched off: no second copy in memory), minimising

    -log sigmoid( beta * [ log pi_l(y+|x)/pi_0(y+|x) - log pi_l(y-|x)/pi_0(y-|x) ] )

over the source's training pairs. Every source shares the base, beta, LoRA shape, optimiser,
schedule, epochs and lengths; only the data and the seed differ, and the seed is derived from the
run seed and the source's name, so a source trains the same alone, in a batch or after a relaunch.
With `seeds` k > 1 each source also trains under k - 1 further seeds (adapters `<source>@seed2`, ...):
the evaluation then averages the values over seeds and puts their spread in the intervals.

The job is `run_train(context, config, reporter)` (valuation/jobs.py). Progress goes to the
`Reporter` (events for the app, log lines, a tqdm bar in a terminal); each finished adapter is saved
whole (`adapters.save_adapter`) before the next source starts, so a relaunch trains only what is missing.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .adapters import (check_adapter_name, install_adapter, read_record, remove_partial_adapters, save_adapter,
                       seed_adapter, source_and_replica, trained_adapters)
from .config import ConfigError, helped, settings_of
from .errors import UserError
from .tokens import fit_prompt
from .preference import adapter_verdicts

if TYPE_CHECKING:
    from .context import RunContext
    from .data import PreferencePair
    from .models import LoadedModel
    from .progress import Reporter

ATTENTION_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj"]


class TrainingError(UserError):
    """Training cannot start or continue; the message says what to change."""


@dataclass
class TrainConfig:
    sources: list[str] = helped([], "Sources to train (default: the run's sources).", setting=False)
    retrain: bool = helped(False, "Train the chosen sources again even if they are trained already.", setting=False)
    seeds: int = helped(1, "Adapters per source, each under its own training seed: 2 or more average the values over "
                           "seeds and put training noise in the intervals (each seed costs one more training of every "
                           "source, and each more pooled evaluation scoring pass).", setting=False)
    max_pairs: int = helped(120, "Training pairs per source, taken in the split's seeded order (0: every pair of the split).")
    epochs: float = helped(1.0, "Passes over each source's pairs.")
    learning_rate: float = helped(4e-3, "Peak AdamW learning rate (LoRA wants far more than full fine-tuning's 1e-6).")
    batch_size: int = helped(4, "Preference pairs per forward pass.")
    gradient_accumulation: int = helped(2, "Forward passes per optimiser step (effective batch = batch_size x this).")
    warmup_ratio: float = helped(0.1, "Share of the steps spent warming the learning rate up from zero.")
    scheduler: str = helped("cosine", "Learning-rate schedule after warm-up: 'cosine', 'linear' or 'constant'.")
    weight_decay: float = helped(0.0, "AdamW weight decay.")
    max_length: int = helped(128, "Tokens of prompt plus reply; a longer reply is cut at the end.")
    max_prompt_length: int = helped(80, "Prompt tokens (through the chat template): a longer prompt keeps its last user turn "
                                        "and the earlier turns that fit; a pair whose last user turn alone is longer is "
                                        "dropped. Both are counted.")
    beta: float = helped(0.1, "DPO beta: the KL strength. Adapters combine only when trained with the same beta.")
    lora_r: int = helped(8, "LoRA rank.")
    lora_alpha: int = helped(16, "LoRA scaling alpha (the update is scaled by alpha / r).")
    lora_dropout: float = helped(0.0, "Dropout on the LoRA input.")
    lora_targets: list[str] = helped(ATTENTION_PROJECTIONS, "Modules that get a LoRA update (default: the attention projections).")
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
        if not self.lora_targets:
            raise ConfigError("training.lora_targets is empty: name the modules to adapt, e.g. q_proj v_proj.")


# `quick`: a CPU in minutes (four sources in under 20 minutes on 2 cores, measured): 120 pairs a
# source, 1 epoch, learning rate 4e-3 in 15 steps of 8 pairs. At 1e-3 in 30 steps of 4 (the same
# pairs, lengths and passes: the same CPU time) none of 8 adapters on the offline HH-RLHF subsets
# (4 sources x 2 seeds) told held-out pairs apart from the base; at 4e-3, 1 of 4 did (bench/README.md).
# `paper`: a GPU, whole sources, longer sequences, the paper's beta and LoRA shape.
PRESETS: dict[str, TrainConfig] = {
    "quick": TrainConfig(),
    "paper": TrainConfig(max_pairs=0, epochs=3.0, learning_rate=2e-4, batch_size=8, gradient_accumulation=2,
                         max_length=512, max_prompt_length=384),
}


def source_seed(run_seed: int, source: str, replica: int = 0) -> int:
    """A source's training seed number `replica`: fixed by the run seed and its name, not by when it trains."""
    further = f"\x00{replica}" if replica else ""  # the first seed is the one a single-seed run has always used
    digest = hashlib.sha256(f"{run_seed}\x00train\x00{source}{further}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 2**31


def adapter_inputs(context: RunContext, adapter: str) -> tuple[list[PreferencePair], int]:
    """What an adapter trains on: its source's training pairs, and its seed."""
    source, replica = source_and_replica(adapter)
    return context.split.train[source], source_seed(context.config.seed, source, replica)


# ---------------------------------------------------------------- data


DROPPED_WARNING = 0.2  # a source whose cap drops more than this share of the pairs it reads is warned about


def too_many_dropped(kept: int, dropped: int) -> bool:
    """Whether the prompt length cap dropped more than DROPPED_WARNING of the pairs it read."""
    return dropped > DROPPED_WARNING * (kept + dropped)


@dataclass
class SourcePairs:
    rows: list[dict[str, Any]]  # TRL's conversational preference format
    whole: int  # rows whose prompt fits max_prompt_length as it is
    truncated: int  # rows whose prompt keeps only its end (tokens.fit_prompt)
    dropped: int  # pairs whose last user turn alone exceeds max_prompt_length

    @property
    def too_many_dropped(self) -> bool:
        return too_many_dropped(len(self.rows), self.dropped)


def select_pairs(pairs: list["PreferencePair"], tokenizer: Any, config: TrainConfig) -> SourcePairs:
    """The first `max_pairs` pairs whose prompt fits once cut to its end, as conversations; count the
    ones kept whole, the ones cut and the ones dropped."""
    rows, truncated, dropped = [], 0, 0
    for pair in pairs:
        if config.max_pairs and len(rows) == config.max_pairs:
            break
        prompt = fit_prompt(tokenizer, pair.prompt, config.max_prompt_length)
        if prompt is None:
            dropped += 1
            continue
        truncated += prompt is not pair.prompt
        rows.append({
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": pair.chosen}],
            "rejected": [{"role": "assistant", "content": pair.rejected}],
        })
    return SourcePairs(rows, len(rows) - truncated, truncated, dropped)


# ---------------------------------------------------------------- progress


def _progress_callback(reporter: Reporter, source: str, history: list[dict[str, Any]]):
    """A TrainerCallback that turns the trainer's logs into the source's progress steps."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.time()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return  # the final summary (train_runtime...) is not a step
            step, total = state.global_step, state.max_steps
            point = {"step": step, "loss": logs["loss"], "accuracy": logs.get("rewards/accuracies"),
                     "margin": logs.get("rewards/margins")}
            history.append(point)
            elapsed = time.time() - self.started
            reporter.step(source, step, total, loss=point["loss"], accuracy=point["accuracy"], margin=point["margin"],
                          eta=elapsed / step * (total - step))

    return Progress()


# ---------------------------------------------------------------- training


def _dpo_config(config: TrainConfig, seed: int, output_dir: str, use_cpu: bool):
    from trl import DPOConfig

    return DPOConfig(
        output_dir=output_dir,  # a temporary folder: nothing but the final adapter lands in the run
        num_train_epochs=config.epochs,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a ratio of the total steps
        lr_scheduler_type=config.scheduler if config.scheduler != "constant" else "constant_with_warmup",
        weight_decay=config.weight_decay,
        max_length=config.max_length,
        beta=config.beta,
        precompute_ref_log_probs=config.precompute_ref,
        bf16=config.precision == "bfloat16",  # autocast; the weights keep the model's dtype
        use_cpu=use_cpu,
        activation_checkpointing=False,  # a 135M model fits; checkpointing only slows it down
        seed=seed,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,  # our own bar and events instead of the trainer's printouts
        dataloader_num_workers=0,
    )


def fit_adapter(loaded: LoadedModel, name: str, pairs: list[PreferencePair], config: TrainConfig, seed: int,
                reporter: Reporter) -> tuple[Any, dict[str, Any]]:
    """Train a LoRA adapter on `loaded.model` by DPO; the trained PeftModel and its record.

    The reference is `loaded.model` itself with the adapter off: the base for a source's adapter,
    or a model with earlier adapters merged into its weights for a later stage of sequential DPO.
    """
    from datasets import Dataset
    from peft import LoraConfig
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOTrainer

    started = time.time()
    selected = select_pairs(pairs, loaded.tokenizer, config)
    if not selected.rows:
        raise TrainingError(
            f"Source {name!r} has no training pair whose last user turn fits max_prompt_length="
            f"{config.max_prompt_length} ({selected.dropped} dropped): raise --max-prompt-length."
        )
    reporter.log(f"{name}: {len(selected.rows)} pairs ({selected.whole} whole, {selected.truncated} truncated to their "
                 f"last turns, {selected.dropped} dropped by the prompt length cap), seed {seed}")
    if selected.too_many_dropped:
        reporter.log(f"warning: {name} loses {selected.dropped} of the {len(selected.rows) + selected.dropped} pairs read "
                     f"(over {DROPPED_WARNING:.0%}): even their last user turn is longer than max_prompt_length="
                     f"{config.max_prompt_length}; its value reflects only its shorter prompts. Raise --max-prompt-length.")
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.lora_targets, task_type="CAUSAL_LM")
    history: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="valuation-train-") as scratch:
        trainer = DPOTrainer(
            model=loaded.model,
            args=_dpo_config(config, seed, scratch, use_cpu=loaded.device.type == "cpu"),
            train_dataset=Dataset.from_list(selected.rows),
            processing_class=loaded.tokenizer,
            peft_config=lora,  # the reference is this model with the adapter disabled
            callbacks=[_progress_callback(reporter, name, history)],
        )
        trainer.remove_callback(PrinterCallback)
        reporter.event("source_start", source=name, pairs=len(selected.rows), truncated=selected.truncated,
                       dropped=selected.dropped)
        trainer.train()
    final = history[-1] if history else {}
    record = {
        "source": name,
        "settings": settings_of(config),
        "beta": config.beta,
        "base_model": loaded.name,  # the name, never a machine's path: resolved again when loaded
        "lora": {"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout, "targets": config.lora_targets},
        "seed": seed,
        "pairs_used": len(selected.rows),
        "pairs_truncated": selected.truncated,  # kept, their prompt cut to its end
        "pairs_dropped_by_length": selected.dropped,
        "steps": trainer.state.global_step,
        "final": {k: final.get(k) for k in ("loss", "accuracy", "margin")},
        "history": history,
        "wall_time_s": round(time.time() - started, 1),
    }
    return trainer.model, record


def train_source(context: RunContext, adapter: str, config: TrainConfig, reporter: Reporter) -> dict[str, Any]:
    """Train one adapter (a source's, under one of its seeds) on a fresh copy of the base and save it with its record."""
    pairs, seed = adapter_inputs(context, adapter)
    model, record = fit_adapter(context.fresh_model(), adapter, pairs, config, seed, reporter)
    save_adapter(model, context.run, adapter, record)
    return saved(adapter, record, reporter)


def train_sources(context: RunContext, adapters: list[str], config: TrainConfig, reporter: Reporter) -> dict[str, dict]:
    """Every adapter, one after another here, or all at once on a Ray cluster (each task returns
    its adapter's files, written here: `cluster.train_on_ray`); their records."""
    if context.backend.backend == "local" or not adapters:  # nothing to train: no cluster to start
        return {adapter: train_source(context, adapter, config, reporter) for adapter in adapters}
    from .cluster import train_on_ray

    records = {}
    for adapter, files, record in train_on_ray(context, adapters, config, reporter):
        install_adapter(context.run, adapter, files)
        records[adapter] = saved(adapter, record, reporter)
    return records


def saved(source: str, record: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    """Report a source's adapter as saved; its record."""
    reporter.event("source_done", source=source, wall_time_s=record["wall_time_s"], **record["final"])
    loss = record["final"]["loss"]
    reporter.log(f"{source}: saved adapter after {record['wall_time_s']:.0f}s, final loss {float('nan') if loss is None else loss:.4f}")
    return record


def _settings_conflicts(context: RunContext, kept: list[str], config: TrainConfig) -> dict[str, list[str]]:
    """Kept adapters trained with other settings: source -> the fields that differ."""
    wanted = settings_of(config)
    conflicts = {}
    for source in kept:
        used = read_record(context.run, source).get("settings", {})
        differing = [name for name in wanted if used.get(name) != wanted[name]]
        if differing:
            conflicts[source] = differing
    return conflicts


def run_train(context: RunContext, config: TrainConfig, reporter: Reporter) -> dict[str, dict[str, Any]]:
    """The train job: every chosen source's adapters (one per seed) not trained yet (all of them with
    `retrain`); their records. Every source's first seed trains before any further one.

    Sources: `config.sources`, else the run's. Adapters kept from earlier must share these settings.
    """
    chosen = [check_adapter_name(s) for s in (config.sources or context.sources)]
    unknown = sorted(set(chosen) - set(context.split.train))
    if unknown:
        raise TrainingError(f"No source {unknown} in this run's split (it has {sorted(context.split.train)}): "
                            "choose them on the Sources page first.")
    wanted = [seed_adapter(source, replica) for replica in range(config.seeds) for source in chosen]
    trained = trained_adapters(context.run)
    kept = [a for a in trained if not (config.retrain and a in wanted)]
    conflicts = _settings_conflicts(context, kept, config)
    if conflicts:
        detail = "; ".join(f"{s}: {', '.join(fields)}" for s, fields in conflicts.items())
        raise TrainingError(
            f"Trained adapters used other settings than these ({detail}). Every source must share them: "
            "train with the settings they used, or retrain every source with these (--retrain, all sources chosen)."
        )
    todo = [a for a in wanted if config.retrain or a not in trained]
    remove_partial_adapters(context.run)
    reporter.event("job_start", sources=wanted, todo=todo, settings=settings_of(config))
    skipped = [a for a in wanted if a not in todo]
    if skipped:
        reporter.log(f"already trained, skipped: {', '.join(skipped)}")
    records = train_sources(context, todo, config, reporter)
    reporter.log(f"done: {len(records)} adapter(s) trained in {context.run.path / 'adapters'}")
    for row in adapter_verdicts(context, reporter).itertuples():  # did each adapter learn? (held-out pairs)
        reporter.log(f"{row.source}: {row.verdict} (held-out margin {row.margin:+.3f} [{row.margin_lower:+.3f}, "
                     f"{row.margin_upper:+.3f}], accuracy {row.accuracy:.2f} on {row.pairs} pairs)")
    return records
