"""How a job reports: progress events for the app, log lines for people, a bar in a terminal.

Events are one JSON object a line, appended and flushed as they happen, so another process (the
app) can read a job's progress while it runs, and a killed job leaves every event it wrote. Every
event has `event` (what happened) and `time` (seconds since the epoch); a "step" event also has
`stage`, `done` and `total`, e.g. {"event": "step", "stage": "helpful-base", "done": 3, "total":
40, "loss": 0.69}.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Progress = Callable[[int, int], None]  # (done, total) of one stage of work
LINE_EVERY_S = 10.0


class Reporter:
    """The one way a job reports. `events` is the run's progress file; `log` its log file, or None
    when the process's own output already goes there (a job launched from the app)."""

    def __init__(self, events: Path, log: Path | None = None):
        self.events, self.log_path = events, log
        events.parent.mkdir(parents=True, exist_ok=True)
        self._bar: Any = None  # tqdm bar of the current stage
        self._stage: str | None = None
        self._last_line = 0.0  # when the last progress line went to a log without a bar

    def event(self, name: str, **fields: Any) -> None:
        line = json.dumps({"event": name, "time": time.time(), **fields}, default=str)
        with self.events.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()

    def log(self, message: str) -> None:
        from tqdm import tqdm  # prints above the progress bar in a terminal

        tqdm.write(message)
        sys.stdout.flush()
        if self.log_path is not None:
            with self.log_path.open("a", encoding="utf-8") as handle:
                handle.write(message + "\n")

    def step(self, stage: str, done: int, total: int, **fields: Any) -> None:
        """`done` of `total` units of `stage`: an event, and one bar per stage (a new stage closes the
        last). Without a terminal (a background job), a log line every LINE_EVERY_S seconds instead."""
        from tqdm import tqdm

        self.event("step", stage=stage, done=done, total=total, **fields)
        if self._stage != stage:
            self.close()
            self._bar, self._stage = tqdm(total=total, desc=stage, disable=None, leave=False), stage
        self._bar.update(done - self._bar.n)
        shown = {k: f"{v:.4f}" for k, v in fields.items() if isinstance(v, float)}
        if shown:
            self._bar.set_postfix(shown)
        if self._bar.disable and (done == total or time.monotonic() - self._last_line > LINE_EVERY_S):
            self._last_line = time.monotonic()
            self.log(f"{stage}: {done}/{total}" + "".join(f" {k} {v}" for k, v in shown.items()))

    def stage(self, name: str) -> Progress:
        """A (done, total) callback for library code that knows nothing of jobs."""
        return lambda done, total: self.step(name, done, total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = self._stage = None


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


def latest_step(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The job's most recent step event, for a progress bar of whatever it is doing now."""
    steps = [e for e in events if e.get("event") == "step" and e.get("total")]
    return steps[-1] if steps else None
