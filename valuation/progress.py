"""Progress events: one JSON object a line, appended and flushed as they happen, so another process
(the app) can read a job's progress while it runs, and a killed job leaves every event it wrote.

Every event has `event` (what happened) and `time` (seconds since the epoch); the rest is up to
the job, e.g. {"event": "step", "source": "helpful-base", "step": 3, "total": 40, "loss": 0.69}.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class ProgressWriter:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "time": time.time(), **fields}, default=str)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()


def read_progress(path: Path) -> list[dict[str, Any]]:
    """Every complete event in `path`; a line cut short by a kill is skipped."""
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events
