"""Stored generations and their rewards: what an evaluation paid for, kept in the run by what made it.

    <run>/evaluation/samples/<key>/chunk-NNNN.jsonl            one chunk of prompts' generations
    <run>/evaluation/scores/<objective>/<key>/chunk-NNNN.json  their rewards under one reward model
                                                               (and, under `bootstrap`, under each of
                                                               its bootstrap heads: K lists)
    <run>/evaluation/weights/<key>/chunk-NNNN.json             (pooled) their log-likelihoods under
                                                               every target and anchor
    <run>/evaluation/weights/<key>/<seed key>/chunk-NNNN.json  the same under a further training seed's adapters

`<key>` hashes everything that produced the samples (base model, adapters, prompts, coalitions,
sampling settings), so a relaunch redoes only missing chunks and a new reward model re-scores the
stored samples without generating again. Every file is written atomically: a killed job loses at
most the chunk it was working on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .coalitions import coalition_name
from .runs import Run
from .storage import atomic_write_json, atomic_write_text, digest

if TYPE_CHECKING:
    from .arithmetic import Generation
    from .progress import Reporter
    from .reward_models import RewardModel
    from .splits import EvalPrompt

DEFAULT_ROW_TOKENS_PER_SECOND = 250.0  # decoding throughput on 2 CPU cores (fp32), before any measurement


def evaluation_dir(run: Run) -> Path:
    return run.path / "evaluation"


def chunk_name(index: int) -> str:
    return f"chunk-{index:04d}"


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


@dataclass(frozen=True)
class SampleSet:
    """One set of stored generations, chunk by chunk, with their rewards."""

    run: Run
    key: str

    def samples_path(self, index: int) -> Path:
        return evaluation_dir(self.run) / "samples" / self.key / f"{chunk_name(index)}.jsonl"

    def scores_path(self, objective: str, index: int) -> Path:
        return evaluation_dir(self.run) / "scores" / objective / self.key / f"{chunk_name(index)}.json"

    def weights_path(self, index: int, folder: str = "") -> Path:
        """(Pooled) the chunk's log-likelihoods; `folder` names a further training seed's, kept apart."""
        return evaluation_dir(self.run) / "weights" / self.key / folder / f"{chunk_name(index)}.json"

    def sample(self, index: int, prompt_ids: dict[int, str], generate: Callable[[], list[Generation]]) -> bool:
        """Generate chunk `index` unless it is stored (`prompt_ids`: a generation's prompt index -> its
        prompt's id); True when it had to be generated."""
        path = self.samples_path(index)
        if path.exists():
            return False
        rows = [{"coalition": sorted(g.coalition), "prompt_id": prompt_ids[g.prompt_index],
                 "prompt_index": g.prompt_index, "sample": g.sample_index, "text": g.text, "tokens": g.num_tokens,
                 "token_ids": g.token_ids, "finished_by_eos": g.finished_by_eos} for g in generate()]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
        return True

    def score(self, index: int, rewards: dict[str, RewardModel], messages: dict[str, list[dict]],
              reporter: Reporter) -> None:
        """Rewards of chunk `index` under every reward model that has not scored it yet; a reward
        model with bootstrap heads (`FeatureRewardModel.score_heads`) also stores each head's rewards,
        from the same features, and scores again a chunk stored without them."""
        rows = None
        for objective, reward in rewards.items():
            target = self.scores_path(objective, index)
            heads_key = scoring_keys(reward)[1]
            if self.is_scored(objective, index, *scoring_keys(reward)):
                continue
            rows = rows if rows is not None else read_jsonl(self.samples_path(index))
            args = ([messages[r["prompt_id"]] for r in rows], [r["text"] for r in rows],
                    reporter.stage(f"{objective} rewards, chunk {index + 1}"))
            scores, heads = reward.score_heads(*args) if heads_key else (reward.score(*args), None)
            record: dict[str, Any] = {"reward_key": reward.key, "scores": [float(s) for s in scores]}
            if heads is not None:
                record |= {"bootstrap_key": heads_key, "bootstrap": [[float(s) for s in head] for head in heads]}
            atomic_write_json(target, record)

    def is_scored(self, objective: str, index: int, reward_key: str, heads_key: str = "") -> bool:
        """Whether chunk `index` holds this reward model's scores (and its bootstrap heads', if any)."""
        path = self.scores_path(objective, index)
        stored = json.loads(path.read_text()) if path.exists() else {}
        return stored.get("reward_key") == reward_key and (not heads_key or stored.get("bootstrap_key") == heads_key)

    def frame(self, index: int, objectives: list[str], heads: dict[str, str] | None = None) -> pd.DataFrame | None:
        """Chunk `index`'s generations with a reward column per objective; None until all are stored.

        `heads` (objective -> the bootstrap key its reward card records) adds a column per bootstrap
        head, `head_column(objective, k)`, where the chunk was scored by those heads."""
        paths = {o: self.scores_path(o, index) for o in objectives}
        if not self.samples_path(index).exists() or not all(p.exists() for p in paths.values()):
            return None
        frame = pd.DataFrame(read_jsonl(self.samples_path(index)))
        for objective, path in paths.items():
            stored = json.loads(path.read_text())
            frame[objective] = stored["scores"]
            if heads and heads.get(objective) and stored.get("bootstrap_key") == heads[objective]:
                frame = frame.assign(**{head_column(objective, k): h for k, h in enumerate(stored["bootstrap"])})
        return frame


def head_column(objective: str, k: int) -> str:
    """The column of bootstrap head k's rewards (objective names hold no '@')."""
    return f"{objective}@{k}"


def scoring_keys(reward: RewardModel) -> tuple[str, str]:
    """What decides a reward model's stored scores: its key, and its bootstrap heads' ("" without)."""
    return reward.key, getattr(reward, "bootstrap_key", "")


def mean_rewards(frames: list[pd.DataFrame], objectives: list[str]) -> pd.DataFrame:
    """Direct utilities: per (coalition, prompt), the mean reward over its samples."""
    rows = pd.concat(frames)
    rows["coalition"] = rows["coalition"].map(coalition_name)
    table = rows.groupby(["coalition", "prompt_id"], sort=False)[objectives].mean().reset_index()
    return table.rename(columns={"prompt_id": "prompt"})


def load_samples(run: Run) -> pd.DataFrame:
    """Every stored generation of the latest evaluation with its rewards, for auditing a value."""
    folder = evaluation_dir(run)
    frames = []
    for samples in sorted((folder / "samples").glob("*/chunk-*.jsonl")):
        key, index = samples.parent.name, int(samples.stem.split("-")[1])
        frame = pd.DataFrame(read_jsonl(samples)).drop(columns=["token_ids"], errors="ignore")
        for scores in sorted((folder / "scores").glob(f"*/{key}/{samples.stem}.json")):
            frame[scores.parent.parent.name] = json.loads(scores.read_text())["scores"]
        frame["key"], frame["chunk"] = key, index
        frames.append(frame)
    if not frames or not (folder / "settings.json").exists():
        return pd.DataFrame()
    frame = pd.concat(frames, ignore_index=True)
    frame["coalition"] = frame["coalition"].map(lambda members: coalition_name(members) or "∅ (base)")
    return frame


def record_throughput(run: Run, row_tokens: int, seconds: float) -> None:
    if seconds > 1:
        atomic_write_json(evaluation_dir(run) / "throughput.json", {"row_tokens_per_second": row_tokens / seconds})


def measured_throughput(run: Run) -> float:
    path = evaluation_dir(run) / "throughput.json"
    try:
        return float(json.loads(path.read_text())["row_tokens_per_second"])
    except (OSError, ValueError, KeyError):
        return DEFAULT_ROW_TOKENS_PER_SECOND
