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

from pages.ui import chart, colors, require_run, show_user_error
from valuation.coalitions import EXACT_MAX_PLAYERS
from valuation.errors import UserError
from valuation.preference import read_verdicts
from valuation.rewards import reward_accuracies
from valuation.utility_table import UtilityTable
from valuation.values import (
    Valuation,
    estimation,
    load_utilities,
    run_valuation_config,
    target_tables,
    value_sources,
    values_by_target,
    with_combined,
)



TARGET_LABELS = {"direct": "direct sampling of every coalition", "token": "pooled, token-level target",
                 "sequence": "pooled, sequence-level target",
                 "preference": "held-out preference pairs (no reward model)"}


@st.cache_data(max_entries=4, show_spinner="Reading coalition utilities…")
def cached_utilities(path: str, modified: float) -> UtilityTable:
    """The table at `path`, read again only when the file changes."""
    return load_utilities(path)


def bars_figure(valuation: Valuation, objectives: list[str]) -> go.Figure:
    return px.bar(valuation.values_frame().query("objective in @objectives"), x="player", y="value", color="objective",
                  barmode="group", error_y="plus", error_y_minus="minus", color_discrete_map=colors(valuation.objectives),
                  labels={"player": "source", "value": "Shapley value"})


def scatter_figure(valuation: Valuation, x: str, y: str) -> go.Figure:
    figure = px.scatter(valuation.objective_pair_frame(x, y), x=x, y=y, text="player", color="player",
                        error_x=f"{x}_plus", error_x_minus=f"{x}_minus", error_y=f"{y}_plus",
                        error_y_minus=f"{y}_minus", color_discrete_map=colors(valuation.players))
    figure.add_hline(y=0, line_dash="dot", line_color="grey")
    figure.add_vline(x=0, line_dash="dot", line_color="grey")
    return figure.update_traces(textposition="top center", marker_size=12)


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


def convergence_figure(valuation: Valuation, objective: str) -> go.Figure:
    """Running estimate per source against permutations used, with a band of +- one standard error."""
    trace = valuation.shapley.convergence_frame().query("objective == @objective")
    figure = go.Figure()
    for player, color in colors(valuation.players).items():
        rows = trace[trace.player == player].dropna(subset="stderr")
        x = pd.concat([rows.permutations, rows.permutations[::-1]])
        band = pd.concat([rows.value + rows.stderr, (rows.value - rows.stderr)[::-1]])
        figure.add_scatter(x=x, y=band, fill="toself", fillcolor=f"rgba{(*hex_to_rgb(color), 0.2)}",
                           line_width=0, hoverinfo="skip", showlegend=False, legendgroup=player)
        figure.add_scatter(x=rows.permutations, y=rows.value, name=player, line_color=color, legendgroup=player)
    return figure.update_layout(xaxis_title="permutations", yaxis_title=f"{objective} Shapley value")


def not_distinguishable(valuation: Valuation) -> list[str]:
    spans = valuation.spans_zero()
    return [f"{player} on {objective}" for k, objective in enumerate(valuation.objectives)
            for i, player in enumerate(valuation.players) if spans[i, k]]


# =================================================================================================

st.title("Shapley")
st.caption("A source's Shapley value is its average marginal contribution to the utility of the coalition "
           "models, over every order in which the sources could join. The values add up to v(N) − v(∅).")

run = require_run()
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
    table = cached_utilities(str(path), path.stat().st_mtime)
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

try:
    valuation = value_sources(table, replace(evaluated, method="exact" if method == "Exact" else "permutation",
                                             permutations=int(budget), confidence=confidence))
except UserError as error:
    show_user_error(error)
    st.stop()
st.caption(f"Method: {valuation.shapley.method}.")

# --- Values by reward model --------------------------------------------------------------------
st.subheader("Value of each source, by reward model")
# A reward model at chance measures noise: its values (and a mix that includes them) are said, not drawn.
at_chance = set(accuracies[accuracies.near_chance].objective) if not accuracies.empty else set()
if at_chance & set(base_objectives[:2]) and "combined" in valuation.objectives:
    at_chance.add("combined")
drawn = [o for o in valuation.objectives if o not in at_chance]
if drawn:
    chart(bars_figure(valuation, drawn))
for objective in sorted(at_chance & set(valuation.objectives)):
    st.info(f"{objective}: not drawn. Its reward model is at chance on held-out pairs (or the objective mixes one "
            "in), so its Shapley values would be noise dressed as findings; read the other objectives, or train a "
            "better reward model (more pairs, a hub model).", icon=":material/block:")
unclear = not_distinguishable(valuation)
if unclear:
    st.warning(f"Not distinguishable from no effect (the {confidence:.0%} interval includes 0): {', '.join(unclear)}.")
if not valuation.has_intervals:
    st.caption("No intervals: the table has one utility per coalition. Per-prompt utilities give bootstrap intervals.")
else:
    st.caption("The intervals cover the spread over prompts only: each source has one adapter (one training seed), so "
               "training noise is not in them.")
verdicts = read_verdicts(run)
unlearned = verdicts[verdicts.verdict != "learned"] if not verdicts.empty else verdicts
if not unlearned.empty:
    st.warning("Adapters indistinguishable from the base on held-out pairs (see Training): "
               + ", ".join(unlearned.source) + ". Their values say more about training noise than about their data.")
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
        both = values_by_target({t: cached_utilities(str(p), p.stat().st_mtime) for t, p in tables.items()},
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
