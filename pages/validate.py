"""Validate: how far the coalition arithmetic holds on this run, and how much sampling error the
Shapley values carry. Each experiment runs in the background; its results are read from the run."""

from __future__ import annotations

from pages.ui import through_app

through_app()  # opened outside app.py's st.navigation: hand over to it

import streamlit as st

from pages.ui import chart, job_panel, latest_step, require_run, show_user_error
from valuation.errors import UserError
from valuation.jobs.background import job_status
from valuation.jobs.registry import command, job_config, launch
from valuation.validation.job import current_experiment
from valuation.validation.results import (accuracy_shapley, comparisons, method_shapley, retrain_coalitions,
                                          retrain_scope, retrain_values, scaling_summary)
from valuation.validation.retrain_rewards import retrain_lines
from valuation.validation.settings import DEFAULT_EXPERIMENTS, EXPERIMENTS, PRESETS, results_dir
from valuation.views.figures import (intervals_figure, kl_figure, method_values_figure, retrain_scatter_figure,
                                     scaling_figure)

st.title("Validate")
st.caption("The method's claim: a coalition built by adding log-probabilities, log π_S = Σ log π_l + (1 − |S|) log π_0, "
           "behaves like a model trained on the coalition's data. Under **sequential DPO** (train on a, then on b with "
           "the a-model as reference) the rewards add and the claim is exact at convergence; training on the **pooled** "
           "data is not expected to match. Utilities here are teacher-forced on held-out pairs of the split's eval part "
           "(never trained on): **preference accuracy** (does the model prefer the chosen reply more than the base does? "
           "ties count ½) and the **implicit reward margin** (β × log-ratio gap).")

snapshot = require_run()
run = snapshot.run

# --- Launch -------------------------------------------------------------------------------------
available = snapshot.sources
left, middle, right = st.columns([1, 2, 2])
preset = left.segmented_control("Preset", sorted(PRESETS), default="quick",
                                help="quick: 2 CPU cores, under an hour (2 sources, 16 pairs, epochs 1/2/4); "
                                     "gpu: 3 sources, longer training, epochs up to 8.") or "quick"
experiments = middle.multiselect("Experiments", EXPERIMENTS, default=DEFAULT_EXPERIMENTS,
                                 help="retrain trains one more adapter per coalition of up to 4 sources (beyond, all but one "
                                      "and all of them: leave-one-out only), with the "
                                      "run's own training settings: 11 at 4 sources, hours on a CPU.")
sources = right.multiselect("Sources of the training experiments", available,
                            help=f"Default: the run's first {PRESETS[preset].n_sources}. Every coalition of two or "
                                 "more is trained sequentially (both orders) and on pooled data.")
try:
    config = job_config("validate", preset, experiments=experiments, sources=sources)
except UserError as error:  # no experiment, or a single source
    show_user_error(error)
    config = None
if st.button("Run validation", type="primary", icon=":material/play_arrow:", disabled=config is None):
    try:
        launch(run, "validate", config)
    except UserError as error:
        show_user_error(error)
if config is not None:
    st.caption(f"Runs in the background as `python -m valuation {' '.join(command(run, 'validate', config, recorded=snapshot.config))}`; "
               "a relaunch skips every adapter and result already computed.")


def validation_progress(status) -> None:
    if status is None:
        return
    experiment = current_experiment(status.events)
    if experiment:
        st.caption(f"Experiment: **{experiment}**")
    latest_step(status)


job_panel(run, "validate", job_status(run), details=validation_progress)

# --- Results ------------------------------------------------------------------------------------
folder = results_dir(run, PRESETS[preset].folder)
compared = comparisons(folder)
by_method = method_shapley(folder)
scaling = scaling_summary(folder)
accuracy = accuracy_shapley(run)
retrained = retrain_values(run)
if compared.empty and scaling.empty and accuracy.empty and retrained.empty:
    st.info(f"No validation results for the {preset} preset yet: run the validation above.", icon=":material/verified:")
    st.stop()

number = {"kl_reference_model": st.column_config.NumberColumn("KL(ref ‖ model) /token", format="%.4f"),
          "kl_model_reference": st.column_config.NumberColumn("KL(model ‖ ref) /token", format="%.4f"),
          "accuracy_gap": st.column_config.NumberColumn("accuracy gap", format="%+.3f"),
          "margin_gap": st.column_config.NumberColumn("margin gap", format="%+.4f")}
shown = ["epochs", "coalition", "reference", "model", *number]

if not compared.empty:
    main = compared.epochs.min()
    st.subheader("1 · Arithmetic against sequential DPO")
    st.caption(f"After {main:g} epoch(s). Per-token KL between the two models' next-token distributions on held-out "
               "responses (teacher-forced, both directions), and the model's utility minus the reference's. The last "
               "rows compare the two training orders with each other: sequential DPO is only order-invariant at "
               "convergence, so their gap is the noise floor the arithmetic can be held to.")
    sequential = compared[(compared.kind == "sequential") & (compared.epochs == main)]
    st.dataframe(sequential[shown], hide_index=True, width="stretch", column_config=number)

    pooled = compared[compared.kind == "pooled"]
    if not pooled.empty:
        st.subheader("2 · Arithmetic against training on the pooled data")
        st.caption("What a practitioner would train. Gaps are expected: two sources with the same preferences give a "
                   "reward r when pooled but 2r by arithmetic (and by sequential DPO), so the arithmetic coalition is "
                   "further from the base than the pooled model.")
        st.dataframe(pooled[shown], hide_index=True, width="stretch", column_config=number)
    if not by_method.empty:
        st.markdown("**Shapley values by how coalitions are built**: the base and single sources are shared; "
                    "coalitions of two or more come from arithmetic, sequential DPO (mean of the orders) or pooled training.")
        chart(method_values_figure(by_method))

    trend = compared[(compared.kind == "sequential") & compared.reference.str.startswith("arithmetic")]
    if trend.epochs.nunique() > 1:
        st.subheader("3 · Error against training")
        st.caption("Arithmetic vs sequential DPO (mean of both orders) after each number of epochs: the theory is exact "
                   "at convergence, so the gap should shrink as the adapters train longer, if they converge.")
        curve = trend.groupby("epochs")[list(number)].mean().reset_index()
        chart(kl_figure(curve))
        st.dataframe(curve, hide_index=True, width="stretch", column_config=number)

if not accuracy.empty:
    st.subheader("4 · A cheap exact utility: held-out preference accuracy")
    st.caption("Every coalition of the run's own adapters, from one teacher-forced pass per model and pair (no sampling, "
               "no reward model), on the pairs behind the run's evaluation prompts. The column `preference_accuracy` is "
               "added to the evaluation's utilities when they use those prompts (not a prompts file), so the Shapley page "
               "offers it as an objective. The margin is nearly additive across sources, so its Shapley values should "
               "sit near each source's solo gain (column `solo`; the per-token renormalisation makes it inexact): a "
               "check of the pipeline, a poor objective.")
    chart(intervals_figure(accuracy))
    st.dataframe(accuracy, hide_index=True, width="stretch")

if not scaling.empty:
    st.subheader("5 · Scaling: exact Shapley against Monte Carlo at n = 8")
    st.caption("The run's sources cut in halves by a seeded hash, one small adapter each; exact Shapley over all 256 "
               "coalitions against permutation sampling, averaged over repeated seeds. The utility is preference "
               "accuracy: sampling generations for 256 coalitions would not fit this CPU.")
    chart(scaling_figure(scaling))
    st.dataframe(scaling, hide_index=True, width="stretch")

if not retrained.empty:
    st.subheader("6 · Retrained on every coalition's data, against the arithmetic and the weight merge")
    st.caption(f"The method's claim at the level of the values. {retrain_scope(retrained)}: an adapter "
               "of its own, trained on its members' pairs with the run's training settings and seeds; the same game "
               "is then valued three ways on the same held-out pairs (and, for the reward models' objectives, on the "
               "same pooled responses of the evaluation): **retrained**, **arithmetic** (adding "
               "log-probabilities) and **merged** (one adapter holding the sum of the members' LoRA updates). The base "
               "and each source alone are shared. Intervals: 95% over held-out pairs"
               + (f" and {retrained.seeds.max()} training seeds." if retrained.seeds.max() > 1 else " (one training seed)."))
    for line in retrain_lines(run, retrained):
        st.markdown(f"- {line}")
    indices = list(retrained["index"].unique())  # leave-one-out only beyond 4 sources
    index = st.segmented_control("Value", indices, default=indices[0], key="retrain_index") or indices[0]
    chart(intervals_figure(retrained[retrained["index"] == index], color="method"))
    st.markdown("**Every coalition's utility**, by each shortcut (up) against its own adapter retrained on the "
                "coalition's data (across; dotted: where they agree).")
    chart(retrain_scatter_figure(retrain_coalitions(run)))
