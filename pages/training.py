"""Training: one DPO LoRA adapter per source, in a background process that outlives this page."""

from __future__ import annotations

from pages.ui import through_app

through_app()  # opened outside app.py's st.navigation: hand over to it

import plotly.express as px
import streamlit as st

from pages.ui import backend_choice, cached_preferences, chart, job_panel, require_run, show_user_error
from valuation.adapters import seed_adapter, trained_adapters, trained_sources, trained_seeds
from valuation.config import field_help
from valuation.demo import DEMO_NAME
from valuation.errors import UserError
from valuation.background import JobStatus, job_status
from valuation.jobs import job_config, launch
from valuation.preference import read_verdicts
from valuation.training import DROPPED_WARNING, PRESETS, TrainConfig, too_many_dropped
from valuation.training_progress import adapter_table, source_progress, training_curves

MAIN_SETTINGS = ("max_pairs", "epochs", "learning_rate", "batch_size", "gradient_accumulation", "max_length",
                 "max_prompt_length")

st.title("Training")
st.caption("One LoRA adapter per source, trained with DPO (beta 0.1) on the same base with the same settings. "
           "Training runs as its own process: reload the page or close the browser, it carries on.")

run = require_run()
config = run.load_config()
try:
    all_sources = config.data.sources or cached_preferences(config.data).sources
except UserError as error:
    show_user_error(error)
    st.stop()
status = job_status(run)
busy = status is not None and status.active

# --- Launch --------------------------------------------------------------------------------------
with st.container(border=True):
    st.subheader("Launch")
    preset = st.segmented_control("Preset", list(PRESETS), default="quick", disabled=busy,
                                  help="quick: a CPU in minutes (a couple hundred pairs a source, short sequences). "
                                       "paper: a GPU, every pair, longer sequences.") or "quick"
    trained = trained_sources(run)
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
    backend = backend_choice(run, disabled=busy)
    have = trained_adapters(run)
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
    curves = training_curves(run, events)
    if not curves.empty:
        loss, margin = st.columns(2)
        chart(px.line(curves, x="step", y="loss", color="source", title="DPO loss"), loss)
        chart(px.line(curves, x="step", y="margin", color="source", title="Reward margin (chosen - rejected)"), margin)


st.subheader("Job")
came_with = ("These are the shipped demo's adapters, trained by `python -m valuation demo` before this project was "
             "packaged, under the quick preset of the time (learning rate 1e-3 in steps of 4 pairs, prompts too long for "
             "the cap dropped, not cut): their curves are below." if run.name == DEMO_NAME else
             "These adapters were trained before this run's last job record: their curves are below.")
job_panel(run, "train", details=training_progress, no_job=came_with if trained_sources(run) else None)

# --- What is trained -------------------------------------------------------------------------------
st.subheader("Trained adapters")
table = adapter_table(run)
if table.empty:
    st.caption("None yet.")
else:
    st.dataframe(table, hide_index=True)
    st.caption("truncated: pairs whose prompt was longer than max prompt length, trained on its last user turn and the "
               "earlier turns that fit; dropped: pairs whose last user turn alone was longer.")
    counted = [(row["source"], int(row["pairs"]), int(row["dropped (length)"]))
               for _, row in table.dropna(subset=["pairs", "dropped (length)"]).iterrows()]
    losing = [(source, kept, dropped) for source, kept, dropped in counted if too_many_dropped(kept, dropped)]
    if losing:
        st.warning("The prompt length cap dropped more than a fifth of the pairs training read for "
                   + ", ".join(f"{source} ({dropped} of {kept + dropped})" for source, kept, dropped in losing)
                   + f" (over {DROPPED_WARNING:.0%}): their values reflect only their shorter prompts. Retrain with a "
                     "larger max prompt length.")

verdicts = read_verdicts(run)
if not verdicts.empty:
    st.subheader("Did each adapter learn?")
    st.caption("On held-out pairs of its own source (never trained on): the implicit reward margin against the base "
               "(β × how much more the adapter prefers the chosen reply than the base does) and how often it is "
               "positive, with 95% intervals. Read the Shapley values of an adapter only once it has learned.")
    st.dataframe(verdicts, hide_index=True, column_config={
        c: st.column_config.NumberColumn(format="%.3f") for c in verdicts.columns if c not in ("source", "pairs", "verdict")})
    unlearned = verdicts[verdicts.verdict != "learned"]
    if not unlearned.empty:
        st.warning("Not distinguishable from the base model on held-out pairs: "
                   + ", ".join(f"{r.source} ({r.verdict})" for r in unlearned.itertuples())
                   + ". Their Shapley values say more about training noise than about their data: train longer or on "
                     "more pairs.")
