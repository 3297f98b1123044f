"""Evaluate: sample every coalition model on held-out prompts, score the answers with the reward
models, and store the coalition utilities the Shapley page reads."""

from __future__ import annotations

from pages.ui import through_app

through_app()  # opened outside app.py's st.navigation: hand over to it

import dataclasses

import streamlit as st

from pages.ui import backend_choice, job_panel, require_run, show_user_error
from valuation.config import field_help
from valuation.errors import UserError
from valuation.evaluation.importance import anchor_coalitions
from valuation.evaluation.job import coalitions_to_evaluate, estimate_seconds, evaluation_cost
from valuation.evaluation.settings import ESTIMATORS, PRESETS, EvaluationConfig
from valuation.games.coalitions import EXACT_MAX_PLAYERS
from valuation.jobs.background import job_status
from valuation.jobs.registry import command, launch
from valuation.lm.adapters import trained_seeds
from valuation.rewards.cards import chance_warning
from valuation.rewards.job import default_reward_config

BUDGET_MINUTES = 60  # past this estimate, exact enumeration gives way to Monte Carlo

st.title("Evaluate")
st.caption("Each coalition's model answers the same held-out prompts with the same random seeds; reward models "
           "score the answers, and a coalition's utility v(S) is its mean reward.")

snapshot = require_run()
run, store, sources = snapshot.run, snapshot.store, snapshot.sources
missing = [s for s in sources if s not in snapshot.trained]
if len(sources) < 2 or missing:
    st.info(f"Train an adapter for every source first (missing: {', '.join(missing) or 'pick sources'}): "
            "the Training page does it in the background.", icon=":material/model_training:")
    st.page_link("pages/training.py", label="Go to Training", icon=":material/model_training:")
    st.stop()

# --- Settings and the cost estimate ------------------------------------------------------------
preset = st.segmented_control("Preset", sorted(PRESETS), default="quick",
                              help="quick: a CPU in about a quarter of an hour; paper: a GPU, the paper's scale.")
defaults = PRESETS[preset or "quick"]
estimator = st.radio("Estimator", ESTIMATORS, horizontal=True, help=field_help(EvaluationConfig, "estimator"))
left, middle, right = st.columns(3)
settings = dataclasses.replace(
    defaults,
    estimator=estimator,
    prompts=left.number_input("Prompts", 1, 2000, defaults.prompts, help="Held-out prompts, spread evenly across sources."),
    samples=middle.number_input("Samples per prompt (direct)", 1, 64, defaults.samples,
                                help=field_help(EvaluationConfig, "samples")),
    pool_per_anchor=right.number_input("Pool per anchor (pooled)", 1, 256, defaults.pool_per_anchor,
                                       help=field_help(EvaluationConfig, "pool_per_anchor")),
    max_new_tokens=left.number_input("Max new tokens", 1, 2048, defaults.max_new_tokens),
    temperature=middle.number_input("Temperature", 0.0, 2.0, defaults.temperature, step=0.1),
    top_p=right.number_input("Top-p", 0.01, 1.0, defaults.top_p, step=0.05, help=field_help(EvaluationConfig, "top_p")),
    ess_floor=left.number_input("ESS floor (pooled)", 0.0, 1000.0, defaults.ess_floor, step=0.5,
                                help=field_help(EvaluationConfig, "ess_floor")),
    method=middle.selectbox("Coalitions", ["auto", "exact", "permutation"],
                            help=f"exact: all 2^n; permutation: those sampled orders visit; auto: exact up to {EXACT_MAX_PLAYERS} sources."),
    permutations=right.number_input("Permutations (Monte Carlo)", 4, 100_000, defaults.permutations),
)
run_config = snapshot.config
with st.expander("Reward models"):
    st.caption("The offline default trains Bradley-Terry heads on the base model's frozen hidden states, on reward "
               "pairs kept apart from every source's training pairs and from the evaluation prompts. Online, the "
               "hub option scores with Ray2333's GPT-2 helpful and harmless reward models.")
    left, middle, right = st.columns(3)
    rewards = dataclasses.replace(
        run_config.rewards,
        kind=left.selectbox("Kind", ["features", "hub"], index=["features", "hub"].index(run_config.rewards.kind)),
        max_pairs=middle.number_input("Pairs per reward model", 0, 100_000, run_config.rewards.max_pairs,
                                      help="0: every reward pair. Fewer pairs train faster and judge worse."),
        max_length=right.number_input("Max tokens per transcript", 16, 4096, run_config.rewards.max_length),
    )
    if rewards.kind == "hub" and run_config.rewards.kind != "hub":
        rewards = dataclasses.replace(default_reward_config(run_config.data, "hub"), max_pairs=rewards.max_pairs,
                                      max_length=rewards.max_length)
try:
    settings.validate()
    rewards.validate()
except UserError as error:
    show_user_error(error)
    st.stop()

coalitions = coalitions_to_evaluate(sources, settings)
seeds = trained_seeds(run, sources)  # training seeds every source has an adapter for: each is a replica of the game
cost = evaluation_cost(sources, coalitions, settings, seeds)
minutes = estimate_seconds(cost, store.throughput()) / 60
method = settings.resolved_method(len(sources))
drawn = (f"{settings.samples} samples of each" if settings.estimator == "direct" else
         f"one pool of {cost.reward_calls // settings.prompts} responses from {len(anchor_coalitions(sources))} anchor "
         "coalitions")
replicas = f" × {seeds} training seeds" if seeds > 1 else ""
st.markdown(f"**{len(coalitions)} coalitions** ({method}, {settings.estimator}){replicas} × {settings.prompts} prompts, "
            f"{drawn}: about **{minutes:.0f} minutes** of model passes on this machine, plus {cost.reward_calls} reward "
            "calls per reward model" + (f" and {cost.scored_responses} teacher-forced scorings" if cost.scored_responses else "")
            + ("" if not snapshot.accuracies.empty else ", plus training the reward models (about 10 minutes, once)") + ".")
if method == "exact" and minutes > BUDGET_MINUTES:
    st.warning(f"Exact enumeration of 2^{len(sources)} coalitions would take over {BUDGET_MINUTES} minutes: choose "
               "'permutation' to evaluate only the coalitions a Monte Carlo sample of orders visits.")

backend = backend_choice(snapshot)
if st.button("Evaluate coalitions", type="primary", icon=":material/play_arrow:"):
    try:
        if rewards != run_config.rewards:
            run.save_config(dataclasses.replace(run_config, rewards=rewards))
        launch(run, "evaluate", settings, backend)
    except UserError as error:
        show_user_error(error)
st.caption(f"Runs in the background as `python -m valuation {' '.join(command(run, 'evaluate', settings, backend, run_config))}`: "
           "you can close the browser.")

job_panel(run, "evaluate", job_status(run))

# --- Results -----------------------------------------------------------------------------------
accuracies = snapshot.accuracies
if not accuracies.empty:
    st.subheader("Reward models")
    st.dataframe(accuracies, hide_index=True, width="stretch",
                 column_config={"accuracy": st.column_config.NumberColumn("held-out accuracy", format="%.3f")})
    for row in accuracies[accuracies.near_chance].itertuples():
        st.warning(chance_warning(row))

if store.has_utilities():
    st.page_link("pages/shapley.py", label="Read the Shapley values", icon=":material/bar_chart:")
    st.subheader("Generations")
    st.caption("Every stored answer with its rewards: audit a value by reading what each coalition said.")
    samples = store.samples()
    if not samples.empty:
        left, right = st.columns(2)
        coalition = left.selectbox("Coalition", sorted(samples.coalition.unique(), key=lambda c: (c.count("+"), c)))
        prompt = right.selectbox("Prompt", sorted(samples.prompt_id.unique()))
        shown = samples[(samples.coalition == coalition) & (samples.prompt_id == prompt)]
        objectives = [c for c in shown.columns if c not in {"coalition", "prompt_id", "prompt_index", "sample", "text",
                                                           "tokens", "finished_by_eos", "key", "chunk"}]
        st.dataframe(shown[["sample", "text", *objectives, "tokens"]], hide_index=True, width="stretch")
elif store.exists():
    st.caption("No utilities yet: the evaluation writes them chunk by chunk.")
