"""A run as a page draw or the report reads it: each of its files read once, on first use.

    snapshot = RunSnapshot(run)
    snapshot.config       config.yaml                      snapshot.split      split.json ({} before the split)
    snapshot.sources      the run's sources                snapshot.problem    what is wrong with the run, or None
    snapshot.adapters     every trained adapter            snapshot.records    their training records
    snapshot.verdicts     did each adapter learn?          snapshot.cards      the reward models' cards
    snapshot.accuracies   their held-out accuracies        snapshot.at_chance  the objectives near chance
    snapshot.store        the evaluation folder (`evaluation.store`), which keeps what it reads too
    snapshot.valuation_config    the config the run's values must use (its evaluation's method, budget, seed)

Nothing is written: a job that changes the run is seen by the next snapshot (the next draw).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import pandas as pd

from ..config import RunConfig
from ..data.sources import run_sources
from ..evaluation.store import EvaluationStore
from ..games.values import ValuationConfig
from ..lm.adapters import read_record, trained_adapters, trained_sources
from ..rewards.cards import accuracy_table, at_chance
from ..training.verdicts import read_verdicts
from ..runs import Run, RunError

EVALUATION_SETTINGS = ("method", "permutations", "seed")  # what the evaluation decided about which coalitions exist


@dataclass
class RunSnapshot:
    run: Run

    @cached_property
    def problem(self) -> str | None:
        """What is wrong with the run (its config or split cannot be read), or None: a broken run still
        opens in the run list, and says why."""
        try:
            self.config
            self.split
        except RunError as error:
            return str(error)
        return None

    @cached_property
    def config(self) -> RunConfig:
        return self.run.load_config()

    @cached_property
    def split(self) -> dict[str, Any]:
        """split.json ({} before the sources are recorded)."""
        return self.run.load_split() or {}

    @cached_property
    def sources(self) -> list[str]:
        """The run's sources (`data.sources.run_sources`)."""
        return run_sources(self.config.data, self.split)

    @cached_property
    def adapters(self) -> list[str]:
        """Every finished adapter: each source's, and those under further training seeds."""
        return trained_adapters(self.run)

    @cached_property
    def trained(self) -> list[str]:
        """Sources with a finished adapter."""
        return trained_sources(self.run)

    @cached_property
    def records(self) -> dict[str, dict[str, Any]]:
        """Each adapter's training record."""
        return {adapter: read_record(self.run, adapter) for adapter in self.adapters}

    @cached_property
    def verdicts(self) -> pd.DataFrame:
        return read_verdicts(self.run)

    @cached_property
    def store(self) -> EvaluationStore:
        return EvaluationStore(self.run)

    @property
    def cards(self) -> dict[str, dict[str, Any]]:
        return self.store.cards

    @cached_property
    def accuracies(self) -> pd.DataFrame:
        return accuracy_table(self.cards)

    @cached_property
    def at_chance(self) -> set[str]:
        """Objectives whose reward model's held-out accuracy interval includes 50%."""
        return at_chance(self.accuracies)

    @cached_property
    def valuation_config(self) -> ValuationConfig:
        """The config the run's values must use: its evaluation's method, permutation budget and seed.

        With the permutation method (auto: beyond EXACT_MAX_PLAYERS sources) the evaluation measured only
        the coalitions that `permutation_shapley` visits with that budget and seed: any other budget or
        seed asks for coalitions that were never evaluated. Without an evaluation: the defaults."""
        settings = self.store.settings
        if settings is None:
            return ValuationConfig()
        config = ValuationConfig(**{key: getattr(settings, key) for key in EVALUATION_SETTINGS})
        config.validate()  # an evaluation may sample fewer permutations than a standard error needs
        return config

    @property
    def confidence(self) -> str:
        """The values' confidence level, as '95%'."""
        return f"{self.valuation_config.confidence:.0%}"
