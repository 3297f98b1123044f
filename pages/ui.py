"""What every page shares: the run picker in the sidebar, cached loaders, and error display.

Pages import this module; it holds no valuation logic (that lives in `valuation/`).
"""

from __future__ import annotations

import json

import streamlit as st

from valuation.config import DataConfig, to_dict
from valuation.data import PreferenceData, load_preferences
from valuation.errors import UserError
from valuation.runs import Run, RunError, create_run, list_runs

RUN_KEY = "run_name"


def current_run() -> Run | None:
    name = st.session_state.get(RUN_KEY)
    return Run.named(name) if name else None


def require_run() -> Run:
    """The run this page works on; without one, say how to get one and stop the page."""
    run = current_run()
    if run is None or not run.exists():
        st.info("Pick or create a run in the sidebar first: every page works on one run.")
        st.stop()
    problem = run.problem()
    if problem:
        st.error(problem)
        st.stop()
    return run


def run_sidebar() -> None:
    """Pick an existing run, or create one; the choice is kept in the session across pages."""
    with st.sidebar:
        st.subheader("Run")
        runs = list_runs()
        names = [r.name for r in runs]
        if names:
            chosen = st.session_state.get(RUN_KEY)
            index = names.index(chosen) if chosen in names else 0
            name = st.selectbox("Current run", names, index=index, help="Every page reads and writes this run's directory.")
            st.session_state[RUN_KEY] = name
            problem = Run.named(name).problem()
            if problem:
                st.warning(problem)
        else:
            st.caption("No run yet: create one below.")
        with st.popover("New run", width="stretch"), st.form("new_run", border=False):
            new_name = st.text_input("Name", placeholder="my-run", help="Letters, digits, '.', '_' or '-'.")
            if st.form_submit_button("Create"):
                try:
                    create_run(new_name.strip())
                except RunError as error:
                    st.error(str(error))
                else:
                    st.session_state[RUN_KEY] = new_name.strip()
                    st.rerun()


@st.cache_resource(show_spinner="Reading preference data…", max_entries=4)
def _load_preferences(config_json: str) -> PreferenceData:
    return load_preferences(DataConfig(**json.loads(config_json)))


def cached_preferences(config: DataConfig) -> PreferenceData:
    """Preference data for `config`, read once per process (shared by every session)."""
    return _load_preferences(json.dumps(to_dict(config), sort_keys=True))


def show_user_error(error: UserError) -> None:
    st.error(str(error), icon=":material/error:")
