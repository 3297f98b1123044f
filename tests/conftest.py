"""Shared fixtures: an isolated runs directory and small preference files written by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import valuation  # noqa: F401  (first: sets OMP_WAIT_POLICY before any test module loads torch)

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


def random_adapter_run(root: Path, name: str, sources: list[str], rewards=None, **data: object):
    """A run on the tiny model whose sources have random (non-trivial) LoRA adapters, saved the way
    training saves them: a stand-in for DPO training where only the plumbing is under test."""
    import torch
    from peft import LoraConfig, get_peft_model

    from valuation.adapters import save_adapter
    from valuation.config import DataConfig, ModelConfig, RewardConfig, RunConfig
    from valuation.models import load_model
    from valuation.runs import create_run

    config = RunConfig(model=ModelConfig(name="tiny"), data=DataConfig(sources=sources, **data),
                       rewards=rewards or RewardConfig())
    run = create_run(name, config, root=root)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False)
    for index, source in enumerate(sources):
        torch.manual_seed(index)
        model = get_peft_model(load_model(ModelConfig(name="tiny")).model, lora)
        for module in model.modules():
            if hasattr(module, "lora_B"):
                module.lora_B["default"].weight.data.normal_(0, 0.5)
        save_adapter(model, run, source, {"beta": 0.1, "base_model": "tiny", "source": source})
    return run
