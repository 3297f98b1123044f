"""How the app starts: a page opened before app.py has run, and the shipped demo's installation."""

from __future__ import annotations

import shutil

import pytest
from streamlit.testing.v1 import AppTest

from helpers import APP
from valuation.jobs.demo import DEMO_NAME, DEMO_SOURCE
from valuation.runs import list_runs


def test_a_page_run_alone_hands_over_to_app(runs_dir):
    """The first run of a fresh process on a page's URL: Streamlit runs the page file alone (its legacy
    pages/ path). The page hands over to app.py, so the sidebar's run picker is there."""
    app = AppTest.from_file(APP, default_timeout=60)
    app.switch_page("pages/learn.py")  # before any run: the page alone, as for a deep link to /learn
    app.run()
    assert not app.exception
    assert [s.label for s in app.sidebar.selectbox] == ["Current run"]
    assert app.title[0].value == "Learn"


def test_the_demo_is_installed_once_per_server_process(runs_dir):
    """Not on every rerun: a user who deletes the demo run does not get it back on the next click."""
    if not (DEMO_SOURCE / "config.yaml").exists():
        pytest.skip("no demo run shipped")
    app = AppTest.from_file(APP, default_timeout=60).run()
    assert [r.name for r in list_runs()] == [DEMO_NAME]
    shutil.rmtree(runs_dir / DEMO_NAME)
    app.run()
    assert not app.exception
    assert list_runs() == []
    assert any("Pick or create a run" in i.value for i in app.info)
