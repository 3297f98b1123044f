"""A run read once for a job: every step of the job receives this context instead of reading the
run again.

    context = RunContext.open(run)
    context.config      the RunConfig (config.yaml), read here
    context.backend     where the job's parallel parts run: the run's backend, or the job's own
    context.sources     the sources the run values (`data.sources.run_sources`)
    context.data        every pair of the run's dataset, read on first use
    context.split       the recorded split (split.json), rebuilt from its pair ids on first use (over
                        the dataset and the trusted held-out file, when the run has one)
    context.base        the base model and tokenizer, loaded on first use and shared by every step
    context.record(a)   adapter a's training record, read once
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from ..config import BackendConfig, RunConfig, every_source
from ..data.sources import run_sources
from ..lm.adapters import read_record
from ..runs import Run, RunError

if TYPE_CHECKING:
    from ..data.preferences import PreferenceData
    from ..lm.models import LoadedModel
    from ..data.splits import Split


@dataclass
class RunContext:
    run: Run
    config: RunConfig
    backend: BackendConfig
    _records: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, run: Run, backend: BackendConfig | None = None, config: RunConfig | None = None) -> RunContext:
        """The run's context; `config` when the caller has read it already (it is read here otherwise)."""
        config = config or run.load_config()
        return cls(run, config, backend or config.backend)

    @cached_property
    def recorded(self) -> dict[str, Any]:
        """split.json as recorded; a clear error before the sources are chosen."""
        recorded = self.run.load_split()
        if recorded is None:
            raise RunError(f"Run {self.run.name!r} has no split yet: choose its sources on the Sources page "
                           f"(or `python -m valuation sources --run {self.run.path}`).")
        return recorded

    @property
    def sources(self) -> list[str]:
        """The sources the run values (`run_sources`)."""
        return run_sources(self.config.data, self.recorded)

    def record(self, adapter: str) -> dict[str, Any]:
        """Adapter `adapter`'s training record, read once."""
        if adapter not in self._records:
            self._records[adapter] = read_record(self.run, adapter)
        return self._records[adapter]

    @cached_property
    def data(self) -> PreferenceData:
        from ..data.preferences import load_preferences

        return load_preferences(every_source(self.config.data))

    @cached_property
    def split(self) -> Split:
        from ..data.splits import load_gold, read_split

        return read_split(self.data, self.recorded, load_gold(self.config.data))

    @cached_property
    def base(self) -> LoadedModel:
        from ..lm.models import load_model

        return load_model(self.config.model)

    def fresh_model(self) -> LoadedModel:
        """A private copy of the base model, for work that changes it (training wraps it in an adapter)."""
        from ..lm.models import load_model

        return load_model(self.config.model)
