"""Run directories: the single source of truth that the command line and the app share.

    runs/<name>/
        config.yaml      RunConfig: model, data, sources, split parameters, seeds
        split.json       what the split produced: pair counts per source, evaluation prompt ids
        ...              later jobs add their own files (adapters/, job/, evaluations/)
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import PROJECT_ROOT, ConfigError, ModelConfig, RunConfig, default_model, from_dict, to_dict
from .storage import atomic_write_json, atomic_write_yaml
from .errors import UserError

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class RunError(UserError):
    """A run that cannot be opened or created; the message says why."""


def runs_root() -> Path:
    """VALUATION_RUNS_DIR, else runs/ in the project."""
    return Path(os.environ.get("VALUATION_RUNS_DIR", PROJECT_ROOT / "runs"))


def check_run_name(name: str) -> str:
    if not RUN_NAME.match(name or "") or ".." in name:
        raise RunError(
            f"Run name {name!r} is not allowed: use letters, digits, '.', '_' or '-' (up to 64, "
            "starting with a letter or digit)."
        )
    return name


@dataclass(frozen=True, order=True)
class Run:
    path: Path

    @classmethod
    def named(cls, name: str, root: Path | None = None) -> "Run":
        """The run called `name` inside the runs directory (never outside it)."""
        return cls((root or runs_root()) / check_run_name(name))

    @classmethod
    def at(cls, path: str | Path) -> "Run":
        """A run given as a path (the CLI's --run runs/NAME); its last part must be a valid name."""
        path = Path(path).expanduser()
        check_run_name(path.name)
        return cls(path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    def exists(self) -> bool:
        return self.config_path.exists()

    def load_config(self) -> RunConfig:
        if not self.config_path.exists():
            raise RunError(f"Run {self.name!r} has no config.yaml at {self.config_path}: create it first.")
        try:
            values = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
            return from_dict(RunConfig, values)
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise RunError(f"Run {self.name!r}: config.yaml is corrupt ({type(error).__name__}).") from None
        except ConfigError as error:
            raise RunError(f"Run {self.name!r}: config.yaml is invalid: {error}") from None

    def save_config(self, config: RunConfig) -> None:
        config.validate()
        atomic_write_yaml(self.config_path, to_dict(config))

    def save_split(self, summary: dict) -> None:
        atomic_write_json(self.path / "split.json", summary)

    def load_split(self) -> dict | None:
        path = self.path / "split.json"
        try:
            return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RunError(f"Run {self.name!r}: split.json is corrupt; re-save the sources to rewrite it.") from None


def create_run(name: str, config: RunConfig | None = None, root: Path | None = None) -> Run:
    """A new run; without a config, the defaults on the base model `VALUATION_MODEL` names (or the embedded one)."""
    run = Run.named(name, root)
    if run.exists():
        raise RunError(f"Run {name!r} already exists at {run.path}; open it or pick another name.")
    run.path.mkdir(parents=True, exist_ok=True)
    run.save_config(config or RunConfig(model=ModelConfig(name=default_model())))
    return run


def list_runs(root: Path | None = None) -> list[Run]:
    root = root or runs_root()
    if not root.is_dir():
        return []
    return sorted(Run(p) for p in root.iterdir() if p.is_dir() and RUN_NAME.match(p.name) and (p / "config.yaml").exists())
