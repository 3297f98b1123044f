"""Shared fixtures: an isolated runs directory and small preference files written by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    """VALUATION_RUNS_DIR pointed at a fresh folder, for the CLI and the app alike."""
    root = tmp_path / "runs"
    root.mkdir()
    monkeypatch.setenv("VALUATION_RUNS_DIR", str(root))
    return root


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def table_rows(source: str, n: int) -> list[dict]:
    """n distinct preference pairs of one source, in the plain-table format."""
    return [{"prompt": f"{source} question {i}?", "chosen": f"good answer {i}", "rejected": f"bad answer {i}",
             "source": source} for i in range(n)]
