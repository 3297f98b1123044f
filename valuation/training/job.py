"""The train job: every chosen source's adapters (one per training seed) that are not trained yet,
one after another here or all at once on a Ray cluster (`training.cluster`), each saved whole
(`lm.adapters.save_adapter`) before the next starts, so a relaunch trains only what is missing;
then every adapter judged on held-out pairs (`training.verdicts`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import settings_of
from ..lm.adapters import (adapter_dir, check_adapter_name, install_adapter, read_record, remove_partial_adapters,
                           save_adapter, seed_adapter, trained_adapters)
from .verdicts import adapter_verdicts
from .dpo import adapter_inputs, fit_adapter
from .settings import TrainConfig, TrainingError, recorded_settings

if TYPE_CHECKING:
    from ..data.preferences import PreferencePair
    from ..progress import Reporter
    from ..runtime.context import RunContext


def train_source(context: RunContext, adapter: str, config: TrainConfig, reporter: Reporter) -> dict[str, Any]:
    """Train one adapter (a source's, under one of its seeds) on a fresh copy of the base and save it with its record."""
    from ..lm.trunk import trunk_cache  # torch: only when training

    pairs, seed = adapter_inputs(context, adapter)
    model, record = fit_adapter(context.fresh_model(), adapter, pairs, config, seed, reporter,
                                cache=trunk_cache(context.run))
    save_adapter(model, context.run, adapter, record)
    return saved(adapter, record, reporter)


def fit_missing(context: RunContext, folder: Path, name: str, pairs: list[PreferencePair], settings: TrainConfig,
                seed: int, reporter: Reporter, below: Sequence[str] = (), **provenance: Any) -> None:
    """Train adapter `name` into `folder` (beside a run's own, in the same layout) on exactly `pairs`
    unless it is there; with `below`, on the base with those adapters merged in; `provenance` joins
    its record. The validation's adapters and the audit's kept-pairs adapter are trained this way.

    Sequential DPO: stage k is trained with the model of stages < k as its reference. Merging the
    earlier adapters into the weights (merge_and_unload) makes that model the trainer's base, whose
    adapter-off self is the reference: exactly what fit_adapter does on a fresh base.
    """
    from peft import PeftModel

    from ..lm.trunk import trunk_cache  # torch: only when training

    if name in trained_adapters(folder):
        return
    loaded = context.fresh_model()
    for stage in below:
        loaded.model = PeftModel.from_pretrained(loaded.model, adapter_dir(folder, stage)).merge_and_unload()
    cache = None if below else trunk_cache(context.run)  # the run's cached trunks are the unmerged base's
    model, record = fit_adapter(loaded, name, pairs, replace(settings, max_pairs=len(pairs)), seed, reporter, cache=cache)
    save_adapter(model, folder, name, {**record, "merged_below": list(below), **provenance})
    reporter.log(f"{name}: trained in {record['wall_time_s']:.0f}s, final loss {record['final']['loss']}")


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
        used = recorded_settings(read_record(context.run, source))
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
