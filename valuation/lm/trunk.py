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
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..progress import Progress
from ..runs import Run
from ..games.coalitions import BASE
from ..storage import atomic_write_bytes, digest
from .forward import MODEL_LOCK, distinct_prompt_models, left_pad, model_device

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
               layers: Sequence[torch.nn.Module], cache: Any = None) -> torch.Tensor:
    """`hidden` [batch, tokens, width] through `layers`, as the decoder itself runs them (causal
    attention over the padded mask, rotary positions). With a `cache` (transformers' DynamicCache)
    the tokens attend to the keys and values it holds for these layers too, and add theirs to it;
    `mask` then covers the cached tokens and the new ones."""
    from transformers.masking_utils import create_causal_mask

    index = list(stack.layers).index(layers[0]) if len(layers) else 0  # the cache layer that sizes the mask
    causal_mask = create_causal_mask(config=stack.config, inputs_embeds=hidden, attention_mask=mask, cache=cache,
                                     position_ids=positions, layer_idx=index)
    rotary = stack.rotary_emb(hidden, position_ids=positions)
    for layer in layers:
        hidden = layer(hidden, attention_mask=causal_mask, position_embeddings=rotary, position_ids=positions,
                       cache=cache, use_cache=cache is not None)
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
    if name == BASE or not hasattr(model, "peft_config"):
        with model.disable_adapter() if hasattr(model, "peft_config") else nullcontext():
            yield
        return
    before = model.active_adapter
    model.set_adapter(name)
    try:
        yield
    finally:
        model.set_adapter(before)


@dataclass
class ReadPrompt:
    """A prompt read once by every model: the keys and values of the layers below `first` (shared
    by all), of each model's layers from `first` up, and each model's next-token log-probs after it."""

    length: int
    first: int
    lower: Any  # DynamicCache over layers[:first]
    upper: dict[str, Any]  # model -> DynamicCache over its layers[first:]
    after: torch.Tensor  # [models, vocab]: log pi_m(. | x), the first reply token's distribution


def read_prompt(model: torch.nn.Module, prompt: list[int], models: list[str], first: int) -> ReadPrompt:
    """The prompt through the layers below `first` once, then through each model's top layers."""
    from transformers import DynamicCache

    stack, head = decoder(model)
    device = model_device(model)
    ids, mask = torch.tensor([prompt], device=device), torch.ones(1, len(prompt), dtype=torch.long, device=device)
    positions = torch.arange(len(prompt), device=device)[None]
    lower, upper, after = DynamicCache(config=stack.config), {}, []
    with MODEL_LOCK, torch.no_grad():
        trunk = run_layers(stack, stack.embed_tokens(ids), mask, positions, stack.layers[:first], lower)
        for name in models:
            upper[name] = DynamicCache(config=stack.config)
            with active(model, name):
                top = stack.norm(run_layers(stack, trunk, mask, positions, stack.layers[first:], upper[name]))
            after.append(head(top[0, -1]).float().log_softmax(-1))
    return ReadPrompt(len(prompt), first, lower, upper, torch.stack(after))


def read_replies(model: torch.nn.Module, prompt: ReadPrompt, replies: list[list[int]]) -> list[torch.Tensor]:
    """Each reply's next-token log-probs under every model of `prompt`, [models, reply tokens, vocab]:
    the replies together (right-padded) on the prompt's cached keys and values,

        h = layers[:first](y | x)                                once per reply, for all models
        log pi_m(. | x, y<t) = log_softmax(head(norm(layers_m[first:](h | x))))   per model m

    so neither the prompt nor the layers every model shares with the base are read twice."""
    import copy

    stack, head = decoder(model)
    device, length, width = model_device(model), prompt.length, max(len(reply) for reply in replies)
    ids = torch.tensor([reply + [0] * (width - len(reply)) for reply in replies], device=device)
    mask = torch.tensor([[1] * (length + len(reply)) + [0] * (width - len(reply)) for reply in replies], device=device)
    positions = (length + torch.arange(width, device=device))[None].expand(len(replies), -1)

    def cache_for_all(cache: Any) -> Any:  # the prompt's keys and values, once per reply
        cache = copy.deepcopy(cache)
        cache.batch_repeat_interleave(len(replies))
        return cache

    per_model = []
    with MODEL_LOCK, torch.no_grad():
        trunk = run_layers(stack, stack.embed_tokens(ids), mask, positions, stack.layers[:prompt.first],
                           cache_for_all(prompt.lower))
        for name, after in zip(prompt.upper, prompt.after):
            with active(model, name):
                top = stack.norm(run_layers(stack, trunk, mask, positions, stack.layers[prompt.first:],
                                            cache_for_all(prompt.upper[name])))
            # Reply token 0 follows the prompt; token t > 0 follows reply position t - 1.
            later = head(top[:, :width - 1]).float().log_softmax(-1)  # [replies, width - 1, vocab]
            per_model.append(torch.cat([after.expand(len(replies), 1, -1), later], 1))
    log_probs = torch.stack(per_model, 1)  # [replies, models, width, vocab]
    return [log_probs[r, :, :len(reply)] for r, reply in enumerate(replies)]


@contextmanager
def mixed_batch(model: torch.nn.Module, models: list[str]) -> Iterator[None]:
    """Row i of every LoRA layer's input under `models[i]` (BASE: the base), as PEFT's mixed-adapter
    batch (`adapter_names`) sets it up for a whole forward pass, for layers run one by one here."""
    if not hasattr(model, "peft_config"):
        yield
        return
    with model._enable_peft_forward_hooks(adapter_names=models):
        yield


class SharedTrunkRows:
    """The sampler's rows (`lm.forward.GroupRows`) on a split decoder. All of a group's rows read
    the same tokens, and below `first` every model is the base, so a step runs

        h = layers[:first](token | prefix)                          once per group
        log pi_m(. | prefix, token) = head(norm(layers_m[first:](h)))  per row, mixed-adapter

    each with its own cache: the lower layers' keys and values per group, the top layers' per row."""

    def __init__(self, model: torch.nn.Module, pad_id: int, prompts: list[list[int]], row_group: torch.Tensor,
                 row_adapter: list[str], first: int) -> None:
        self.model, self.pad_id, self.prompts = model, pad_id, prompts
        self.row_group, self.row_adapter, self.first = row_group, row_adapter, first
        self.stack, self.head = decoder(model)

    def start(self) -> torch.Tensor:
        from transformers import DynamicCache

        device = model_device(self.model)
        # The lower layers once per distinct prompt, the top once per distinct (prompt, model); then
        # each group's and each row's caches copied from them.
        distinct = {prompt: slot for slot, prompt in enumerate(dict.fromkeys(map(tuple, self.prompts)))}
        prompt_of_group = torch.tensor([distinct[tuple(p)] for p in self.prompts], device=device)
        pairs, pair_of_row = distinct_prompt_models(self.prompts, self.row_group, self.row_adapter)
        prompt_of_pair = torch.tensor([distinct[prompt] for prompt, _ in pairs], device=device)
        ids, mask, positions = (t.to(device) for t in left_pad(list(distinct), self.pad_id))
        self.lower, self.upper = DynamicCache(config=self.stack.config), DynamicCache(config=self.stack.config)
        trunk = self.lower_layers(ids, mask, positions)
        log_probs = self.top_layers(trunk[prompt_of_pair], mask[prompt_of_pair], positions[prompt_of_pair],
                                    [m for _, m in pairs])
        self.lower.batch_select_indices(prompt_of_group)
        self.upper.batch_select_indices(pair_of_row)
        self.mask, self.next_position = mask[prompt_of_group], positions[prompt_of_group, -1] + 1
        return log_probs[pair_of_row]

    def step(self, drawn: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=-1)
        positions = self.next_position[:, None]
        trunk = self.lower_layers(drawn[:, None], self.mask, positions)
        self.next_position = self.next_position + 1
        return self.top_layers(trunk[self.row_group], self.mask[self.row_group], positions[self.row_group],
                               self.row_adapter)

    def keep(self, groups: torch.Tensor, rows: torch.Tensor, row_group: torch.Tensor) -> None:
        self.row_group, self.row_adapter = row_group, [self.row_adapter[r] for r in rows.tolist()]
        self.mask, self.next_position = self.mask[groups], self.next_position[groups]
        self.lower.batch_select_indices(groups)
        self.upper.batch_select_indices(rows)

    def lower_layers(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        with MODEL_LOCK, torch.no_grad(), mixed_batch(self.model, [BASE] * len(ids)):
            return run_layers(self.stack, self.stack.embed_tokens(ids), mask, positions,
                              self.stack.layers[:self.first], self.lower)

    def top_layers(self, trunk: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                   models: list[str]) -> torch.Tensor:
        """[rows, vocab]: the next-token log-probs after each row's last token, row i under models[i]."""
        with MODEL_LOCK, torch.no_grad(), mixed_batch(self.model, models):
            top = run_layers(self.stack, trunk, mask, positions, self.stack.layers[self.first:], self.upper)
            return self.head(self.stack.norm(top[:, -1])).float().log_softmax(-1)


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
