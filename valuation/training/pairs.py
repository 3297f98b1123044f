"""What training reads of a source: its first pairs whose prompt fits the prompt length cap once
cut to its end (`lm.tokens.fit_prompt`), counted as kept whole, truncated or dropped; the same
counts before training (the Sources page's preview), and the one warning for a source that loses
too many of them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import islice
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..lm.tokens import fit_prompt
from .settings import PRESETS, TrainConfig

if TYPE_CHECKING:
    from ..data.preferences import PreferencePair

DROPPED_WARNING = 0.2  # a source whose cap drops more than this share of the pairs it reads is warned about


def too_many_dropped(kept: int, dropped: int) -> bool:
    """Whether the prompt length cap dropped more than DROPPED_WARNING of the pairs it read."""
    return dropped > DROPPED_WARNING * (kept + dropped)


@dataclass
class SourcePairs:
    rows: list[dict[str, Any]]  # TRL's conversational preference format
    whole: int  # rows whose prompt fits max_prompt_length as it is
    truncated: int  # rows whose prompt keeps only its end (tokens.fit_prompt)
    dropped: int  # pairs with no prompt to keep: the chat template around an empty turn exceeds max_prompt_length

    @property
    def too_many_dropped(self) -> bool:
        return too_many_dropped(len(self.rows), self.dropped)


def select_pairs(pairs: list["PreferencePair"], tokenizer: Any, config: TrainConfig) -> SourcePairs:
    """The first `max_pairs` pairs whose prompt fits once cut to its end, as conversations; count the
    ones kept whole, the ones cut and the ones dropped."""
    rows, truncated, dropped = [], 0, 0
    for pair in pairs:
        if config.max_pairs and len(rows) == config.max_pairs:
            break
        prompt = fit_prompt(tokenizer, pair.prompt, config.max_prompt_length)
        if prompt is None:
            dropped += 1
            continue
        truncated += prompt is not pair.prompt
        rows.append({
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": pair.chosen}],
            "rejected": [{"role": "assistant", "content": pair.rejected}],
        })
    return SourcePairs(rows, len(rows) - truncated, truncated, dropped)


def fitting_pairs(pairs: list["PreferencePair"], tokenizer: Any, max_prompt_length: int, count: int) -> list["PreferencePair"]:
    """The first `count` pairs whose prompt fits once cut to its end (tokens.fit_prompt), with that
    prompt: exactly what training takes (training.select_pairs)."""
    fitted = ((p, fit_prompt(tokenizer, p.prompt, max_prompt_length)) for p in pairs)
    return list(islice((replace(p, prompt=prompt) for p, prompt in fitted if prompt is not None), count))


def dropped_warning(counts: dict[str, tuple[int, int]]) -> str | None:
    """The warning for the sources (of `counts`: source -> (pairs kept, pairs dropped)) whose prompt
    length cap dropped more than DROPPED_WARNING of the pairs training read; None when none did."""
    losing = {source: (kept, dropped) for source, (kept, dropped) in counts.items() if too_many_dropped(kept, dropped)}
    if not losing:
        return None
    return ("The prompt length cap drops more than a fifth of the pairs training reads for "
            + ", ".join(f"{source} ({int(dropped)} of {int(kept + dropped)})" for source, (kept, dropped) in losing.items())
            + f" (over {DROPPED_WARNING:.0%}): not even their last tokens fit beside the chat template, so their values "
              "reflect only the pairs left. Raise max prompt length (Training page, --max-prompt-length).")


def prompt_fit(train: dict[str, list[PreferencePair]], tokenizer: Any, config: TrainConfig) -> pd.DataFrame:
    """Per source, what training's prompt length cap does to the pairs it reads (`select_pairs` on the
    split's training pairs, up to `max_pairs` kept): pairs kept whole, truncated to their end and
    dropped, and the share kept. `dropped_warning` says which sources lose too many."""
    rows = []
    for source, pairs in train.items():
        selected = select_pairs(pairs, tokenizer, config)
        read = len(selected.rows) + selected.dropped
        rows.append({"source": source, "whole": selected.whole, "truncated": selected.truncated,
                     "dropped": selected.dropped, "kept share": len(selected.rows) / read if read else 1.0})
    return pd.DataFrame(rows, columns=["source", "whole", "truncated", "dropped", "kept share"])


def training_cap(records: dict[str, dict[str, Any]]) -> TrainConfig:
    """The quick preset with the pair count and prompt length cap the run's adapters were trained
    with (their training `records`), if any: the settings a Sources page preview of the cap should use."""
    for record in records.values():
        settings = record.get("settings", {})
        return replace(PRESETS["quick"], **{k: settings[k] for k in ("max_pairs", "max_prompt_length") if k in settings})
    return PRESETS["quick"]
