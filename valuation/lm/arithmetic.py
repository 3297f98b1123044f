"""Coalition models by language-model arithmetic: the sampler (the scorer is in scoring.py).

A coalition S of data sources is never trained. Its next-token distribution is built from the base
pi_0 and the sources' adapters pi_l, all in one PeftModel:

    log pi_S(. | prefix) = sum_{l in S} log pi_l(. | prefix) + (1 - |S|) log pi_0(. | prefix) - log Z

The coefficients sum to one, so the empty coalition is the base model and a singleton is its adapter.

Sampling runs many (coalition, prompt, sample) groups at once. A group owns one batch row per term
of its formula; every decoding step is ONE forward pass over a mixed-adapter batch (PEFT's
`adapter_names`, "__base__" for pi_0), after which each group combines its rows' log-softmaxes in
float32, samples one token and appends it to all of its rows. Where the adapters change only the top
layers (`lm.trunk`), the layers below them run once per group, not once per row. Each group has its
own random generator seeded from (seed, prompt index, sample index) and never from the coalition:
every coalition sees the same random numbers (common random numbers), whatever else shares the batch.

Each forward pass holds `forward.MODEL_LOCK`; concurrent generations interleave step by step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from ..games.coalitions import BASE, Coalition, decode_rows, formula_terms
from ..config import helped
from ..data.preferences import Messages
from ..errors import UserError
from .adapters import check_attached
from .forward import GroupRows, WholeModelRows, model_device
from .tokens import prompt_ids
from .trunk import SharedTrunkRows, decoder, shared_depth


class SamplingError(UserError):
    """Sampling settings or coalitions that cannot work; the message says what to change."""


@dataclass
class SamplingSettings:
    temperature: float = helped(0.7, "Softmax temperature of the combined distribution; 0 picks the most likely token.")
    top_p: float = helped(0.9, "Nucleus: keep the most likely tokens until their mass reaches top_p (1 keeps all).")
    top_k: int = helped(0, "Keep only the k most likely tokens (0: no limit).")
    max_new_tokens: int = helped(64, "Most tokens generated per response.")
    seed: int = helped(0, "Seed of the random draws; the same seed gives every coalition the same draws.")
    max_batch_rows: int = helped(64, "Memory budget: most model rows decoded together (base + members per group; "
                                     "where the adapters leave lower layers shared, those count once per group).")

    def validate(self) -> None:
        if not self.temperature >= 0:
            raise SamplingError(f"temperature={self.temperature}: use 0 (greedy) or a positive number such as 0.7.")
        if not 0 < self.top_p <= 1:
            raise SamplingError(f"top_p={self.top_p}: use a number in (0, 1], e.g. 0.9 (1 switches it off).")
        if self.top_k < 0:
            raise SamplingError(f"top_k={self.top_k}: use 0 (off) or a positive number of tokens.")
        if self.max_new_tokens < 1:
            raise SamplingError(f"max_new_tokens={self.max_new_tokens}: generate at least 1 token.")
        if self.max_batch_rows < 1:
            raise SamplingError(f"max_batch_rows={self.max_batch_rows}: allow at least 1 row per batch.")


@dataclass(frozen=True)
class GenerationRequest:
    """One group: a response to `messages` from `coalition`'s model; the indices seed its draws."""

    coalition: Coalition
    messages: Messages
    prompt_index: int = 0
    sample_index: int = 0


@dataclass
class Generation:
    coalition: Coalition
    prompt_index: int
    sample_index: int
    token_ids: list[int]  # sampled tokens, the end-of-sequence token included when one ended the response
    text: str  # decoded without special tokens
    num_tokens: int
    finished_by_eos: bool  # False: stopped by max_new_tokens or by the caller
    seconds: float  # from the start of its batch to its last token


@dataclass
class StepUpdate:
    """What one decoding step produced, keyed by the index of the request in the caller's list."""

    pieces: dict[int, str]  # text added by this step's token ("" while a multi-byte character is incomplete)
    finished: dict[int, Generation]  # groups that ended at this step


# -----------------------------------------------------------------------------
# coalitions and their requests


def coalition_requests(prompts: Sequence[Messages], coalitions: Sequence[Iterable[str]],
                        samples: int = 1) -> list[GenerationRequest]:
    """The evaluation grid: every coalition answers every prompt `samples` times."""
    return [
        GenerationRequest(frozenset(coalition), list(messages), prompt_index, sample_index)
        for prompt_index, messages in enumerate(prompts)
        for sample_index in range(samples)
        for coalition in coalitions
    ]


def check_coalitions(model: torch.nn.Module, coalitions: Iterable[Collection[str]]) -> None:
    """Every member names an adapter on the model, once (a list of names could repeat one)."""
    for coalition in coalitions:
        if len(set(coalition)) < len(coalition):
            raise SamplingError(f"coalition {list(coalition)} names a source twice.")
        check_attached(model, coalition)


def stop_token_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The tokenizer's end token and every end token of the model's generation config."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    configured = configured if isinstance(configured, list) else [configured]
    return {token for token in [tokenizer.eos_token_id, *configured] if token is not None}


# -----------------------------------------------------------------------------
# drawing tokens from combined log-probabilities

NUCLEUS_FIRST_K = 256  # top-p looks at the k most likely tokens first, widening only when they hold too little mass


def group_generator(seed: int, prompt_index: int, sample_index: int) -> torch.Generator:
    """The group's own stream of random numbers: from the seed and indices, never the coalition."""
    state = np.random.SeedSequence([seed, prompt_index, sample_index]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


def draw_tokens(log_probs: torch.Tensor, settings: SamplingSettings,
                generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One token per row of the combined log pi_S [groups, vocab], each row drawing from its generator.

    Temperature, top-k and top-p act on the combined distribution. The draw is by inverse CDF in
    vocabulary order with one uniform per group and step, so coalitions with similar distributions
    tend to pick the same token from the same uniform (a strong coupling for common random numbers).
    """
    uniforms = torch.cat([torch.rand(1, generator=generator) for generator in generators]).to(log_probs.device)
    if settings.temperature == 0:
        return log_probs.argmax(-1)
    probs = (log_probs / settings.temperature).softmax(-1)
    keep = kept_tokens(probs, settings.top_k, settings.top_p)
    if keep is not None:
        probs = probs * keep
    cdf = probs.cumsum(-1)
    total = cdf[:, -1:]
    # u * total < total, so the draw lands on a token with positive mass even after rounding.
    target = torch.minimum(uniforms[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)


def kept_tokens(probs: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor | None:
    """Mask of the tokens top-k and top-p keep (None when both are off)."""
    vocab = probs.shape[-1]
    if top_k == 0 and top_p >= 1:
        return None
    k = min(top_k or NUCLEUS_FIRST_K, vocab)
    while True:
        values, indices = probs.topk(k, dim=-1)  # sorted, most likely first
        # Nucleus: the smallest prefix whose mass reaches top_p (a token stays if the mass before it is short).
        before = values.cumsum(-1) - values
        count = (before < top_p).sum(-1) if top_p < 1 else torch.full_like(indices[:, 0], k)
        if top_k or k == vocab or bool((count < k).all()):
            break
        k = min(4 * k, vocab)
    ranks = torch.arange(k, device=probs.device)[None, :]
    return torch.zeros_like(probs).scatter_(-1, indices, (ranks < count[:, None]).to(probs.dtype))


# -----------------------------------------------------------------------------
# the sampler


def stream_coalitions(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, requests: Sequence[GenerationRequest],
                      settings: SamplingSettings, stop_event: threading.Event | None = None) -> Iterator[StepUpdate]:
    """Generate every request, yielding after each decoding step; set `stop_event` to stop early.

    Requests are decoded together, in chunks of at most `settings.max_batch_rows` model rows (a
    group needs one row per formula term; layers its rows share count once, `row_share`). Results
    do not depend on the chunking, but for float rounding in matrix products of another shape.
    After a stop the running chunk's unfinished groups are reported finished (not by end of
    sequence) and later chunks do not start. Bad settings or coalitions raise SamplingError here,
    before any decoding.
    """
    settings.validate()
    check_coalitions(model, (request.coalition for request in requests))
    return decode_chunks(model, tokenizer, requests, settings, stop_token_ids(model, tokenizer), stop_event)


def decode_chunks(model, tokenizer, requests: Sequence[GenerationRequest], settings: SamplingSettings,
                  stops: set[int], stop_event: threading.Event | None) -> Iterator[StepUpdate]:
    for chunk in row_chunks(requests, settings.max_batch_rows, row_share(model, requests)):
        yield from decode_chunk(model, tokenizer, [(i, requests[i]) for i in chunk], settings, stops, stop_event)
        if stop_event is not None and stop_event.is_set():
            return


def sample_coalitions(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, requests: Sequence[GenerationRequest],
                      settings: SamplingSettings, progress: Callable[[int], object] | None = None,
                      stop_event: threading.Event | None = None) -> list[Generation]:
    """Run `stream_coalitions` to the end; `progress(k)` hears of k more finished groups (tqdm's update)."""
    results: dict[int, Generation] = {}
    for update in stream_coalitions(model, tokenizer, requests, settings, stop_event):
        results.update(update.finished)
        if progress is not None and update.finished:
            progress(len(update.finished))
    return [results[i] for i in sorted(results)]


def row_share(model: torch.nn.Module, requests: Sequence[GenerationRequest]) -> float:
    """The share of a model row's layers (and of their caches) that is its own: 1 where every row runs
    the whole model; where the requests' adapters leave the lower layers as the base's, only the
    layers above them (`row_decoder`), the rest run once per group."""
    shared = shared_depth(model, sorted({source for r in requests for source in r.coalition}))  # its adapters
    return 1.0 - shared / len(decoder(model)[0].layers) if shared else 1.0


def row_chunks(requests: Sequence[GenerationRequest], max_rows: int, share: float = 1.0) -> list[list[int]]:
    """Consecutive requests packed so that each chunk needs at most `max_rows` whole-model rows (a
    larger group alone): a group of k rows needs k of them, or, where its rows own only a `share` of
    the layers, the shared layers once and that share of each row."""
    chunks: list[list[int]] = []
    rows = 0.0
    for index, request in enumerate(requests):
        need = (1 - share) + share * decode_rows(request.coalition)
        if not chunks or rows + need > max_rows + 1e-9:
            chunks.append([])
            rows = 0.0
        chunks[-1].append(index)
        rows += need
    return chunks


def decode_chunk(model, tokenizer, groups: list[tuple[int, GenerationRequest]], settings: SamplingSettings,
                 stops: set[int], stop_event: threading.Event | None) -> Iterator[StepUpdate]:
    start = time.perf_counter()
    device = model_device(model)
    generators = [group_generator(settings.seed, r.prompt_index, r.sample_index) for _, r in groups]

    # Rows: one per (group, formula term). Its coefficient, and the group it feeds.
    terms = [formula_terms(request.coalition) for _, request in groups]
    row_group = torch.tensor([g for g, group_terms in enumerate(terms) for _ in group_terms], device=device)
    row_coef = torch.tensor([coef for group_terms in terms for _, coef in group_terms], device=device)
    row_adapter = [adapter for group_terms in terms for adapter, _ in group_terms]
    prompts = [prompt_ids(tokenizer, request.messages) for _, request in groups]
    rows = row_decoder(model, tokenizer.pad_token_id, prompts, row_group, row_adapter)
    log_probs = rows.start()

    active = list(range(len(groups)))  # chunk-local group ids still decoding; row_group indexes into it
    tokens: list[list[int]] = [[] for _ in groups]
    emitted = [""] * len(groups)
    for step in range(settings.max_new_tokens):
        # log pi_S = sum_l log pi_l + (1 - |S|) log pi_0, in float32, renormalised over the vocabulary.
        combined = torch.zeros(len(active), log_probs.shape[-1], device=device)
        combined.index_add_(0, row_group, log_probs * row_coef[:, None])
        drawn = draw_tokens(combined.log_softmax(-1), settings, [generators[g] for g in active]).tolist()

        pieces, finished = {}, {}
        stopped = stop_event is not None and stop_event.is_set()
        for slot, g in enumerate(active):
            tokens[g].append(drawn[slot])
            text = tokenizer.decode(tokens[g], skip_special_tokens=True)
            pieces[groups[g][0]], emitted[g] = new_text(text, emitted[g])
            by_eos = drawn[slot] in stops
            if by_eos or stopped or step == settings.max_new_tokens - 1:
                r = groups[g][1]
                finished[groups[g][0]] = Generation(r.coalition, r.prompt_index, r.sample_index, tokens[g], text,
                                                    len(tokens[g]), by_eos, time.perf_counter() - start)
        yield StepUpdate(pieces, finished)

        # Finished groups leave the batch: keep the rows (and caches) of the others.
        alive = torch.tensor([groups[g][0] not in finished for g in active], device=device)
        if not alive.any():
            return
        if not alive.all():
            kept = alive[row_group].nonzero().squeeze(-1)
            row_group, row_coef = (alive.long().cumsum(0) - 1)[row_group[kept]], row_coef[kept]
            rows.keep(alive.nonzero().squeeze(-1), kept, row_group)
            active = [g for g, keep in zip(active, alive.tolist()) if keep]
            drawn = [drawn[slot] for slot, keep in enumerate(alive.tolist()) if keep]

        # Every row of a group takes the group's token.
        log_probs = rows.step(torch.tensor(drawn, device=device))


def row_decoder(model: torch.nn.Module, pad_id: int, prompts: list[list[int]], row_group: torch.Tensor,
                row_adapter: list[str]) -> GroupRows:
    """Where the rows' adapters leave lower layers as the base's (`lm.trunk`), each group's token runs
    them once; otherwise (adapters on every layer or the embeddings, a decoder that cannot be split)
    every row runs through the whole model."""
    first = shared_depth(model, [m for m in dict.fromkeys(row_adapter) if m != BASE])
    if first == 0:
        return WholeModelRows(model, pad_id, prompts, row_group, row_adapter)
    return SharedTrunkRows(model, pad_id, prompts, row_group, row_adapter, first)


def new_text(text: str, emitted: str) -> tuple[str, str]:
    """(piece to show, text shown so far) once the whole response decodes to `text`.

    Decoding all tokens and diffing keeps multi-byte characters whole: while the last token ends
    inside a character the text ends in U+FFFD, and nothing is shown until the character completes.
    """
    if text.endswith("\ufffd"):
        return "", emitted
    return text[len(emitted):], text

