"""A run read once for a job: every step of the job receives this context instead of reading the
run again.

    context = RunContext.open(run)
    context.config      the RunConfig (config.yaml), read here
    context.backend     where the job's parallel parts run: the run's backend, or the job's own
    context.data        every pair of the run's dataset, read on first use
    context.split       the recorded split (split.json), rebuilt from its pair ids on first use (over
                        the dataset and the trusted held-out file, when the run has one)
    context.base        the base model and tokenizer, loaded on first use and shared by every step
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from .config import BackendConfig, RunConfig, every_source
from .runs import Run, RunError

if TYPE_CHECKING:
    from .data import PreferenceData
    from .models import LoadedModel
    from .splits import Split


@dataclass
class RunContext:
    run: Run
    config: RunConfig
    backend: BackendConfig

    @classmethod
    def open(cls, run: Run, backend: BackendConfig | None = None) -> RunContext:
        config = run.load_config()
        return cls(run, config, backend or config.backend)

    @property
    def sources(self) -> list[str]:
        """The sources the run values: its chosen ones, else every source of its split."""
        return list(self.config.data.sources or self.split.train)

    @cached_property
    def data(self) -> PreferenceData:
        from .data import load_preferences

        return load_preferences(every_source(self.config.data))

    @cached_property
    def split(self) -> Split:
        from .splits import load_gold, read_split

        recorded = self.run.load_split()
        if recorded is None:
            raise RunError(f"Run {self.run.name!r} has no split yet: choose its sources on the Sources page "
                           f"(or `python -m valuation sources --run {self.run.path}`).")
        return read_split(self.data, recorded, load_gold(self.config.data))

    @cached_property
    def base(self) -> LoadedModel:
        from .models import load_model

        return load_model(self.config.model)

    def fresh_model(self) -> LoadedModel:
        """A private copy of the base model, for work that changes it (training wraps it in an adapter)."""
        from .models import load_model

        return load_model(self.config.model)
