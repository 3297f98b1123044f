"""The sections that describe the run: the question and the method, the sources, the training and
whether each adapter learned, the reward models, and a few generations."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from ..errors import UserError
from ..evaluation.job import read_prompts_file
from ..rewards.cards import describe_card
from ..training.progress import adapter_table
from ..training.settings import recorded_settings
from ..views.snapshot import RunSnapshot
from .html import bullets, esc, paragraph, section, subheading, table, with_interval

GENERATION_PROMPTS = 2  # prompts whose first answer is shown for every stored coalition


def intro_section(snapshot: RunSnapshot) -> str:
    """What the Shapley values answer, and how the coalitions and their utilities are made."""
    sources = snapshot.sources
    question = (f"Which of this run's {len(sources)} data sources ({', '.join(sources) or 'none recorded yet'}) make "
                f"the fine-tuned model better, and along which objective? Each source's answer is its Shapley value: "
                "its average marginal contribution to the utility of the coalition models, over every order in which "
                "the sources could join. The values of all sources add up to v(N) − v(∅), the gain of all sources "
                f"together over the base model ({snapshot.config.model.name}).")
    pooled = snapshot.store.settings is not None and snapshot.store.settings.estimator == "pooled"
    method = ("One LoRA adapter per source is trained with DPO on the same base model with the same settings. A "
              "coalition S is not trained: its model is built at inference by adding log-probabilities, log π_S = "
              "Σ_{l∈S} log π_l + (1 − |S|) log π_0 − log Z (Tamine, Sakhi and Heymann, arXiv 2512.15765). Reward "
              "models score the answers of each coalition model to held-out prompts; a coalition's utility is its "
              "mean reward, " + ("read off one pool of responses per prompt by importance weighting" if pooled else
                                 "from answers sampled from each coalition") +
              ". The Shapley values follow from the 2^n utilities, and their intervals from a bootstrap over prompts "
              f"({snapshot.confidence} level).")
    return section("question", "The question and the method", [paragraph(question), paragraph(method)])


# -----------------------------------------------------------------------------
# sources


def reward_coverage(snapshot: RunSnapshot) -> dict[str, list[str]]:
    """source -> 'objective (pairs)' for each reward model trained on that source's reward pairs."""
    covered: dict[str, list[str]] = {}
    for objective, card in snapshot.cards.items():
        for source, count in card.get("train", {}).get("per_source", {}).items():
            covered.setdefault(source, []).append(f"{objective} ({count})")
    return covered


def sources_section(snapshot: RunSnapshot) -> str:
    """Each source's pairs in every part of the split, and what trained on them."""
    if not snapshot.split:
        return section("sources", "Sources", [paragraph("No sources are recorded in this run yet (Sources page, or "
                                                        "`python -m valuation sources --run RUN`).")])
    covered, split, settings = reward_coverage(snapshot), snapshot.split, snapshot.store.settings
    rows = []
    for source in snapshot.sources:
        record = snapshot.records.get(source, {})
        train = split["train_pairs"].get(source, 0)
        used = record.get("pairs_used")
        rows.append([source, train, "not trained" if used is None else f"{used} ({used / max(train, 1):.0%})",
                     record.get("pairs_dropped_by_length", ""), split.get("reward_pairs", {}).get(source, 0),
                     split.get("eval_prompts_per_source", {}).get(source, 0),
                     ", ".join(covered.get(source, [])) or "none"])
    parts = [paragraph(f"Dataset: {snapshot.config.data.dataset}. Each source is a player: its pairs are split by "
                       "prompt into training pairs, reward-model pairs and held-out evaluation prompts, disjoint across "
                       f"parts (split seed {snapshot.config.data.seed})."),
             table(["source", "training pairs", "its adapter trained on (share)", "dropped as too long",
                    "reward-model pairs", "held-out evaluation prompts", "reward models trained on its pairs"], rows)]
    if settings is not None and settings.prompts_file:
        parts.append(paragraph(f"The evaluation answered {settings.prompts} prompts of its own file "
                               f"({settings.prompts_file}) instead of the split's held-out prompts."))
    return section("sources", "Sources", parts)


# -----------------------------------------------------------------------------
# training and verdicts


def shared_settings(records: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One row per training setting: its value, or each adapter's where they differ."""
    settings = {source: recorded_settings(record) for source, record in records.items()}
    rows = []
    for key in dict.fromkeys(key for used in settings.values() for key in used):
        values = {source: json.dumps(used.get(key)) for source, used in settings.items()}
        same = len(set(values.values())) == 1
        rows.append([key, next(iter(values.values())) if same else
                     "differs: " + ", ".join(f"{s} {v}" for s, v in values.items())])
    return rows


def verdict_rows(snapshot: RunSnapshot) -> list[list[object]]:
    """Each adapter's training and, where the train job judged it, its held-out accuracy, margin and verdict."""
    adapters = adapter_table(snapshot.records)
    verdicts = snapshot.verdicts.set_index("source") if not snapshot.verdicts.empty else pd.DataFrame()
    rows = []
    for row in adapters.itertuples(index=False):
        line: list[object] = [row.source, row.pairs, row.steps, row.minutes]
        if row.source in verdicts.index:
            v = verdicts.loc[row.source]
            line += [with_interval(v.accuracy, v.accuracy_lower, v.accuracy_upper, ".1%"),
                     with_interval(v.margin, v.margin_lower, v.margin_upper, "+.3f"), v.verdict]
        else:
            line += ["not measured", "not measured", "not judged (train again to judge it)"]
        rows.append(line)
    return rows


def training_section(snapshot: RunSnapshot) -> str:
    """The settings every adapter was trained with, and whether each one learned."""
    if not snapshot.trained:
        return section("training", "Training", [paragraph("No adapter is trained yet.")])
    records = {source: snapshot.records[source] for source in snapshot.trained}
    parts = [paragraph(f"One LoRA adapter per source, trained with DPO on {snapshot.config.model.name}. The settings "
                       "every adapter was trained with:"),
             table(["setting", "value"], shared_settings(records)),
             subheading("Did each adapter learn?"),
             paragraph("On held-out pairs of its own source (never trained on): how often the adapter prefers the "
                       "chosen reply more than the base does, and the implicit reward margin (β × that log-ratio gap), "
                       "with 95% intervals. An adapter has learned when its margin's interval lies above zero."),
             table(["source", "training pairs used", "steps", "minutes", "held-out preference accuracy [95%]",
                    "held-out reward margin [95%]", "verdict"], verdict_rows(snapshot))]
    return section("training", "Training", parts)


# -----------------------------------------------------------------------------
# reward models


def rewards_section(snapshot: RunSnapshot) -> str:
    """Each reward model's held-out accuracy with its interval, and whether it is above chance."""
    if snapshot.accuracies.empty:
        return section("rewards", "Reward models", [paragraph("No reward model is trained yet.")])
    rows = [[r.objective, with_interval(r.accuracy, r.lower, r.upper, ".1%"), f"{r.pairs:.0f}",
             "at chance: its interval includes 50%" if r.near_chance else "above chance"]
            for r in snapshot.accuracies.itertuples()]
    cards = [snapshot.cards[objective] for objective in snapshot.accuracies.objective]
    parts = [paragraph(f"Kind: {snapshot.config.rewards.kind}. Each reward model's accuracy on held-out preference pairs "
                       "(how often it scores the chosen reply above the rejected one), with its 95% Wilson interval."),
             table(["objective", "held-out accuracy [95%]", "held-out pairs", "signal"], rows),
             bullets([describe_card(card) for card in cards if card and "interval" in card])]
    return section("rewards", "Reward models", parts)


# -----------------------------------------------------------------------------
# generations


def prompt_texts(snapshot: RunSnapshot) -> dict[str, str]:
    """prompt id -> its conversation, when the evaluation read a prompts file (else ids only)."""
    settings = snapshot.store.settings
    if settings is None or not settings.prompts_file:
        return {}
    try:
        prompts = read_prompts_file(settings.prompts_file)
    except UserError:
        return {}
    return {p.prompt_id: "\n".join(f"{m['role']}: {m['content']}" for m in p.messages) for p in prompts}


def coalition_order(name: str) -> tuple[int, str]:
    """Sort key: the base first, then coalitions by size, then by name."""
    return (0, "") if name.startswith("∅") else (name.count("+") + 1, name)


def generations_section(snapshot: RunSnapshot) -> str:
    """The first answer of every stored coalition to a few prompts, with its rewards where they have signal."""
    samples = snapshot.store.samples()
    if samples.empty:
        return section("generations", "Generations", [paragraph("No stored generations yet.")])
    texts, shown = prompt_texts(snapshot), [o for o in snapshot.accuracies.objective if o in samples.columns]
    scored = [o for o in shown if o not in snapshot.at_chance]
    parts = [paragraph(f"The first answer of every stored coalition to {GENERATION_PROMPTS} of the prompts, with its "
                       "reward under each reward model that has signal (one answer's reward, not a finding)."
                       + (f" Rewards of {', '.join(sorted(set(shown) - set(scored)))} are left out: at chance."
                          if set(shown) - set(scored) else ""))]
    first = samples[samples["sample"] == samples["sample"].min()]
    for prompt in first.sort_values("prompt_index").prompt_id.unique()[:GENERATION_PROMPTS]:
        rows = first[first.prompt_id == prompt].sort_values("coalition", key=lambda c: c.map(coalition_order))
        parts += [subheading(f"Prompt {prompt}"), f'<pre class="prompt">{esc(texts.get(prompt, prompt))}</pre>',
                  table(["coalition", "answer", *[f"{o} reward" for o in scored]],
                        [[r["coalition"], r["text"], *[f"{r[o]:+.3f}" for o in scored]] for _, r in rows.iterrows()])]
    return section("generations", "Generations", parts)
