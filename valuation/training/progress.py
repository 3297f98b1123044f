"""A train job as the app reads it: each source's progress from the job's events, the training
curves of saved and live adapters, and one row per trained adapter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class SourceProgress:
    source: str
    state: str  # waiting, training, done, or skipped (already trained)
    step: int = 0
    total: int | None = None
    eta_s: float | None = None

    @property
    def fraction(self) -> float:
        if self.state in ("done", "skipped"):
            return 1.0
        return self.step / self.total if self.total else 0.0


def source_progress(events: list[dict[str, Any]]) -> list[SourceProgress]:
    """Each source of the job's latest start, with how far it got, from its progress events."""
    starts = [i for i, e in enumerate(events) if e["event"] == "job_start"]
    if not starts:
        return []
    start = events[starts[-1]]
    progress = {s: SourceProgress(s, "waiting" if s in start["todo"] else "skipped") for s in start["sources"]}
    for event in events[starts[-1] + 1:]:
        entry = progress.get(event.get("source", event.get("stage")))
        if entry is None:
            continue
        if event["event"] == "source_start":
            entry.state = "training"
        elif event["event"] == "step":
            entry.state, entry.step, entry.total, entry.eta_s = "training", event["done"], event["total"], event.get("eta")
        elif event["event"] == "source_done":
            entry.state = "done"
    return list(progress.values())


def training_curves(records: dict[str, dict[str, Any]], events: list[dict[str, Any]]) -> pd.DataFrame:
    """Loss, reward accuracy and margin by step and source: saved adapters' curves (from their
    training `records`), then live ones (from the job's `events`)."""
    import pandas as pd

    rows = []
    for source, record in records.items():
        rows += [{"source": source, **point} for point in record.get("history", [])]
    rows += [
        {"source": e["stage"], "step": e["done"], **{k: e.get(k) for k in ("loss", "accuracy", "margin")}}
        for e in events if e["event"] == "step" and "loss" in e and e["stage"] not in records  # training steps only
    ]
    return pd.DataFrame(rows, columns=["source", "step", "loss", "accuracy", "margin"])


def adapter_table(records: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per trained adapter (each source's, and those under further seeds; their training
    `records`): what it was trained on and how it ended."""
    import pandas as pd

    rows = []
    for source, record in records.items():
        final = record.get("final", {})
        rows.append({
            "source": source,
            "pairs": record.get("pairs_used"),
            "truncated (length)": record.get("pairs_truncated"),
            "dropped (length)": record.get("pairs_dropped_by_length"),
            "steps": record.get("steps"),
            "final loss": final.get("loss"),
            "reward accuracy": final.get("accuracy"),
            "reward margin": final.get("margin"),
            "minutes": round(record.get("wall_time_s", 0) / 60, 1),
            "base model": record.get("base_model"),
            "beta": record.get("beta"),
        })
    return pd.DataFrame(rows)
