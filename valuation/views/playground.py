"""The playground: one prompt answered side by side by the base model and a few coalition models.

A column is a coalition of the run's sources. Its model is not trained: it is the log-probability
arithmetic of `lm.arithmetic`, log pi_S = sum_{l in S} log pi_l + (1 - |S|) log pi_0 - log Z, or, as
an ablation, the members' LoRA updates merged in weight space (`lm.merging`).

A finished column is scored by every reward model of the run (`rewards.store`), beside what
says how far to trust those numbers: each reward model's held-out accuracy, and the coalition's own
held-out preference accuracy (reward-free, `rewards.heldout`).

All columns decode together in one `stream_coalitions` call with the same prompt and the same
(prompt, sample) indices, so they share one stream of random numbers: where two columns'
distributions agree they draw the same token, and where they differ the difference is the models',
not the dice's (common random numbers).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

from ..lm.adapters import RECORD_FILE, adapter_dir, trained_sources
from ..lm.arithmetic import GenerationRequest, Messages, SamplingSettings, stream_coalitions
from ..lm.forward import MODEL_LOCK
from ..games.coalitions import Coalition, formula
from ..rewards.heldout import judged
from ..runs import Run
from ..data.splits import EvalPrompt
from ..storage import digest
from ..games.utility_table import UtilityTable
from ..evaluation.store import EvaluationStore

if TYPE_CHECKING:
    from ..rewards.models import RewardModel

MAX_COLUMNS = 4  # coalition columns beside the base model's


@dataclass(frozen=True)
class Column:
    """What one column samples from: a coalition, by arithmetic or (ablation) by a weight-space merge."""

    sources: Coalition = frozenset()
    merged: bool = False

    @property
    def is_merge(self) -> bool:
        return self.merged and len(self.sources) > 1  # a merge of one adapter is that adapter

    @property
    def title(self) -> str:
        return " + ".join(sorted(self.sources)) if self.sources else "base model"

    @property
    def formula(self) -> str:
        if self.is_merge:
            return f"π = π_0 with ΔW = {' + '.join(f'ΔW_{s}' for s in sorted(self.sources))} (weight-space merge)"
        return formula(self.sources)


def default_columns(sources: Sequence[str]) -> list[Column]:
    """What the page opens with: singletons of the first sources, then the grand coalition of all of them."""
    singletons = [Column(frozenset({source})) for source in sources]
    if len(sources) < 2:
        return singletons
    return singletons[: MAX_COLUMNS - 1] + [Column(frozenset(sources))]


def column_coalition(model: torch.nn.Module, column: Column) -> Coalition:
    """The coalition the engine samples: the members, or the one merged adapter standing for them."""
    if not column.is_merge:
        return column.sources
    from ..lm.merging import merged_coalition_adapter  # imports peft: only when a merge is asked for

    return frozenset({merged_coalition_adapter(model, column.sources, "cat")})


def column_requests(model: torch.nn.Module, columns: Sequence[Column], messages: Messages) -> list[GenerationRequest]:
    """One request per column, all with prompt 0 and sample 0: every column gets the same random draws."""
    return [GenerationRequest(column_coalition(model, column), messages, prompt_index=0, sample_index=0)
            for column in columns]


# -----------------------------------------------------------------------------
# streaming


@dataclass
class ColumnOutput:
    text: str = ""
    tokens: int = 0
    seconds: float = 0.0
    status: str = "generating"  # "generating", then "end of text", "token limit" or "stopped"
    rewards: dict[str, float] | None = None  # objective -> reward of the finished text, once scored

    @property
    def caption(self) -> str:
        return f"{self.tokens} tokens · {self.seconds:.1f} s · {self.status}"


def stream_columns(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, columns: Sequence[Column],
                   messages: Messages, settings: SamplingSettings, stop_event: threading.Event | None = None,
                   rewards: Mapping[str, RewardModel] | None = None) -> Iterator[list[ColumnOutput]]:
    """Every column's output so far, after each decoding step (the same list, updated in place);
    with `rewards`, a column is scored by each reward model in the step it finishes."""
    requests = column_requests(model, columns, messages)
    outputs = [ColumnOutput() for _ in columns]
    start = time.perf_counter()
    for update in stream_coalitions(model, tokenizer, requests, settings, stop_event):
        for index, piece in update.pieces.items():
            output = outputs[index]
            output.text, output.tokens, output.seconds = output.text + piece, output.tokens + 1, time.perf_counter() - start
        for index, generation in update.finished.items():
            stopped = stop_event is not None and stop_event.is_set()
            status = "end of text" if generation.finished_by_eos else "stopped" if stopped else "token limit"
            outputs[index] = ColumnOutput(generation.text, generation.num_tokens, generation.seconds, status)
        if rewards:
            score_outputs(rewards, messages, [outputs[index] for index in update.finished])
        yield outputs


def score_outputs(rewards: Mapping[str, RewardModel], messages: Messages, outputs: Sequence[ColumnOutput]) -> None:
    """Each output's reward under every reward model, set in place. Each text is scored alone, so its
    reward is exactly `model.score([messages], [text])` (in reduced precision, packing replies together
    moves a score in its third decimal). A feature reward model reads the shared coalition model with
    its adapters switched off, so scoring holds the model's lock like every forward pass."""
    for output in outputs:
        if output.rewards is not None or not rewards:
            continue
        with MODEL_LOCK:
            output.rewards = {objective: float(model.score([messages], [output.text])[0])
                              for objective, model in rewards.items()}


def mark_stopped(outputs: Sequence[ColumnOutput]) -> None:
    """Outputs whose generation was interrupted before they finished."""
    for output in outputs:
        if output.status == "generating":
            output.status = "stopped"


# -----------------------------------------------------------------------------
# prompts and adapters


def example_prompts(prompts: Sequence[EvalPrompt], count: int = 6) -> dict[str, Messages]:
    """A few held-out evaluation prompts (never trained on), labelled by source and last user turn."""
    examples = {}
    for prompt in prompts[:count]:
        turn = last_user_turn(prompt.messages)
        examples[f"{prompt.source}: {turn[:70]}{'…' if len(turn) > 70 else ''}"] = prompt.messages
    return examples


def last_user_turn(messages: Messages) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def with_last_user_turn(messages: Messages, text: str) -> Messages:
    """The conversation with its last user turn replaced by `text` (a new conversation if it has none)."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last is None:
        return [{"role": "user", "content": text}]
    return [*messages[:last], {"role": "user", "content": text}, *messages[last + 1:]]


def adapter_stamps(run: Run) -> tuple[tuple[str, float], ...]:
    """(source, modification time of its training record) for every trained adapter: changes when one is retrained."""
    return tuple((source, (adapter_dir(run, source) / RECORD_FILE).stat().st_mtime) for source in trained_sources(run))


# -----------------------------------------------------------------------------
# how far to trust a column's rewards


def reward_keys(cards: dict[str, dict]) -> dict[str, str]:
    """objective -> the key of the reward model a run holds for it (what `load_reward` gives it), from
    the run's reward cards: changes when the reward model is retrained, so a cached one is loaded again."""
    return {objective: digest(card["key"]) for objective, card in cards.items() if "key" in card}


def reward_notes(accuracies: pd.DataFrame) -> dict[str, str]:
    """objective -> its reward model's held-out accuracy with its interval, in words, saying so when
    it is near chance (`rewards.cards.is_near_chance`: the interval includes 50%)."""
    notes = {}
    for row in accuracies.itertuples():
        note = f"held-out accuracy {row.accuracy:.1%} [{row.lower:.1%}, {row.upper:.1%}] on {row.pairs:.0f} pairs"
        if row.near_chance:
            note += ": near chance, its rewards may be noise"
        notes[row.objective] = note
    return notes


def preference_table(run: Run) -> UtilityTable | None:
    """The run's reward-free utilities on held-out pairs (evaluation/preference.csv), or None before an evaluation."""
    store = EvaluationStore(run)
    return store.load("preference") if "preference" in store.targets else None


def coalition_preference(table: UtilityTable | None, column: Column) -> str | None:
    """The column's held-out preference accuracy and implicit reward margin with their 95% intervals,
    in words; None where the table has no such coalition (a weight-space merge is not in it)."""
    if table is None or column.is_merge or table.per_prompt is None or column.sources not in table.per_prompt:
        return None
    if not column.sources:
        return "the reference, 50% accuracy by definition"
    margins = table.prompt_values(column.sources)[table.objectives.index("reward_margin")]
    verdict = judged(margins)
    return (f"accuracy {verdict['accuracy']:.1%} [{verdict['accuracy_lower']:.1%}, {verdict['accuracy_upper']:.1%}], "
            f"reward margin {verdict['margin']:+.3f} [{verdict['margin_lower']:+.3f}, {verdict['margin_upper']:+.3f}] "
            f"on {len(margins)} pairs")
