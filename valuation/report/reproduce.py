"""The commands that reproduce the run, in order, with the settings read back from the run itself:
the split's, the adapters' training records, the reward models' kind, evaluation/settings.json and
each validation's settings; and notes on whatever no command flag can set."""

from __future__ import annotations

import json
import shlex
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..config import ConfigError, DataConfig, RewardConfig, RunConfig, from_dict
from ..errors import UserError
from ..runs import Run
from .facts import Facts
from .html import bullets, code_block, paragraph, section
from .validation import validation_folders


def differing(config: Any, default: Any, prefix: str) -> list[str]:
    """'prefix.field=value' for each field of a config dataclass that differs from `default`."""
    return [f"{prefix}{f.name}={json.dumps(getattr(config, f.name), default=str)}" for f in fields(config)
            if getattr(config, f.name) != getattr(default, f.name)]


def sources_command(run: Run, config: RunConfig) -> str:
    """The sources command that makes the run's split again, under the run's base model."""
    from ..jobs import shown_path

    data, args = config.data, ["sources", "--run", shown_path(run.path), "--new"]
    for flag, value in (("--data", data.dataset if data.dataset != "hh-rlhf" else ""), ("--data-dir", data.data_dir),
                        ("--ultrafeedback-file", data.ultrafeedback_file), ("--heldout-file", data.heldout_file)):
        args += [flag, value] if value else []
    args += ["--sources", *data.sources] if data.sources else []
    return f"VALUATION_MODEL={shlex.quote(config.model.name)} python -m valuation {shlex.join(args)}"


def train_configs(run: Run, all_sources: list[str]) -> list[Any]:
    """The TrainConfig of each group of adapters trained with the same settings (its sources named when
    they are not all of the run's)."""
    from ..adapters import read_record, trained_seeds, trained_sources
    from ..training import TrainConfig

    groups: dict[str, list[str]] = {}
    for source in trained_sources(run):
        groups.setdefault(json.dumps(read_record(run, source).get("settings", {}), sort_keys=True), []).append(source)
    seeds = trained_seeds(run, trained_sources(run))
    return [from_dict(TrainConfig, {**json.loads(settings), **({} if sources == all_sources else {"sources": sources}),
                                    **({"seeds": seeds} if seeds > 1 else {})}, "training record")
            for settings, sources in groups.items()]


def validation_config(folder: Path) -> Any:
    """A results folder's settings as the validate job's config (its experiments and sources are not recorded)."""
    from ..validation.settings import PRESETS, ValidationConfig

    preset = next((p for p in PRESETS.values() if p.folder == folder.name), ValidationConfig(folder=folder.name))
    settings = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
    return from_dict(ValidationConfig, {**vars(preset), **settings}, str(folder / "settings.json"))


def job_commands(facts: Facts) -> tuple[list[str], list[str]]:
    """The job commands in order (train, rewards, evaluate, validate), and notes on what they cannot say."""
    from ..game import EvaluationConfig
    from ..jobs import command
    from ..rewards import RewardJobConfig

    def line(job: str, config: Any) -> str:
        return "python -m valuation " + shlex.join(command(facts.run, job, config))

    lines, notes = [line("train", c) for c in train_configs(facts.run, facts.sources)], []
    if not facts.accuracies.empty:
        kind = facts.config.rewards.kind
        lines.append(line("rewards", RewardJobConfig(kind="" if kind == RewardConfig().kind else kind)))
    if facts.evaluation:
        lines.append(line("evaluate", from_dict(EvaluationConfig, facts.evaluation, "evaluation/settings.json")))
    for folder in validation_folders(facts.run):
        lines.append(line("validate", validation_config(folder)))
        notes.append(f"validation '{folder.name}' does not record its experiments and sources: the command names the "
                     "defaults (every experiment, the run's first sources).")
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


def commands_section(facts: Facts) -> str:
    """Every command from the sources to this report, then the notes on what they leave out."""
    from ..jobs import shown_path

    run = shown_path(facts.run.path)
    try:
        jobs, notes = job_commands(facts)
    except (ConfigError, UserError, ValueError) as error:
        jobs, notes = [], [f"The recorded settings could not be read back as commands: {error}"]
    lines = [sources_command(facts.run, facts.config), *jobs]
    if facts.tables:
        lines.append(f"python -m valuation shapley --run {shlex.quote(run)}")
    lines.append(f"python -m valuation report --run {shlex.quote(run)}")
    parts = [paragraph("From the project folder, in this order (each job resumes: what is already computed is kept). "
                       "The settings come from the run itself: the adapters' training records and "
                       "evaluation/settings.json."), code_block(lines)]
    notes = config_notes(facts.config) + notes
    return section("commands", "Reproduce this run", parts + ([bullets(notes)] if notes else []))
