"""The model, one locked forward pass at a time: the lock every caller holds, left padding, the
mixed-adapter forward pass, and the sampler's rows run through the whole model.

The model is shared by every caller in the process and PEFT's mixed batches hang temporary hooks on
it, so each forward pass holds `MODEL_LOCK`. The sampler (`arithmetic`) decodes groups of rows, one
row per model of a coalition's formula; `GroupRows` is what it asks of the model side: here every
row through every layer (`WholeModelRows`), in `trunk` the layers every model shares once per group.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol

import torch

MODEL_LOCK = threading.Lock()  # held for every forward pass and every change to the adapters


def forward_log_probs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      position_ids: torch.Tensor, adapters: list[str], cache=None, keep: int = 1):
    """Float32 log-softmax of the last `keep` positions' logits, one row per adapter; and the cache."""
    extra = {"adapter_names": adapters} if hasattr(model, "peft_config") else {}
    device = model_device(model)
    with MODEL_LOCK, torch.no_grad():
        out = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                    position_ids=position_ids.to(device), cache=cache, use_cache=True, logits_to_keep=keep, **extra)
        return out.logits.float().log_softmax(-1), out.cache


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input ids, attention mask and position ids (0, 1, ... from each row's first real token)."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + list(ids) for ids in sequences])
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in sequences])
    # Under left padding positions count real tokens only; the model's default would shift them.
    return input_ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


class GroupRows(Protocol):
    """The model side of decoding: each group's rows, one per model of its formula, and their caches."""

    def start(self) -> torch.Tensor:
        """[rows, vocab]: each row's next-token log-probs after its prompt."""

    def step(self, drawn: torch.Tensor) -> torch.Tensor:
        """[rows, vocab] after each group's token `drawn` [groups] is appended to its rows."""

    def keep(self, groups: torch.Tensor, rows: torch.Tensor, row_group: torch.Tensor) -> None:
        """Only these groups and rows go on; `row_group` is their new group of each kept row."""


def distinct_prompt_models(prompts: list[list[int]], row_group: torch.Tensor,
                           row_adapter: list[str]) -> tuple[list[tuple[tuple[int, ...], str]], torch.Tensor]:
    """The distinct (prompt, model) pairs of the rows, and each row's pair: a prompt is read once per model."""
    keys = [(tuple(prompts[g]), adapter) for g, adapter in zip(row_group.tolist(), row_adapter)]
    slots = {key: slot for slot, key in enumerate(dict.fromkeys(keys))}
    return list(slots), torch.tensor([slots[key] for key in keys], device=row_group.device)


class WholeModelRows:
    """Every row through the whole model: one mixed-adapter forward pass (PEFT's `adapter_names`) a step."""

    def __init__(self, model: torch.nn.Module, pad_id: int, prompts: list[list[int]], row_group: torch.Tensor,
                 row_adapter: list[str]) -> None:
        self.model, self.pad_id, self.prompts = model, pad_id, prompts
        self.row_group, self.row_adapter = row_group, row_adapter

    def start(self) -> torch.Tensor:
        # Prefill once per distinct (prompt, model), then copy its cache to every row that needs it.
        pairs, pair_of_row = distinct_prompt_models(self.prompts, self.row_group, self.row_adapter)
        input_ids, mask, positions = left_pad([ids for ids, _ in pairs], self.pad_id)
        log_probs, self.cache = forward_log_probs(self.model, input_ids, mask, positions, [m for _, m in pairs])
        self.cache.batch_select_indices(pair_of_row)
        self.mask = mask.to(pair_of_row.device)[pair_of_row]
        self.next_position = positions.to(pair_of_row.device)[pair_of_row, -1] + 1
        return log_probs[pair_of_row, -1]

    def step(self, drawn: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=-1)
        log_probs, self.cache = forward_log_probs(self.model, drawn[self.row_group][:, None], self.mask,
                                                  self.next_position[:, None], self.row_adapter, self.cache)
        self.next_position = self.next_position + 1
        return log_probs[:, -1]

    def keep(self, groups: torch.Tensor, rows: torch.Tensor, row_group: torch.Tensor) -> None:
        self.row_group, self.row_adapter = row_group, [self.row_adapter[r] for r in rows.tolist()]
        self.mask, self.next_position = self.mask[rows], self.next_position[rows]
        self.cache.batch_select_indices(rows)
