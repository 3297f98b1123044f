"""DPO training of one LoRA adapter per source, all with the same settings.

Each source's adapter pi_l is trained against the base pi_0 (the reference is the same model with
the adapter switched off: no second copy in memory), minimising

    -log sigmoid( beta * [ log pi_l(y+|x)/pi_0(y+|x) - log pi_l(y-|x)/pi_0(y-|x) ] )

(or its robust form) over the source's training pairs: on every layer by TRL's DPOTrainer, or, with
`train_layers`, on the top layers over a frozen trunk computed once per pair (`top_layers`). Every source shares the base, beta, LoRA shape, optimiser,
schedule, epochs and lengths; only the data and the seed differ, and the seed is derived from the
run seed and the source's name, so a source trains the same alone, in a batch or after a relaunch.
With `seeds` k > 1 each source also trains under k - 1 further seeds (adapters `<source>@seed2`, ...):
the evaluation then averages the values over seeds and puts their spread in the intervals.

`fit_adapter` trains one adapter; the job (`training.job`) saves each one whole before the next
starts. Progress goes to the `Reporter` (events for the app, log lines, a tqdm bar in a terminal).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..config import settings_of
from ..lm.adapters import source_and_replica
from .pairs import dropped_warning, select_pairs
from .settings import TrainConfig, TrainingError

if TYPE_CHECKING:
    from pathlib import Path

    from ..data.preferences import PreferencePair
    from ..lm.models import LoadedModel
    from ..progress import Reporter
    from ..runtime.context import RunContext


def source_seed(run_seed: int, source: str, replica: int = 0) -> int:
    """A source's training seed number `replica`: fixed by the run seed and its name, not by when it trains."""
    further = f"\x00{replica}" if replica else ""  # the first seed is the one a single-seed run has always used
    digest = hashlib.sha256(f"{run_seed}\x00train\x00{source}{further}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 2**31


def adapter_inputs(context: RunContext, adapter: str) -> tuple[list[PreferencePair], int]:
    """What an adapter trains on: its source's training pairs, and its seed."""
    source, replica = source_and_replica(adapter)
    return context.split.train[source], source_seed(context.config.seed, source, replica)


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
        loss_type=[config.loss_type],
        label_smoothing=config.label_smoothing,
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


def _trainer(reporter: Reporter, name: str, batches: int) -> type:
    """TRL's DPOTrainer, its reference pass (run while it is built, batch by batch, when the reference
    log-probs are precomputed) reported as a stage of the job's own progress."""
    from trl import DPOTrainer

    stage, done = reporter.stage(f"{name}: reference log-probs"), 0

    class ReportingDPOTrainer(DPOTrainer):
        def compute_ref_log_probs(self, model, inputs):
            nonlocal done
            result = super().compute_ref_log_probs(model, inputs)
            done += 1
            stage(min(done, batches), batches)
            return result

    return ReportingDPOTrainer


@contextmanager
def _no_trl_bar() -> Iterator[None]:
    """TRL's own bar over the reference pass, and the datasets library's over its preparation, write
    lines into a job's log: off while the trainer is built."""
    from datasets.utils import disable_progress_bars, enable_progress_bars

    before = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()
        if before is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = before


def _fit_with_trl(loaded: LoadedModel, name: str, rows: list[dict[str, Any]], config: TrainConfig, seed: int,
                  reporter: Reporter) -> tuple[Any, list[dict[str, Any]]]:
    """Every layer's LoRA adapter by TRL's DPOTrainer; the PeftModel and its curve (one point a step)."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers.trainer_callback import PrinterCallback

    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.lora_targets, task_type="CAUSAL_LM")
    history: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="valuation-train-") as scratch, _no_trl_bar():
        trainer = _trainer(reporter, name, -(-len(rows) // config.batch_size))(
            model=loaded.model,
            args=_dpo_config(config, seed, scratch, use_cpu=loaded.device.type == "cpu"),
            train_dataset=Dataset.from_list(rows),
            processing_class=loaded.tokenizer,
            peft_config=lora,  # the reference is this model with the adapter disabled
            callbacks=[_progress_callback(reporter, name, history)],
        )
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return trainer.model, history


def fit_adapter(loaded: LoadedModel, name: str, pairs: list[PreferencePair], config: TrainConfig, seed: int,
                reporter: Reporter, cache: Path | None = None) -> tuple[Any, dict[str, Any]]:
    """Train a LoRA adapter on `loaded.model` by DPO; the trained PeftModel and its record.

    The reference is `loaded.model` itself with the adapter off: the base for a source's adapter,
    or a model with earlier adapters merged into its weights for a later stage of sequential DPO.
    With `config.train_layers` the adapter sits on the top layers only and trains over the frozen
    trunk (`top_layers`), kept in `cache` when given (only for a model that is the base itself: the
    cache knows a model by its name); else TRL trains it on every layer.
    """
    started = time.time()
    selected = select_pairs(pairs, loaded.tokenizer, config)
    if not selected.rows:
        raise TrainingError(
            f"Source {name!r} has no training pair whose prompt fits max_prompt_length={config.max_prompt_length}, not "
            f"even cut to its last tokens ({selected.dropped} dropped: the chat template alone is longer): raise "
            "--max-prompt-length."
        )
    reporter.log(f"{name}: {len(selected.rows)} pairs ({selected.whole} whole, {selected.truncated} truncated to their "
                 f"end, {selected.dropped} dropped by the prompt length cap), seed {seed}")
    warning = dropped_warning({name: (len(selected.rows), selected.dropped)})
    if warning:
        reporter.log(f"warning: {warning}")
    reporter.event("source_start", source=name, pairs=len(selected.rows), truncated=selected.truncated,
                   dropped=selected.dropped)
    if config.train_layers:
        from .top_layers import fit_top_layers  # torch: only when training

        model, history = fit_top_layers(loaded, name, selected.rows, config, seed, reporter, cache)
    else:
        model, history = _fit_with_trl(loaded, name, selected.rows, config, seed, reporter)
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
        "steps": len(history),
        "final": {k: final.get(k) for k in ("loss", "accuracy", "margin")},
        "history": history,
        "wall_time_s": round(time.time() - started, 1),
    }
    return model, record
