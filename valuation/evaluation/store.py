"""The one owner of a run's evaluation folder: every path under it, every reader and every writer.

    <run>/evaluation/
        settings.json                 the EvaluationConfig of the last evaluation, its method resolved
        coalitions.json               the coalitions it values (all 2^n, or those a seeded permutation sample visits)
        rewards.json                  the reward models that scored it: objective -> reward key, bootstrap key, heads
        samples/<key>/chunk-NNNN.jsonl            one chunk of prompts' generations
        scores/<objective>/<key>/chunk-NNNN.json  their rewards under one reward model (and, under
                                                  `bootstrap`, under each of its bootstrap heads: K lists)
        weights/<key>/chunk-NNNN.json             (pooled) their log-likelihoods under every target and anchor
        weights/<key>/<seed key>/chunk-NNNN.json  the same under a further training seed's adapters
        utilities.csv                 coalition, prompt, one column per objective: the game (direct, or the
                                      pooled primary target: token level up to 8 sources, else sequence level)
        utilities-sequence.csv        (pooled, beside a token-level primary) the sequence-level target
        utilities.heads.csv           a table's utilities under each bootstrap reward head, columns <objective>@<k>
        estimation.csv                (pooled) per coalition and target: how it was estimated, its ESS
        preference.csv                the reward-free utilities on held-out pairs; preference.json, what made them
        <table>.seedN.csv             each table again under training seed N >= 2 (`evaluation.seeds`)
        throughput.json               the decoding speed measured here, for the next cost estimate

`<key>` hashes everything that produced the samples (base model, adapters, prompts, coalitions,
sampling settings), so a relaunch redoes only missing chunks and a new reward model re-scores the
stored samples without generating again. Every file is written atomically: a killed job loses at
most the chunk it was working on. A store keeps the files of the last few chunks it read or wrote
in memory (`KEPT_CHUNKS`), so the steps of one chunk (sampling, scoring, weighing, estimating) read
each of its files once at most, and its tables and settings once; a store that writes a table
forgets what it had read of it.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..config import PROJECT_ROOT, ConfigError, from_dict, to_dict
from ..games.coalitions import Coalition, coalition_name, parse_coalition, shown_name
from ..games.utility_table import RewardHeads, UtilityTable, with_seeds
from ..games.values import UtilityError, read_table, table_errors
from ..lm.adapters import source_and_replica
from ..rewards.cards import bootstrap_heads, read_cards
from ..runs import Run
from ..storage import atomic_write_json, atomic_write_text, digest
from .settings import EvaluationConfig

if TYPE_CHECKING:
    from ..data.splits import EvalPrompt
    from ..lm.arithmetic import Generation
    from ..progress import Reporter
    from ..rewards.models import RewardModel

UTILITIES, SEQUENCE, ESTIMATION, PREFERENCE = "utilities", "utilities-sequence", "estimation", "preference"
DEFAULT_ROW_TOKENS_PER_SECOND = 250.0  # decoding throughput on 2 CPU cores (fp32), before any measurement
HEAD_FLOATS = 2**23  # per-head utilities written at the most (coalitions x prompts x heads); beyond, prompts only
KEPT_CHUNKS = 4  # chunks whose samples, scores and weights a store keeps in memory at once
_SEED_SUFFIX = re.compile(r"\.seed(\d+)$")
ESTIMATION_COLUMNS = ["coalition", "target", "estimator", "ess_mean", "ess_min", "below_floor"]


def chunk_name(index: int) -> str:
    return f"chunk-{index:04d}"


def head_column(objective: str, k: int) -> str:
    """The column of bootstrap head k's rewards or utilities (objective names hold no '@')."""
    return f"{objective}@{k}"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def samples_key(base_model: str, adapter_records: dict[str, dict], prompts: list[EvalPrompt], what: dict[str, Any]) -> str:
    """Everything that decides the generations: a changed adapter, prompt or setting means new samples."""
    return digest({
        "base": base_model,
        "adapters": {s: digest(r) for s, r in sorted(adapter_records.items())},
        "prompts": [(p.prompt_id, p.messages) for p in prompts],
        **what,
    })


def scoring_keys(reward: RewardModel) -> tuple[str, str]:
    """What decides a reward model's stored scores: its key, and its bootstrap heads' ("" without)."""
    return reward.key, getattr(reward, "bootstrap_key", "")


def by_sources(table: pd.DataFrame) -> pd.DataFrame:
    """A training seed's table with its coalitions named by their sources, as the first seed's are."""
    names = {name: coalition_name(frozenset(source_and_replica(a)[0] for a in parse_coalition(name)))
             for name in table.coalition.unique()}
    return table.assign(coalition=table.coalition.map(names))


def mean_rewards(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    """Direct utilities: per (coalition, prompt), the mean reward over its samples."""
    rows = pd.concat(frames)
    rows["coalition"] = rows["coalition"].map(coalition_name)
    table = rows.groupby(["coalition", "prompt_id"], sort=False)[columns].mean().reset_index()
    return table.rename(columns={"prompt_id": "prompt"})


@dataclass
class Chunk:
    """What a store keeps in memory of one chunk: its generations, and its rewards and weights as read or written."""

    rows: list[dict] | None = None
    scores: dict[str, dict] = field(default_factory=dict)  # objective -> stored rewards
    weights: dict[str, dict] = field(default_factory=dict)  # seed folder -> stored log-likelihoods


@dataclass
class EvaluationStore:
    """A run's evaluation folder. One object serves one job, one page draw or one report."""

    run: Run
    _chunks: OrderedDict[tuple[str, int], Chunk] = field(default_factory=OrderedDict, repr=False)
    _estimation: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def folder(self) -> Path:
        return self.run.path / "evaluation"

    @cached_property
    def cards(self) -> dict[str, dict[str, Any]]:
        """The run's reward models' cards (`rewards.cards`), read once: what the stored rewards are worth."""
        return read_cards(self.run)

    def exists(self) -> bool:
        return self.folder.is_dir()

    # ------------------------------------------------------------------ what the evaluation was

    def write_settings(self, config: EvaluationConfig, method: str, coalitions: list[Coalition]) -> None:
        """The settings (the method as resolved: the values use exactly the coalitions it measured) and
        the coalitions. A prompts file inside the project is recorded relative to it, so that a run
        made here (the shipped demo) names it on any machine."""
        prompts_file = Path(config.prompts_file).absolute() if config.prompts_file else None
        if prompts_file is not None and prompts_file.is_relative_to(PROJECT_ROOT):
            config = replace(config, prompts_file=str(prompts_file.relative_to(PROJECT_ROOT)))
        atomic_write_json(self.folder / "settings.json", to_dict(config) | {"method": method})
        atomic_write_json(self.folder / "coalitions.json", [coalition_name(c) for c in coalitions])
        self._forget("settings")

    @cached_property
    def settings(self) -> EvaluationConfig | None:
        """The last evaluation's settings (None before any), read once."""
        path = self.folder / "settings.json"
        if not path.is_file():
            return None
        with table_errors(str(path)):  # a JSON error is a ValueError
            values = json.loads(path.read_text(encoding="utf-8"))
        try:
            return from_dict(EvaluationConfig, values, str(path))
        except ConfigError as error:
            raise UtilityError(f"{path} is not an evaluation's settings ({error}): evaluate again.") from None

    def write_reward_keys(self, rewards: dict[str, RewardModel]) -> None:
        """Which reward models scored this evaluation (their keys, and their bootstrap heads')."""
        atomic_write_json(self.folder / "rewards.json", {
            objective: {"reward_key": key, "bootstrap_key": heads}
            for objective, reward in rewards.items() for key, heads in [scoring_keys(reward)]})
        self._forget("reward_keys")

    def _forget(self, *names: str) -> None:
        """Drop what was read of files just written (the cached properties `names`; the tables' index)."""
        for name in (*names, "targets"):
            self.__dict__.pop(name, None)
        self._estimation = None

    @cached_property
    def reward_keys(self) -> dict[str, dict[str, Any]]:
        """Which reward models scored the last evaluation (`write_reward_keys`), read once; {} before one."""
        path = self.folder / "rewards.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def clear_tables(self, replicas: int) -> None:
        """Before an evaluation of `replicas` training seeds: the tables it will write again go, so that
        none of an earlier evaluation's (of another kind, or of more seeds) is ever read with its
        own. The reward-free tables of the seeds it evaluates stay while what made them is unchanged."""
        stale = [self.table_path(SEQUENCE), self.table_path(ESTIMATION), self.folder / "rewards.json",
                 *(self.table_path(name, suffix=".heads.csv") for name in (UTILITIES, SEQUENCE))]
        for path in stale:
            path.unlink(missing_ok=True)
        for path in self.folder.glob("*.seed*.*"):
            number = _SEED_SUFFIX.search(path.stem)
            if number and (not path.name.startswith(f"{PREFERENCE}.") or int(number.group(1)) - 1 >= replicas):
                path.unlink(missing_ok=True)
        self._forget("reward_keys")

    def record_throughput(self, row_tokens: int, seconds: float) -> None:
        if seconds > 1:
            atomic_write_json(self.folder / "throughput.json", {"row_tokens_per_second": row_tokens / seconds})

    def throughput(self) -> float:
        """Row-tokens a second the last local evaluation decoded (a default before any)."""
        try:
            return float(json.loads((self.folder / "throughput.json").read_text())["row_tokens_per_second"])
        except (OSError, ValueError, KeyError):
            return DEFAULT_ROW_TOKENS_PER_SECOND

    # ------------------------------------------------------------------ chunks: samples, scores, weights

    def samples_path(self, key: str, index: int) -> Path:
        return self.folder / "samples" / key / f"{chunk_name(index)}.jsonl"

    def scores_path(self, objective: str, key: str, index: int) -> Path:
        return self.folder / "scores" / objective / key / f"{chunk_name(index)}.json"

    def weights_path(self, key: str, index: int, folder: str = "") -> Path:
        """(Pooled) the chunk's log-likelihoods; `folder` names a further training seed's, kept apart."""
        return self.folder / "weights" / key / folder / f"{chunk_name(index)}.json"

    def _chunk(self, key: str, index: int) -> Chunk:
        """What is kept of chunk `index`, the most recent first to stay: the oldest beyond KEPT_CHUNKS goes."""
        chunk = self._chunks.pop((key, index), None) or Chunk()
        self._chunks[key, index] = chunk
        while len(self._chunks) > KEPT_CHUNKS:
            self._chunks.popitem(last=False)
        return chunk

    def forget(self, key: str, index: int) -> None:
        """Drop what is kept of a chunk whose files were written by someone else (a Ray worker's)."""
        self._chunks.pop((key, index), None)

    def has_samples(self, key: str, index: int) -> bool:
        kept = self._chunks.get((key, index))
        return (kept is not None and kept.rows is not None) or self.samples_path(key, index).exists()

    def write_samples(self, key: str, index: int, prompt_ids: dict[int, str], generations: list[Generation]) -> None:
        """A chunk's generations (`prompt_ids`: a generation's prompt index -> its prompt's id)."""
        rows = [{"coalition": sorted(g.coalition), "prompt_id": prompt_ids[g.prompt_index],
                 "prompt_index": g.prompt_index, "sample": g.sample_index, "text": g.text, "tokens": g.num_tokens,
                 "token_ids": g.token_ids, "finished_by_eos": g.finished_by_eos} for g in generations]
        atomic_write_text(self.samples_path(key, index), "".join(json.dumps(r) + "\n" for r in rows))
        self._chunk(key, index).rows = rows

    def rows(self, key: str, index: int) -> list[dict]:
        """A chunk's generations (read once while the chunk is kept)."""
        chunk = self._chunk(key, index)
        if chunk.rows is None:
            chunk.rows = read_jsonl(self.samples_path(key, index))
        return chunk.rows

    def _score_record(self, objective: str, key: str, index: int) -> dict:
        """A chunk's stored rewards under one reward model ({} while there are none)."""
        chunk = self._chunk(key, index)
        if objective not in chunk.scores:
            path = self.scores_path(objective, key, index)
            if not path.exists():
                return {}
            chunk.scores[objective] = json.loads(path.read_text())
        return chunk.scores[objective]

    def is_scored(self, objective: str, key: str, index: int, reward_key: str, heads_key: str = "") -> bool:
        """Whether chunk `index` holds this reward model's scores (and its bootstrap heads', if any)."""
        stored = self._score_record(objective, key, index)
        return stored.get("reward_key") == reward_key and (not heads_key or stored.get("bootstrap_key") == heads_key)

    def score(self, key: str, index: int, rewards: dict[str, RewardModel], messages: dict[str, list[dict]],
              reporter: Reporter) -> None:
        """Rewards of chunk `index` under every reward model that has not scored it yet; a reward
        model with bootstrap heads (`FeatureRewardModel.score_heads`) also stores each head's rewards,
        from the same features, and scores again a chunk stored without them."""
        for objective, reward in rewards.items():
            reward_key, heads_key = scoring_keys(reward)
            if self.is_scored(objective, key, index, reward_key, heads_key):
                continue
            rows = self.rows(key, index)
            args = ([messages[r["prompt_id"]] for r in rows], [r["text"] for r in rows],
                    reporter.stage(f"{objective} rewards, chunk {index + 1}"))
            scores, heads = reward.score_heads(*args) if heads_key else (reward.score(*args), None)
            record: dict[str, Any] = {"reward_key": reward.key, "scores": [float(s) for s in scores]}
            if heads is not None:
                record |= {"bootstrap_key": heads_key, "bootstrap": [[float(s) for s in head] for head in heads]}
            atomic_write_json(self.scores_path(objective, key, index), record)
            self._chunk(key, index).scores[objective] = record

    def frame(self, key: str, index: int, objectives: list[str], heads: dict[str, str] | None = None
              ) -> pd.DataFrame | None:
        """Chunk `index`'s generations with a reward column per objective; None until all are stored.

        `heads` (objective -> the bootstrap key it must be scored under) adds a column per bootstrap
        head, `head_column(objective, k)`, where the chunk was scored by those heads."""
        if not self.has_samples(key, index):
            return None
        records = {objective: self._score_record(objective, key, index) for objective in objectives}
        if not all(records.values()):
            return None
        frame = pd.DataFrame(self.rows(key, index))
        for objective, stored in records.items():
            frame[objective] = stored["scores"]
            if heads and heads.get(objective) and stored.get("bootstrap_key") == heads[objective]:
                frame = frame.assign(**{head_column(objective, k): h for k, h in enumerate(stored["bootstrap"])})
        return frame

    def has_weights(self, key: str, index: int, folder: str = "") -> bool:
        kept = self._chunks.get((key, index))
        return (kept is not None and folder in kept.weights) or self.weights_path(key, index, folder).exists()

    def write_weights(self, key: str, index: int, folder: str, weights: dict) -> None:
        atomic_write_json(self.weights_path(key, index, folder), weights)
        self._chunk(key, index).weights[folder] = weights

    def weights(self, key: str, index: int, folder: str = "") -> dict[str, dict[str, list[float]]]:
        """A chunk's log-likelihoods under one training seed's adapters (read once while the chunk is kept)."""
        chunk = self._chunk(key, index)
        if folder not in chunk.weights:
            chunk.weights[folder] = json.loads(self.weights_path(key, index, folder).read_text())
        return chunk.weights[folder]

    # ------------------------------------------------------------------ tables

    def table_path(self, name: str, replica: int = 0, suffix: str = ".csv") -> Path:
        """Where table `name` (utilities, utilities-sequence, estimation, preference) lives for training
        seed `replica` (0: the sources' own adapters; r: `<name>.seed<r + 1>.csv`); `suffix` names its
        record (preference.json) instead."""
        return self.folder / (f"{name}{suffix}" if replica == 0 else f"{name}.seed{replica + 1}{suffix}")

    def write_table(self, name: str, table: pd.DataFrame, replica: int = 0) -> None:
        """A table, coalitions named by their sources (a further seed's adapters by theirs); the
        reward-free table at 6 significant digits, the others in full."""
        digits = "%.6g" if name == PREFERENCE else None
        atomic_write_text(self.table_path(name, replica), by_sources(table).to_csv(index=False, float_format=digits))
        self._forget()

    def write_heads(self, name: str, table: pd.DataFrame) -> None:
        """Table `name`'s utilities under every bootstrap reward head (coalition, prompt, <objective>@<k>),
        or none when there are too many to keep."""
        path = self.table_path(name, suffix=".heads.csv")
        heads = [c for c in table.columns if "@" in c]
        if not heads or len(table) * len(heads) > HEAD_FLOATS:
            path.unlink(missing_ok=True)
            return
        atomic_write_text(path, table[["coalition", "prompt", *heads]].to_csv(index=False, float_format="%.6g"))

    def preference_key(self, replica: int) -> str | None:
        """What produced a training seed's reward-free table (`write_preference`), or None."""
        try:
            return json.loads(self.table_path(PREFERENCE, replica, ".json").read_text()).get("key")
        except (OSError, ValueError):
            return None

    def write_preference(self, table: pd.DataFrame, replica: int, record: dict[str, Any]) -> None:
        """A training seed's reward-free table, and what produced it (`record`, with its `key`)."""
        self.write_table(PREFERENCE, table, replica)
        atomic_write_json(self.table_path(PREFERENCE, replica, ".json"), record)

    def estimation(self) -> pd.DataFrame:
        """How a pooled evaluation estimated each coalition, per target: coalition, target, estimator
        (pooled, or direct where the pool's ESS fell below the floor), ess_mean, ess_min, below_floor
        (a sequence-level coalition below the floor has no direct stand-in). Empty after a direct
        evaluation. Read once."""
        if self._estimation is None:
            path = self.table_path(ESTIMATION)
            if not path.is_file():
                return pd.DataFrame(columns=ESTIMATION_COLUMNS)
            with table_errors(str(path)):
                self._estimation = pd.read_csv(path, dtype={"coalition": str}, keep_default_na=False)
        return self._estimation

    @cached_property
    def targets(self) -> dict[str, str]:
        """The run's utility tables by what they measure: the expected reward under 'direct' sampling of
        each coalition, or a pooled evaluation's 'token' and 'sequence' targets (the first is the
        primary, utilities.csv), and 'preference', the reward-free accuracy and margin on held-out
        pairs; only those that exist. target -> table name."""
        targets = list(dict.fromkeys(self.estimation().target))
        names = ({target: UTILITIES if k == 0 else f"{UTILITIES}-{target}" for k, target in enumerate(targets)}
                 if targets else {"direct": UTILITIES})
        names["preference"] = PREFERENCE
        return {target: name for target, name in names.items() if self.table_path(name).is_file()}

    def primary(self) -> str | None:
        """The target utilities.csv holds (None before an evaluation)."""
        return next((t for t, name in self.targets.items() if name == UTILITIES), None)

    def has_utilities(self) -> bool:
        return self.table_path(UTILITIES).is_file()

    def stamps(self, target: str | None = None) -> tuple[float, ...]:
        """When a target's table (utilities.csv without one) and its further seeds' last changed:
        what a cache of the table must watch (empty while there is no such table)."""
        name = self.targets.get(target) if target else UTILITIES
        if name is None:
            return ()
        return tuple(path.stat().st_mtime for path in [self.table_path(name), *self._seed_paths(name)]
                     if path.is_file())

    def _seed_paths(self, name: str) -> list[Path]:
        """The further seeds' versions of table `name` that exist, in seed order, up to the first missing."""
        paths: list[Path] = []
        while (path := self.table_path(name, len(paths) + 1)).is_file():
            paths.append(path)
        return paths

    def frame_of(self, target: str | None = None) -> pd.DataFrame:
        """A target's table as written (utilities.csv without one), rows in file order: the prompts in
        the order they were evaluated (the coalition '' is the base, not a gap)."""
        path = self.table_path(self.targets.get(target, UTILITIES) if target else UTILITIES)
        with table_errors(str(path)):
            frame = pd.read_csv(path, dtype={"coalition": str, "prompt": str})
        return frame.assign(coalition=frame.coalition.fillna("")) if "coalition" in frame else frame

    def load(self, target: str | None = None) -> UtilityTable:
        """A target's game (the primary without one): with the same table under every further
        training seed (the table becomes their mean, `games.utility_table.with_seeds`) and, for the
        reward utilities, the utilities under each bootstrap reward head, so that the intervals carry
        the training noise and the reward model's own."""
        if target is not None and target not in self.targets:
            raise UtilityError(f"run {self.run.name!r} has no {target!r} utilities; it has "
                               f"{sorted(self.targets) or 'none'}")
        name = self.targets[target] if target else UTILITIES
        if not self.table_path(name).is_file():
            raise UtilityError(f"run {self.run.name!r} has no coalition utilities yet ({self.table_path(name)}): "
                               "train adapters, then evaluate the coalitions")
        table = read_table(self.table_path(name))
        if name != PREFERENCE:
            table = replace(table, heads=self._heads(name, table))
        further = self._seed_paths(name)
        with table_errors(str(self.table_path(name))):
            return with_seeds(table, [read_table(p) for p in further], [p.name for p in further]) if further else table

    def _heads(self, name: str, table: UtilityTable) -> RewardHeads | None:
        """Table `name`'s per-head utilities where stored, and why each objective without them has none
        (None for a table whose objectives have no reward model of the run: a table written by hand)."""
        if not set(table.objectives) & set(self.cards):
            return None
        evaluated = self.reward_keys
        per_prompt, missing = {}, {}
        stored = self._read_heads(name)
        counts = {objective: bootstrap_heads(self.cards.get(objective)) for objective in table.objectives}
        floats = len(table.values) * len(table.prompts or ()) * sum(count for count, _ in counts.values())
        for objective, (count, key) in counts.items():
            if not count:
                missing[objective] = key  # why there are none: a hub model, or trained without
            elif floats > HEAD_FLOATS:
                missing[objective] = (f"{len(table.values)} coalitions x {len(table.prompts or ())} prompts x its "
                                      "bootstrap heads are too many utilities to keep")
            elif stored is None or head_column(objective, 0) not in stored.columns or objective not in evaluated:
                missing[objective] = ("its utilities under each bootstrap head were not kept (evaluated before they "
                                      "were: evaluate again)")
            elif evaluated[objective].get("bootstrap_key") != key:
                missing[objective] = ("its reward model's bootstrap heads are not the ones that scored this evaluation "
                                      "(evaluate again to score them)")
            elif (utilities := _per_head(stored, table, objective, count)) is None:
                missing[objective] = "its stored per-head utilities do not match the table (evaluate again)"
            else:
                per_prompt[objective] = utilities
        return RewardHeads(per_prompt, missing)

    def _read_heads(self, name: str) -> pd.DataFrame | None:
        path = self.table_path(name, suffix=".heads.csv")
        if not path.is_file():
            return None
        with table_errors(str(path)):
            frame = pd.read_csv(path, dtype={"coalition": str, "prompt": str})
        return frame.assign(coalition=frame.coalition.fillna("").map(lambda c: coalition_name(parse_coalition(c))))

    def samples(self) -> pd.DataFrame:
        """Every stored generation of the latest evaluation with its rewards, for auditing a value
        (read chunk by chunk: a store keeps the last few)."""
        frames = []
        for path in sorted((self.folder / "samples").glob("*/chunk-*.jsonl")):
            key, index = path.parent.name, int(path.stem.split("-")[1])
            frame = pd.DataFrame(self.rows(key, index)).drop(columns=["token_ids"], errors="ignore")
            for scores in sorted((self.folder / "scores").glob(f"*/{key}/{path.stem}.json")):
                frame[scores.parent.parent.name] = self._score_record(scores.parent.parent.name, key, index)["scores"]
            frames.append(frame.assign(key=key, chunk=index))
        if not frames or self.settings is None:
            return pd.DataFrame()
        frame = pd.concat(frames, ignore_index=True)
        frame["coalition"] = frame["coalition"].map(lambda members: shown_name(coalition_name(members)))
        return frame


def _per_head(stored: pd.DataFrame, table: UtilityTable, objective: str, count: int
              ) -> dict[Coalition, np.ndarray] | None:
    """coalition -> [K, n_prompts]: an objective's per-head utilities in the table's prompt order;
    None where the stored ones lack a head, a coalition or a prompt of the table."""
    columns = [head_column(objective, k) for k in range(count)]
    if table.prompts is None or not set(columns) <= set(stored.columns):
        return None
    index = pd.MultiIndex.from_product([[coalition_name(c) for c in table.values], table.prompts])
    grid = stored.drop_duplicates(["coalition", "prompt"]).set_index(["coalition", "prompt"]).reindex(index)
    values = grid[columns].to_numpy(float).reshape(len(table.values), len(table.prompts), count)
    if np.isnan(values).any():
        return None
    return {coalition: values[i].T for i, coalition in enumerate(table.values)}
