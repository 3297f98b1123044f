"""The commands that reproduce the run, in order, with the settings read back from the run itself:
the split's, the adapters' training records, the reward models' kind, evaluation/settings.json and
each validation's settings; and notes on whatever no command flag can set."""

from __future__ import annotations

import json
import shlex
from dataclasses import fields
from typing import Any

from ..config import ConfigError, DataConfig, RewardConfig, RunConfig, from_dict
from ..errors import UserError
from ..jobs.registry import command, shown_path
from ..lm.adapters import trained_seeds
from ..rewards.job import RewardJobConfig
from ..runs import Run
from ..training.audit import AuditConfig, audited_sources
from ..training.cleaned import cleaned_record
from ..training.settings import TrainConfig, recorded_settings
from ..validation.settings import recorded_config, result_folders
from ..views.snapshot import RunSnapshot
from .html import bullets, code_block, paragraph, section


def differing(config: Any, default: Any, prefix: str) -> list[str]:
    """'prefix.field=value' for each field of a config dataclass that differs from `default`."""
    return [f"{prefix}{f.name}={json.dumps(getattr(config, f.name), default=str)}" for f in fields(config)
            if getattr(config, f.name) != getattr(default, f.name)]


def sources_command(run: Run, config: RunConfig) -> str:
    """The sources command that makes the run's split again, under the run's base model."""
    data, args = config.data, ["sources", "--run", shown_path(run.path), "--new"]
    for flag, value in (("--data", data.dataset if data.dataset != "hh-rlhf" else ""), ("--data-dir", data.data_dir),
                        ("--ultrafeedback-file", data.ultrafeedback_file), ("--heldout-file", data.heldout_file)):
        args += [flag, value] if value else []
    args += ["--sources", *data.sources] if data.sources else []
    return f"VALUATION_MODEL={shlex.quote(config.model.name)} python -m valuation {shlex.join(args)}"


def train_configs(snapshot: RunSnapshot) -> list[Any]:
    """The TrainConfig of each group of adapters trained with the same settings (its sources named when
    they are not all of the run's)."""
    groups: dict[str, list[str]] = {}
    for source in snapshot.trained:
        settings = recorded_settings(snapshot.records[source])
        groups.setdefault(json.dumps(settings, sort_keys=True), []).append(source)
    seeds, all_sources = trained_seeds(snapshot.run, snapshot.trained), snapshot.sources
    return [from_dict(TrainConfig, {**json.loads(settings), **({} if set(sources) == set(all_sources) else {"sources": sources}),
                                    **({"seeds": seeds} if seeds > 1 else {})}, "training record")
            for settings, sources in groups.items()]


def job_commands(snapshot: RunSnapshot) -> tuple[list[str], list[str]]:
    """The job commands in order (train, rewards, evaluate, validate, audit), and notes on what they cannot say."""
    def line(job: str, config: Any) -> str:
        return "python -m valuation " + shlex.join(command(snapshot.run, job, config))

    lines, notes = [line("train", c) for c in train_configs(snapshot)], []
    if not snapshot.accuracies.empty:
        kind = snapshot.config.rewards.kind
        lines.append(line("rewards", RewardJobConfig(kind="" if kind == RewardConfig().kind else kind)))
    if snapshot.store.settings is not None:
        lines.append(line("evaluate", snapshot.store.settings))
    for folder in result_folders(snapshot.run):
        lines.append(line("validate", recorded_config(folder)))
        notes.append(f"validation '{folder.name}' does not record its experiments and sources: the command names the "
                     "defaults (every experiment, the run's first sources).")
    for source in audited_sources(snapshot.run):
        cleaned = cleaned_record(snapshot.run, source)
        lines.append(line("audit", AuditConfig(source=source, drop_flagged=cleaned is not None,
                                               threshold=cleaned["threshold"] if cleaned else AuditConfig().threshold)))
    return lines, notes


def config_notes(config: RunConfig) -> list[str]:
    """Settings of the run's config.yaml that no command flag sets."""
    data = differing(config.data, DataConfig(), "data.")
    flagged = ("data.dataset", "data.data_dir", "data.ultrafeedback_file", "data.sources")  # the sources command's
    data = [d for d in data if not d.startswith(flagged)]
    others = differing(config.rewards, RewardConfig(kind=config.rewards.kind), "rewards.") + \
        differing(config.model, type(config.model)(name=config.model.name), "model.") + \
        ([f"seed={config.seed}"] if config.seed != RunConfig().seed else [])
    notes = [f"The split used settings the sources command does not take: {', '.join(data)} (set them on the Sources "
             "page's split settings and save the sources)."] if data else []
    return notes + ([f"Set in the run's config.yaml after the sources command: {', '.join(others)}."] if others else [])


def commands_section(snapshot: RunSnapshot) -> str:
    """Every command from the sources to this report, then the notes on what they leave out."""
    run = shown_path(snapshot.run.path)
    try:
        jobs, notes = job_commands(snapshot)
    except (ConfigError, UserError, ValueError) as error:
        jobs, notes = [], [f"The recorded settings could not be read back as commands: {error}"]
    lines = [sources_command(snapshot.run, snapshot.config), *jobs]
    if snapshot.store.targets:
        lines.append(f"python -m valuation shapley --run {shlex.quote(run)}")
    lines.append(f"python -m valuation report --run {shlex.quote(run)}")
    parts = [paragraph("From the project folder, in this order (each job resumes: what is already computed is kept). "
                       "The settings come from the run itself: the adapters' training records and "
                       "evaluation/settings.json."), code_block(lines)]
    notes = config_notes(snapshot.config) + notes
    return section("commands", "Reproduce this run", parts + ([bullets(notes)] if notes else []))
