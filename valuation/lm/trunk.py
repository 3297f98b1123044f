"""The frozen trunk: a base's lower layers run once per sequence, its top layers run on top.

When adapters change only the top K of a model's L decoder layers, the base and every adapter
compute the same hidden states below layer L - K. So a sequence's *trunk*, the hidden state
entering layer `first` = L - K at every token, is computed once under the base and reused:

- by training, in every step, epoch and seed: only the top K layers run forward and backward;
- by the verdicts, for the base and for every adapter judged on the same pairs.

A reply's log-likelihood is then read off the top layers, with the vocabulary projection (at
49,152 tokens, the size of seven decoder layers in a 135M model) run only at the positions that
predict the reply's tokens:

    h      = trunk(x, y)                         [tokens, hidden]   once, no gradient
    h'     = norm(layers[first:](h))             [tokens, hidden]   per model
    log p  = sum_t log_softmax(head(h'_t))[y_t]                     t over the reply only

With `first` = 0 the trunk is the token embeddings and every layer runs on top: the same
functions serve adapters on every layer.

Trunks are kept in bfloat16 under `cache` (a folder of the run), one entry per sequence keyed by
the model, the layer and the sequence's token ids, so a relaunch, a further seed, the next train
job's verdicts, a union of sources (`validation.retrain`) or a source less some of its pairs reads
them instead of running the lower layers again.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..progress import Progress
from ..runs import Run
from ..games.coalitions import BASE
from ..storage import atomic_write_bytes, digest
from .arithmetic import MODEL_LOCK, left_pad, model_device

TRUNK_DTYPE = torch.bfloat16  # half the memory and disk of float32; every model reads the same rounded trunk


class TrunkError(UserError):
    """The model's layers cannot be split into a frozen trunk and a top; the message says why."""


@dataclass
class Tokens:
    """Token sequences, prompt then reply: what the trunk and the top layers read."""

    ids: list[list[int]]
    replies: list[int]  # each sequence's reply length: its last tokens

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: Sequence[int]) -> Tokens:
        return Tokens([self.ids[r] for r in rows], [self.replies[r] for r in rows])


def decoder(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The decoder stack (embeddings, layers, norm, rotary embedding) and the output head of a
    causal LM, under any PEFT wrapper; a clear error for a model built otherwise."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    stack = getattr(causal, "model", None)
    if not all(hasattr(stack, part) for part in ("embed_tokens", "layers", "norm", "rotary_emb")):
        raise TrunkError(f"{type(causal).__name__} is not a Llama-style decoder (embed_tokens, layers, norm, "
                         "rotary_emb): train every layer (train_layers 0) with this model.")
    return stack, causal.get_output_embeddings()


def layer_count(model: torch.nn.Module) -> int:
    return len(decoder(model)[0].layers)


def run_layers(stack: torch.nn.Module, hidden: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
               layers: Sequence[torch.nn.Module]) -> torch.Tensor:
    """`hidden` [batch, tokens, width] through `layers`, as the decoder itself runs them (causal
    attention over the left-padded mask, rotary positions)."""
    from transformers.masking_utils import create_causal_mask

    causal_mask = create_causal_mask(config=stack.config, inputs_embeds=hidden, attention_mask=mask, cache=None,
                                     position_ids=positions)
    rotary = stack.rotary_emb(hidden, position_ids=positions)
    for layer in layers:
        hidden = layer(hidden, attention_mask=causal_mask, position_embeddings=rotary, position_ids=positions)
    return hidden


def trunk_states(model: torch.nn.Module, tokens: Tokens, first: int, batch_rows: int = 16,
                 progress: Progress | None = None) -> list[torch.Tensor]:
    """Each sequence's hidden states entering layer `first`, [its tokens, width] in TRUNK_DTYPE,
    under the model as it is (call it before adapters are attached, or with them switched off)."""
    stack, _ = decoder(model)
    device, states = model_device(model), []
    for start in range(0, len(tokens), batch_rows):
        batch = tokens.ids[start:start + batch_rows]
        ids, mask, positions = (t.to(device) for t in left_pad(batch, pad_id=0))
        with torch.no_grad():
            hidden = run_layers(stack, stack.embed_tokens(ids), mask, positions, stack.layers[:first])
        states += [row[len(row) - len(seq):].to(TRUNK_DTYPE).cpu() for row, seq in zip(hidden, batch)]
        if progress is not None:
            progress(len(states), len(tokens))
    return states


def reply_log_likelihoods(model: torch.nn.Module, trunks: Sequence[torch.Tensor], tokens: Tokens,
                          first: int) -> torch.Tensor:
    """sum_t log p(y_t | x, y<t) of each sequence's reply, [sequences] in float32: its trunk through
    layers[first:] of the model with its active adapter. Differentiable; wrap in torch.no_grad() to judge."""
    stack, head = decoder(model)
    device, dtype = model_device(model), stack.embed_tokens.weight.dtype
    width = max(len(ids) for ids in tokens.ids)
    hidden = torch.stack([torch.cat([t.new_zeros(width - len(t), t.shape[1]), t]) for t in trunks]).to(device, dtype)
    _, mask, positions = (t.to(device) for t in left_pad(tokens.ids, pad_id=0))
    top = stack.norm(run_layers(stack, hidden, mask, positions, stack.layers[first:]))
    # Left padding puts every reply at the end: position width - r - 1 + t predicts reply token t.
    rows = torch.cat([torch.full((r,), b) for b, r in enumerate(tokens.replies)]).to(device)
    at = torch.cat([torch.arange(width - r - 1, width - 1) for r in tokens.replies]).to(device)
    targets = torch.tensor([i for ids, r in zip(tokens.ids, tokens.replies) for i in ids[len(ids) - r:]], device=device)
    log_probs = head(top[rows, at]).float().log_softmax(-1).gather(-1, targets[:, None])[:, 0]
    return torch.zeros(len(tokens), device=device).index_add(0, rows, log_probs)


def judged_replies(model: torch.nn.Module, trunks: Sequence[torch.Tensor], tokens: Tokens, first: int,
                   batch_rows: int = 16, progress: Progress | None = None) -> torch.Tensor:
    """`reply_log_likelihoods` of every sequence, `batch_rows` at a time, without gradients."""
    scored = []
    with torch.no_grad():
        for start in range(0, len(tokens), batch_rows):
            rows = range(start, min(start + batch_rows, len(tokens)))
            scored.append(reply_log_likelihoods(model, [trunks[r] for r in rows], tokens.take(rows), first))
            if progress is not None:
                progress(rows[-1] + 1, len(tokens))
    return torch.cat(scored)


def shared_depth(model: torch.nn.Module, adapters: Sequence[str]) -> int:
    """How many lower decoder layers the base and every one of `adapters` share: the lowest layer
    any of them changes (0 when one changes the embeddings, or the model cannot be split)."""
    try:
        stack, head = decoder(model)
    except TrunkError:
        return 0
    depth = len(stack.layers)
    for name, module in model.named_modules():
        owned = set(getattr(module, "lora_A", {})) | set(getattr(module, "lora_embedding_A", {}))
        if owned.isdisjoint(adapters) or isinstance(module, torch.nn.ModuleDict):
            continue
        layer = re.search(r"\.layers\.(\d+)\.", name)
        if layer is None and module is not head and getattr(module, "base_layer", None) is not head:
            return 0  # an adapter outside the decoder layers and the head: nothing below it is shared
        depth = min(depth, int(layer.group(1))) if layer else depth
    return depth


@contextmanager
def active(model: torch.nn.Module, name: str) -> Iterator[None]:
    """`model` as its adapter `name` alone, or as the base (BASE); the active adapter restored after."""
    if name == BASE:
        with model.disable_adapter():
            yield
        return
    before = model.active_adapter
    model.set_adapter(name)
    try:
        yield
    finally:
        model.set_adapter(before)


def shared_reply_log_probs(model: torch.nn.Module, pad_id: int, batch: list[tuple[list[int], list[int]]],
                           models: list[str], first: int) -> list[torch.Tensor]:
    """`scoring.reply_log_probs` when every model of `models` shares the base's layers below `first`:
    each sequence through those layers once, then through each model's top layers and head,

        h = layers[:first](x, y)                               once per sequence, in the model's dtype
        log pi_m(. | x, y<t) = log_softmax(head(norm(layers_m[first:](h))))   per model m

    [models, reply tokens, vocab] per (prompt, reply) of `batch`."""
    stack, head = decoder(model)
    device, width = model_device(model), max(len(reply) for _, reply in batch)
    ids, mask, positions = (t.to(device) for t in left_pad([prompt + reply for prompt, reply in batch], pad_id))
    per_model = []
    with MODEL_LOCK, torch.no_grad():
        trunk = run_layers(stack, stack.embed_tokens(ids), mask, positions, stack.layers[:first])
        for name in models:
            with active(model, name):
                top = stack.norm(run_layers(stack, trunk, mask, positions, stack.layers[first:]))
            # Left padding puts every reply at the end: the width positions before the last predict them all.
            per_model.append(head(top[:, -width - 1:-1]).float().log_softmax(-1))
    log_probs = torch.stack(per_model, 1)  # [batch, models, width, vocab]
    return [log_probs[b, :, width - len(reply):] for b, (_, reply) in enumerate(batch)]


def trunk_cache(run: Run) -> Path:
    """Where a run keeps its trunks: disposable, rebuilt on demand, never shipped with a run's results."""
    return run.path / "cache" / "trunks"


def cached_trunk_states(model: torch.nn.Module, model_name: str, tokens: Tokens, first: int, cache: Path | None,
                        progress: Progress | None = None) -> list[torch.Tensor]:
    """`trunk_states`, each sequence read from `cache` when the same model computed it before (in
    any earlier call, whatever the other sequences were), and only the rest computed and written
    there as one more file (the embeddings alone, `first` 0, are never worth keeping)."""
    from safetensors import safe_open
    from safetensors.torch import save

    if cache is None or first == 0:
        return trunk_states(model, tokens, first, progress=progress)
    folder = cache / digest({"model": model_name, "first": first})
    keys = [digest(ids) for ids in tokens.ids]
    found: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, framework="pt") as stored:
            for key in set(keys).intersection(stored.keys()).difference(found):
                found[key] = stored.get_tensor(key)
    missing = list({key: row for row, key in enumerate(keys) if key not in found}.values())  # once each
    if missing:
        computed = dict(zip((keys[r] for r in missing), trunk_states(model, tokens.take(missing), first, progress=progress)))
        atomic_write_bytes(folder / f"{digest(sorted(computed))}.safetensors",
                           save({key: state.contiguous() for key, state in computed.items()}))
        found |= computed
    return [found[key] for key in keys]


def precision(name: str, device: torch.device) -> Any:
    """The autocast context for a precision setting: 'bfloat16' autocasts, 'float32' runs as loaded."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=name == "bfloat16")
