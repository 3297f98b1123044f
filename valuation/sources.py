"""Choosing a run's sources: describe a dataset, then record the choice and its split in the run."""

from __future__ import annotations

import pandas as pd

from .config import DataConfig
from .data import PreferenceData, load_preferences
from .runs import Run
from .splits import Split, split_preferences


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


def record_sources(run: Run, data_config: DataConfig) -> Split:
    """Validate the choice, split the data and write both into the run (config.yaml, split.json)."""
    data_config.validate()
    split = split_preferences(load_preferences(data_config), data_config)
    config = run.load_config()
    config.data = data_config
    run.save_config(config)
    run.save_split(split.summary())
    return split
