"""Choosing a run's sources: describe a dataset, then record the choice and its split in the run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .config import DataConfig, RewardConfig, every_source
from .data import PreferenceData, check_sources, load_preferences
from .runs import Run
from .errors import UserError
from .splits import Split, load_gold, split_preferences
from .storage import atomic_write_bytes

if TYPE_CHECKING:
    from .data import PreferencePair
    from .training import TrainConfig


def describe_sources(data: PreferenceData) -> pd.DataFrame:
    """One row per source: pairs kept, rows skipped, and median lengths in words."""
    lengths = pair_lengths(data)
    medians = lengths.groupby("source")[["prompt_words", "chosen_words", "rejected_words"]].median()
    frame = pd.DataFrame({
        "pairs": pd.Series(data.report.pairs),
        "skipped": pd.Series({s: sum(r.values()) for s, r in data.report.skipped.items()}, dtype=int),
    }).join(medians.add_prefix("median_")).fillna(0).astype(int)
    frame.index.name = "source"
    return frame.sort_index()


def pair_lengths(data: PreferenceData) -> pd.DataFrame:
    """Per pair: its source and the word counts of prompt (all turns), chosen and rejected."""
    return pd.DataFrame({
        "source": [p.source for p in data.pairs],
        "prompt_words": [sum(len(m["content"].split()) for m in p.prompt) for p in data.pairs],
        "chosen_words": [len(p.chosen.split()) for p in data.pairs],
        "rejected_words": [len(p.rejected.split()) for p in data.pairs],
    })


def prompt_fit(train: dict[str, list[PreferencePair]], tokenizer: Any, config: TrainConfig) -> pd.DataFrame:
    """Per source, what training's prompt length cap does to the pairs it reads (`training.select_pairs`
    on the split's training pairs, up to `max_pairs` kept): pairs kept whole, truncated to their end,
    dropped; the share kept, and whether more than `training.DROPPED_WARNING` of them is dropped."""
    from .training import select_pairs, too_many_dropped

    rows = []
    for source, pairs in train.items():
        selected = select_pairs(pairs, tokenizer, config)
        read = len(selected.rows) + selected.dropped
        rows.append({"source": source, "whole": selected.whole, "truncated": selected.truncated,
                     "dropped": selected.dropped, "kept share": len(selected.rows) / read if read else 1.0,
                     "too many dropped": too_many_dropped(len(selected.rows), selected.dropped)})
    return pd.DataFrame(rows, columns=["source", "whole", "truncated", "dropped", "kept share", "too many dropped"])


def training_cap(run: Run) -> TrainConfig:
    """The quick preset with the pair count and prompt length cap the run's adapters were trained
    with, if any: the settings a Sources page preview of the cap should use."""
    from .adapters import read_record, trained_sources
    from .training import PRESETS

    for source in trained_sources(run):
        settings = read_record(run, source).get("settings", {})
        return replace(PRESETS["quick"], **{k: settings[k] for k in ("max_pairs", "max_prompt_length") if k in settings})
    return PRESETS["quick"]


def describe_provenance(summary: dict) -> str:
    """Where each part of a recorded split (split.json) came from, with its size, in one line."""
    provenance = summary.get("provenance", {"train": "sources", "reward": "sources", "eval": "sources"})
    sizes = {"train": f"{sum(summary.get('train_pairs', {}).values())} pairs",
             "reward": f"{sum(summary.get('reward_pairs', {}).values())} pairs",
             "eval": f"{len(summary.get('eval_prompt_ids', []))} prompts"}
    line = "; ".join(f"{part}: {sizes[part]} from {provenance[part]}" for part in ("train", "reward", "eval"))
    removed = sum(summary.get("removed_from_train", {}).values())
    if "removed_from_train" in summary:
        line += f"; {removed} source pair(s) left out of training because the gold set holds their prompt"
    return line


def check_gold_objectives(split: Split, rewards: RewardConfig, data: DataConfig) -> None:
    """With a trusted held-out file, reward objectives draw on its reward pairs, grouped by its own
    `source` column: refuse objectives (the run's, or the dataset's defaults) naming sources it lacks.

    Not a silent fallback to every gold pair: HH-RLHF's defaults name different sources for
    helpfulness and harmlessness, and training both on the same gold pairs would give two identical
    reward models under two names, whose Shapley values would look like two findings. The user
    decides instead: label the gold rows, or name the objectives' sources."""
    from .rewards import resolved_objectives

    lacking = {o.name: sorted(set(o.sources) - set(split.reward)) for o in resolved_objectives(rewards, data)}
    lacking = {name: missing for name, missing in lacking.items() if missing}
    if lacking:
        named = "; ".join(f"{name!r} names {missing}" for name, missing in lacking.items())
        raise UserError(
            f"The trusted held-out file trains the reward models, but it has no source {named} (it has "
            f"{sorted(split.reward)}). Add a `source` column to it naming those sources, or set the objectives' "
            "sources to ones it holds in the run's config.yaml (rewards.objectives, `sources: []` for every gold pair)."
        )


def save_upload(run: Run, name: str, data: bytes) -> Path:
    """Keep an uploaded file in the run (uploads/<name>), written atomically and only when it changed."""
    target = run.path / "uploads" / Path(name).name
    if not target.exists() or target.read_bytes() != data:
        atomic_write_bytes(target, data)
    return target


def record_sources(run: Run, data_config: DataConfig) -> Split:
    """Validate the choice, split the data and write both into the run (config.yaml, split.json)."""
    data_config.validate()
    data = load_preferences(every_source(data_config))
    check_sources(data, data_config.sources)
    gold = load_gold(data_config)
    split = split_preferences(data, data_config, gold)
    config = run.load_config()
    if gold is not None:
        check_gold_objectives(split, config.rewards, data_config)
    config.data = data_config
    run.save_config(config)
    run.save_split(split.summary())
    return split
