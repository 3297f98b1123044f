"""Cooperative-game valuation of data sources: Shapley, Banzhaf and pairwise interactions.

Players are data sources, a coalition is a frozenset of their names, and a game maps a coalition
to its utility, one number per objective (e.g. helpfulness, harmlessness). The pieces:

- utilities: `UtilityTable` (read from CSV, optionally per prompt) is itself a game;
- games:     any callable `Coalition -> np.ndarray[m]`, `CachedGame` remembers what it evaluated;
- exact:     all 2^n coalitions, as one matrix product with precomputed weights (n <= 20);
- sampling:  permutation Monte Carlo with antithetic pairs and composable stopping rules;
- intervals: bootstrap (or t) over prompts, exact because Shapley is linear in v;
- results:   `ValuationResult` holds values, intervals and the convergence trace.

Pure numpy (pandas for tables); no UI imports.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from math import comb, pi, sqrt, tan
from os import PathLike
from statistics import NormalDist
from typing import Literal

import numpy as np
import pandas as pd

Coalition = frozenset[str]
Game = Callable[[Coalition], np.ndarray]  # coalition -> utilities, shape [m] (one per objective)

MAX_EXACT_PLAYERS = 20


# -----------------------------------------------------------------------------
# coalitions and utility tables


def parse_coalition(text: object) -> Coalition:
    """'b + a' -> {'a', 'b'}; empty string or NaN -> the empty coalition."""
    if text is None or (isinstance(text, float) and np.isnan(text)) or not str(text).strip():
        return frozenset()
    names = [name.strip() for name in str(text).split("+")]
    if "" in names:
        raise ValueError(f"empty player name in coalition {text!r}")
    if len(set(names)) < len(names):
        raise ValueError(f"repeated player in coalition {text!r}")
    return frozenset(names)


def coalition_name(coalition: Iterable[str]) -> str:
    """Canonical text form: sorted names joined by '+', '' for the empty coalition."""
    return "+".join(sorted(coalition))


def _describe(coalition: Coalition) -> str:
    return f"'{coalition_name(coalition)}'" if coalition else "'' (the empty coalition)"


def _lookup(table: Mapping[Coalition, np.ndarray], coalition: Coalition) -> np.ndarray:
    try:
        return table[coalition]
    except KeyError:
        raise ValueError(f"utility table has no row for coalition {_describe(coalition)}") from None


@dataclass(frozen=True)
class UtilityTable:
    """Measured utilities v(S), one per objective; optionally one per prompt too.

    Calling the table is playing the game: `table(coalition)` -> utilities of shape [m].
    """

    players: tuple[str, ...]
    objectives: tuple[str, ...]
    values: Mapping[Coalition, np.ndarray]  # [m] mean utility per objective
    per_prompt: Mapping[Coalition, np.ndarray] | None = None  # [m, n_prompts], same prompt order
    prompts: tuple[str, ...] | None = None

    @classmethod
    def from_csv(cls, path: str | PathLike[str]) -> UtilityTable:
        return cls.from_frame(pd.read_csv(path, dtype={"coalition": str, "prompt": str}))

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> UtilityTable:
        """Columns: `coalition` (names joined by '+'), optional `prompt`, one numeric column per objective.

        With a `prompt` column each row is one (coalition, prompt) and v(S) is the mean over prompts.
        """
        if "coalition" not in df.columns:
            raise ValueError(f"utility table needs a 'coalition' column; found columns {list(df.columns)}")
        objectives = tuple(str(c) for c in df.columns if c not in ("coalition", "prompt"))
        if not objectives:
            raise ValueError("utility table has no objective columns: add one numeric column per objective")
        if df.empty:
            raise ValueError("utility table has no rows")
        numbers = df[list(objectives)].apply(pd.to_numeric, errors="coerce").to_numpy(float)
        if np.isnan(numbers).any():
            row, col = np.argwhere(np.isnan(numbers))[0]
            raw = df[objectives[col]].iloc[row]
            what = "missing value" if pd.isna(raw) else f"non-numeric value {raw!r}"
            raise ValueError(f"{what} in objective column {objectives[col]!r} (data row {row + 1})")

        # number the distinct coalitions ('a+b' and 'b+a' are one) and prompts, row by row
        texts = df["coalition"].fillna("").astype(str)
        parsed = {text: parse_coalition(text) for text in texts.unique()}
        coalitions = list(dict.fromkeys(parsed.values()))
        index = {c: k for k, c in enumerate(coalitions)}
        row_coalition = texts.map({text: index[c] for text, c in parsed.items()}).to_numpy()
        has_prompts = "prompt" in df.columns
        prompt_texts = df["prompt"].astype(str) if has_prompts else pd.Series("", index=df.index)
        row_prompt, prompts = pd.factorize(prompt_texts, sort=True)
        duplicated = pd.Series(row_coalition * len(prompts) + row_prompt).duplicated().to_numpy()
        if duplicated.any():
            i = int(np.argmax(duplicated))
            where = f" for prompt {prompts[row_prompt[i]]!r}" if has_prompts else ""
            raise ValueError(f"duplicate coalition {_describe(coalitions[row_coalition[i]])}{where} (data row {i + 1})")

        # utilities on a grid [coalition, objective, prompt]; a hole is a prompt some coalition lacks
        grid = np.full((len(coalitions), len(objectives), len(prompts)), np.nan)
        grid[row_coalition, :, row_prompt] = numbers
        holes = np.isnan(grid[:, 0, :])
        if holes.any():
            k = int(np.argmax(holes.any(1)))
            lacking = [str(p) for p in prompts[holes[k]]]
            raise ValueError(f"coalition {_describe(coalitions[k])} lacks prompts {lacking} that other coalitions have")
        players = tuple(sorted(set().union(*coalitions)))
        if not has_prompts:
            return cls(players, objectives, {c: grid[k, :, 0] for k, c in enumerate(coalitions)})
        per_prompt = {c: grid[k] for k, c in enumerate(coalitions)}
        return cls(players, objectives, {c: u.mean(-1) for c, u in per_prompt.items()}, per_prompt,
                   tuple(map(str, prompts)))

    def __call__(self, coalition: Coalition) -> np.ndarray:
        return _lookup(self.values, coalition)

    def value(self, coalition: Coalition, objective: str) -> float:
        return float(self(coalition)[self.objectives.index(objective)])

    def prompt_values(self, coalition: Coalition) -> np.ndarray:
        """Per-prompt utilities of a coalition, shape [m, n_prompts]."""
        if self.per_prompt is None:
            raise ValueError("utility table has no per-prompt values: give it a 'prompt' column")
        return _lookup(self.per_prompt, coalition)

    def missing_coalitions(self) -> list[Coalition]:
        """Coalitions exact computation needs that the table lacks."""
        return [c for c in _all_coalitions(self.players) if c not in self.values]

    def to_frame(self) -> pd.DataFrame:
        df = pd.DataFrame(
            [{"coalition": coalition_name(c), "size": len(c), **dict(zip(self.objectives, v.tolist()))}
             for c, v in self.values.items()]
        )
        return df.sort_values(["size", "coalition"], ignore_index=True)


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
    players: tuple[str, ...]
    objectives: tuple[str, ...]
    values: np.ndarray  # [n, m]
    total: np.ndarray  # [m] v(N) - v(empty): what efficiency says the values sum to
    method: str
    stderr: np.ndarray | None = None  # [n, m]
    lower: np.ndarray | None = None  # [n, m] interval bounds
    upper: np.ndarray | None = None
    convergence: Convergence | None = None

    def efficiency_gap(self) -> np.ndarray:
        """sum_i phi_i - (v(N) - v(empty)) per objective; zero for Shapley."""
        return self.values.sum(0) - self.total

    def spans_zero(self) -> np.ndarray:
        """[n, m] booleans: the interval cannot tell the player's value from zero."""
        if self.lower is None or self.upper is None:
            raise ValueError(f"{self.method} result has no intervals")
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
            raise ValueError(f"{self.method} result has no convergence trace")
        c = self.convergence
        return pd.DataFrame(
            [{"permutations": int(t), "objective": o, "player": p, "value": c.values[s, i, k],
              "stderr": c.stderr[s, i, k]}
             for s, t in enumerate(c.permutations)
             for k, o in enumerate(self.objectives) for i, p in enumerate(self.players)]
        )


def _objective_names(objectives: Sequence[str] | None, m: int) -> tuple[str, ...]:
    names = tuple(objectives) if objectives is not None else tuple(str(k) for k in range(m))
    if len(names) != m:
        raise ValueError(f"game returns {m} utilities but {len(names)} objectives were named: {names}")
    return names


# -----------------------------------------------------------------------------
# exact computation over all 2^n coalitions
# coalition S is row `mask` of a table, with player i in S iff bit i of mask is set


def _check_exact(n: int) -> None:
    if n > MAX_EXACT_PLAYERS:
        raise ValueError(
            f"exact computation needs all 2^n coalitions; n = {n} > {MAX_EXACT_PLAYERS} players: "
            "use permutation_shapley"
        )


def _membership(n: int) -> np.ndarray:
    """[2^n, n] booleans: is player i in the coalition with bitmask `mask`."""
    return (np.arange(1 << n)[:, None] >> np.arange(n)) & 1 == 1


def _all_coalitions(players: tuple[str, ...]) -> list[Coalition]:
    _check_exact(len(players))
    return [frozenset(p for p, inside in zip(players, row) if inside) for row in _membership(len(players))]


def _coalition_values(players: tuple[str, ...], game: Game) -> np.ndarray:
    """v for every coalition, shape [2^n, m], row = bitmask."""
    return np.stack([_evaluate(game, c) for c in _all_coalitions(players)])


@lru_cache(maxsize=8)
def shapley_weights(n: int) -> np.ndarray:
    """W [2^n, n] with phi = W^T v.

    phi_i = sum_{S not containing i} w(|S|) [v(S u i) - v(S)], w(s) = s!(n-s-1)!/n! = 1/(n C(n-1, s)),
    the chance that exactly the players of S precede i in a uniformly random order. So a coalition
    holding i enters phi_i with +w(|S|-1), one without i with -w(|S|).
    """
    _check_exact(n)
    member = _membership(n)
    size = member.sum(1)
    w = np.array([1 / (n * comb(n - 1, s)) for s in range(n)] + [0.0])  # w[n] = w[-1] = 0 pads both edges
    weights = np.where(member, w[size - 1][:, None], -w[size][:, None])
    weights.flags.writeable = False
    return weights


@lru_cache(maxsize=8)
def banzhaf_weights(n: int) -> np.ndarray:
    """W [2^n, n] with beta = W^T v: every subset of the others counts 1/2^(n-1)."""
    _check_exact(n)
    weights = np.where(_membership(n), 1.0, -1.0) / 2 ** (n - 1)
    weights.flags.writeable = False
    return weights


def _exact(players: Sequence[str], game: Game, objectives: Sequence[str] | None,
           weights: Callable[[int], np.ndarray], method: str) -> ValuationResult:
    players = tuple(players)
    v = _coalition_values(players, game)
    return ValuationResult(players, _objective_names(objectives, v.shape[1]), weights(len(players)).T @ v,
                           v[-1] - v[0], method)


def exact_shapley(players: Sequence[str], game: Game, *, objectives: Sequence[str] | None = None) -> ValuationResult:
    return _exact(players, game, objectives, shapley_weights, "exact shapley")


def exact_banzhaf(players: Sequence[str], game: Game, *, objectives: Sequence[str] | None = None) -> ValuationResult:
    return _exact(players, game, objectives, banzhaf_weights, "exact banzhaf")


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
    return ValuationResult(players, _objective_names(objectives, total.shape[0]), mean, total,
                           "permutation shapley" + (" (antithetic)" if antithetic else ""),
                           stderr, mean - z * stderr, mean + z * stderr, convergence)


# -----------------------------------------------------------------------------
# intervals over prompts


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
) -> ValuationResult:
    """Exact Shapley values with intervals from the spread over prompts.

    Shapley is linear in v, so each prompt's game has its own Shapley value, all in one product,
    and their mean is the Shapley value of the mean utility. Percentile: resample prompts with
    replacement `n_boot` times. t: mean +- t * sd / sqrt(n_prompts).
    """
    players = tuple(players)
    u = np.stack([table.prompt_values(c) for c in _all_coalitions(players)])  # [2^n, m, p]
    per_prompt = np.einsum("si,smp->imp", shapley_weights(len(players)), u)  # [n, m, p]
    values = per_prompt.mean(-1)
    n_prompts = u.shape[-1]
    alpha = 1 - confidence
    if interval == "t":
        if n_prompts < 2:
            raise ValueError("a t-interval needs at least 2 prompts")
        stderr = per_prompt.std(-1, ddof=1) / np.sqrt(n_prompts)
        half = _t_quantile(1 - alpha / 2, n_prompts - 1) * stderr
        lower, upper = values - half, values + half
    else:
        # a bootstrap replicate reweights each prompt by how often it was drawn
        counts = np.random.default_rng(seed).multinomial(n_prompts, np.full(n_prompts, 1 / n_prompts), size=n_boot)
        boot = per_prompt @ counts.T / n_prompts  # [n, m, n_boot]
        stderr = boot.std(-1, ddof=1)
        lower, upper = np.quantile(boot, [alpha / 2, 1 - alpha / 2], axis=-1)
    return ValuationResult(players, table.objectives, values, (u[-1] - u[0]).mean(-1),
                           f"exact shapley, {interval} interval over {n_prompts} prompts", stderr, lower, upper)
