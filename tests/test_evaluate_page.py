"""The Evaluate page: empty state, the cost estimate, launching, and reading stored generations."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from helpers import APP, TINY_EVALUATION, TINY_REWARDS, random_adapter_run
from valuation.jobs.registry import run_job
from valuation.jobs.background import cancel_job, wait_for_job
from valuation.runs import create_run


def _page(name: str) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=60)
    app.session_state["run_name"] = name
    app.switch_page("pages/evaluate.py")
    return app.run()


def test_without_adapters_the_page_says_to_train_first(runs_dir):
    create_run("fresh")
    app = _page("fresh")
    assert not app.exception
    assert any("Train an adapter" in i.value for i in app.info)


@pytest.mark.slow  # an evaluate job in a process of its own
def test_estimate_launch_and_audit(runs_dir):
    run = random_adapter_run(runs_dir, "ready", ["harmless-base", "helpful-base"], rewards=TINY_REWARDS, eval_prompts=4)
    app = _page("ready")
    assert not app.exception
    assert any("4 coalitions" in m.value for m in app.markdown)
    run_job(run, "evaluate", TINY_EVALUATION)
    app = _page("ready")
    assert not app.exception
    assert len(app.dataframe) == 2  # reward models, generations
    app.number_input[0].set_value(1).run()  # prompts
    next(b for b in app.button if b.label == "Evaluate coalitions").click().run()
    assert not app.exception
    status = wait_for_job(run, timeout_s=300)
    cancel_job(run)  # never leave a job behind a failed assertion
    assert status.kind == "evaluate" and status.state == "done", status.log_tail


def test_a_reachable_ray_cluster_is_offered_and_its_flags_shown(runs_dir, monkeypatch):
    from pages.ui import _reachable_cluster

    random_adapter_run(runs_dir, "cluster", ["harmless-base", "helpful-base"], rewards=TINY_REWARDS, eval_prompts=4)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    _reachable_cluster.clear()
    app = _page("cluster")
    assert not app.exception and not [r for r in app.radio if r.label == "Where to run"]
    assert any("Runs on this machine" in c.value for c in app.caption)

    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    _reachable_cluster.clear()
    app = _page("cluster")
    where = next(r for r in app.radio if r.label == "Where to run")
    assert where.value == "this machine"  # the run's own backend until chosen
    where.set_value("Ray cluster (ray://head:10001)").run()
    assert not app.exception
    shown = next(c.value for c in app.caption if "Runs in the background" in c.value)
    assert "--backend ray --address ray://head:10001" in shown
    _reachable_cluster.clear()
