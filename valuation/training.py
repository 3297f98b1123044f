"""DPO training of one LoRA adapter per source, all with the same settings.

Each source's adapter pi_l is trained by TRL's DPOTrainer against the base pi_0 (the reference is
the same model with the adapter switched off: no second copy in memory), minimising

    -log sigmoid( beta * [ log pi_l(y+|x)/pi_0(y+|x) - log pi_l(y-|x)/pi_0(y-|x) ] )

over the source's training pairs. Every source shares the base, beta, LoRA shape, optimiser,
schedule, epochs and lengths; only the data and the seed differ, and the seed is derived from the
run seed and the source's name, so a source trains the same alone, in a batch or after a relaunch.

Progress goes to a `jobs.JobSession` (events for the app, log lines, a tqdm bar in a terminal);
each finished adapter is saved whole (`adapters.save_adapter`) before the next source starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .adapters import check_adapter_name, read_record, remove_partial_adapters, save_adapter, trained_sources
from .config import ConfigError, from_dict, helped, to_dict
from .errors import UserError
from .jobs import Job, JobSession, launch_job
from .runs import Run

if TYPE_CHECKING:
    import pandas as pd

    from .data import PreferencePair
    from .models import LoadedModel

ATTENTION_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj"]


class TrainingError(UserError):
    """Training cannot start or continue; the message says what to change."""


@dataclass
class TrainConfig:
    max_pairs: int = helped(120, "Training pairs per source, taken in the split's seeded order (0: every pair of the split).")
    epochs: float = helped(1.0, "Passes over each source's pairs.")
    learning_rate: float = helped(1e-3, "Peak AdamW learning rate (LoRA wants far more than full fine-tuning's 1e-6).")
    batch_size: int = helped(4, "Preference pairs per forward pass.")
    gradient_accumulation: int = helped(1, "Forward passes per optimiser step (effective batch = batch_size x this).")
    warmup_ratio: float = helped(0.1, "Share of the steps spent warming the learning rate up from zero.")
    scheduler: str = helped("cosine", "Learning-rate schedule after warm-up: 'cosine', 'linear' or 'constant'.")
    weight_decay: float = helped(0.0, "AdamW weight decay.")
    max_length: int = helped(128, "Tokens of prompt plus reply; a longer reply is cut at the end.")
    max_prompt_length: int = helped(80, "Pairs whose prompt (through the chat template) is longer are dropped and counted.")
    beta: float = helped(0.1, "DPO beta: the KL strength. Adapters combine only when trained with the same beta.")
    lora_r: int = helped(8, "LoRA rank.")
    lora_alpha: int = helped(16, "LoRA scaling alpha (the update is scaled by alpha / r).")
    lora_dropout: float = helped(0.0, "Dropout on the LoRA input.")
    lora_targets: list[str] = helped(ATTENTION_PROJECTIONS, "Modules that get a LoRA update (default: the attention projections).")
    precision: str = helped("bfloat16", "'bfloat16' (float32 weights, bfloat16 autocast: faster here and on GPUs) or 'float32'.")
    precompute_ref: bool = helped(True, "Compute the reference log-probs once before training (a step costs about 1/4 less).")

    def validate(self) -> None:
        positive = ("batch_size", "gradient_accumulation", "max_length", "max_prompt_length", "lora_r", "lora_alpha")
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


# `quick`: a CPU in minutes (four sources in under 20 minutes on 2 cores, measured);
# `paper`: a GPU, whole sources, longer sequences, the paper's beta and LoRA shape.
PRESETS: dict[str, TrainConfig] = {
    "quick": TrainConfig(),
    "paper": TrainConfig(max_pairs=0, epochs=3.0, learning_rate=2e-4, batch_size=8, gradient_accumulation=2,
                         max_length=512, max_prompt_length=384),
}


def preset_config(preset: str, **overrides: Any) -> TrainConfig:
    """The preset's settings with `overrides` (field name -> value) applied, validated."""
    if preset not in PRESETS:
        raise ConfigError(f"Unknown training preset {preset!r}: use one of {sorted(PRESETS)}.")
    config = from_dict(TrainConfig, {**to_dict(PRESETS[preset]), **overrides}, "training")
    config.validate()
    return config


def source_seed(run_seed: int, source: str) -> int:
    """A source's training seed: fixed by the run seed and its name, not by when it trains."""
    digest = hashlib.sha256(f"{run_seed}\x00train\x00{source}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 2**31


def flag(field_name: str) -> str:
    """The command-line flag of a TrainConfig field: max_pairs -> --max-pairs."""
    return "--" + field_name.replace("_", "-")


def train_argv(run: Run, preset: str, sources: list[str], overrides: dict[str, Any], retrain: bool = False) -> list[str]:
    """The arguments of `python -m valuation` that train `sources` of `run` with these settings."""
    argv = ["train", "--run", str(run.path.absolute()), "--preset", preset]  # the job runs from the project root
    if sources:
        argv += ["--sources", *sources]
    for name, value in overrides.items():
        if isinstance(value, bool):
            argv.append(flag(name) if value else "--no-" + flag(name)[2:])
        elif isinstance(value, list):
            argv += [flag(name), *map(str, value)]
        else:
            argv += [flag(name), repr(value) if isinstance(value, float) else str(value)]
    return argv + (["--retrain"] if retrain else [])


def launch_training(run: Run, preset: str, sources: list[str], overrides: dict[str, Any], retrain: bool = False) -> Job:
    """Check the settings now (so mistakes show at once), then train in a background process."""
    preset_config(preset, **overrides)
    run.load_config()
    return launch_job(run, "train", train_argv(run, preset, sources, overrides, retrain))


# ---------------------------------------------------------------- data


@dataclass
class SourcePairs:
    rows: list[dict[str, Any]]  # TRL's conversational preference format
    dropped: int  # pairs whose prompt exceeded max_prompt_length


def select_pairs(pairs: list["PreferencePair"], tokenizer: Any, config: TrainConfig) -> SourcePairs:
    """The first `max_pairs` pairs whose prompt fits, as conversations; count the ones that did not."""
    rows, dropped = [], 0
    for pair in pairs:
        if config.max_pairs and len(rows) == config.max_pairs:
            break
        prompt_ids = tokenizer.apply_chat_template(pair.prompt, add_generation_prompt=True, return_dict=False)
        if len(prompt_ids) > config.max_prompt_length:
            dropped += 1
            continue
        rows.append({
            "prompt": pair.prompt,
            "chosen": [{"role": "assistant", "content": pair.chosen}],
            "rejected": [{"role": "assistant", "content": pair.rejected}],
        })
    return SourcePairs(rows, dropped)


# ---------------------------------------------------------------- progress


def _progress_callback(session: JobSession, source: str, history: list[dict[str, Any]]):
    """A TrainerCallback that turns the trainer's logs into progress events, log lines and a bar."""
    from tqdm import tqdm
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.time()
            self.bar = tqdm(total=state.max_steps, desc=source, unit="step", disable=None, leave=True)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return  # the final summary (train_runtime...) is not a step
            elapsed = time.time() - self.started
            step, total = state.global_step, state.max_steps
            point = {
                "step": step,
                "loss": logs["loss"],
                "accuracy": logs.get("rewards/accuracies"),
                "margin": logs.get("rewards/margins"),
            }
            history.append(point)
            eta = elapsed / step * (total - step) if step else None
            session.progress.emit("step", source=source, total=total, elapsed=elapsed, eta=eta, **point)
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{point['loss']:.3f}", margin=f"{point['margin'] or 0:.3f}")
            if not self.bar.disable:
                return
            session.log(f"{source}: step {step}/{total} loss {point['loss']:.4f} "
                        f"accuracy {point['accuracy'] or 0:.2f} margin {point['margin'] or 0:.4f} "
                        f"elapsed {elapsed:.0f}s left {eta or 0:.0f}s")

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

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


def _quiet_libraries() -> None:
    """Keep the job log to our own lines: no per-map progress bars, no weight-loading bars."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def fit_adapter(loaded: "LoadedModel", name: str, pairs: list["PreferencePair"], config: TrainConfig, seed: int,
                session: JobSession) -> tuple[Any, dict[str, Any]]:
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
            f"Source {name!r} has no training pair whose prompt fits max_prompt_length={config.max_prompt_length} "
            f"({selected.dropped} dropped): raise --max-prompt-length."
        )
    session.log(f"{name}: {len(selected.rows)} pairs ({selected.dropped} dropped by the prompt length cap), seed {seed}")
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
            callbacks=[_progress_callback(session, name, history)],
        )
        trainer.remove_callback(PrinterCallback)
        session.progress.emit("source_start", source=name, pairs=len(selected.rows), dropped=selected.dropped)
        trainer.train()
    final = history[-1] if history else {}
    record = {
        "source": name,
        "settings": to_dict(config),
        "beta": config.beta,
        "base_model": loaded.name,
        "base_model_path": str(loaded.path),
        "lora": {"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout, "targets": config.lora_targets},
        "seed": seed,
        "pairs_used": len(selected.rows),
        "pairs_dropped_by_length": selected.dropped,
        "steps": trainer.state.global_step,
        "final": {k: final.get(k) for k in ("loss", "accuracy", "margin")},
        "history": history,
        "wall_time_s": round(time.time() - started, 1),
    }
    return trainer.model, record


def train_source(run: Run, source: str, pairs: list["PreferencePair"], config: TrainConfig, session: JobSession) -> dict[str, Any]:
    """Train one source's adapter on a fresh copy of the base and save it with its record."""
    from .models import load_model

    run_config = run.load_config()
    loaded = load_model(run_config.model)  # fresh: adapters stay independent of each other
    model, record = fit_adapter(loaded, source, pairs, config, source_seed(run_config.seed, source), session)
    save_adapter(model, run, source, record)
    session.progress.emit("source_done", source=source, wall_time_s=record["wall_time_s"], **record["final"])
    loss = record["final"]["loss"]
    session.log(f"{source}: saved adapter after {record['wall_time_s']:.0f}s, final loss {float('nan') if loss is None else loss:.4f}")
    return record


def _settings_conflicts(run: Run, kept: list[str], config: TrainConfig) -> dict[str, list[str]]:
    """Kept adapters trained with other settings: source -> the fields that differ."""
    wanted = to_dict(config)
    conflicts = {}
    for source in kept:
        used = read_record(run, source).get("settings", {})
        differing = [name for name in wanted if used.get(name) != wanted[name]]
        if differing:
            conflicts[source] = differing
    return conflicts


def train_sources(run: Run, config: TrainConfig, sources: list[str] | None, session: JobSession,
                  retrain: bool = False) -> dict[str, dict[str, Any]]:
    """Train every chosen source not trained yet (all of them with `retrain`); their records.

    Sources: `sources`, else the run's data.sources, else every source of its dataset. Call this
    while holding the run's lock (inside `jobs.job_session`).
    """
    from .data import load_preferences
    from .splits import split_preferences

    _quiet_libraries()
    run_config = run.load_config()
    data_config = dataclasses.replace(run_config.data, sources=list(sources or run_config.data.sources))
    split = split_preferences(load_preferences(data_config), data_config)
    chosen = [check_adapter_name(s) for s in split.train]
    trained = trained_sources(run)
    kept = [s for s in trained if not (retrain and s in chosen)]
    conflicts = _settings_conflicts(run, kept, config)
    if conflicts:
        detail = "; ".join(f"{s}: {', '.join(fields)}" for s, fields in conflicts.items())
        raise TrainingError(
            f"Trained adapters used other settings than these ({detail}). Every source must share them: "
            "train with the settings they used, or retrain every source with these (--retrain, all sources chosen)."
        )
    todo = [s for s in chosen if retrain or s not in trained]
    remove_partial_adapters(run)
    session.progress.emit("job_start", sources=chosen, todo=todo, settings=to_dict(config))
    skipped = [s for s in chosen if s not in todo]
    if skipped:
        session.log(f"already trained, skipped: {', '.join(skipped)}")
    return {source: train_source(run, source, split.train[source], config, session) for source in todo}


# ---------------------------------------------------------------- reading progress (for the app)


@dataclass
class SourceProgress:
    source: str
    state: str  # waiting, training, done, or skipped (already trained)
    step: int = 0
    total: int | None = None
    eta_s: float | None = None

    @property
    def fraction(self) -> float:
        if self.state in ("done", "skipped"):
            return 1.0
        return self.step / self.total if self.total else 0.0


def source_progress(events: list[dict[str, Any]]) -> list[SourceProgress]:
    """Each source of the job's latest start, with how far it got, from its progress events."""
    starts = [i for i, e in enumerate(events) if e["event"] == "job_start"]
    if not starts:
        return []
    start = events[starts[-1]]
    progress = {s: SourceProgress(s, "waiting" if s in start["todo"] else "skipped") for s in start["sources"]}
    for event in events[starts[-1] + 1:]:
        entry = progress.get(event.get("source"))
        if entry is None:
            continue
        if event["event"] == "source_start":
            entry.state = "training"
        elif event["event"] == "step":
            entry.state, entry.step, entry.total, entry.eta_s = "training", event["step"], event["total"], event.get("eta")
        elif event["event"] == "source_done":
            entry.state = "done"
    return list(progress.values())


def training_curves(run: Run, events: list[dict[str, Any]]) -> "pd.DataFrame":
    """Loss, reward accuracy and margin by step and source: saved adapters' curves, then live ones."""
    import pandas as pd

    rows = []
    trained = trained_sources(run)
    for source in trained:
        rows += [{"source": source, **point} for point in read_record(run, source).get("history", [])]
    rows += [
        {"source": e["source"], **{k: e.get(k) for k in ("step", "loss", "accuracy", "margin")}}
        for e in events if e["event"] == "step" and e["source"] not in trained
    ]
    return pd.DataFrame(rows, columns=["source", "step", "loss", "accuracy", "margin"])


def adapter_table(run: Run) -> "pd.DataFrame":
    """One row per trained adapter: what it was trained on and how it ended."""
    import pandas as pd

    rows = []
    for source in trained_sources(run):
        record = read_record(run, source)
        final = record.get("final", {})
        rows.append({
            "source": source,
            "pairs": record.get("pairs_used"),
            "dropped (length)": record.get("pairs_dropped_by_length"),
            "steps": record.get("steps"),
            "final loss": final.get("loss"),
            "reward accuracy": final.get("accuracy"),
            "reward margin": final.get("margin"),
            "minutes": round(record.get("wall_time_s", 0) / 60, 1),
            "base model": record.get("base_model"),
            "beta": record.get("beta"),
        })
    return pd.DataFrame(rows)
