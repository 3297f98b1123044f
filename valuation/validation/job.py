"""The validate job: the chosen experiments on the run, cheap ones first so partial results appear
early, each resumable (its adapters and files are skipped when present)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import settings_of
from ..storage import atomic_write_json
from .accuracy import run_accuracy
from .inputs import read_inputs
from .results import summary
from .retrain_rewards import run_retrain
from .scaling import run_scaling
from .settings import SETTINGS_FILE, TRAINING_EXPERIMENTS, ValidationConfig, ValidationError, recorded_config, results_dir
from .trained import compare_trained

if TYPE_CHECKING:
    from ..runtime.context import RunContext
    from ..progress import Reporter


def run_validate(context: RunContext, config: ValidationConfig, reporter: Reporter) -> list[Path]:
    """The validate job: the chosen experiments, cheap ones first so partial results appear early; their files."""
    check_settings(results_dir(context.run, config.folder), config)
    inputs = read_inputs(context, config)
    sources = chosen_sources(config, sorted(inputs.train))
    trains = [e for e in config.experiments if e in TRAINING_EXPERIMENTS]  # retrain names its own sources
    reporter.log(f"validating: {', '.join(config.experiments)}" + (f"; {', '.join(trains)} on {', '.join(sources)}" if trains else ""))
    main = config.epochs[0]
    plan = [("accuracy", lambda: run_accuracy(inputs, reporter)),
            ("sequential", lambda: compare_trained(inputs, sources, main, "sequential", reporter)),
            ("pooled", lambda: compare_trained(inputs, sources, main, "pooled", reporter)),
            ("scaling", lambda: run_scaling(inputs, reporter))]
    plan += [("epochs", lambda e=e: compare_trained(inputs, sources, e, "sequential", reporter)) for e in config.epochs[1:]]
    plan += [("retrain", lambda: run_retrain(inputs, reporter))]  # the costliest: 2^n - n - 1 adapters at the run's settings
    written = []
    for name, step in plan:
        if name in config.experiments:
            reporter.event("experiment_start", experiment=name)
            written.append(step())
            reporter.event("experiment_done", experiment=name, path=str(written[-1]))
    reporter.log(f"summary: {summary(results_dir(context.run, config.folder))}")
    return written


def chosen_sources(config: ValidationConfig, available: list[str]) -> list[str]:
    """The sources of the training experiments, sorted: the named ones, else the first `n_sources`."""
    sources = sorted(config.sources) or available[:config.n_sources]
    unknown = [s for s in sources if s not in available]
    if unknown or len(sources) < 2:
        raise ValidationError(f"Validation sources {sources} must be at least two of the run's sources {available}.")
    return sources


def check_settings(folder: Path, config: ValidationConfig) -> None:
    """Results in a folder are reused only with the settings that made them (what it works on may differ)."""
    if (folder / SETTINGS_FILE).exists() and settings_of(recorded_config(folder)) != settings_of(config):
        raise ValidationError(f"{folder} holds results made with other settings: delete the folder to redo them, "
                              "or name another --folder.")
    atomic_write_json(folder / SETTINGS_FILE, settings_of(config))


def current_experiment(events: list[dict[str, Any]]) -> str | None:
    """The experiment a validate job's events say it is working on (or worked on last)."""
    started = [e["experiment"] for e in events if e.get("event") == "experiment_start"]
    return started[-1] if started else None
