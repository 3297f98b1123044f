"""Exact Shapley values with intervals from the spread over prompts (the bootstrap, or a t-interval),
and over the other samples a run's values depend on where they are stored: the reward model's
training pairs (its bootstrap heads) and the adapters' training seeds."""

from __future__ import annotations

from collections.abc import Sequence
from math import pi, sqrt, tan
from statistics import NormalDist
from typing import Literal

import numpy as np

from .shapley import INDEX_WEIGHTS, ValuationResult, values_by_mask
from .utility_table import UtilityTable

def _t_quantile(q: float, df: int) -> float:
    """Student t quantile: closed form for df <= 2, else the Cornish-Fisher expansion (error < 1e-2 at df=3)."""
    if df == 1:
        return tan(pi * (q - 0.5))
    if df == 2:
        return (2 * q - 1) / sqrt(2 * q * (1 - q))
    z = NormalDist().inv_cdf(q)
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * df**4))


def bootstrap_intervals(
    players: Sequence[str],
    table: UtilityTable,
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int | None = 0,
    interval: Literal["percentile", "t"] = "percentile",
    index: str = "shapley",
) -> ValuationResult:
    """Exact Shapley values with intervals from the spread over prompts, and over the reward
    model's training pairs for the objectives whose table holds bootstrap heads (`table.heads`).

    Shapley is linear in v, so each prompt's game has its own Shapley value, all in one product,
    and their mean is the Shapley value of the mean utility. Percentile: resample prompts with
    replacement `n_boot` times. t: mean +- t * sd / sqrt(n_prompts). `index` picks another value
    linear in v the same way (`shapley.INDEX_WEIGHTS`: Banzhaf, leave-one-out).

    With heads, the value depends on two independent samples, the evaluation prompts and the
    reward model's training pairs, so a bootstrap replicate resamples both: it draws one of the K
    heads (each refit on a resample of the training pairs) uniformly and scores the resampled
    prompts under it (a nested bootstrap; the K refits stand in for fresh resamples of the pairs).
    The values stay the main head's, and the heads' values are centred on them (each source's are
    shifted by the heads' mean offset from the main head's): the heads add their spread, not a shift,
    which would be the bootstrap's own bias (a refit on a resample with duplicates fits more sharply,
    so its values run larger in magnitude) plus the noise of a mean of K. The t-interval adds the
    between-head variance of the values to the prompts' (the law of total variance). Objectives
    without heads are unchanged.

    With several training seeds (`table.seeds`; the table holds their mean) the values are the mean
    of the seeds' values, and a replicate also draws k of the k seeds with replacement (the same
    resampled prompts for all: the seeds were evaluated on the same prompts), so the intervals hold
    the spread between seeds too; the t-interval adds the variance of a mean of k seeds. A head's
    spread is measured on the first seed's values and added as an offset, centred.
    """
    players = tuple(players)
    weights = INDEX_WEIGHTS[index](len(players))  # every index here is linear in v: the same resampling serves all
    needed = weights.any(1)  # the coalitions the index reads, and the empty and grand ones (the total gain)
    needed[[0, -1]] = True
    u = values_by_mask(players, table.prompt_values, needed)  # [2^n, m, p], the mean over training seeds where several
    per_prompt = np.einsum("si,smp->imp", weights, u)  # [n, m, p]
    values = per_prompt.mean(-1)
    n_prompts = u.shape[-1]
    alpha = 1 - confidence
    seeds = _seed_values(players, table, weights)  # [k, n, m, p], or None with one seed
    first = per_prompt if seeds is None else seeds[0]  # the seed the reward heads scored
    offsets = {}  # objective index -> [K, n, p]: each head's per-prompt values less the first seed's, centred
    for k, objective in enumerate(table.objectives):
        if table.heads is not None and table.heads.count(objective):
            phi = _head_values(players, table, objective, weights)
            offsets[k] = phi - phi.mean((0, 2))[None, :, None] + first[:, k].mean(-1)[None, :, None] - first[None, :, k]
    if interval == "t":
        if n_prompts < 2:
            raise ValueError("a t-interval needs at least 2 prompts")
        variance = per_prompt.var(-1, ddof=1) / n_prompts
        if seeds is not None:  # the seeds' values vary around their mean: the variance of a mean of k
            variance += seeds.mean(-1).var(0, ddof=1) / len(seeds)
        for k, offset in offsets.items():
            variance[:, k] += offset.mean(-1).var(0, ddof=1)
        stderr = np.sqrt(variance)
        half = _t_quantile(1 - alpha / 2, n_prompts - 1) * stderr
        lower, upper = values - half, values + half
    else:
        # a bootstrap replicate reweights each prompt by how often it was drawn
        counts = np.random.default_rng(seed).multinomial(n_prompts, np.full(n_prompts, 1 / n_prompts), size=n_boot)
        if seeds is None:
            boot = per_prompt @ counts.T / n_prompts  # [n, m, n_boot]
        else:
            # ... and draws k of the k seeds with replacement. A mean of k draws from k values varies
            # (k - 1) / k as much as a mean of k fresh seeds would: their spread is widened to undo that.
            k = len(seeds)
            widened = per_prompt + np.sqrt(k / (k - 1)) * (seeds - per_prompt)
            drawn = np.random.default_rng(None if seed is None else [seed, 2]).integers(k, size=(n_boot, k))
            share = np.stack([np.bincount(row, minlength=k) for row in drawn]) / k  # [n_boot, k]
            boot = np.einsum("bk,kimp,bp->imb", share, widened, counts) / n_prompts
        # A head drawn per replicate adds its offset; from their own stream, so the prompts' draws are unchanged.
        draw = np.random.default_rng(None if seed is None else [seed, 1])
        for k, offset in offsets.items():
            head = draw.integers(len(offset), size=n_boot)
            for h in range(len(offset)):
                boot[:, k, head == h] += offset[h] @ counts[head == h].T / n_prompts
        stderr = boot.std(-1, ddof=1)
        lower, upper = np.quantile(boot, [alpha / 2, 1 - alpha / 2], axis=-1)
    return ValuationResult(players, table.objectives, values, (u[-1] - u[0]).mean(-1), "exact", index, stderr=stderr,
                           lower=lower, upper=upper, interval=interval, prompts=n_prompts,
                           reward_heads={table.objectives[k]: table.heads.count(table.objectives[k]) for k in offsets},
                           seeds=1 if seeds is None else len(seeds))


def _seed_values(players: tuple[str, ...], table: UtilityTable, weights: np.ndarray) -> np.ndarray | None:
    """[k, n, m, p]: each training seed's per-prompt Shapley values (None with one seed)."""
    if table.seeds is None:
        return None
    u = values_by_mask(players, lambda coalition: table.seeds.per_prompt[coalition], weights.any(1))  # [2^n, k, m, p]
    return np.einsum("si,skmp->kimp", weights, u)


def _head_values(players: tuple[str, ...], table: UtilityTable, objective: str, weights: np.ndarray) -> np.ndarray:
    """[K, n, p]: each bootstrap head's per-prompt Shapley values of `objective`."""
    utilities = table.heads.per_prompt[objective]
    u = values_by_mask(players, lambda coalition: utilities[coalition], weights.any(1))  # [2^n, K, p]
    return np.einsum("si,skp->kip", weights, u)
