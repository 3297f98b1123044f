"""Training: one DPO LoRA adapter per source, in a background process that outlives this page."""

from __future__ import annotations

from pages.ui import through_app

through_app()  # opened outside app.py's st.navigation: hand over to it

import streamlit as st

from pages.ui import backend_choice, chart, job_panel, require_run, show_caveats, show_user_error
from valuation.config import field_help
from valuation.errors import UserError
from valuation.jobs.background import JobStatus, job_status
from valuation.jobs.demo import DEMO_NAME
from valuation.jobs.registry import job_config, launch
from valuation.lm.adapters import seed_adapter, trained_seeds
from valuation.training.progress import adapter_table, source_progress, training_curves
from valuation.training.settings import PRESETS, TrainConfig
from valuation.views.caveats import DID_NOT_LEARN, PAIRS_DROPPED, training_caveats
from valuation.views.figures import curve_figure
from valuation.views.snapshot import RunSnapshot

MAIN_SETTINGS = ("max_pairs", "epochs", "learning_rate", "batch_size", "gradient_accumulation", "max_length",
                 "max_prompt_length", "train_layers")

st.title("Training")
st.caption("One LoRA adapter per source, trained with DPO (beta 0.1) on the same base with the same settings. "
           "Training runs as its own process: reload the page or close the browser, it carries on.")

snapshot = require_run()
run, all_sources = snapshot.run, snapshot.sources
if not all_sources:
    st.info("Choose this run's sources on the Sources page first: one adapter is trained per source.",
            icon=":material/dataset:")
    st.page_link("pages/sources.py", label="Go to Sources", icon=":material/dataset:")
    st.stop()
status = job_status(run)
busy = status is not None and status.active

# --- Launch --------------------------------------------------------------------------------------
with st.container(border=True):
    st.subheader("Launch")
    preset = st.segmented_control("Preset", list(PRESETS), default="quick", disabled=busy,
                                  help="quick: a CPU in minutes (the top 4 layers over a cached trunk, up to 1,024 "
                                       "pairs a source of 96 tokens, seen once). paper: a GPU, every layer, every "
                                       "pair, longer sequences.") or "quick"
    trained = snapshot.trained
    sources = st.multiselect("Sources", all_sources, default=all_sources, disabled=busy,
                             help="Sources already trained are skipped unless you retrain them.")
    defaults = PRESETS[preset]
    overrides = {}
    with st.expander("Settings"):
        columns = st.columns(3)
        for i, name in enumerate(MAIN_SETTINGS):
            value = getattr(defaults, name)
            chosen = columns[i % 3].number_input(name.replace("_", " "), value=value, key=f"{preset}-{name}",
                                                 step=value / 2 if isinstance(value, float) else 1,
                                                 help=field_help(TrainConfig, name), disabled=busy,
                                                 format="%g" if isinstance(value, float) else "%d")
            if chosen != value:
                overrides[name] = type(value)(chosen)
    seeds = int(st.number_input("Seeds per source", min_value=1, value=max(1, trained_seeds(run, sources)), step=1,
                                disabled=busy, help=field_help(TrainConfig, "seeds")))
    retrain = st.checkbox("Retrain sources that already have an adapter", disabled=busy or not trained)
    backend = backend_choice(snapshot, disabled=busy)
    have = snapshot.adapters
    todo = [a for a in (seed_adapter(s, r) for r in range(seeds) for s in sources) if retrain or a not in have]
    st.caption(f"Will train {len(todo)} adapter(s): {', '.join(todo) or 'none'}."
               + (f" Already trained: {', '.join(have)}." if have else ""))
    if st.button("Launch training", type="primary", disabled=busy or not todo, icon=":material/play_arrow:"):
        try:
            launch(run, "train", job_config("train", preset, sources=sources, retrain=retrain, seeds=seeds, **overrides),
                   backend)
        except UserError as error:
            show_user_error(error)
        else:
            st.rerun()


# --- The job, polled while it runs -----------------------------------------------------------------
def training_progress(status: JobStatus | None) -> None:
    """A bar per source, and the loss and margin curves: live from the job, else from the adapters."""
    events = status.events if status is not None else []
    for entry in source_progress(events):
        eta = f", about {entry.eta_s / 60:.1f} min left" if entry.state == "training" and entry.eta_s else ""
        steps = f" step {entry.step}/{entry.total}" if entry.total else ""
        st.progress(entry.fraction, text=f"{entry.source}: {entry.state}{steps}{eta}")
    # While the job runs, adapters land between polls: read their records afresh (the draw's are of its start).
    records = RunSnapshot(run).records if status is not None and status.active else snapshot.records
    curves = training_curves(records, events)
    if not curves.empty:
        loss, margin = st.columns(2)
        chart(curve_figure(curves, "loss", "DPO loss"), loss)
        chart(curve_figure(curves, "margin", "Reward margin (chosen - rejected)"), margin)


st.subheader("Job")
came_with = ("These are the shipped demo's adapters, trained by `python -m valuation demo` before this project was "
             "packaged: the quick preset (the top 4 layers, LoRA on every linear projection, up to 1,024 pairs seen "
             "once), each source under 3 training seeds. Their curves are below." if run.name == DEMO_NAME else
             "These adapters were trained before this run's last job record: their curves are below.")
job_panel(run, "train", status, details=training_progress, no_job=came_with if snapshot.trained else None)

# --- What is trained -------------------------------------------------------------------------------
st.subheader("Trained adapters")
caveats = training_caveats(snapshot)
table = adapter_table(snapshot.records)
if table.empty:
    st.caption("None yet.")
else:
    st.dataframe(table, hide_index=True)
    st.caption("truncated: pairs whose prompt was longer than max prompt length, trained on its end (its last user turn "
               "and the earlier turns that fit, or the last tokens of a last user turn longer on its own); dropped: "
               "pairs with no prompt to keep (the chat template alone was longer).")
    show_caveats(caveats, (PAIRS_DROPPED,))

verdicts = snapshot.verdicts
if not verdicts.empty:
    st.subheader("Did each adapter learn?")
    st.caption("On held-out pairs of its own source (never trained on): the implicit reward margin against the base "
               "(β × how much more the adapter prefers the chosen reply than the base does) and how often it is "
               "positive, with 95% intervals. Read the Shapley values of an adapter only once it has learned.")
    st.dataframe(verdicts, hide_index=True, column_config={
        c: st.column_config.NumberColumn(format="%.3f") for c in verdicts.columns if c not in ("source", "pairs", "verdict")})
    show_caveats(caveats, (DID_NOT_LEARN,))
