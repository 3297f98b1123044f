"""What one evaluation, one valuation and one draw of each page read of a run: files opened (by
path, chunk numbers and keys folded) and config.yaml parses. A small pooled run on the tiny model
(3 sources, random adapters, 4 prompts in 2 chunks), so it takes about a minute on 2 cores.

    .venv/bin/python bench/evaluation_reads.py

The counts before and after the library's reorganisation are in bench/README.md.
"""

from __future__ import annotations

import builtins
import io
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import yaml  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from helpers import TINY_REWARDS, random_adapter_run  # noqa: E402
from valuation.evaluation.settings import EvaluationConfig  # noqa: E402
from valuation.games.values import value_sources  # noqa: E402
from valuation.jobs.registry import job_config, run_job  # noqa: E402
from valuation.views.snapshot import RunSnapshot  # noqa: E402

SOURCES = ["harmless-base", "helpful-base", "helpful-online"]
PAGES = ("pages/evaluate.py", "pages/shapley.py", "pages/training.py")


class Reads:
    """Counts the files under one folder opened for reading, and YAML parses, while it is active."""

    def __init__(self, folder: Path):
        self.folder, self.files, self.parses = folder.resolve(), Counter(), 0
        self._open, self._io_open, self._load = builtins.open, io.open, yaml.safe_load

    def _name(self, path: object) -> str | None:
        try:
            resolved = Path(path).resolve()
        except TypeError:  # a file descriptor
            return None
        if not resolved.is_relative_to(self.folder):
            return None
        name = str(resolved.relative_to(self.folder))
        return re.sub(r"[0-9a-f]{16}", "<key>", re.sub(r"chunk-\d{4}", "chunk-N", name))

    def _counting(self, opener: Callable) -> Callable:
        def opened(file, mode="r", *args, **kwargs):
            name = self._name(file) if "r" in mode and "+" not in mode else None
            if name is not None:
                self.files[name] += 1
            return opener(file, mode, *args, **kwargs)
        return opened

    def _parse(self, *args, **kwargs):
        self.parses += 1
        return self._load(*args, **kwargs)

    def measure(self, label: str, work: Callable[[], object]) -> None:
        self.files.clear()
        self.parses = 0
        builtins.open, io.open, yaml.safe_load = self._counting(self._open), self._counting(self._io_open), self._parse
        try:
            work()
        finally:
            builtins.open, io.open, yaml.safe_load = self._open, self._io_open, self._load
        print(f"\n{label}: {sum(self.files.values())} file reads, config.yaml parsed {self.parses} times")
        for name, count in sorted(self.files.items()):
            print(f"  {count:4d}  {name}")


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="reads-")) / "runs"
    root.mkdir(parents=True)
    os.environ["VALUATION_RUNS_DIR"] = str(root)
    run = random_adapter_run(root, "walk", SOURCES, rewards=TINY_REWARDS, eval_prompts=8)
    run_job(run, "rewards", job_config("rewards"))
    reads = Reads(run.path)

    config = EvaluationConfig(prompts=4, chunk_prompts=2, pool_per_anchor=2, max_new_tokens=4)
    reads.measure("one evaluation (pooled, 3 sources, 4 prompts in 2 chunks)", lambda: run_job(run, "evaluate", config))

    def values() -> None:
        snapshot = RunSnapshot(run)
        value_sources(snapshot.store.load(), snapshot.valuation_config)

    reads.measure("the run's values (load and value the table)", values)
    for page in PAGES:
        app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        app.session_state["run_name"] = run.name
        app.run()
        app.switch_page(page)
        reads.measure(f"one draw of {page}", app.run)
        assert not app.exception, app.exception


if __name__ == "__main__":
    main()
