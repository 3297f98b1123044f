"""Choosing a run's sources: describe a dataset, check the sources' names, then record the choice
and its split in the run (config.yaml, split.json)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ..config import DataConfig, RewardConfig, every_source
from ..errors import UserError
from ..runs import Run
from ..storage import atomic_write_bytes
from .preferences import PreferenceData, check_sources, load_preferences, resolved_objectives
from .splits import Split, load_gold, split_preferences

# A source names a folder (adapters/<source>/), an adapter inside the model, and a player in a
# coalition ("a+b"): letters of any script, digits, '_', '-' and inner spaces, nothing else.
SOURCE_NAME = re.compile(r"^[^\W_][\w -]{0,63}$")


class SourceNameError(UserError):
    """Source names that cannot name a run's folders and adapters; the message says what to rename."""


def check_source_names(names: list[str]) -> None:
    """The one check of source names, made when a run's sources are chosen: refuse every name that
    could not be a folder, an adapter or a coalition member, with the rename to make."""
    bad = [name for name in names if not SOURCE_NAME.match(name) or name != name.strip()]
    if bad:
        renames = ", ".join(f"{name!r} (say {_renamed(name)!r})" for name in bad)
        raise SourceNameError(
            f"Source name(s) {renames} cannot name a run's folders and adapters: use letters, digits, '_', '-' and "
            "spaces, up to 64 characters, starting with a letter or digit. Rename them in the data (its `source` "
            "column, or the file's name for a folder of files), then choose the sources again.")


def _renamed(name: str) -> str:
    """A name the check accepts, made from `name`."""
    return re.sub(r"[^\w -]+", "_", name).strip(" _-")[:64].strip() or "source"


def run_sources(config: DataConfig, recorded: dict | None) -> list[str]:
    """The one rule for a run's sources (its players): the ones its config names, else every source
    of its recorded split (split.json, `recorded`), in their recorded order."""
    return list(config.sources) or list((recorded or {}).get("train_pairs", {}))


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
    check_source_names(data_config.sources or data.sources)
    gold = load_gold(data_config)
    split = split_preferences(data, data_config, gold)
    config = run.load_config()
    if gold is not None:
        check_gold_objectives(split, config.rewards, data_config)
    config.data = data_config
    run.save_config(config)
    run.save_split(split.summary())
    return split
