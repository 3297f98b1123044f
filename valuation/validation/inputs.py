"""What every experiment reads from the run (training pairs, held-out pairs), and the adapters the
validation trains for itself, in <run>/validation/<folder>/adapters/ (the layout of `lm.adapters`):

    e1:a        source a alone, 1 epoch         e1:a+b      the pooled data of a and b
    e1:a>b      b trained with e1:a merged into the weights (the second stage of sequential DPO)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import zip_longest
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import preset_config
from ..rewards.heldout import HeldOut, held_out
from ..data.splits import judging_pairs
from ..training.dpo import source_seed
from ..training.job import fit_missing
from ..training.pairs import fitting_pairs
from ..training.settings import PRESETS as TRAINING_PRESETS, TrainConfig
from .settings import ValidationConfig, ValidationError, results_dir

if TYPE_CHECKING:
    from ..runtime.context import RunContext
    from ..data.preferences import PreferencePair
    from ..progress import Reporter


@dataclass
class Inputs:
    """What every experiment reads: the job's settings, the run's training pairs, two held-out sets.

    `heldout`: short pairs of the split's eval part (prompts cut to the training cap as training cuts
    them, taken evenly across sources), for comparing trained models: teacher-forced passes cost as
    many rows as models.
    `evaluation`: the pairs behind the run's evaluation prompts, whatever their length, so that the
    accuracy utility lines up, prompt by prompt, with the evaluation's utilities.
    """

    context: RunContext
    config: ValidationConfig
    training: TrainConfig  # the settings of every validation adapter
    train: dict[str, list[PreferencePair]]
    heldout: list[HeldOut]
    evaluation: list[HeldOut]

    @property
    def folder(self) -> Path:
        return results_dir(self.context.run, self.config.folder)

    @property
    def adapters(self) -> Path:
        return self.folder / "adapters"

    @property
    def tokenizer(self) -> Any:
        return self.context.base.tokenizer


def read_inputs(context: RunContext, config: ValidationConfig) -> Inputs:
    training = preset_config(TrainConfig, TRAINING_PRESETS, config.training_preset)
    tokenizer = context.base.tokenizer

    evenly = judged_evenly(context, training.max_prompt_length, config.heldout_pairs)
    behind_prompts = context.split.eval_pairs
    heldout, evaluation = (held_out(tokenizer, pairs, config.response_tokens) for pairs in (evenly, behind_prompts))
    if not heldout:
        raise ValidationError(f"Run {context.run.name!r} has no eval-part pair whose prompt fits "
                              f"{training.max_prompt_length} tokens: raise the eval fraction on the Sources page.")
    return Inputs(context, config, training, context.split.train, heldout, evaluation)


def judged_evenly(context: RunContext, max_prompt_length: int, count: int) -> list[PreferencePair]:
    """Up to `count` pairs of the split's eval part, taken evenly across sources, their prompts cut to
    `max_prompt_length` as training cuts them. The eval part (or the gold set's) is disjoint by prompt
    from every training pair (`data.splits`); with a trusted held-out file every source is judged on
    the same gold pairs, taken once each."""
    eval_part = {s: judging_pairs(s, context.data, context.split, context.config.data) for s in context.split.train}
    per_source = -(-count // len(eval_part))  # ceil
    short = [fitting_pairs(pairs, context.base.tokenizer, max_prompt_length, per_source) for pairs in eval_part.values()]
    return list({p.pair_id: p for row in zip_longest(*short) for p in row if p is not None}.values())[:count]


def adapter_name(epochs: float, members: str) -> str:
    """'e1:a', 'e2:a>b', 'e0p5:a+b': epochs and what was trained (no '.', PEFT's module names forbid it)."""
    return f"e{epochs:g}:{members}".replace(".", "p")


def train_adapter(inputs: Inputs, name: str, pairs: list[PreferencePair], epochs: float, reporter: Reporter,
                  below: Sequence[str] = ()) -> None:
    """Train validation adapter `name` at `epochs` (the validation's training preset) unless it exists."""
    settings = replace(inputs.training, epochs=epochs)
    fit_missing(inputs.context, inputs.adapters, name, pairs, settings, source_seed(inputs.context.config.seed, name),
                reporter, below=below)
