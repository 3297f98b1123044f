"""The Training page: launching, a job's live state, cancelling, and the trained adapters.

`st.fragment(run_every=...)` does not tick inside AppTest: each `run()` here is one poll, and the
reading of progress itself is tested in the library (test_training.py).
"""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from helpers import APP, labelled
from valuation.lm.adapters import adapter_dir
from valuation.config import DataConfig, ModelConfig, RunConfig
from valuation.jobs.background import job_session, job_status
from valuation.runs import create_run

SOURCES = ["harmless-base", "helpful-base"]


def open_page(name: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["run_name"] = name
    at.switch_page("pages/training.py")
    return at.run()


def launch_button(at: AppTest):
    return next(b for b in at.button if b.label == "Launch training")


def test_a_fresh_run_offers_to_train_every_source(runs_dir) -> None:
    create_run("fresh", RunConfig(model=ModelConfig(name="tiny"), data=DataConfig(sources=SOURCES)))
    at = open_page("fresh")
    assert not at.exception
    assert at.multiselect[0].value == SOURCES
    assert not launch_button(at).disabled
    assert any("No train job has run" in c.value for c in at.caption)
    assert any("Will train 2 adapter(s): harmless-base, helpful-base." in c.value for c in at.caption)
    labelled(at.number_input, "Seeds per source").set_value(2).run()  # each source again under a second seed
    assert any("Will train 4 adapter(s): harmless-base, helpful-base, harmless-base@seed2, helpful-base@seed2."
               in c.value for c in at.caption)


def test_a_running_job_shows_progress_and_locks_the_launch(runs_dir) -> None:
    run = create_run("busy", RunConfig(model=ModelConfig(name="tiny"), data=DataConfig(sources=SOURCES)))
    with job_session(run, "train") as reporter:  # this process plays the training job
        reporter.event("job_start", sources=SOURCES, todo=SOURCES)
        reporter.event("source_start", source="harmless-base")
        for step in (1, 2):
            reporter.event("step", stage="harmless-base", done=step, total=4, loss=0.69 - step / 100,
                                  accuracy=0.5, margin=step / 10, elapsed=step, eta=4 - step)
        reporter.log("harmless-base: step 2/4")
        at = open_page("busy")
        assert not at.exception
        assert launch_button(at).disabled
        assert [p.value for p in at.get("progress")] == [50, 0]  # percent
        assert len(at.get("plotly_chart")) == 2  # loss and margin
        assert "harmless-base: step 2/4" in at.code[0].value
        assert any(b.label == "Cancel" for b in at.button)
    assert job_status(run).state == "done"
    at.run()  # the next poll sees it ended
    assert not at.exception and not launch_button(at).disabled


@pytest.mark.slow  # a train job in a process of its own
def test_launch_then_cancel_from_the_page(runs_dir) -> None:
    run = create_run("go", RunConfig(model=ModelConfig(name="tiny"), data=DataConfig(sources=SOURCES)))
    at = open_page("go")
    labelled(at.number_input, "train layers").set_value(1).run()  # the tiny model has 2 layers
    launch_button(at).click().run()
    assert not at.exception
    assert job_status(run).active and job_status(run).kind == "train"
    assert launch_button(at).disabled
    next(b for b in at.button if b.label == "Cancel").click().run()
    assert not at.exception
    assert job_status(run).state == "cancelled"


def test_trained_adapters_are_listed_with_their_curves(runs_dir) -> None:
    run = create_run("done", RunConfig(model=ModelConfig(name="tiny"), data=DataConfig(sources=SOURCES)))
    dropped = {"harmless-base": 100, "helpful-base": 20}  # 100 of 250 pairs read: over a fifth
    for source in SOURCES:  # what training leaves (the weights' content does not matter to the page)
        folder = adapter_dir(run, source)
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text("{}")
        (folder / "adapter_model.safetensors").write_bytes(b"")
        history = [{"step": 1, "loss": 0.69, "accuracy": 0.5, "margin": 0.0}, {"step": 2, "loss": 0.6, "accuracy": 0.75, "margin": 0.2}]
        record = {"beta": 0.1, "base_model": "tiny", "pairs_used": 150, "pairs_truncated": 30,
                  "pairs_dropped_by_length": dropped[source], "steps": 2,
                  "final": history[-1], "history": history, "wall_time_s": 120}
        (folder / "training.json").write_text(json.dumps(record))
    at = open_page("done")
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table.source) == SOURCES
    assert table["truncated (length)"].tolist() == [30, 30] and table["dropped (length)"].tolist() == [100, 20]
    (warning,) = [w for w in at.warning if "prompt length cap" in w.value]
    assert "harmless-base (100 of 250)" in warning.value and "helpful-base" not in warning.value
    assert len(at.get("plotly_chart")) == 2  # saved curves, with no job in sight
    assert any("Already trained" in c.value for c in at.caption)
    assert any("trained before this run's last job record" in c.value for c in at.caption)
    assert not any("No train job has run" in c.value for c in at.caption)  # the adapters say where they came from


def test_the_demo_run_says_its_adapters_are_the_shipped_ones(runs_dir) -> None:
    from valuation.jobs.demo import DEMO_SOURCE, install_demo

    if not (DEMO_SOURCE / "config.yaml").exists():
        pytest.skip("no demo run shipped")
    install_demo(runs_dir)
    at = open_page("demo")
    assert not at.exception
    assert any("shipped demo's adapters" in c.value for c in at.caption)
