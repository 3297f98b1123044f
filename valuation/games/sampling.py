"""Shapley values by sampling orders of the players: permutation Monte Carlo with composable
stopping rules, for games too large to enumerate (and to teach what the exact values average)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from .coalitions import Coalition
from .shapley import CachedGame, Convergence, Game, ValuationResult, objective_names


# -----------------------------------------------------------------------------
# stopping rules for Monte Carlo


class StoppingRule(ABC):
    """Asked after every sample whether to stop; combine rules with `|` (stop when either says so)."""

    @abstractmethod
    def __call__(self, n_permutations: int, stderr: np.ndarray) -> bool: ...

    def __or__(self, other: StoppingRule) -> StoppingRule:
        return AnyOf(self, other)


@dataclass(frozen=True)
class MaxPermutations(StoppingRule):
    k: int

    def __call__(self, n_permutations: int, stderr: np.ndarray) -> bool:
        return n_permutations >= self.k


@dataclass(frozen=True)
class StandardErrorBelow(StoppingRule):
    """Stop once every player's standard error (all objectives) is under `threshold`, after `burn_in`."""

    threshold: float
    burn_in: int = 100

    def __call__(self, n_permutations: int, stderr: np.ndarray) -> bool:
        return n_permutations >= self.burn_in and bool(np.all(stderr < self.threshold))


@dataclass(frozen=True)
class AnyOf(StoppingRule):
    first: StoppingRule
    second: StoppingRule

    def __call__(self, n_permutations: int, stderr: np.ndarray) -> bool:
        return self.first(n_permutations, stderr) or self.second(n_permutations, stderr)


# -----------------------------------------------------------------------------
# permutation Monte Carlo


def _marginals(players: tuple[str, ...], order: np.ndarray, game: Game) -> np.ndarray:
    """Add players one at a time in `order`; each step's gain is that player's marginal contribution."""
    coalition: Coalition = frozenset()
    previous = game(coalition)
    out = np.empty((len(players), *previous.shape))
    for i in order:
        coalition = coalition | {players[i]}
        current = game(coalition)
        out[i] = current - previous
        previous = current
    return out


def permutation_shapley(
    players: Sequence[str],
    game: Game,
    *,
    budget_permutations: int,
    seed: int | None = 0,
    antithetic: bool = True,
    stopping: StoppingRule | None = None,
    confidence: float = 0.95,
    objectives: Sequence[str] | None = None,
) -> ValuationResult:
    """Shapley values as mean marginal contributions over random orders of the players.

    With `antithetic`, each order is paired with its reverse and the pair mean is one sample: a
    player early in one is late in the other, which cancels much of the size-driven variance. A pair
    counts as two permutations. Sampling stops at `budget_permutations` or when `stopping` says so.
    Pass a `CachedGame` to share evaluated coalitions across calls; intervals are normal, +- z SE.
    """
    players = tuple(players)
    cached = game if isinstance(game, CachedGame) else CachedGame(game)
    rule = MaxPermutations(budget_permutations)
    rule = rule | stopping if stopping is not None else rule
    rng = np.random.default_rng(seed)
    total = cached(frozenset(players)) - cached(frozenset())

    mean = np.zeros((len(players), *total.shape))
    squares = np.zeros_like(mean)  # sum of squared deviations from the running mean (Welford)
    used, trace_permutations, trace_values, trace_stderr = 0, [], [], []
    while True:
        order = rng.permutation(len(players))
        sample = _marginals(players, order, cached)
        if antithetic:
            sample = (sample + _marginals(players, order[::-1], cached)) / 2
        used += 2 if antithetic else 1
        k = len(trace_permutations) + 1
        delta = sample - mean
        mean = mean + delta / k
        squares = squares + delta * (sample - mean)
        stderr = np.sqrt(squares / ((k - 1) * k)) if k > 1 else np.full_like(mean, np.nan)
        trace_permutations.append(used)
        trace_values.append(mean)
        trace_stderr.append(stderr)
        if rule(used, stderr):
            break

    z = NormalDist().inv_cdf((1 + confidence) / 2)
    convergence = Convergence(np.array(trace_permutations), np.stack(trace_values), np.stack(trace_stderr),
                              cached.n_evaluations)
    return ValuationResult(players, objective_names(objectives, total.shape[0]), mean, total, "permutation",
                           stderr=stderr, lower=mean - z * stderr, upper=mean + z * stderr, convergence=convergence,
                           antithetic=antithetic, interval="normal")
