"""What every page shares: the run picker in the sidebar (and the run read once for the draw),
cached loaders, charts, caveats and error display.

Pages import this module; it holds no valuation logic (that lives in `valuation/`).
"""

from __future__ import annotations

import json
import runpy
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import streamlit as st

from valuation import progress
from valuation.config import BackendConfig, DataConfig, field_help, to_dict
from valuation.data.preferences import PreferenceData, load_preferences
from valuation.errors import UserError
from valuation.jobs.background import JobStatus, cancel_job, job_status
from valuation.jobs.demo import install_demo
from valuation.runs import Run, RunError, create_run, list_runs, runs_root
from valuation.views.caveats import AT_CHANCE, Caveat
from valuation.views.snapshot import RunSnapshot

if TYPE_CHECKING:
    from valuation.lm.models import LoadedModel

RUN_KEY = "run_name"
APP_FILE = Path(__file__).resolve().parent.parent / "app.py"


def current_run() -> RunSnapshot | None:
    """The run this draw works on, as the sidebar read it (each of its files once per draw), or None."""
    return getattr(_navigation, "snapshot", None)


def require_run() -> RunSnapshot:
    """The run this page works on; without one, say how to get one and stop the page."""
    snapshot = current_run()
    if snapshot is None or not snapshot.run.exists():
        st.info("Pick or create a run in the sidebar first: every page works on one run.")
        st.stop()
    if snapshot.problem:
        st.error(snapshot.problem)
        st.stop()
    return snapshot


def run_page(page) -> None:
    """app.py's last line: run the page st.navigation chose, marked as reached through it."""
    _navigation.active = True
    try:
        page.run()
    finally:
        _navigation.active = False


def through_app() -> None:
    """Every page's first call. Until app.py has reached st.navigation once in the server process,
    Streamlit (1.67, with a pages/ folder) runs a requested page file alone, on its legacy path: the
    sidebar lists every file of pages/ and has no run picker. That happens to a deep link as the first
    request of a fresh server, and to a click that interrupts app.py's first run before st.navigation
    (AppTest takes that path on every run). A page not run by `run_page` runs app.py instead, in this
    same script run, so the widget that triggered it (a click) still counts; then it stops."""
    if not getattr(_navigation, "active", False):
        runpy.run_path(str(APP_FILE), run_name="__main__")
        st.stop()


_navigation = threading.local()  # a script run is one thread: is it inside `run_page`? which run does it read?


if __name__ == "__main__":  # this helper module itself opened as a page (/ui) on the legacy path
    through_app()


@st.cache_resource(show_spinner=False)
def _install_demo_once(root: Path) -> None:
    """The shipped demo, copied into an empty runs folder once per server process: not on every rerun,
    and a user who deletes it is not handed it back."""
    install_demo(root)


def run_sidebar() -> None:
    """Pick an existing run, or create one; the choice is kept in the session across pages, and the
    run is read once for this draw (`current_run`)."""
    _navigation.snapshot = None
    with st.sidebar:
        st.subheader("Run")
        _install_demo_once(runs_root())  # a fresh install opens on the shipped demo run
        runs = list_runs()
        names = [r.name for r in runs]
        if names:
            chosen = st.session_state.get(RUN_KEY)
            index = names.index(chosen) if chosen in names else 0
            name = st.selectbox("Current run", names, index=index, help="Every page reads and writes this run's directory.")
            st.session_state[RUN_KEY] = name
            _navigation.snapshot = RunSnapshot(Run.named(name))
            if _navigation.snapshot.problem:
                st.warning(_navigation.snapshot.problem)
        else:
            st.caption("No run yet: create one below.")
        st.radio("Chart downloads", ["png", "svg"], key=CHART_FORMAT_KEY, horizontal=True,
                 help="Every chart's camera button saves it in this format.")
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


@st.cache_resource(show_spinner="Loading the base model and the run's adapters…", max_entries=2)
def _coalition_model(run_path: str, config_time: float, adapters: tuple[tuple[str, float], ...]) -> LoadedModel:
    from valuation.lm.adapters import load_adapters
    from valuation.lm.models import load_model

    run = Run.at(run_path)
    loaded = load_model(run.load_config().model)
    if adapters:  # one PeftModel on the base, one adapter per source
        loaded.model = load_adapters(loaded, run, [source for source, _ in adapters])
    return loaded


def cached_coalition_model(run: Run) -> LoadedModel:
    """The run's base model with every trained adapter, shared by every session (the engine locks it per
    forward pass); loaded again when the run's config changes or an adapter is (re)trained."""
    from valuation.views.playground import adapter_stamps

    return _coalition_model(str(run.path), run.config_path.stat().st_mtime, adapter_stamps(run))


def show_caveats(caveats: list[Caveat], kinds: tuple[str, ...] | None = None) -> None:
    """The run's caveats (`views.caveats`) of these kinds: what the intervals cover as captions, an
    objective at chance as a note in place of its chart, every other as a warning."""
    for caveat in caveats:
        if kinds is not None and caveat.kind not in kinds:
            continue
        if caveat.is_note:
            st.caption(caveat.text)
        elif caveat.kind == AT_CHANCE:
            st.info(caveat.text, icon=":material/block:")
        else:
            st.warning(caveat.text)


CHART_FORMAT_KEY = "chart_format"


def chart(figure, container=st) -> None:
    """A plotly chart, full width, whose camera button saves it in the format chosen in the sidebar
    (plotly's own client-side export: PNG or SVG)."""
    figure.update_layout(margin=dict(t=40, b=10))
    container.plotly_chart(figure, width="stretch", config={
        "displaylogo": False, "toImageButtonOptions": {"format": st.session_state.get(CHART_FORMAT_KEY, "png")}})


@st.cache_data(ttl=15, show_spinner=False)
def _reachable_cluster() -> str | None:
    from valuation.runtime.cluster import reachable_cluster

    return reachable_cluster()


def backend_choice(snapshot: RunSnapshot, disabled: bool = False) -> BackendConfig:
    """Where a job's parallel parts run: this machine, or a Ray cluster when one is reachable, with
    the resources each task holds."""
    recorded = snapshot.config.backend
    address = _reachable_cluster() or (recorded.address if recorded.backend == "ray" and recorded.address else None)
    if address is None:
        st.caption("Runs on this machine. A Ray cluster (`ray start --head`; README, \"Running on a cluster\") is "
                   "offered here once this machine can reach it.")
        return BackendConfig()
    here, cluster = "this machine", f"Ray cluster ({address})"
    where = st.radio("Where to run", [here, cluster], index=int(recorded.backend == "ray"), horizontal=True,
                     disabled=disabled, help=field_help(BackendConfig, "backend"))
    if where == here:
        return BackendConfig()
    gpus, cpus, workers = st.columns(3)
    return BackendConfig("ray", address,
                         gpus.number_input("GPUs per task", min_value=0.0, value=recorded.gpus_per_task, step=1.0,
                                           disabled=disabled, help=field_help(BackendConfig, "gpus_per_task")),
                         cpus.number_input("CPUs per task", min_value=0.25, value=recorded.cpus_per_task, step=1.0,
                                           disabled=disabled, help=field_help(BackendConfig, "cpus_per_task")),
                         int(workers.number_input("Evaluation workers", min_value=0, value=recorded.workers,
                                                  disabled=disabled, help=field_help(BackendConfig, "workers"))))


def show_user_error(error: UserError) -> None:
    st.error(str(error), icon=":material/error:")


STATE_BADGES = {"queued": ("blue", "hourglass_empty"), "running": ("orange", "progress_activity"),
                "done": ("green", "check_circle"), "failed": ("red", "error"), "cancelled": ("gray", "cancel")}


def job_panel(run: Run, kind: str, first: JobStatus | None, details: Callable[[JobStatus | None], None] | None = None,
              every: float = 2.0, no_job: str | None = None) -> None:
    """The run's background job of this kind: its state, a Cancel button, its error and log tail,
    polled every `every` seconds while it is active. `first`: the job's status as this draw read it.
    `details` draws kind-specific progress (it is called with None when the run has no job of this
    kind); without it, the latest stage's bar. `no_job` says what to say when the run has had no
    such job here."""
    active_at_load = first is not None and first.active
    unread = [first]  # this draw's status serves the panel's first run; each poll reads it afresh

    @st.fragment(run_every=every if active_at_load else None)
    def panel() -> None:
        status = unread.pop() if unread else job_status(run)
        if active_at_load and (status is None or not status.active):
            st.rerun()  # it just ended: refresh the whole page (forms, results)
        if status is not None and status.kind != kind:
            if status.active:
                st.info(f"A {status.kind} job is running on this run; a {kind} job can start when it ends.")
            status = None
        if status is None:
            st.caption(no_job or f"No {kind} job has run on this run yet.")
        else:
            color, icon = STATE_BADGES[status.state]
            left, right = st.columns([4, 1])
            left.badge(f"{kind} job: {status.state}, started {time.strftime('%H:%M:%S', time.localtime(status.started))}",
                       color=color, icon=f":material/{icon}:")
            if status.active and right.button("Cancel", icon=":material/stop:", key=f"cancel-{kind}"):
                cancel_job(run)
                st.rerun()
            if status.error:
                st.error(status.error)
        if details is not None:
            details(status)
        elif status is not None:
            latest_step(status)
        if status is not None:
            with st.expander("Log", expanded=status.state == "failed"):
                st.code(status.log_tail or "(empty)", language=None)

    panel()


def latest_step(status: JobStatus) -> None:
    """A progress bar for what the job is doing now (its latest step event)."""
    last = progress.latest_step(status.events)
    if last:
        st.progress(min(1.0, last["done"] / last["total"]), text=f"{last['stage']}: {last['done']}/{last['total']}")
