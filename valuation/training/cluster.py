"""Training on a Ray cluster: one task per adapter (`train_task`). Each loads the base, trains the
adapter with its source's own seed (`dpo.fit_adapter`) and returns the adapter's files as bytes;
the driver writes them into the run. Ray retries a task whose node is lost."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ModelConfig
from ..lm.adapters import save_adapter
from ..runtime.cluster import Relay, cancel_all, connected, read_files, relay_queue, resources, wait_some
from ..runtime.quiet import quiet_libraries
from .dpo import adapter_inputs, fit_adapter
from .settings import TrainConfig

if TYPE_CHECKING:
    from ..data.preferences import PreferencePair
    from ..progress import Reporter
    from ..runtime.context import RunContext

TASK_RETRIES = 3  # a training task is run again this many times when its worker or node dies


def train_task(model: ModelConfig, adapter: str, pairs: list[PreferencePair], config: TrainConfig, seed: int,
               queue: Any) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Train one adapter on a fresh base (on a Ray worker); its files as bytes, and its record."""
    from ..lm.models import load_model  # torch: only on the worker

    quiet_libraries()
    trained, record = fit_adapter(load_model(model), adapter, pairs, config, seed, Relay(queue))
    with tempfile.TemporaryDirectory(prefix="valuation-adapter-") as scratch:
        folder = save_adapter(trained, Path(scratch), adapter, record)
        return read_files(folder, [""]), record


def train_on_ray(context: RunContext, adapters: list[str], config: TrainConfig, reporter: Reporter
                 ) -> Iterator[tuple[str, dict[str, bytes], dict[str, Any]]]:
    """Every adapter trained by its own task, in parallel: (adapter, files, record) as each finishes."""
    import ray

    with connected(context.backend):
        queue = relay_queue()
        task = ray.remote(train_task).options(**resources(context.backend), max_retries=TASK_RETRIES)
        pending = {}
        for adapter in adapters:
            pairs, seed = adapter_inputs(context, adapter)
            pending[task.remote(context.config.model, adapter, pairs, config, seed, queue)] = adapter
        reporter.log(f"{len(pending)} training task(s) sent to Ray ({context.backend.describe()})")
        try:
            while pending:
                for ref in wait_some(pending, queue, reporter):
                    source = pending.pop(ref)
                    files, record = ray.get(ref)
                    yield source, files, record
        finally:
            cancel_all(pending)
