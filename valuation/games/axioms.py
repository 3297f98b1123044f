"""The Shapley axioms, efficiency, symmetry, dummy and additivity, checked on given values of a game:
step 4 of the Learn page's lesson, with the numbers that were compared."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from .coalitions import Coalition, all_coalitions
from .shapley import exact_shapley
from .utility_table import UtilityTable


@dataclass(frozen=True)
class AxiomCheck:
    axiom: str  # efficiency, symmetry, dummy, additivity
    passed: bool | None  # None: the game gives the axiom nothing to check
    detail: str  # what was compared, with the numbers


def number(x: float) -> str:
    """4 significant digits, rounding error shown as 0 (not -5.551e-17)."""
    return f"{round(x, 12) + 0.0:.4g}"


def utility(table: UtilityTable, objective: str) -> Callable[[Coalition], float]:
    """v for one objective: coalition -> number."""
    return lambda coalition: table.value(coalition, objective)


def _tolerance(table: UtilityTable) -> float:
    scale = max(1.0, max(float(np.abs(u).max()) for u in table.values.values()))
    return 1e-9 * scale


def _marginals(table: UtilityTable, player: str, objective: str) -> np.ndarray:
    """v(S + i) - v(S) for every S of the others."""
    v = utility(table, objective)
    return np.array([v(s | {player}) - v(s) for s in all_coalitions([p for p in table.players if p != player])])


def symmetric_pairs(table: UtilityTable, objective: str) -> list[tuple[str, str]]:
    """Pairs i, j with v(S + i) = v(S + j) for every S holding neither: interchangeable sources."""
    v, tolerance = utility(table, objective), _tolerance(table)
    return [(i, j) for i, j in combinations(table.players, 2)
            if all(abs(v(s | {i}) - v(s | {j})) <= tolerance
                   for s in all_coalitions([p for p in table.players if p not in (i, j)]))]


def dummies(table: UtilityTable, objective: str) -> dict[str, float]:
    """Sources whose marginal contribution is the same c for every coalition: {source: c} (c = 0: a null player)."""
    tolerance, out = _tolerance(table), {}
    for player in table.players:
        marginals = _marginals(table, player, objective)
        if np.ptp(marginals) <= tolerance:
            out[player] = float(marginals[0])
    return out


def check_axioms(table: UtilityTable, values: np.ndarray, objective: str,
                 tolerance: float | None = None) -> list[AxiomCheck]:
    """Efficiency, symmetry, dummy and additivity, checked on `values` [n, m] (one column per objective).

    Exact Shapley values pass all four; a Monte Carlo estimate passes efficiency and dummy exactly
    (each order does) but symmetry and additivity only up to its sampling error.
    """
    tolerance = _tolerance(table) if tolerance is None else tolerance
    players, k = table.players, table.objectives.index(objective)
    phi = dict(zip(players, values[:, k]))
    v = utility(table, objective)
    checks = []

    total, spread = v(frozenset(players)) - v(frozenset()), float(values[:, k].sum())
    checks.append(AxiomCheck("efficiency", abs(spread - total) <= tolerance,
                             f"the values sum to {number(spread)}; v(N) − v(∅) = {number(v(frozenset(players)))} − "
                             f"{number(v(frozenset()))} = {number(total)} (gap {spread - total:.1e})"))

    pairs = symmetric_pairs(table, objective)
    checks.append(AxiomCheck(
        "symmetry", all(abs(phi[i] - phi[j]) <= tolerance for i, j in pairs) if pairs else None,
        "; ".join(f"{i} and {j} add the same to every coalition: {number(phi[i])} vs {number(phi[j])}" for i, j in pairs)
        or "no two sources add the same to every coalition, so symmetry asks nothing of this game"))

    found = dummies(table, objective)
    checks.append(AxiomCheck(
        "dummy", all(abs(phi[p] - c) <= tolerance for p, c in found.items()) if found else None,
        "; ".join(f"{p} always adds {number(c)}" + (" (a null player)" if abs(c) <= tolerance else "")
                  + f" and gets {number(phi[p])}" for p, c in found.items())
        or "no source adds the same amount to every coalition, so the dummy axiom asks nothing of this game"))

    others = [o for o in table.objectives if o != objective]
    if not others:
        checks.append(AxiomCheck("additivity", None, "one objective only: additivity needs two games to add"))
    else:
        other, j = others[0], table.objectives.index(others[0])
        summed = exact_shapley(players, lambda s: table(s)[k] + table(s)[j]).values[:, 0]
        added = values[:, k] + values[:, j]
        checks.append(AxiomCheck(
            "additivity", bool(np.all(np.abs(summed - added) <= tolerance)),
            f"Shapley of ({objective} + {other}) vs Shapley({objective}) + Shapley({other}): "
            + ", ".join(f"{p} {number(a)} vs {number(b)}" for p, a, b in zip(players, summed, added))))
    return checks
