"""An earlier commit checked out beside this tree, for benchmarks that measure before and after in one run."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


@contextmanager
def checked_out(commit: str) -> Iterator[Path]:
    """A git worktree of `commit` in a scratch folder, with this tree's .venv and, where this project
    finds its offline data (../shared/data), the same beside it; removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="before-") as scratch:
        worktree = Path(scratch) / "tree"
        subprocess.run(["git", "-C", str(HERE), "worktree", "add", "--detach", str(worktree), commit],
                       check=True, capture_output=True)
        try:
            (worktree / ".venv").symlink_to(HERE / ".venv")
            if (HERE.parent / "shared").exists():
                (Path(scratch) / "shared").symlink_to(HERE.parent / "shared")
            yield worktree
        finally:
            subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force", str(worktree)], check=True)
