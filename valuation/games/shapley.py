"""Cooperative-game valuation of data sources: games, results, and exact Shapley and Banzhaf values
and pairwise interactions over all 2^n coalitions.

Players are data sources, a coalition is a frozenset of their names (`coalitions.py`), and a game
maps a coalition to its utility, one number per objective (e.g. helpfulness, harmlessness):

- games:   any callable `Coalition -> np.ndarray[m]`; `CachedGame` remembers what it evaluated, and a
           `UtilityTable` (`utility_table.py`) of measured utilities is a game too;
- exact:   all 2^n coalitions, as one matrix product with precomputed weights;
- results: `ValuationResult` holds values, intervals, what the intervals cover and the convergence trace.

Permutation Monte Carlo lives in `sampling.py`, the intervals over prompts in `intervals.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import combinations
from math import comb

import numpy as np
import pandas as pd

from .coalitions import Coalition, all_coalitions, check_enumerable

Game = Callable[[Coalition], np.ndarray]  # coalition -> utilities, shape [m] (one per objective)


# -----------------------------------------------------------------------------
# games


class CachedGame:
    """Wraps a game so each distinct coalition is evaluated once; `n_evaluations` counts them."""

    def __init__(self, game: Game) -> None:
        self.game = game
        self.cache: dict[Coalition, np.ndarray] = {}

    def __call__(self, coalition: Coalition) -> np.ndarray:
        if coalition not in self.cache:
            self.cache[coalition] = _evaluate(self.game, coalition)
        return self.cache[coalition]

    @property
    def n_evaluations(self) -> int:
        return len(self.cache)


def _evaluate(game: Game, coalition: Coalition) -> np.ndarray:
    return np.atleast_1d(np.asarray(game(coalition), dtype=float))


# -----------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class Convergence:
    """Running Monte Carlo estimate after each sample (a permutation, or an antithetic pair)."""

    permutations: np.ndarray  # [k] permutations used so far
    values: np.ndarray  # [k, n, m] running mean
    stderr: np.ndarray  # [k, n, m] running standard error (NaN until two samples)
    n_evaluations: int  # distinct coalitions evaluated

    @property
    def n_permutations(self) -> int:
        return int(self.permutations[-1])


@dataclass(frozen=True)
class ValuationResult:
    """Values of the players per objective, and, where there are intervals, what produced them:
    `interval` says how they were drawn and the last three fields what their spread covers."""

    players: tuple[str, ...]
    objectives: tuple[str, ...]
    values: np.ndarray  # [n, m]
    total: np.ndarray  # [m] v(N) - v(empty): what efficiency says the values sum to
    method: str  # "exact" (every coalition) or "permutation" (Monte Carlo over orders)
    index: str = "shapley"  # "shapley", "banzhaf" or "leave-one-out" (INDEX_WEIGHTS)
    stderr: np.ndarray | None = None  # [n, m]
    lower: np.ndarray | None = None  # [n, m] interval bounds
    upper: np.ndarray | None = None
    convergence: Convergence | None = None
    antithetic: bool = False  # permutation: each order paired with its reverse
    interval: str = ""  # "percentile" (bootstrap), "t", "normal" (Monte Carlo standard error), or "" (none)
    prompts: int = 0  # prompts the interval resamples (0: it does not)
    reward_heads: Mapping[str, int] = field(default_factory=dict)  # objective -> bootstrap reward heads it draws
    seeds: int = 1  # training seeds the interval draws (1: training noise is not in it)

    def describe(self) -> str:
        """The method and what the intervals cover, in a line: 'exact shapley, percentile interval over
        30 prompts and 20 reward heads (helpfulness) and 2 training seeds'."""
        text = f"{self.method} {self.index}" + (" (antithetic)" if self.antithetic else "")
        if self.prompts:
            text += f", {self.interval} interval over {self.prompts} prompts"
            if self.reward_heads:
                counts = "/".join(map(str, sorted(set(self.reward_heads.values()))))
                text += f" and {counts} reward heads ({', '.join(self.reward_heads)})"
            if self.seeds > 1:
                text += f" and {self.seeds} training seeds"
        elif self.interval:
            text += f", {self.interval} interval from the sampling of orders"
        return text

    def efficiency_gap(self) -> np.ndarray:
        """sum_i phi_i - (v(N) - v(empty)) per objective; zero for Shapley."""
        return self.values.sum(0) - self.total

    def spans_zero(self) -> np.ndarray:
        """[n, m] booleans: the interval cannot tell the player's value from zero."""
        if self.lower is None or self.upper is None:
            raise ValueError(f"{self.describe()} result has no intervals")
        return (self.lower <= 0) & (self.upper >= 0)

    def _cell(self, array: np.ndarray | None, i: int, k: int) -> float:
        return float("nan") if array is None else float(array[i, k])

    def to_frame(self) -> pd.DataFrame:
        """Long format: objective, player, value, stderr, lower, upper (NaN where absent)."""
        return pd.DataFrame(
            [{"objective": o, "player": p, "value": self.values[i, k], "stderr": self._cell(self.stderr, i, k),
              "lower": self._cell(self.lower, i, k), "upper": self._cell(self.upper, i, k)}
             for k, o in enumerate(self.objectives) for i, p in enumerate(self.players)]
        )

    def to_json_dict(self) -> dict[str, dict[str, dict[str, float | None]]]:
        """{objective: {player: {value, lower, upper}}}, None where there is no interval."""
        def bound(array: np.ndarray | None, i: int, k: int) -> float | None:
            return None if array is None else float(array[i, k])

        return {o: {p: {"value": float(self.values[i, k]), "lower": bound(self.lower, i, k),
                        "upper": bound(self.upper, i, k)}
                    for i, p in enumerate(self.players)}
                for k, o in enumerate(self.objectives)}

    def convergence_frame(self) -> pd.DataFrame:
        """Long format for plotting the trace: permutations, objective, player, value, stderr."""
        if self.convergence is None:
            raise ValueError(f"{self.describe()} result has no convergence trace")
        c = self.convergence
        return pd.DataFrame(
            [{"permutations": int(t), "objective": o, "player": p, "value": c.values[s, i, k],
              "stderr": c.stderr[s, i, k]}
             for s, t in enumerate(c.permutations)
             for k, o in enumerate(self.objectives) for i, p in enumerate(self.players)]
        )


def objective_names(objectives: Sequence[str] | None, m: int) -> tuple[str, ...]:
    names = tuple(objectives) if objectives is not None else tuple(str(k) for k in range(m))
    if len(names) != m:
        raise ValueError(f"game returns {m} utilities but {len(names)} objectives were named: {names}")
    return names


# -----------------------------------------------------------------------------
# exact computation over all 2^n coalitions
# coalition S is row `mask` of a table, with player i in S iff bit i of mask is set


def _membership(n: int) -> np.ndarray:
    """[2^n, n] booleans: is player i in the coalition with bitmask `mask`."""
    check_enumerable(n)
    return (np.arange(1 << n)[:, None] >> np.arange(n)) & 1 == 1


def values_by_mask(players: Sequence[str], value: Callable[[Coalition], np.ndarray],
                   needed: np.ndarray | None = None) -> np.ndarray:
    """value(S) of every coalition, stacked so that row `mask` holds S: the rows the weights expect.
    With `needed` ([2^n] bools, by mask) only those rows are read, the others left zero: an index
    that weighs few coalitions (leave-one-out: N and N less each one) needs only those."""
    bit = {player: 1 << i for i, player in enumerate(players)}
    masks = {c: sum(bit[p] for p in c) for c in all_coalitions(players)}
    read = [c for c, mask in masks.items() if needed is None or needed[mask]]
    stacked = np.stack([value(c) for c in read])
    out = np.zeros((len(masks), *stacked.shape[1:]), stacked.dtype)
    out[[masks[c] for c in read]] = stacked
    return out


def _coalition_values(players: Sequence[str], game: Game) -> np.ndarray:
    """v for every coalition, shape [2^n, m], row = bitmask."""
    return values_by_mask(players, lambda coalition: _evaluate(game, coalition))


@lru_cache(maxsize=8)
def shapley_weights(n: int) -> np.ndarray:
    """W [2^n, n] with phi = W^T v.

    phi_i = sum_{S not containing i} w(|S|) [v(S u i) - v(S)], w(s) = s!(n-s-1)!/n! = 1/(n C(n-1, s)),
    the chance that exactly the players of S precede i in a uniformly random order. So a coalition
    holding i enters phi_i with +w(|S|-1), one without i with -w(|S|).
    """
    member = _membership(n)
    size = member.sum(1)
    w = np.array([1 / (n * comb(n - 1, s)) for s in range(n)] + [0.0])  # w[n] = w[-1] = 0 pads both edges
    weights = np.where(member, w[size - 1][:, None], -w[size][:, None])
    weights.flags.writeable = False
    return weights


@lru_cache(maxsize=8)
def banzhaf_weights(n: int) -> np.ndarray:
    """W [2^n, n] with beta = W^T v: every subset of the others counts 1/2^(n-1)."""
    weights = np.where(_membership(n), 1.0, -1.0) / 2 ** (n - 1)
    weights.flags.writeable = False
    return weights


@lru_cache(maxsize=8)
def leave_one_out_weights(n: int) -> np.ndarray:
    """W [2^n, n] with loo = W^T v: loo_i = v(N) - v(N without i), what the data adds last."""
    member = _membership(n)
    grand, size = member.all(1), member.sum(1)
    weights = np.where(grand[:, None], 1.0, np.where((size == n - 1)[:, None] & ~member, -1.0, 0.0))
    weights.flags.writeable = False
    return weights


INDEX_WEIGHTS: dict[str, Callable[[int], np.ndarray]] = {
    "shapley": shapley_weights, "banzhaf": banzhaf_weights, "leave-one-out": leave_one_out_weights}


def _exact(players: Sequence[str], game: Game, objectives: Sequence[str] | None,
           weights: Callable[[int], np.ndarray], index: str) -> ValuationResult:
    players = tuple(players)
    v = _coalition_values(players, game)
    return ValuationResult(players, objective_names(objectives, v.shape[1]), weights(len(players)).T @ v,
                           v[-1] - v[0], "exact", index)


def exact_shapley(players: Sequence[str], game: Game, *, objectives: Sequence[str] | None = None) -> ValuationResult:
    return _exact(players, game, objectives, shapley_weights, "shapley")


def exact_banzhaf(players: Sequence[str], game: Game, *, objectives: Sequence[str] | None = None) -> ValuationResult:
    return _exact(players, game, objectives, banzhaf_weights, "banzhaf")


def pairwise_interactions(players: Sequence[str], game: Game) -> np.ndarray:
    """Shapley interaction index, shape [n, n, m], symmetric with zero diagonal.

    I_ij = sum_{S without i, j} |S|!(n-|S|-2)!/(n-1)! [v(S+i+j) - v(S+i) - v(S+j) + v(S)]:
    positive when i and j are worth more together than apart, negative when they substitute.
    """
    players = tuple(players)
    n = len(players)
    v = _coalition_values(players, game)
    masks = np.arange(1 << n)
    size = _membership(n).sum(1)
    w = np.array([1 / ((n - 1) * comb(n - 2, s)) for s in range(n - 1)])  # s!(n-s-2)!/(n-1)!
    out = np.zeros((n, n, v.shape[1]))
    for i, j in combinations(range(n), 2):
        bi, bj = 1 << i, 1 << j
        s = masks[masks & (bi | bj) == 0]  # coalitions without i and j
        synergy = v[s | bi | bj] - v[s | bi] - v[s | bj] + v[s]
        out[i, j] = out[j, i] = w[size[s]] @ synergy
    return out
