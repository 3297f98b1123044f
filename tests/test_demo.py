"""The demo run: exported without run-local state, installed into an empty runs folder, and the
shipped one loads and its Shapley values recompute from its stored utilities."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.torch import load_file

from helpers import random_adapter_run, run_table
from valuation.lm.adapters import load_adapters, trained_sources
from valuation.jobs.demo import DEMO_SOURCE, export_demo, install_demo
from valuation.lm.models import load_model
from valuation.games.values import value_sources
from valuation.views.snapshot import RunSnapshot


def machine_paths(folder) -> list[str]:
    """Files of a run that name a place on this machine (a cache, a home or temporary folder)."""
    import re

    absolute = re.compile(r'"(/(root|home|tmp|Users|var)/|[A-Za-z]:\\\\)')
    return [str(p) for p in folder.rglob("*") if p.suffix in (".json", ".yaml", ".csv", ".jsonl")
            and absolute.search(p.read_text(encoding="utf-8"))]


def test_export_keeps_results_in_float16_and_installs_once(tmp_path, monkeypatch):
    run = random_adapter_run(tmp_path / "runs", "built", ["harmless-base", "helpful-base"])
    (run.path / "job").mkdir()
    (run.path / "cache" / "trunks").mkdir(parents=True)  # the frozen trunks: rebuilt on demand, never shipped
    target = export_demo(run, tmp_path / "demo-run")
    assert not (target / "job").exists() and not (target / "cache").exists()
    assert machine_paths(target) == []  # adapters name their base by id, resolved when loaded
    weights = load_file(target / "adapters" / "helpful-base" / "adapter_model.safetensors")
    assert {str(t.dtype) for t in weights.values()} == {"torch.float16"}

    monkeypatch.setattr("valuation.jobs.demo.DEMO_SOURCE", target)
    empty = tmp_path / "empty"
    installed = install_demo(empty)
    assert installed is not None and RunSnapshot(installed).problem is None
    assert trained_sources(installed) == ["harmless-base", "helpful-base"]
    load_adapters(load_model(installed.load_config().model), installed)  # float16 adapters load on the base
    assert install_demo(empty) is None  # never over a runs folder that has runs


@pytest.mark.skipif(not (DEMO_SOURCE / "config.yaml").exists(), reason="no demo run shipped yet")
def test_shipped_demo_loads_and_its_values_recompute(tmp_path):
    assert machine_paths(DEMO_SOURCE) == []
    run = install_demo(tmp_path)
    assert run is not None and RunSnapshot(run).problem is None
    sources = trained_sources(run)
    assert len(sources) >= 2
    valuation = value_sources(run_table(run))
    assert sorted(valuation.players) == sources
    efficiency = valuation.efficiency_frame()
    assert np.allclose(efficiency.sum_of_values, efficiency.v_full - efficiency.v_empty)
    assert {"helpfulness", "harmlessness"} <= set(valuation.objectives)
