"""Playground: one prompt, answered side by side by the base model and up to four coalition models."""

from __future__ import annotations

from pages.ui import through_app

through_app()  # opened outside app.py's st.navigation: hand over to it

import streamlit as st

from pages.ui import cached_coalition_model, cached_preferences, require_run, show_user_error
from valuation.config import field_help
from valuation.data.splits import split_preferences
from valuation.errors import UserError
from valuation.games.utility_table import UtilityTable
from valuation.lm.arithmetic import Messages, SamplingSettings
from valuation.rewards.store import load_reward
from valuation.runs import Run
from valuation.views.playground import (
    MAX_COLUMNS,
    Column,
    ColumnOutput,
    adapter_stamps,
    coalition_preference,
    default_columns,
    example_prompts,
    last_user_turn,
    mark_stopped,
    preference_table,
    reward_keys,
    reward_notes,
    stream_columns,
    with_last_user_turn,
)

OUTPUTS = "playground_outputs"  # the last generation: its columns and their outputs, kept across reruns
WRITE_YOUR_OWN = "Write your own prompt"

st.title("Playground")
st.caption("Ask one question and read the answers of the base model and of coalitions of sources, side by side. "
           "No coalition model is trained: each is built on the fly from the sources' adapters.")

snapshot = require_run()
run, sources = snapshot.run, snapshot.trained
if not sources:
    st.info("Train adapters on the Training page first: a column combines the adapters of the sources you pick. "
            "Until then only the base model π_0 answers here.", icon=":material/info:")

with st.expander("What is a column?"):
    st.markdown(
        "A column is a **coalition** S of sources. Its model adds the log-probabilities of its members' adapters "
        "and subtracts the base model's |S| − 1 times, then renormalises, token by token:\n\n"
        "$\\log \\pi_S = \\sum_{l \\in S} \\log \\pi_l + (1 - |S|) \\log \\pi_0 - \\log Z$\n\n"
        "The empty coalition is the base model and a single source is its own adapter. All columns decode together "
        "from the same seed, so they share one stream of random numbers: where two columns differ, the models "
        "differ, not the dice. The ablation toggle replaces the arithmetic by one adapter whose LoRA update is the "
        "sum of the members' updates (a weight-space merge).")


@st.cache_data(max_entries=8, show_spinner="Reading the run's held-out prompts…")
def held_out_examples(run_path: str, config_time: float) -> dict[str, Messages]:
    """A few of the run's evaluation prompts: held out from every adapter's training data."""
    data = Run.at(run_path).load_config().data
    return example_prompts(split_preferences(cached_preferences(data), data).eval_prompts)


@st.cache_resource(show_spinner="Loading the run's reward models…", max_entries=8)
def _reward_model(run_path: str, objective: str, key: str, model_stamp: tuple, _loaded):
    """One reward model of the run, loaded once per (run, objective, reward key); it reads features of
    the shared coalition model (`model_stamp` changes when that model is loaded again)."""
    return load_reward(Run.at(run_path), objective, _loaded)


def cached_reward_models(run: Run, loaded) -> dict:
    stamp = (run.config_path.stat().st_mtime, adapter_stamps(run))
    return {objective: _reward_model(str(run.path), objective, key, stamp, loaded)
            for objective, key in reward_keys(snapshot.cards).items()}


@st.cache_data(max_entries=8, show_spinner=False)
def cached_preference_table(run_path: str, stamps: tuple[float, ...]) -> UtilityTable | None:
    return preference_table(Run.at(run_path))


# --- The prompt -----------------------------------------------------------------------------------
try:
    examples = held_out_examples(str(run.path), run.config_path.stat().st_mtime)
except UserError as error:
    examples = {}
    st.caption(f"No example prompts: {error}")
choice = st.selectbox("Prompt", [WRITE_YOUR_OWN, *examples], index=1 if examples else 0,
                      help="Examples are held-out evaluation prompts of this run: no adapter was trained on them.")
conversation = examples.get(choice, [])
if len(conversation) > 1:
    with st.expander("Earlier turns of this conversation"):
        for message in conversation[:-1]:
            st.markdown(f"**{message['role']}:** {message['content']}")
text = st.text_area("Your message", last_user_turn(conversation), key=f"prompt:{choice}",
                    placeholder="Ask something, e.g. How do plants grow?")
messages = with_last_user_turn(conversation, text.strip())

with st.expander("Sampling settings", expanded=False):
    seed_box, temperature_box, top_p_box, tokens_box = st.columns(4)
    initial = SamplingSettings()
    settings = SamplingSettings(
        seed=int(seed_box.number_input("Seed", 0, 2**31 - 1, initial.seed, help=field_help(SamplingSettings, "seed"))),
        temperature=temperature_box.slider("Temperature", 0.0, 2.0, initial.temperature, 0.05,
                                  help=field_help(SamplingSettings, "temperature")),
        top_p=top_p_box.slider("Top-p", 0.05, 1.0, initial.top_p, 0.05, help=field_help(SamplingSettings, "top_p")),
        max_new_tokens=int(tokens_box.number_input("Max tokens", 1, 1024, initial.max_new_tokens,
                                             help=field_help(SamplingSettings, "max_new_tokens"))),
    )

# --- The columns ----------------------------------------------------------------------------------
defaults = default_columns(sources)
with st.container(horizontal=True, vertical_alignment="bottom"):
    count = int(st.number_input("Coalition columns", 1, MAX_COLUMNS, max(1, len(defaults)), width=180,
                                help="Columns beside the base model's; pick each one's sources.")) if sources else 0
    generate_clicked = st.button("Generate", type="primary", icon=":material/play_arrow:")
    st.button("Stop", icon=":material/stop:", disabled=not generate_clicked, key="playground_stop",
              help="Stops every column; what they wrote so far stays.")

columns, placeholders = [], []
for k, slot in enumerate(st.columns(count + 1, border=True)):
    with slot:
        if k == 0:
            column = Column()
        else:
            default = defaults[k - 1] if k - 1 < len(defaults) else Column(frozenset(sources))
            picked = st.pills(f"Column {k}: sources", sources, selection_mode="multi",
                              default=[s for s in sources if s in default.sources], key=f"playground_sources_{k}",
                              wrap=True)
            merged = st.toggle("ablation: weight-space merge (cat)", key=f"playground_merge_{k}", width="stretch")
            column = Column(frozenset(picked), merged)
        st.markdown(f"**{column.title}**" + (" (merged)" if column.is_merge else ""))
        st.caption(column.formula)
        columns.append(column)
        placeholders.append(st.empty())


notes = reward_notes(snapshot.accuracies)
preferences = cached_preference_table(str(run.path), snapshot.store.stamps("preference"))


def show(placeholder, column: Column, output: ColumnOutput) -> None:
    """The column's text so far; once finished, its reward under each reward model and what they are worth."""
    with placeholder.container():
        st.text(output.text or "…")
        st.caption(output.caption)
        if output.rewards is None:
            if output.status == "stopped" and notes:
                st.caption("Stopped before it finished: not scored.")
            return
        for objective, reward in output.rewards.items():
            st.metric(f"{objective} reward", f"{reward:+.3f}", help=f"The {objective} reward model's score of this "
                      f"answer; that model's {notes.get(objective, 'accuracy is unknown')}.")
        preference = coalition_preference(preferences, column)
        if preference:
            st.caption(f"Held-out preference: {preference}.")


# --- Generating -----------------------------------------------------------------------------------
kept = st.session_state.get(OUTPUTS)
if generate_clicked and not text.strip():
    st.warning("Write a message first, or pick one of the example prompts.")
elif generate_clicked:
    kept = st.session_state[OUTPUTS] = {"columns": columns, "outputs": []}
    try:
        loaded = cached_coalition_model(run)
        try:
            rewards = cached_reward_models(run, loaded)
        except UserError as error:  # the answers still stream, unscored
            rewards = {}
            st.caption(f"No rewards: {error}")
        for outputs in stream_columns(loaded.model, loaded.tokenizer, columns, messages, settings, rewards=rewards):
            kept["outputs"] = outputs  # kept: a click on Stop reruns the page, which ends this loop
            for placeholder, column, output in zip(placeholders, columns, outputs):
                show(placeholder, column, output)
    except UserError as error:
        show_user_error(error)
elif kept:
    mark_stopped(kept["outputs"])  # a generation cut short by a rerun (Stop, or any other widget)
    for placeholder, column, previous, output in zip(placeholders, columns, kept["columns"], kept["outputs"]):
        if column == previous:
            show(placeholder, column, output)

if notes:
    st.caption("Rewards are the run's reward models' scores of each finished answer (Bradley-Terry scores: compare "
               "columns, not absolute values). Reward models: " + "; ".join(f"{o}, {n}" for o, n in notes.items())
               + ". A coalition's held-out preference accuracy needs no reward model: how often it prefers the chosen "
                 "reply of a held-out pair more than the base does.")
elif sources:
    st.caption("No reward models in this run yet: the Evaluate page trains them, and then each finished answer is "
               "scored here.")
