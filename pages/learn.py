"""Learn: Shapley values step by step, on the run's own game or on a small example game."""

from __future__ import annotations

from pages.ui import through_app

through_app()  # opened outside app.py's st.navigation: hand over to it

from math import factorial

import pandas as pd
import streamlit as st

from pages.ui import chart, current_run
from valuation.errors import UserError
from valuation.games.axioms import check_axioms, number
from valuation.runs import Run
from valuation.validation.results import retrain_values
from valuation.validation.retrain_rewards import retrain_lines
from valuation.views.snapshot import RunSnapshot
from valuation.views.values import target_valuations
from valuation.views.findings import findings_text
from valuation.views.figures import cost_figure, lattice_figure, simulation_figure, waterfall_figure
from valuation.views.lesson import (
    ARITHMETIC_FORMULA,
    GENERAL_FORMULA,
    MAX_LABELLED_PLAYERS,
    MAX_LISTED_ORDERS,
    ArithmeticCosts,
    LessonGame,
    all_orders,
    arithmetic_latex,
    exact_values,
    formula_latex,
    lattice,
    lesson_game,
    shapley_terms,
    shuffled_order,
    simulate,
    walkthrough,
)

ORDER_KEY, SEED_KEY = "learn_order", "learn_shuffle_seed"

AXIOMS = {
    "efficiency": "Nothing is lost or invented: the values add up to what all sources together gain over the "
                  "base model, v(N) − v(∅).",
    "symmetry": "Two sources that add exactly the same to every coalition get the same value: names don't matter.",
    "dummy": "A source that adds the same amount to every coalition gets exactly that amount; one that never "
             "changes anything (a null player) gets 0.",
    "additivity": "The value of a source in two games added together is its value in one plus its value in the "
                  "other: that is why a weighted mix of helpfulness and harmlessness can be valued by mixing values.",
}


@st.cache_data(max_entries=4, show_spinner="Valuing the run's sources…")
def cached_findings(run_path: str, stamps: tuple[float, ...]) -> list[str]:
    snapshot = RunSnapshot(Run.at(run_path))
    try:
        return findings_text(snapshot, target_valuations(snapshot))
    except UserError as error:
        return [f"No finding to state: {error}"]


@st.cache_data(max_entries=4, show_spinner=False)
def cached_lesson(run_path: str | None, stamps: tuple[float, ...]) -> LessonGame:
    """The lesson's game, read again only when the run's utility table changes."""
    return lesson_game(Run.at(run_path) if run_path else None)


def reset_order(players: tuple[str, ...]) -> None:
    """A fresh join order when the game changed (or on the first visit)."""
    if ORDER_KEY not in st.session_state or not set(st.session_state[ORDER_KEY]) <= set(players):
        st.session_state[ORDER_KEY] = list(players)


def shuffle(players: tuple[str, ...]) -> None:
    st.session_state[SEED_KEY] = st.session_state.get(SEED_KEY, 0) + 1
    st.session_state[ORDER_KEY] = shuffled_order(players, st.session_state[SEED_KEY])


# =================================================================================================

st.title("Learn")
st.caption("What a Shapley value is, step by step, until you reach the numbers on the Shapley page.")

snapshot = current_run()
game = cached_lesson(str(snapshot.run.path) if snapshot is not None else None,
                     snapshot.store.stamps() if snapshot is not None else ())
table, players = game.table, game.table.players
n = len(players)
if game.is_example:
    st.info(f"Shown: the **example game**, four made-up sources and made-up utilities ({game.reason}). "
            "Once a run has coalition utilities, this page uses that run's own game.", icon=":material/school:")
else:
    st.success(f"Shown: the game of **{game.name}**, from its measured coalition utilities.",
               icon=":material/school:")

objective = table.objectives[0]
if len(table.objectives) > 1:
    objective = st.radio("Objective", table.objectives, horizontal=True,
                         help="Each reward model defines its own game; the lesson plays one at a time.")
k = table.objectives.index(objective)
exact = exact_values(table)
v_empty, v_full = table.value(frozenset(), objective), table.value(frozenset(players), objective)

reset_order(players)
chosen = st.session_state[ORDER_KEY]
order = [*chosen, *[p for p in players if p not in chosen]]
steps = walkthrough(table, order, objective)

# --- 1. Coalitions -------------------------------------------------------------------------------
st.header("1. Coalitions and what they are worth")
st.markdown(
    f"A **source** is one collection of fine-tuning data. A **coalition** is any group of sources trained "
    f"together: from none at all (∅, the base model) to all of them (N). Its **utility** v(S) says how good that "
    f"model is, here the mean *{objective}* reward of its replies to held-out prompts. With n = {n} sources "
    f"there are 2ⁿ = {2 ** n} coalitions.")
columns = st.columns(4)
columns[0].metric("Sources n", n)
columns[1].metric("Coalitions 2ⁿ", 2 ** n)
columns[2].metric("v(∅), base model", number(v_empty))
columns[3].metric("v(N), all sources", number(v_full))
graph = lattice(table, objective)
chart(lattice_figure(graph, objective, players, steps))
st.markdown(
    "Each dot is a coalition, coloured by its utility; each line adds one source (in that source's colour), "
    "and its number is that source's **marginal contribution** there: v(S ∪ {i}) − v(S), what the source adds to the group it joins. "
    "The same source adds different amounts to different groups (less if a similar source is already there), "
    "so how much it is worth is not obvious. The thick dark path is the join order of step 2.")
if not graph.labelled:
    st.caption(f"With {n} sources the lattice has {2 ** n} coalitions and {n * 2 ** (n - 1)} lines (it doubles "
               f"with every source), so the text is hidden beyond {MAX_LABELLED_PLAYERS} sources: hover for numbers.")

# --- 2. One order ----------------------------------------------------------------------------------
st.header("2. Sources joining one at a time")
st.markdown(
    "Imagine the sources arrive one after another. As each joins, it adds its marginal contribution to the "
    "group already there. Whatever the order, the steps add up to the same total, v(N) − v(∅), but how that "
    "total is split depends on the order: a source that arrives after a similar one adds little.")
left, right = st.columns([4, 1])
left.multiselect("Join order", players, key=ORDER_KEY,
                 help="Pick sources in the order they join; the ones you leave out join last, in the listed order.")
right.button("Shuffle", icon=":material/shuffle:", on_click=shuffle, args=(players,), width="stretch")
chart(waterfall_figure(steps.v_before.iloc[0], [(f"+ {s}", m) for s, m in zip(steps.source, steps.marginal)],
                      objective))
st.dataframe(steps.rename(columns={"before": "joins", "v_before": "v(before)", "v_after": "v(after)"})
             .drop(columns=["after"]), width="stretch", hide_index=True)
st.markdown(
    f"**Why average over orders?** No order is more natural than another, so the fair credit for a source is "
    f"its marginal contribution averaged over all n! = {factorial(n)} orders. That average is its **Shapley value**.")
if factorial(n) <= MAX_LISTED_ORDERS:
    with st.expander(f"All {factorial(n)} orders and their average"):
        orders = all_orders(table, objective)
        average = pd.DataFrame([{"order": "average over all orders", **orders[list(players)].mean().to_dict()}])
        st.dataframe(pd.concat([orders, average], ignore_index=True), width="stretch", hide_index=True)

# --- 3. The formula --------------------------------------------------------------------------------
st.header("3. The Shapley formula")
st.markdown(
    "Listing every order is slow, but only one thing matters for source i: which group S is already there when "
    "it arrives. The chance that exactly the members of S come before i, in a random order, is "
    "|S|!(n − |S| − 1)!/n!. Weighting each marginal contribution by that chance gives the formula:")
st.latex(GENERAL_FORMULA)
player = st.selectbox("Source", players, help="Write out the formula for this source with the game's numbers.")
st.latex(formula_latex(table, player, objective))
with st.expander("The terms as a table"):
    st.dataframe(shapley_terms(table, player, objective).drop(columns="weight"), width="stretch", hide_index=True)
st.markdown(f"The exact Shapley values of every source on *{objective}*:")
values = pd.DataFrame({"source": players, "Shapley value": exact[:, k].round(12) + 0.0})
st.dataframe(values, width="stretch", hide_index=True)
st.caption("These are the exact values on the Shapley page (the exact method), for this game."
           if not game.is_example else "On a run's own game these are the exact values of the Shapley page.")

# --- 4. Axioms -------------------------------------------------------------------------------------
st.header("4. What the axioms guarantee")
st.markdown("Why this average and not another rule? Shapley values are the **only** way to share the total that "
            "has all four properties below. Here each is checked on the values above:")
for check in check_axioms(table, exact, objective):
    text = f"**{check.axiom.capitalize()}.** {AXIOMS[check.axiom]} Here: {check.detail}."
    if check.passed is None:
        st.info(text, icon=":material/remove:")
    elif check.passed:
        st.success(text, icon=":material/check:")
    else:
        st.warning(text, icon=":material/warning:")

# --- 5. Monte Carlo --------------------------------------------------------------------------------
st.header("5. When 2ⁿ is too many: sampling orders")
st.markdown(
    "With many sources nobody can evaluate every coalition. Instead, draw random orders and average each "
    "source's marginal contributions in them: a Monte Carlo estimate whose error shrinks like 1/√k with k "
    "orders. **Antithetic** sampling pairs each order with its reverse, so a source that joins early in one "
    "joins late in the other, and much of the noise cancels.")
left, middle, right = st.columns([3, 1, 1])
budget = left.slider("Permutations", 4, 2000, 200, 4)
antithetic = middle.toggle("Antithetic pairs", value=True)
seed = right.number_input("Seed", 0, 10_000, 0)
simulation = simulate(table, objective, permutations=budget, antithetic=antithetic, seed=int(seed))
chart(simulation_figure(simulation.trace, players, objective))
worst = simulation.trace[simulation.trace.permutations == simulation.trace.permutations.max()].error.abs().max()
st.caption(f"Bands: 95% (± 1.96 standard errors); dotted lines: the exact values. After {budget} permutations the "
           f"largest error is {worst:.2g}; the sampling evaluated {simulation.n_evaluations} distinct coalitions "
           f"of {2 ** n}.")
estimate_checks = [c for c in check_axioms(table, simulation.estimate, objective) if c.axiom != "additivity"]
st.dataframe(pd.DataFrame([{"axiom": c.axiom, "holds for the estimate": {True: "yes", False: "no", None: "—"}[c.passed],
                            "numbers": c.detail} for c in estimate_checks]), width="stretch", hide_index=True)
st.caption("Every single order splits v(N) − v(∅) exactly and gives a dummy its constant, so the estimate keeps "
           "efficiency and dummy; symmetry holds only on average, up to the sampling error.")

# --- 6. Arithmetic ---------------------------------------------------------------------------------
costs = ArithmeticCosts(n)
st.header(f"6. Why this needs {n} fine-tunings, not {costs.fine_tunings_without_arithmetic}")
st.markdown(
    f"To measure v(S) you need a model trained on the sources of S: one fine-tuning per coalition, "
    f"{costs.fine_tunings_without_arithmetic} for {n} sources, doubling with each source. Language-model "
    "arithmetic trains **one adapter per source** and builds any coalition's model while it writes: at every "
    "token, add the log-probabilities of the coalition's adapters, count the base model π₀ once by subtracting "
    "it |S| − 1 times, and renormalise (Z).")
st.latex(ARITHMETIC_FORMULA)
coalition = st.multiselect("Coalition", players, default=list(players), help="Write out the arithmetic for it.")
st.latex(arithmetic_latex([p for p in players if p in coalition]))
st.markdown(
    r"Why adding works: a source fine-tuned with DPO ends up at $\pi_l \propto \pi_0 \exp(r_l / \beta)$, the base model tilted by "
    "that source's reward. Multiplying the tilts adds the rewards, so the coalition's model behaves as if trained "
    "on the sum of its sources' rewards.")
columns = st.columns(4)
columns[0].metric("Adapters to train", costs.adapters, help="One per source.")
columns[1].metric("Models without arithmetic", costs.fine_tunings_without_arithmetic,
                  help="One per non-empty coalition; the empty coalition is the base model.")
columns[2].metric("Forward passes per token", costs.forward_passes_per_token,
                  help=f"Coalition S costs |S| + 1 passes (its adapters and the base), but the base model and a "
                       f"single source one each; over all {costs.coalitions} coalitions: {costs.adapter_passes} "
                       f"adapter passes + {costs.base_passes} base passes.")
columns[3].metric("Passes to score a fixed reply", costs.teacher_forced_passes,
                  help="Scoring a given reply: n + 1 passes give every coalition's log-probabilities by arithmetic.")
chart(cost_figure(n))
st.markdown("That is the whole pipeline: train n adapters, build the 2ⁿ coalition models by arithmetic, measure "
            "each one's utility, and average marginal contributions with the formula of step 3. "
            + ("The **Shapley** page does this for the run's game." if not game.is_example else
               "Once a run has coalition utilities, the **Shapley** page does this for its game."))
retrained = retrain_values(snapshot.run) if snapshot is not None else pd.DataFrame()
st.markdown("**Does adding log-probabilities stand in for training on a coalition's data?** The theory says so for "
            "DPO at convergence; small adapters trained for minutes are not converged. The Validate page's *retrain* "
            "experiment measures it: it trains every coalition's own adapter and values the game both ways (and by "
            "merging the adapters' weights)."
            + (" On this run:" if not retrained.empty else " It has not run on this run."))
if not retrained.empty:
    st.markdown("\n".join(f"- {line}" for line in retrain_lines(snapshot.run, retrained)))
st.markdown("**Does it find a bad source?** Planted among four clean sources of the default data (the README's "
            "*How far the arithmetic holds*), a source with every label flipped came out last on the reward-margin "
            "objective in both runs, but its interval held zero in all but one valuation; a source with 30% of its "
            "labels flipped still taught the right direction and was valued as helpful, which it was. A bad source "
            "is named by an interval below zero, not by a rank.")

st.header("7. Which objective to read")
st.markdown(
    "A value is only as good as the utility v(S) it averages. The run measures two kinds:\n\n"
    "- **Reward models** (helpfulness, harmlessness): coalition S's model answers the evaluation prompts, and a "
    "reward model scores each answer. This is what a user of the model sees, but it is only as trustworthy as the "
    "reward model: its held-out accuracy (Evaluate page) says how often it agrees with human preferences. Near 50% "
    "it is guessing, and the Shapley page then says so in words instead of drawing bars.\n"
    "- **Held-out preference pairs** (preference accuracy, reward margin): no reward model and no sampling. Each "
    "coalition's model reads the chosen and the rejected reply of pairs nobody trained on; its accuracy is how often "
    "it prefers the chosen one more than the base does, and its margin is by how much (β times the log-ratio gap). "
    "Exact for every coalition from n + 1 passes per pair.\n\n"
    "Prefer the preference objectives when a reward model is near chance, or to check that a source taught its "
    "adapter what its data prefers; read the reward models for what the coalitions actually say. Every value "
    "comes with an interval: one that holds zero is not a finding.\n\n"
    "Every objective also depends on how each adapter happened to train. Trained under one seed, a source's value "
    "may flip sign when retrained; with **Seeds per source** k > 1 (Training page) the game is played once per "
    "seed, the values average over seeds, and the intervals hold the spread between them. With one seed no value is a "
    "finding yet: the Shapley page marks those whose interval excludes zero as not yet checked against training "
    "noise. Read the Training page's verdicts too: an adapter indistinguishable from the base gives a value that is "
    "mostly noise.")

st.header("8. What this run finds")
if game.is_example:
    st.markdown("The example game is made up, so it finds nothing about any data. Once a run has coalition utilities, "
                "this section says in words which of its values survive: an interval that excludes zero, on an "
                "objective whose reward model is not at chance, checked by a second training seed.")
else:
    st.markdown("Only the values that survive every caveat of the Shapley page: an interval that excludes zero, on an "
                "objective whose reward model is not at chance, checked by a second training seed.")
    st.markdown("\n".join(f"- {sentence}" for sentence in cached_findings(str(snapshot.run.path),
                                                                         snapshot.store.stamps())))
