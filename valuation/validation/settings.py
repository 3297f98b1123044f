"""The validation job's settings, its presets, and where its results live in a run."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import json

from ..config import ConfigError, from_dict, helped
from ..errors import UserError
from ..runs import Run

EXPERIMENTS = ("sequential", "pooled", "epochs", "accuracy", "scaling", "retrain")
TRAINING_EXPERIMENTS = ("sequential", "pooled", "epochs")  # those that train on the validation's sources
DEFAULT_EXPERIMENTS = [e for e in EXPERIMENTS if e != "retrain"]  # retrain: hours on a CPU, asked for by name
SETTINGS_FILE = "settings.json"  # in each results folder: the settings that made its results
FOLDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")


class ValidationError(UserError):
    """A validation that cannot run; the message says what to change."""


@dataclass
class ValidationConfig:
    experiments: list[str] = helped(DEFAULT_EXPERIMENTS, f"Experiments to run, of {', '.join(EXPERIMENTS)} (all but "
                                                         "retrain when none are named).", setting=False)
    sources: list[str] = helped([], "Sources of the training experiments (every coalition of two or more is compared); "
                                    "empty: the run's first `n_sources`, and for retrain its first 4.", setting=False)
    n_sources: int = helped(2, "Sources taken when none are named.", setting=False)
    folder: str = helped("quick", "Results folder, <run>/validation/<folder>: results there are reused only with the "
                                  "settings that made them.", setting=False)
    training_preset: str = helped("quick", "Training settings of every validation adapter (the training presets).")
    max_pairs: int = helped(16, "Training pairs per source; a pooled adapter trains on its members' pairs together.")
    epochs: list[float] = helped([1.0, 2.0, 4.0], "Epochs of the convergence ablation; the first is also used by "
                                                  "the sequential and pooled comparisons.")
    heldout_pairs: int = helped(32, "Held-out pairs (eval part, prompts within the training length cap) on which trained "
                                    "models are compared.")
    response_tokens: int = helped(48, "Held-out responses are cut to this many tokens for teacher-forced scoring.")
    scaling_players: int = helped(8, "Sources of the scaling game: each run source cut into equal parts by a seeded hash.")
    scaling_pairs: int = helped(8, "Training pairs per scaling source (1 epoch).")
    permutations: list[int] = helped([100, 500, 1000], "Monte Carlo budgets (permutations) compared with exact Shapley.")
    repeats: int = helped(20, "Monte Carlo runs per budget, with different seeds: errors are averaged over them.")
    retrain_pairs: int = helped(256, "Held-out pairs (eval part, taken evenly across sources, prompts cut as training "
                                     "cuts them) on which the retrain experiment values its three games.", setting=False)
    retrain_seeds: int = helped(1, "Training seeds of the retrain experiment: each coalition's adapter is trained under "
                                   "the run's first k seeds (at most as many as the run's adapters have).", setting=False)

    def validate(self) -> None:
        unknown = [e for e in self.experiments if e not in EXPERIMENTS]
        if unknown or not self.experiments:
            raise ConfigError(f"validation.experiments={self.experiments}: choose from {', '.join(EXPERIMENTS)}.")
        if not FOLDER_NAME.match(self.folder) or self.folder == "retrain":
            raise ConfigError(f"validation.folder={self.folder!r}: use a plain name (letters, digits, '_' or '-'), "
                              "not 'retrain' (the retrain experiment's own folder).")
        if len(self.sources) == 1 or (not self.sources and self.n_sources < 2):
            raise ConfigError("validation needs at least 2 sources to form a coalition: name two or more, or none.")
        if not self.epochs or min(self.epochs) <= 0:
            raise ConfigError("validation.epochs must list positive numbers of epochs, e.g. 1 2 4.")
        if min(self.max_pairs, self.heldout_pairs, self.response_tokens, self.scaling_pairs, self.repeats, self.scaling_players,
               self.retrain_pairs, self.retrain_seeds) < 1:
            raise ConfigError("validation counts (pairs, tokens, players, repeats) must be at least 1.")
        if not self.permutations or min(self.permutations) < 2:
            raise ConfigError("validation.permutations must list budgets of at least 2 permutations.")


# `quick`: one working session on 2 CPU cores (2 sources, 16 pairs, epochs 1/2/4, 8 scaling sources of 8 pairs;
# measured: 55 minutes on 2 cores shared with a training and an evaluation job, a relaunch of a finished one 6 s).
# `gpu`: 3 sources (Shapley over sequential and pooled coalitions too), longer training, epochs to 8.
PRESETS: dict[str, ValidationConfig] = {
    "quick": ValidationConfig(),
    "gpu": ValidationConfig(n_sources=3, folder="gpu", training_preset="paper", max_pairs=256, epochs=[1.0, 2.0, 4.0, 8.0],
                            response_tokens=128, scaling_pairs=128, repeats=50),
}


def recorded_config(folder: Path) -> ValidationConfig:
    """The settings a results folder recorded (its settings.json), as the job's config: the preset of
    that folder (or the defaults) with them; its experiments and sources are not recorded."""
    preset = next((p for p in PRESETS.values() if p.folder == folder.name), ValidationConfig(folder=folder.name))
    path = folder / SETTINGS_FILE
    return from_dict(ValidationConfig, {**vars(preset), **json.loads(path.read_text(encoding="utf-8"))}, str(path))


def result_folders(run: Run) -> list[Path]:
    """The run's validation results folders, one per validate job that has written its settings."""
    return sorted(path.parent for path in results_dir(run, "").glob(f"*/{SETTINGS_FILE}"))


def results_dir(run: Run, folder: str) -> Path:
    """<run>/validation/<folder>: one config's results and its own adapters."""
    return run.path / "validation" / folder


def retrain_dir(run: Run) -> Path:
    """The retrain experiment's adapters and table: they depend on the run's adapters and training
    settings, not on a validation preset, so one per run."""
    return run.path / "validation" / "retrain"


def accuracy_path(run: Run) -> Path:
    """The accuracy experiment's table: it depends on the run's adapters only, so one per run."""
    return run.path / "validation" / "accuracy_utilities.csv"
