"""What the report says of a run, read from its folder once: every section takes these facts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import RunConfig
from ..runs import Run
from ..values import ValuationConfig


@dataclass(frozen=True)
class Facts:
    """A run's recorded state, as the sections read it."""

    run: Run
    config: RunConfig
    split: dict[str, Any]  # split.json ({} before the sources are recorded)
    accuracies: pd.DataFrame  # rewards.reward_accuracies
    verdicts: pd.DataFrame  # preference.read_verdicts
    evaluation: dict[str, Any]  # evaluation/settings.json ({} before any evaluation)
    tables: dict[str, Path]  # values.target_tables
    valuation_config: ValuationConfig

    @property
    def sources(self) -> list[str]:
        """The split's sources, or the config's before the split is recorded."""
        return sorted(self.split.get("train_pairs", {})) or list(self.config.data.sources)

    @property
    def at_chance(self) -> set[str]:
        """Objectives whose reward model's held-out accuracy interval includes 50%."""
        from ..rewards import at_chance

        return at_chance(self.accuracies)

    @property
    def confidence(self) -> str:
        """The evaluation's confidence level, as '95%'."""
        return f"{self.valuation_config.confidence:.0%}"


def gather(run: Run) -> Facts:
    """Read the run's config, split, reward accuracies, verdicts, evaluation settings and utility tables."""
    from ..preference import read_verdicts
    from ..rewards import reward_accuracies
    from ..values import evaluation_settings_path, run_valuation_config, target_tables

    settings = evaluation_settings_path(run)
    return Facts(run=run, config=run.load_config(), split=run.load_split() or {}, accuracies=reward_accuracies(run),
                 verdicts=read_verdicts(run),
                 evaluation=json.loads(settings.read_text(encoding="utf-8")) if settings.is_file() else {},
                 tables=target_tables(run), valuation_config=run_valuation_config(run))
