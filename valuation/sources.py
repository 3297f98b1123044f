"""Choosing a run's sources: describe a dataset, then record the choice and its split in the run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .config import DataConfig, every_source
from .data import PreferenceData, check_sources, load_preferences
from .runs import Run
from .splits import Split, split_preferences
from .storage import atomic_write_bytes


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
    split = split_preferences(data, data_config)
    config = run.load_config()
    config.data = data_config
    run.save_config(config)
    run.save_split(split.summary())
    return split
