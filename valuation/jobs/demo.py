"""The demo run: a finished run shipped with the project, so every page has something to show
within seconds of `make run`.

`python -m valuation demo` (`commands/demo.py`) makes it with the project's own pipeline on the offline default (the four
HH-RLHF sources, the quick presets) and the project's own evaluation prompts (assets/demo_prompts.jsonl:
no third-party text), then exports it to assets/demo-run: adapters in float16, reward heads, samples,
scores and utilities, validation results; caches, logs and job files are left out. The app copies
it into the runs directory as `demo` when that directory holds no run yet.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..config import PROJECT_ROOT
from ..lm.adapters import WEIGHTS_FILE, adapters_dir
from ..runs import Run, list_runs, runs_root
from ..storage import atomic_dir

DEMO_NAME = "demo"
DEMO_SOURCE = PROJECT_ROOT / "assets" / "demo-run"
DEMO_PROMPTS = PROJECT_ROOT / "assets" / "demo_prompts.jsonl"
LEFT_OUT = ("job", "job.lock", "uploads", "cache", "README.md")  # run-local state, not results


def _left_out(folder: str, names: list[str]) -> list[str]:
    """Run-local state, hidden files, and the validation's own adapters (its results are tables)."""
    dropped = [n for n in names if n in LEFT_OUT or n.startswith(".")]
    return dropped + (["adapters"] if Path(folder).parent.name == "validation" and "adapters" in names else [])


def install_demo(root: Path | None = None) -> Run | None:
    """Copy the shipped demo run into an empty runs directory; None when not needed or not shipped."""
    root = root or runs_root()
    if list_runs(root) or not (DEMO_SOURCE / "config.yaml").exists():
        return None
    run = Run.named(DEMO_NAME, root)
    with atomic_dir(run.path) as tmp:
        shutil.copytree(DEMO_SOURCE, tmp, dirs_exist_ok=True)
    return run


def export_demo(run: Run, target: Path = DEMO_SOURCE) -> Path:
    """Write `run` to `target` as a shippable demo: results only, adapters in float16."""
    from safetensors.torch import load_file, save_file

    with atomic_dir(target) as tmp:
        shutil.copytree(run.path, tmp, dirs_exist_ok=True, ignore=_left_out)
        for weights in adapters_dir(Run(tmp)).glob(f"*/{WEIGHTS_FILE}"):
            tensors = {name: tensor.half() for name, tensor in load_file(weights).items()}
            save_file(tensors, weights, metadata={"format": "pt"})
    return target
