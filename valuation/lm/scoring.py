"""Teacher-forced scoring: the exact log-likelihood of fixed responses under combined models.

A *variant* is a model built by log-probability arithmetic from the models of one PeftModel: a
list of (model name, coefficient) terms, "__base__" naming the base pi_0, combined token by token,

    log p(. | x, y<t) = sum_k c_k log pi_k(. | x, y<t) - log Z_t

A trained model alone is [(name, 1)]; a coalition S is formula_terms(S), the arithmetic
sum_{l in S} log pi_l + (1 - |S|) log pi_0. Each response goes once through every model its
variants name, one row per model in a mixed-adapter batch, so the 2^n coalitions of n sources
cost n + 1 forward passes per response, and any number of variants is read off those passes.
On a decoder that can be split (`lm.trunk`), each prompt is read once per model and its responses
continue from its keys and values together; where the adapters change only the top layers, a
response goes through the layers below them once, and only the top layers run n + 1 times.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from .adapters import check_attached
from .forward import forward_log_probs, left_pad
from ..games.coalitions import BASE, Coalition, formula_terms
from ..data.preferences import Messages
from .tokens import prompt_ids
from .trunk import TrunkError, decoder, read_prompt, read_replies, shared_depth
from ..progress import Progress

Variant = list[tuple[str, float]]  # (model name, coefficient) terms of log p, renormalised per token
Key = TypeVar("Key", bound=Hashable)
MAX_COMBINED_FLOATS = 2**25  # variants are combined in blocks of at most this many floats (128 MiB)


@dataclass
class Scores:
    log_likelihoods: dict[Hashable, np.ndarray]  # variant -> [responses]: sum_t log p(y_t | x, y<t)
    kls: dict[tuple[Hashable, Hashable], np.ndarray]  # (p, q) -> [responses]: sum_t KL(p_t || q_t)


def score_variants(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
                   responses: Sequence[tuple[Messages, Sequence[int]]], variants: Mapping[Key, Variant],
                   kl_pairs: Sequence[tuple[Key, Key]] = (), max_batch_rows: int = 16,
                   progress: Progress | None = None) -> Scores:
    """Log-likelihood of every (conversation, reply token ids) response under every variant, and for
    each (p, q) of `kl_pairs` the KL summed over the reply's tokens,

        KL(p || q) = sum_t sum_v p_t(v) (log p_t(v) - log q_t(v)).

    A batch holds at most `max_batch_rows` rows, one per (response, model); a response that needs
    more rows is batched alone. `progress(done, total)` hears of scored responses.
    """
    keys = list(variants)
    models = list(dict.fromkeys(name for terms in variants.values() for name, _ in terms))
    check_attached(model, models)
    # coefficients[v, m]: the weight of model m's log-probs in variant v (a model named twice adds up)
    coefficients = torch.zeros(len(keys), len(models))
    for v, terms in enumerate(variants.values()):
        for name, coefficient in terms:
            coefficients[v, models.index(name)] += coefficient
    compared = list(dict.fromkeys(keys.index(key) for pair in kl_pairs for key in pair))
    kl_rows = [(compared.index(keys.index(p)), compared.index(keys.index(q))) for p, q in kl_pairs]

    encoded = [(prompt_ids(tokenizer, messages), list(reply)) for messages, reply in responses]
    log_likelihoods = np.zeros((len(keys), len(encoded)))
    kls = np.zeros((len(kl_pairs), len(encoded)))
    done, per_batch = 0, max(1, max_batch_rows // len(models))
    for rows, batch_log_probs in scored_replies(model, tokenizer.pad_token_id, encoded, models, per_batch):
        for r, log_probs in zip(rows, batch_log_probs):
            weights = coefficients.to(log_probs.device)
            log_likelihoods[:, r] = variant_log_likelihoods(log_probs, encoded[r][1], weights)
            if kl_rows:
                kls[:, r] = kl_divergences(combine(log_probs, weights[compared]), kl_rows)
        done += len(rows)
        if progress is not None:
            progress(done, len(encoded))
    return Scores({key: log_likelihoods[v] for v, key in enumerate(keys)},
                  {pair: kls[k] for k, pair in enumerate(kl_pairs)})


def score_coalitions(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
                     responses: Sequence[tuple[Messages, Sequence[int]]], coalitions: Sequence[Coalition],
                     max_batch_rows: int = 16, progress: Progress | None = None) -> dict[Coalition, np.ndarray]:
    """Exact log pi_S(reply | prompt) of every response, for every coalition S (by arithmetic)."""
    variants = {coalition: formula_terms(coalition) for coalition in coalitions}
    return score_variants(model, tokenizer, responses, variants, max_batch_rows=max_batch_rows,
                          progress=progress).log_likelihoods


def scored_replies(model: torch.nn.Module, pad_id: int, encoded: list[tuple[list[int], list[int]]], models: list[str],
                   per_batch: int) -> Iterator[tuple[list[int], list[torch.Tensor]]]:
    """(rows, each row's [models, reply tokens, vocab] next-token log-probs) per batch of at most
    `per_batch` responses. A decoder that can be split (`lm.trunk`) reads each prompt once per model
    and the layers every model shares with the base once per reply; any other model runs each
    (prompt, reply) under every model in mixed-adapter batches."""
    try:
        decoder(model)
    except TrunkError:
        for start in range(0, len(encoded), per_batch):
            rows = list(range(start, min(start + per_batch, len(encoded))))
            yield rows, reply_log_probs(model, pad_id, [encoded[r] for r in rows], models)
        return
    first = shared_depth(model, [m for m in models if m != BASE])
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for r, (prompt, _) in enumerate(encoded):
        by_prompt.setdefault(tuple(prompt), []).append(r)
    for prompt, rows in by_prompt.items():
        read = read_prompt(model, list(prompt), models, first)
        for start in range(0, len(rows), per_batch):
            chunk = rows[start:start + per_batch]
            yield chunk, read_replies(model, read, [encoded[r][1] for r in chunk])


def reply_log_probs(model: torch.nn.Module, pad_id: int, batch: list[tuple[list[int], list[int]]],
                    models: list[str]) -> list[torch.Tensor]:
    """Per (prompt, reply) of `batch`: every model's next-token log-probs at the reply's tokens,
    [models, reply tokens, vocab], from one mixed-adapter forward pass over the whole batch."""
    input_ids, mask, positions = left_pad([prompt + reply for prompt, reply in batch for _ in models], pad_id)
    width = max(len(reply) for _, reply in batch)
    # Left padding puts every reply at the end: the last width + 1 positions predict them all.
    log_probs, _ = forward_log_probs(model, input_ids, mask, positions, models * len(batch), keep=width + 1)
    log_probs = log_probs[:, :-1].view(len(batch), len(models), width, -1)
    return [log_probs[b, :, width - len(reply):] for b, (_, reply) in enumerate(batch)]


def combine(log_probs: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """log p_v = log_softmax(sum_m c_vm log pi_m) per token: [variants, tokens, vocab] from [models, tokens, vocab]."""
    models, length, vocab = log_probs.shape
    return (coefficients @ log_probs.reshape(models, -1)).view(-1, length, vocab).log_softmax(-1)


def variant_log_likelihoods(log_probs: torch.Tensor, reply: Sequence[int], coefficients: torch.Tensor,
                            max_floats: int = MAX_COMBINED_FLOATS) -> np.ndarray:
    """sum_t log p_v(y_t | y<t) for every variant (row of `coefficients`), where

        log p_v(y_t) = z_v,t[y_t] - logsumexp(z_v,t),   z_v,t = sum_m c_vm log pi_m(. | y<t)

    The first term reads only the reply's tokens; the normaliser is `log_normalisers`, skipped for a
    variant that is one model as it is (one coefficient 1, the rest 0): its log-probs are normalised."""
    length = log_probs.shape[1]
    tokens, targets = torch.arange(length, device=log_probs.device), torch.tensor(reply, device=log_probs.device)
    chosen = (coefficients.double() @ log_probs[:, tokens, targets].double()).sum(-1)  # sum_t z_v,t[y_t]
    alone = (coefficients == 1).sum(-1).eq(1) & (coefficients != 0).sum(-1).eq(1)
    mixed = torch.nonzero(~alone).flatten()
    normalisers = torch.zeros(len(coefficients), dtype=torch.float64, device=log_probs.device)
    if len(mixed):
        normalisers[mixed] = log_normalisers(log_probs, coefficients[mixed], max_floats)
    return (chosen - normalisers).cpu().numpy()


def log_normalisers(log_probs: torch.Tensor, coefficients: torch.Tensor,
                    max_floats: int = MAX_COMBINED_FLOATS) -> torch.Tensor:
    """sum_t log Z_v,t for every variant v, Z_v,t = sum_y exp(z_v,t(y)), z_v,t = sum_m c_vm log pi_m(y | y<t).

    Meet in the middle, so that 2^n coalitions need about 2 * 2^(n/2) vocabulary-sized exponentials
    per token, not 2^n. Against a reference model r (the one whose coefficient varies most: the base,
    in the arithmetic), with D_m = log pi_m - log pi_r and s_v = sum_m c_vm,

        z_v = [s_v log pi_r + sum_{m in left} c_vm D_m] + [sum_{m in right} c_vm D_m] = x_a(v) + x_b(v),

    so Z_v = sum_y e^x_a(y) e^x_b(y): one entry of a matrix product of the left halves' distinct
    coefficient patterns a with the right halves' b. Models that no variant uses together (one
    training seed's adapters and another's) are split apart, so that no product pairs them."""
    models, length, vocab = log_probs.shape
    reference = max(range(models), key=lambda m: len(coefficients[:, m].unique()))
    others = [m for m in range(models) if m != reference]
    # The terms x is built from: log pi_r, then every D_m; and each variant's s_v, then its c_vm on the D_m
    # (s_v summed in float64: (1 - |S|) / T + |S| / T in float32 loses digits to cancellation).
    terms = torch.cat([log_probs[reference:reference + 1], log_probs[others] - log_probs[reference]]).float()
    relative = torch.cat([coefficients.double().sum(-1, keepdim=True), coefficients[:, others].double()], 1).float()
    normalisers = torch.zeros(len(coefficients), dtype=torch.float64, device=log_probs.device)
    for variants, columns in used_together(relative[:, 1:]):
        half = (len(columns) + 1) // 2
        left_columns, right_columns = [0, *(1 + c for c in columns[:half])], [1 + c for c in columns[half:]]
        left, left_of = distinct_rows(relative[variants][:, left_columns])
        right, right_of = distinct_rows(relative[variants][:, right_columns])
        left_terms, right_terms = terms[left_columns], terms[right_columns]
        step = max(1, max_floats // ((len(left) + len(right)) * vocab))
        for first in range(0, length, step):
            t = slice(first, first + step)
            # e^x, each pattern shifted by its maximum per token so that no exponential overflows
            e_left, top_left = shifted_exp(left, left_terms[:, t])
            e_right, top_right = shifted_exp(right, right_terms[:, t])
            # sum_y e_left[a, y] e_right[b, y] for every (a, b), in float64 across slices of the vocabulary
            # (float32 within one: a sum of 49,152 terms in float32 alone would lose 1e-5 of its value)
            sums = sum(torch.bmm(e_left[:, :, y].transpose(0, 1), e_right[:, :, y].permute(1, 2, 0)).double()
                       for y in vocabulary_slices(vocab))[:, left_of, right_of]
            logs = sums.log() + top_left[left_of].T + top_right[right_of].T
            # Below 1e-24 the products lost below float32's range (1e-38 each) could matter: read those
            # variants' tokens exactly.
            lost = sums < 1e-24
            if lost.any():
                rows = lost.any(0).nonzero().flatten()
                exact = coefficients[variants[rows]].float() @ log_probs[:, t].reshape(models, -1).float()
                logs[:, rows] = torch.logsumexp(exact.view(len(rows), -1, vocab), -1).double().T
            normalisers[variants] += logs.sum(0)
    return normalisers


def used_together(coefficients: torch.Tensor) -> list[tuple[torch.Tensor, list[int]]]:
    """Variants grouped by the models they use, models joined when any variant uses both: (variants,
    their models) per group, the variants that use none (their own group, no models) included."""
    group = list(range(coefficients.shape[1]))  # union-find: each model points towards its group's root

    def root(m: int) -> int:
        while group[m] != m:
            m = group[m]
        return m

    uses = [[m for m, nonzero in enumerate(row) if nonzero] for row in (coefficients != 0).tolist()]
    for used in uses:
        for m in used[1:]:
            group[root(m)] = root(used[0])
    by_root: dict[int, list[int]] = {}
    for v, used in enumerate(uses):
        by_root.setdefault(root(used[0]) if used else -1, []).append(v)
    return [(torch.tensor(variants), [] if key < 0 else [m for m in range(len(group)) if root(m) == key])
            for key, variants in by_root.items()]


def vocabulary_slices(vocab: int, width: int = 2048) -> list[slice]:
    """The vocabulary in slices of `width` tokens: float32 sums within one, float64 across them."""
    return [slice(start, start + width) for start in range(0, vocab, width)]


def distinct_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows, and which of them each row is (rows of no columns: one empty row)."""
    if rows.shape[1] == 0:
        return rows[:1], torch.zeros(len(rows), dtype=torch.long, device=rows.device)
    return rows.unique(dim=0, return_inverse=True)


def shifted_exp(patterns: torch.Tensor, terms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """e^(x - max_y x) [patterns, tokens, vocab] and max_y x [patterns, tokens], x = sum_k pattern_k terms_k."""
    count, length, vocab = terms.shape
    x = (patterns @ terms.reshape(count, -1)).view(len(patterns), length, vocab) if count else \
        terms.new_zeros(len(patterns), length, vocab)
    top = x.amax(-1)
    return (x - top[..., None]).exp_(), top.double()


def kl_divergences(combined: torch.Tensor, pairs: list[tuple[int, int]]) -> np.ndarray:
    """sum_t KL(p_t || q_t) for each (p, q) of rows of `combined` [variants, tokens, vocab]."""
    return np.array([float((combined[p].exp() * (combined[p] - combined[q])).sum()) for p, q in pairs])
