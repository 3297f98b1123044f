"""Sources: choose a dataset, tick the sources to value, look at their pairs, save the choice; once
adapters are trained, audit a source's pairs against the other sources'."""

from __future__ import annotations

from pages.ui import through_app

through_app()  # opened outside app.py's st.navigation: hand over to it

import json
from dataclasses import replace

import pandas as pd
import streamlit as st

from pages.ui import cached_preferences, chart, job_panel, require_run, show_user_error
from valuation.config import ConfigError, DataConfig, ModelConfig, every_source, to_dict
from valuation.data.sources import describe_provenance, describe_sources, pair_lengths, record_sources, save_upload
from valuation.errors import UserError
from valuation.jobs.background import job_status
from valuation.jobs.registry import command, job_config, launch
from valuation.training.audit import audit_findings, flagged, flagged_csv, read_audit, read_suspects
from valuation.training.cleaned import cleaned_findings, read_values
from valuation.training.pairs import dropped_warning, prompt_fit, training_cap
from valuation.training.settings import PRESETS
from valuation.views.figures import audit_figure, intervals_figure, lengths_figure


@st.cache_resource(show_spinner="Loading the tokenizer…", max_entries=2)
def cached_tokenizer(model_json: str):
    from valuation.lm.models import load_model_tokenizer

    return load_model_tokenizer(ModelConfig(**json.loads(model_json)))


@st.cache_data(show_spinner="Fitting prompts to the training cap…", max_entries=16)
def cached_prompt_fit(data_json: str, model_json: str, max_pairs: int, max_prompt_length: int) -> pd.DataFrame:
    """What the cap does to each chosen source's training pairs: the split these sources get once saved."""
    from valuation.data.splits import split_preferences

    data_config = DataConfig(**json.loads(data_json))
    split = split_preferences(cached_preferences(every_source(data_config)), data_config)
    cap = replace(PRESETS["quick"], max_pairs=max_pairs, max_prompt_length=max_prompt_length)
    return prompt_fit(split.train, cached_tokenizer(model_json), cap)


st.title("Sources")
st.caption("Each source is a player in the game: one adapter is trained per source, and its Shapley value "
           "says how much it contributes to the coalition models.")

snapshot = require_run()
run, saved = snapshot.run, snapshot.config.data

# --- Which dataset -----------------------------------------------------------------------------
DATASETS = {"Anthropic HH-RLHF (offline default)": "hh-rlhf", "UltraFeedback (schema of openbmb/UltraFeedback)": "ultrafeedback",
            "Upload a file": "upload", "A local file or folder": "path"}
kinds = list(DATASETS.values())
saved_kind = saved.dataset if saved.dataset in ("hh-rlhf", "ultrafeedback") else "path"
label = st.radio("Dataset", list(DATASETS), index=kinds.index(saved_kind), horizontal=True)
kind = DATASETS[label]

dataset, ultrafeedback_file = kind, saved.ultrafeedback_file
if kind == "ultrafeedback":
    ultrafeedback_file = st.text_input("Local UltraFeedback file (empty: the hub dataset)", saved.ultrafeedback_file)
elif kind == "upload":
    upload = st.file_uploader("Preference pairs: prompt, chosen, rejected and (optionally) source columns",
                              type=["jsonl", "csv", "parquet"])
    if upload is None:
        st.info("Upload a JSONL, CSV or Parquet file. Without a `source` column the file is one source.")
        st.stop()
    dataset = str(save_upload(run, upload.name, upload.getvalue()))  # once per upload, not per rerun
elif kind == "path":
    dataset = st.text_input("Path to a JSONL/CSV/Parquet file, or a folder with one file per source",
                            "" if saved.dataset in ("hh-rlhf", "ultrafeedback") else saved.dataset)
    if not dataset.strip():
        st.stop()

with st.expander("Split settings"):
    left, middle, right = st.columns(3)
    eval_prompts = left.number_input("Evaluation prompts", 1, 1000, saved.eval_prompts,
                                     help="Drawn evenly across sources, held out from every training set.")
    eval_fraction = middle.number_input("Held-out share of prompts", 0.01, 0.9, saved.eval_fraction, step=0.05)
    reward_fraction = right.number_input("Reward-model share of prompts", 0.0, 0.9, saved.reward_fraction, step=0.05)
    seed = left.number_input("Split seed", 0, 2**31 - 1, saved.seed)
    data_dir = middle.text_input("Data directory", saved.data_dir, placeholder=str(DataConfig().resolved_data_dir()))

with st.expander("Trusted held-out data", expanded=bool(saved.heldout_file)):
    st.caption("A gold set of preference pairs you trust (JSONL/CSV/Parquet: prompt, chosen, rejected, optional "
               "source). Its pairs train the reward models and give the evaluation prompts, split by prompt in the "
               "ratio of the two shares above; every pair of the sources trains adapters, less those whose prompt "
               "the gold set holds. Empty: the sources' pairs are split into all three parts.")
    heldout_file = st.text_input("Trusted held-out file (path)", saved.heldout_file)
    gold_upload = st.file_uploader("Or upload it", type=["jsonl", "csv", "parquet"], key="heldout_upload")
    if gold_upload is not None:
        heldout_file = str(save_upload(run, gold_upload.name, gold_upload.getvalue()))

base = DataConfig(dataset=dataset, data_dir=data_dir, ultrafeedback_file=ultrafeedback_file,
                  eval_prompts=int(eval_prompts), eval_fraction=float(eval_fraction),
                  reward_fraction=float(reward_fraction), seed=int(seed), heldout_file=heldout_file.strip())
try:
    base.validate()
    data = cached_preferences(base)
except (UserError, ConfigError) as error:
    show_user_error(error)
    st.stop()

# --- Which sources -----------------------------------------------------------------------------
available = data.sources
default = [s for s in saved.sources if s in available] or available
sources = st.multiselect("Sources to value", available, default=default,
                         help="The players of the game. Each needs its own adapter.")
if len(sources) < 2:
    st.warning("Pick at least two sources: a Shapley value compares a source with the others.")

for line in data.report.summary():
    st.caption(f":material/info: {line}")

summary = describe_sources(data).loc[sources] if sources else describe_sources(data).iloc[0:0]
st.dataframe(summary, width="stretch")

config = DataConfig(**{**base.__dict__, "sources": sources})
recorded = snapshot.split
if st.button("Save these sources to the run", type="primary", disabled=len(sources) < 2):
    try:
        split = recorded = record_sources(run, config).summary()
    except UserError as error:
        show_user_error(error)
    else:
        st.success(f"Saved to run '{run.name}': {len(sources)} sources, "
                   f"{sum(split['train_pairs'].values())} training pairs, {len(split['eval_prompt_ids'])} evaluation prompts.")
elif (sorted(saved.sources or available) == sorted(sources) and saved.dataset == config.dataset
      and saved.heldout_file == config.heldout_file):
    st.caption(f"Run '{run.name}' uses these sources.")
else:
    st.caption("Not saved yet: the run keeps its previous choice until you save.")
if recorded:
    st.caption(f":material/call_split: Recorded split: {describe_provenance(recorded)}.")

if not sources:
    st.stop()

# --- The prompt length cap -----------------------------------------------------------------------
st.subheader("Prompt length cap")
cap = training_cap(snapshot.records)
origin = "the settings of the run's adapters" if snapshot.adapters else "the quick preset"
st.caption(f"Training reads each source's training pairs in the split's order until {cap.max_pairs or 'all'} are "
           f"kept, with prompts of at most {cap.max_prompt_length} tokens through the chat template ({origin}). "
           "A longer prompt keeps its end (truncated): its last user turn and the earlier turns that fit, or the last "
           "tokens of a last user turn longer on its own. A pair is dropped only when the chat template alone is longer.")
# On request: counting loads the tokenizer (transformers), seconds of CPU this landing page should not spend.
if st.toggle("Count what the cap keeps of each source", help="Loads the base model's tokenizer: a few seconds the "
             "first time. The Training page shows the same counts for every trained adapter."):
    try:
        fit = cached_prompt_fit(json.dumps(to_dict(config), sort_keys=True),
                                json.dumps(to_dict(snapshot.config.model)), cap.max_pairs, cap.max_prompt_length)
    except UserError as error:
        show_user_error(error)
    else:
        st.dataframe(fit, hide_index=True, column_config={
            "kept share": st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1)})
        warning = dropped_warning({r.source: (r.whole + r.truncated, r.dropped) for r in fit.itertuples()})
        if warning:
            st.warning(warning)

# --- Lengths -----------------------------------------------------------------------------------
st.subheader("Lengths")
lengths = pair_lengths(data)
chart(lengths_figure(lengths[lengths.source.isin(sources)]))

# --- Sample pairs ------------------------------------------------------------------------------
st.subheader("Sample pairs")
by_source = data.by_source()
left, right = st.columns([1, 2])
source = left.selectbox("Source", sources)
index = right.slider("Pair", 1, len(by_source[source]), 1) - 1
pair = by_source[source][index]
for message in pair.prompt:
    with st.chat_message(message["role"]):
        st.text(message["content"])
chosen_column, rejected_column = st.columns(2)
chosen_column.markdown("**Chosen**")
chosen_column.text(pair.chosen)
rejected_column.markdown("**Rejected**")
rejected_column.text(pair.rejected)

# --- Audit a source's pairs ----------------------------------------------------------------------
st.subheader("Audit a source's pairs")
st.caption("Which of a source's pairs does the rest of the data label the other way? Each pair the source's adapter "
           "trained on is scored by the coalition of all the other sources (the arithmetic: the sum of their adapters' "
           "implicit reward margins, chosen minus rejected). Below the threshold, they prefer the rejected reply: the "
           "pair is flagged. The source's own adapter's training loss on each pair is kept beside it as the baseline, "
           "and the run's reward models give a second opinion.")
trained = snapshot.trained
if len(trained) < 2:
    st.info("The audit judges a source's pairs by the other sources' adapters: train at least two sources first "
            "(Training page).", icon=":material/info:")
    st.stop()
left, middle, right = st.columns([2, 1, 2])
audited = left.selectbox("Source to audit", trained)
threshold = middle.number_input("Threshold", value=0.0, step=0.05, format="%.2f",
                                help="A pair is flagged when the other sources' margin on it is below this.")
drop = right.toggle("Then value it without its flagged pairs",
                    help="Trains one more adapter on the source's pairs less the flagged ones (same settings and "
                         "seed), values the run again with it in the source's place, and shows the source's value "
                         "before and after. Nothing is overwritten.")
config = job_config("audit", source=audited, threshold=threshold, drop_flagged=drop)
if st.button("Audit", type="primary", icon=":material/policy:"):
    try:
        launch(run, "audit", config)
    except UserError as error:
        show_user_error(error)
st.caption(f"Runs in the background as `python -m valuation {' '.join(command(run, 'audit', config, recorded=snapshot.config))}`.")
job_panel(run, "audit", job_status(run))

audit = read_audit(run, audited)
if audit.empty:
    st.caption(f"{audited} has not been audited yet.")
    st.stop()
for line in audit_findings(run, audited, threshold):
    st.markdown(f"- {line}")
chart(audit_figure(audit, threshold))
st.download_button(f"Download the {len(flagged(audit, threshold))} flagged pair ids (CSV)", flagged_csv(audit, threshold),
                   file_name=f"{run.name}-{audited}-flagged.csv", mime="text/csv", icon=":material/download:")
suspects = read_suspects(run, audited)
if not suspects.empty:
    st.caption("The most suspect pairs, the other sources' margin lowest first (own loss: the source's own adapter's "
               "DPO loss on the pair, the baseline).")
    st.dataframe(suspects, hide_index=True, column_config={
        "rest_margin": st.column_config.NumberColumn("others' margin", format="%+.3f"),
        "own_loss": st.column_config.NumberColumn("own loss", format="%.3f")})
values = read_values(run, audited)
if not values.empty:
    st.markdown(f"**{audited} without its flagged pairs**")
    for line in cleaned_findings(run, audited):
        st.markdown(f"- {line}")
    chart(intervals_figure(values[values.stage != "change"], color="stage"))
