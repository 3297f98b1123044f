"""Shapley: what each source is worth to each reward model, how sure we are, and how sources interact."""

from __future__ import annotations

from pages.ui import through_app

through_app()  # opened outside app.py's st.navigation: hand over to it

from dataclasses import replace

import pandas as pd
import streamlit as st

from pages.ui import chart, latest_step, require_run, show_caveats, show_user_error
from valuation.errors import UserError
from valuation.evaluation.store import EvaluationStore
from valuation.games.coalitions import EXACT_MAX_PLAYERS, shown_name
from valuation.games.utility_table import UtilityTable, with_combined
from valuation.games.values import ValuationConfig, value_sources, values_by_target
from valuation.jobs.background import job_status
from valuation.report.document import report_html
from valuation.rewards.cards import chance_warning
from valuation.runs import Run
from valuation.views.caveats import (AT_CHANCE, BELOW_FLOOR, COVERAGE, DID_NOT_LEARN, SPANS_ZERO, TRAINING_NOISE,
                                     UNCHECKED, run_caveats)
from valuation.views.convergence import answered_table, convergence_frame, prefix_sizes
from valuation.views.figures import (bars_figure, convergence_figure, ess_figure, interaction_figure, prompts_figure,
                                     scatter_figure, targets_figure, values_waterfall)
from valuation.views.snapshot import RunSnapshot
from valuation.views.values import TARGET_LABELS, hidden_objectives, objective_pair

LIVE_EVERY_S = 3.0  # how often the live values poll the evaluation's table


@st.cache_data(max_entries=4, show_spinner="Reading coalition utilities…")
def cached_utilities(run_path: str, target: str, stamps: tuple[float, ...], _store: EvaluationStore) -> UtilityTable:
    """A target's table (read from this draw's store), read again only when it or a further seed's
    table changes (`stamps`)."""
    return _store.load(target)


@st.cache_data(max_entries=8, show_spinner="Valuing the first prompts…")
def cached_convergence(run_path: str, target: str, stamps: tuple[float, ...], config: ValuationConfig,
                       chunk: int | None, combined: tuple[float, str, str] | None, _store: EvaluationStore) -> pd.DataFrame:
    """Values on the first k prompts of a target's table (with the combined objective where there is one)."""
    table, order = answered_table(_store.frame_of(target))
    if combined is not None:
        table = with_combined(table, *combined)
    return convergence_frame(table, config, prefix_sizes(len(order), chunk), order)


def live_values(run: Run) -> None:
    """While an evaluation runs: the values on the prompts finished so far, and how their intervals
    narrowed, polled as utilities.csv is rewritten after each chunk; the whole page once it ends."""

    @st.fragment(run_every=LIVE_EVERY_S)
    def live() -> None:
        status = job_status(run)
        if status is None or status.kind != "evaluate" or not status.active:
            st.rerun()  # it just ended: the whole page, on the finished table
        st.subheader("Values so far, while the evaluation runs")
        latest_step(status)
        snapshot = RunSnapshot(run)  # each poll reads the run afresh
        store, settings = snapshot.store, snapshot.store.settings
        total, chunk = (settings.prompts, settings.chunk_prompts) if settings is not None else (None, None)
        stamps = store.stamps()
        if not stamps or stamps[0] < status.started:  # none yet, or the last evaluation's
            st.info("Waiting for the first chunk of prompts: values appear once every coalition has answered one.",
                    icon=":material/hourglass_empty:")
            return
        try:
            config = snapshot.valuation_config
            table, order = answered_table(store.frame_of())
            valuation = value_sources(table, config)
            trace = convergence_frame(table, config, prefix_sizes(len(order), chunk), order)
        except UserError as error:
            st.info(f"Values are not available yet: {error}.", icon=":material/hourglass_empty:")
            return
        st.caption(f"From the {len(order)}{f' of {total}' if total else ''} prompts finished so far (utilities.csv, "
                   f"rewritten after each chunk{f' of {chunk} prompts' if chunk else ''}), with "
                   f"{config.confidence:.0%} intervals over those prompts. They refresh as chunks land.")
        hidden = hidden_objectives(valuation.objectives, snapshot.at_chance)
        drawn = [o for o in valuation.objectives if o not in hidden]
        if hidden:
            st.caption(f"Not drawn, their reward models being near chance: {', '.join(sorted(hidden))}.")
        if not drawn:
            return
        chart(bars_figure(valuation, drawn))
        show_caveats(run_caveats(snapshot, {"": valuation}, hidden), (UNCHECKED,))
        st.caption("How the intervals narrowed as prompts were added: each source's value on the first k prompts.")
        for objective, column in zip(drawn, st.columns(len(drawn))):
            chart(prompts_figure(trace, valuation.players, objective).update_layout(
                height=380, legend=dict(orientation="h", yanchor="top", y=-0.25)), column)

    live()


# =================================================================================================

st.title("Shapley")
st.caption("A source's Shapley value is its average marginal contribution to the utility of the coalition "
           "models, over every order in which the sources could join. The values add up to v(N) − v(∅).")

snapshot = require_run()
run, store = snapshot.run, snapshot.store
status = job_status(run)
if status is not None and status.kind == "evaluate" and status.active:
    live_values(run)
    st.caption("The rest of the page (other targets, the waterfall, interactions, downloads) appears when the "
               "evaluation ends.")
    st.stop()
try:
    tables = store.targets
    estimated = store.estimation()
except UserError as error:
    show_user_error(error)
    st.stop()
if not tables:
    st.info("This run has no coalition utilities yet. Train adapters on the Training page, then evaluate "
            "coalitions on the Evaluate page.", icon=":material/info:")
    st.stop()
target = st.radio("Target", list(tables), horizontal=True, format_func=TARGET_LABELS.get,
                  help="Pooled evaluations value every coalition from one pool of responses, under two targets: the "
                       "token-level arithmetic model (what the sampler and the Playground sample) and DPO's "
                       "sequence-level product of experts (the theory's exact form). Held-out preference pairs need "
                       "no reward model: how often each coalition prefers the chosen reply more than the base does "
                       "(preference accuracy), and by how much (the implicit reward margin), exact from the adapters.")
try:
    table = cached_utilities(str(run.path), target, store.stamps(target), store)
    evaluated = snapshot.valuation_config  # the evaluation's method, permutations and seed
except UserError as error:
    show_user_error(error)
    st.stop()
st.caption(f"Utilities: {TARGET_LABELS[target]} ({tables[target]}.csv).")

# --- Reward models -----------------------------------------------------------------------------
accuracies = snapshot.accuracies
if not accuracies.empty:
    for column, model in zip(st.columns(len(accuracies)), accuracies.itertuples()):
        column.metric(f"{model.objective} reward model", f"{model.accuracy:.1%}",
                      help="Accuracy on held-out preference pairs: how often it prefers the chosen reply.")
        column.caption(f"interval [{model.lower:.1%}, {model.upper:.1%}] on {model.pairs:.0f} held-out pairs")
        if model.near_chance:
            column.warning(chance_warning(model))

# --- Method ------------------------------------------------------------------------------------
n = len(table.players)
# Sampled: the evaluation measured only the coalitions its seeded permutations visit, so only
# those permutations find every coalition they ask for.
sampled = evaluated.resolved_method(n) == "permutation"
left, middle, right = st.columns(3)
method = left.radio("Method", ["Exact", "Monte Carlo"], index=1 if sampled else 0,
                    horizontal=True, help=f"Exact uses all 2^{n} = {2 ** n} coalitions; Monte Carlo samples "
                                          "orders of the sources (antithetic pairs).")
budget = middle.number_input("Permutations", 4, 1_000_000, evaluated.permutations, step=100,
                             disabled=method == "Exact" or sampled,
                             help=f"Fixed by the evaluation (seed {evaluated.seed}): it measured only the "
                                  "coalitions these permutations visit." if sampled else None)
confidence = right.slider("Confidence", 0.5, 0.99, evaluated.confidence, 0.01)

# --- Combined objective ------------------------------------------------------------------------
base_objectives = table.objectives
pair = objective_pair(base_objectives)
if pair is not None:
    first, second = pair
    weight = st.slider(f"Weight w of the combined objective w · {first} + (1 − w) · {second}", 0.0, 1.0, 0.5, 0.05,
                       help="Computed per prompt, so its intervals stay valid: Shapley is linear in the utility.")
    table = with_combined(table, weight, first, second)

config = replace(evaluated, method="exact" if method == "Exact" else "permutation", permutations=int(budget),
                 confidence=confidence)
try:
    valuation = value_sources(table, config)
except UserError as error:
    show_user_error(error)
    st.stop()
st.caption(f"Method: {valuation.shapley.describe()}.")

# --- Values by reward model --------------------------------------------------------------------
st.subheader("Value of each source, by reward model")
# A reward model at chance measures noise: its values (and a mix that includes them) are said, not drawn.
hidden = hidden_objectives(valuation.objectives, snapshot.at_chance, pair)
drawn = [o for o in valuation.objectives if o not in hidden]
if drawn:
    chart(bars_figure(valuation, drawn))
caveats = run_caveats(snapshot, {target: valuation}, hidden)
show_caveats(caveats, (AT_CHANCE, UNCHECKED, SPANS_ZERO, COVERAGE, TRAINING_NOISE))
if not snapshot.verdicts.empty:  # did each adapter behind these values learn? (the Training page has the detail)
    st.dataframe(snapshot.verdicts[["source", "verdict", "margin", "margin_lower", "margin_upper", "pairs"]],
                 hide_index=True, column_config={
                     "source": "adapter", "margin": st.column_config.NumberColumn("held-out margin", format="%+.3f"),
                     "margin_lower": st.column_config.NumberColumn("95% low", format="%+.3f"),
                     "margin_upper": st.column_config.NumberColumn("95% high", format="%+.3f")})
    show_caveats(caveats, (DID_NOT_LEARN,))
with st.expander("Banzhaf values beside Shapley"):
    if valuation.banzhaf is None:
        st.caption("Banzhaf values need every coalition of at most "
                   f"{EXACT_MAX_PLAYERS} sources in the table.")
    else:
        st.caption("Banzhaf weighs every coalition of the others equally; Shapley weighs each coalition size equally.")
        st.dataframe(valuation.export_frame().pivot_table(index=["objective", "player"], columns="method",
                                                          values="value"), width="stretch")

# --- Helpfulness against harmlessness ----------------------------------------------------------
st.subheader("Sources on two objectives")
if pair is None:
    st.caption("Only one objective in the table: a second reward model is needed for this view.")
else:
    x, y = pair
    if len(base_objectives) > 2:
        left, right = st.columns(2)
        x = left.selectbox("Horizontal axis", base_objectives, index=base_objectives.index(first))
        others = [o for o in base_objectives if o != x]
        y = right.selectbox("Vertical axis", others, index=others.index(second) if second in others else 0)
    chart(scatter_figure(valuation, x, y))

# --- One objective at a time -------------------------------------------------------------------
st.subheader("From the base model to all sources")
objective = st.selectbox("Objective", valuation.objectives)
chart(values_waterfall(valuation, objective))
check = valuation.efficiency_frame().set_index("objective").loc[objective]
st.caption(f"Efficiency check: the values sum to {check.sum_of_values:.4f}; v(N) − v(∅) = "
           f"{check.v_full:.4f} − {check.v_empty:.4f} = {check.v_full - check.v_empty:.4f} (gap {check.gap:.1e}).")

if valuation.interactions is not None:
    st.subheader("Pairwise interactions")
    st.caption("Positive: two sources are worth more together than apart; negative: they substitute for each other.")
    chart(interaction_figure(valuation, objective))

if valuation.shapley.convergence is not None:
    st.subheader("Monte Carlo convergence")
    st.caption(f"{valuation.shapley.convergence.n_permutations} permutations, "
               f"{valuation.shapley.convergence.n_evaluations} distinct coalitions; bands are ± one standard error.")
    chart(convergence_figure(valuation, objective))

if table.prompts is not None and len(table.prompts) > 1:
    st.subheader("Values as prompts were added")
    settings = store.settings
    chunk = settings.chunk_prompts if settings is not None and target != "preference" else None  # pairs: no chunks
    combined = (weight, first, second) if pair is not None else None
    try:
        trace = cached_convergence(str(run.path), target, store.stamps(target), config, chunk, combined, store)
    except UserError as error:
        show_user_error(error)
    else:
        st.caption(f"Each source's {objective} value on the first k prompts, in the order they were evaluated"
                   + (f", every {chunk} prompts (a chunk)" if chunk else "") + f"; bands are {confidence:.0%} "
                   "intervals. The last point is the value above; the bands narrow as prompts are added.")
        chart(prompts_figure(trace, valuation.players, objective))

# --- How the pooled evaluation estimated each coalition -----------------------------------------
if target in set(estimated.target):
    st.subheader("How each coalition was estimated")
    show_caveats(caveats, (BELOW_FLOOR,))
    st.caption("Effective sample size: how many independent responses a coalition's importance-weighted estimate is "
               "worth, averaged over prompts (the pool's size at most).")
    chart(ess_figure(estimated[estimated.target == target].assign(coalition=lambda f: f.coalition.map(shown_name))))
    if len(tables) > 1:
        objective = st.selectbox("Token against sequence level, objective", base_objectives, key="targets_objective")
        both = values_by_target({t: cached_utilities(str(run.path), t, store.stamps(t), store) for t in tables},
                                replace(evaluated, confidence=confidence)).query("objective == @objective")
        chart(targets_figure(both, objective))

# --- Coalition utilities and downloads ---------------------------------------------------------
st.subheader("Coalition utilities")
st.dataframe(table.to_frame(), width="stretch", hide_index=True)

left, right = st.columns(2)
left.download_button("Download values (CSV)", valuation.to_csv(), file_name=f"{run.name}-shapley.csv",
                     mime="text/csv", icon=":material/download:")
right.download_button("Download values (JSON)", valuation.to_json(), file_name=f"{run.name}-shapley.json",
                      mime="application/json", icon=":material/download:")

# --- The whole run in one file -----------------------------------------------------------------
st.download_button("Download the report (HTML)", lambda: report_html(run), file_name=f"{run.name}-report.html",
                   mime="text/html", icon=":material/description:", on_click="ignore",
                   help="Sources, training, reward models, these values with their intervals and caveats, and the "
                        "commands that reproduce the run, in one file that opens offline. Made when you click.")
