"""Shapley: what each source is worth to each reward model, how sure we are, and how sources interact."""

from __future__ import annotations

from pages.ui import through_app

through_app()  # opened outside app.py's st.navigation: hand over to it

from dataclasses import replace

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st
from plotly.colors import hex_to_rgb

from pages.ui import chart, colors, latest_step, require_run, show_user_error
from valuation.background import job_status
from valuation.coalitions import EXACT_MAX_PLAYERS
from valuation.convergence import answered_table, convergence_frame, prefix_sizes, read_frame, run_plan
from valuation.errors import UserError
from valuation.figures import bars_figure, scatter_figure
from valuation.preference import read_verdicts
from valuation.report import report_html
from valuation.rewards import at_chance, reward_accuracies
from valuation.runs import Run
from valuation.seeds import table_stamps
from valuation.utility_table import UtilityTable
from valuation.values import (
    TARGET_LABELS,
    Valuation,
    ValuationConfig,
    estimation,
    load_utilities,
    not_distinguishable,
    run_valuation_config,
    target_tables,
    utilities_path,
    value_sources,
    values_by_target,
    with_combined,
)

LIVE_EVERY_S = 3.0  # how often the live values poll the evaluation's table


@st.cache_data(max_entries=4, show_spinner="Reading coalition utilities…")
def cached_utilities(path: str, modified: tuple[float, ...]) -> UtilityTable:
    """The table at `path`, read again only when it or a further seed's table changes (`table_stamps`)."""
    return load_utilities(path)


def waterfall_figure(valuation: Valuation, objective: str) -> go.Figure:
    """From v(empty), one step per source's value, to v(N): efficiency makes the steps land exactly."""
    k = valuation.objectives.index(objective)
    v_empty = valuation.efficiency_frame().set_index("objective").loc[objective, "v_empty"]
    return go.Figure(go.Waterfall(
        x=["v(∅)", *valuation.players, "v(N)"],
        measure=["absolute", *["relative"] * len(valuation.players), "total"],
        y=[v_empty, *valuation.shapley.values[:, k], 0], texttemplate="%{y:.3f}",
    )).update_layout(yaxis_title=objective, showlegend=False)


def interaction_figure(valuation: Valuation, objective: str) -> go.Figure:
    return px.imshow(valuation.interaction_frame(objective), color_continuous_scale="RdBu",
                     color_continuous_midpoint=0, text_auto=".3f", labels={"color": "interaction"})


def banded_figure(trace: pd.DataFrame, players: tuple[str, ...], x: str, **line) -> go.Figure:
    """One line per player of `value` against column `x`, in a band from `lower` to `upper` (where known)."""
    figure = go.Figure()
    for player, color in colors(players).items():
        rows = trace[trace.player == player]
        known = rows.dropna(subset=["lower", "upper"])
        figure.add_scatter(x=pd.concat([known[x], known[x][::-1]]), y=pd.concat([known.upper, known.lower[::-1]]),
                           fill="toself", fillcolor=f"rgba{(*hex_to_rgb(color), 0.2)}", line_width=0, mode="lines",
                           hoverinfo="skip", showlegend=False, legendgroup=player)
        figure.add_scatter(x=rows[x], y=rows.value, name=player, line_color=color, legendgroup=player, **line)
    return figure


def convergence_figure(valuation: Valuation, objective: str) -> go.Figure:
    """Running estimate per source against permutations used, with a band of +- one standard error."""
    trace = valuation.shapley.convergence_frame().query("objective == @objective").dropna(subset="stderr")
    trace = trace.assign(lower=trace.value - trace.stderr, upper=trace.value + trace.stderr)
    return banded_figure(trace, valuation.players, "permutations").update_layout(
        xaxis_title="permutations", yaxis_title=f"{objective} Shapley value")


def prompts_figure(trace: pd.DataFrame, players: tuple[str, ...], objective: str) -> go.Figure:
    """Each source's value on the first k prompts against k, in a band of its interval."""
    return banded_figure(trace[trace.objective == objective], players, "prompts", mode="lines+markers").update_layout(
        xaxis_title="prompts finished", yaxis_title=f"{objective} Shapley value")


@st.cache_data(max_entries=8, show_spinner="Valuing the first prompts…")
def cached_convergence(path: str, modified: float, config: ValuationConfig, chunk: int | None,
                       combined: tuple[float, str, str] | None) -> pd.DataFrame:
    """Values on the first k prompts of the table at `path` (with the combined objective where there is one)."""
    table, order = answered_table(read_frame(path))
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
        path, (total, chunk) = utilities_path(run), run_plan(run)
        if not path.is_file() or path.stat().st_mtime < status.started:  # none yet, or the last evaluation's
            st.info("Waiting for the first chunk of prompts: values appear once every coalition has answered one.",
                    icon=":material/hourglass_empty:")
            return
        try:
            config = run_valuation_config(run)
            table, order = answered_table(read_frame(path))
            valuation = value_sources(table, config)
            trace = convergence_frame(table, config, prefix_sizes(len(order), chunk), order)
        except UserError as error:
            st.info(f"Values are not available yet: {error}.", icon=":material/hourglass_empty:")
            return
        st.caption(f"From the {len(order)}{f' of {total}' if total else ''} prompts finished so far ({path.name}, "
                   f"rewritten after each chunk{f' of {chunk} prompts' if chunk else ''}), with "
                   f"{config.confidence:.0%} intervals over those prompts. They refresh as chunks land.")
        chance = at_chance(reward_accuracies(run))
        drawn = [o for o in valuation.objectives if o not in chance]
        if chance & set(valuation.objectives):
            st.caption(f"Not drawn, their reward models being near chance: {', '.join(sorted(chance))}.")
        if not drawn:
            return
        chart(bars_figure(valuation, drawn))
        st.caption("How the intervals narrowed as prompts were added: each source's value on the first k prompts.")
        for objective, column in zip(drawn, st.columns(len(drawn))):
            chart(prompts_figure(trace, valuation.players, objective).update_layout(
                height=380, legend=dict(orientation="h", yanchor="top", y=-0.25)), column)

    live()


# =================================================================================================

st.title("Shapley")
st.caption("A source's Shapley value is its average marginal contribution to the utility of the coalition "
           "models, over every order in which the sources could join. The values add up to v(N) − v(∅).")

run = require_run()
status = job_status(run)
if status is not None and status.kind == "evaluate" and status.active:
    live_values(run)
    st.caption("The rest of the page (other targets, the waterfall, interactions, downloads) appears when the "
               "evaluation ends.")
    st.stop()
try:
    tables = target_tables(run)
    estimated = estimation(run)
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
path = tables[target]
try:
    table = cached_utilities(str(path), table_stamps(path))
    evaluated = run_valuation_config(run)  # the evaluation's method, permutations and seed
except UserError as error:
    show_user_error(error)
    st.stop()
st.caption(f"Utilities: {TARGET_LABELS[target]} ({path.name}).")

# --- Reward models -----------------------------------------------------------------------------
accuracies = reward_accuracies(run)
if not accuracies.empty:
    for column, model in zip(st.columns(len(accuracies)), accuracies.itertuples()):
        column.metric(f"{model.objective} reward model", f"{model.accuracy:.1%}",
                      help="Accuracy on held-out preference pairs: how often it prefers the chosen reply.")
        column.caption(f"interval [{model.lower:.1%}, {model.upper:.1%}] on {model.pairs:.0f} held-out pairs")
        if model.near_chance:
            column.warning(f"The {model.objective} reward model is near chance (its interval includes 50%): "
                           "values on this objective may be noise.")

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
if len(base_objectives) >= 2:
    first, second = (("helpfulness", "harmlessness") if {"helpfulness", "harmlessness"} <= set(base_objectives)
                     else base_objectives[:2])
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
st.caption(f"Method: {valuation.shapley.method}.")

# --- Values by reward model --------------------------------------------------------------------
st.subheader("Value of each source, by reward model")
# A reward model at chance measures noise: its values (and a mix that includes them) are said, not drawn.
chance = at_chance(accuracies)
if chance & set(base_objectives[:2]) and "combined" in valuation.objectives:
    chance.add("combined")
drawn = [o for o in valuation.objectives if o not in chance]
if drawn:
    chart(bars_figure(valuation, drawn))
for objective in sorted(chance & set(valuation.objectives)):
    st.info(f"{objective}: not drawn. Its reward model is at chance on held-out pairs (or the objective mixes one "
            "in), so its Shapley values would be noise dressed as findings; read the other objectives, or train a "
            "better reward model (more pairs, a hub model).", icon=":material/block:")
unclear = not_distinguishable(valuation)
if unclear:
    st.warning(f"Not distinguishable from no effect (the {confidence:.0%} interval includes 0): {', '.join(unclear)}.")
st.caption(valuation.interval_note())  # prompts, and refit reward heads where stored (hub models cannot be refit)
verdicts = read_verdicts(run)
if not verdicts.empty:  # did each adapter behind these values learn? (the Training page has the detail)
    st.dataframe(verdicts[["source", "verdict", "margin", "margin_lower", "margin_upper", "pairs"]], hide_index=True,
                 column_config={"source": "adapter", "margin": st.column_config.NumberColumn("held-out margin", format="%+.3f"),
                                "margin_lower": st.column_config.NumberColumn("95% low", format="%+.3f"),
                                "margin_upper": st.column_config.NumberColumn("95% high", format="%+.3f")})
    unlearned = verdicts[verdicts.verdict != "learned"]
    if not unlearned.empty:
        st.warning("Adapters that did not learn on held-out pairs of their own source: "
                   + ", ".join(f"{r.source} ({r.verdict})" for r in unlearned.itertuples())
                   + ". Their values say more about training noise than about their data.")
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
if len(base_objectives) < 2:
    st.caption("Only one objective in the table: a second reward model is needed for this view.")
else:
    x, y = first, second
    if len(base_objectives) > 2:
        left, right = st.columns(2)
        x = left.selectbox("Horizontal axis", base_objectives, index=base_objectives.index(first))
        others = [o for o in base_objectives if o != x]
        y = right.selectbox("Vertical axis", others, index=others.index(second) if second in others else 0)
    chart(scatter_figure(valuation, x, y))

# --- One objective at a time -------------------------------------------------------------------
st.subheader("From the base model to all sources")
objective = st.selectbox("Objective", valuation.objectives)
chart(waterfall_figure(valuation, objective))
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
    chunk = run_plan(run)[1] if target != "preference" else None  # held-out pairs come in no chunks
    combined = (weight, first, second) if len(base_objectives) >= 2 else None
    try:
        trace = cached_convergence(str(path), path.stat().st_mtime, config, chunk, combined)
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
    shown = estimated[estimated.target == target].assign(coalition=lambda f: f.coalition.replace("", "∅ (base)"))
    direct = shown[shown.estimator == "direct"].coalition.tolist()
    if direct:
        st.warning(f"{len(direct)} coalition(s) were sampled directly: the pool reached them with an effective sample "
                   f"size below the floor ({', '.join(direct[:6])}{', …' if len(direct) > 6 else ''}).")
    weak = shown[(shown.estimator == "pooled") & shown.below_floor].coalition.tolist()
    if weak:
        st.warning(f"{len(weak)} coalition(s) rest on few effective responses (ESS below the floor) and the "
                   f"{target}-level target cannot be sampled directly: read their values with care "
                   f"({', '.join(weak[:6])}{', …' if len(weak) > 6 else ''}).")
    st.caption("Effective sample size: how many independent responses a coalition's importance-weighted estimate is "
               "worth, averaged over prompts (the pool's size at most).")
    chart(px.bar(shown, x="coalition", y="ess_mean", color="estimator", hover_data=["ess_min"],
                 labels={"ess_mean": "mean ESS per prompt"}))
    if len(tables) > 1:
        objective = st.selectbox("Token against sequence level, objective", base_objectives, key="targets_objective")
        both = values_by_target({t: cached_utilities(str(p), table_stamps(p)) for t, p in tables.items()},
                                replace(evaluated, confidence=confidence)).query("objective == @objective")
        chart(px.bar(both, x="player", y="value", color="target", barmode="group", error_y="plus",
                     error_y_minus="minus", labels={"player": "source", "value": f"Shapley value, {objective}"}))

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
