"""The tests' fixtures; what they share besides is in helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

import valuation  # noqa: F401  (first: sets OMP_WAIT_POLICY before any test module loads torch)


@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    """VALUATION_RUNS_DIR pointed at a fresh folder, for the CLI and the app alike."""
    root = tmp_path / "runs"
    root.mkdir()
    monkeypatch.setenv("VALUATION_RUNS_DIR", str(root))
    return root
