"""The Learn page's lesson, as plain data: one small cooperative game taken apart step by step.

The game is the loaded run's coalition utilities, or a made-up example game when there are none.
For one objective at a time it gives:

- the coalition lattice: every coalition S as a node (utility v(S), laid out by size), an edge
  from S to S + {i} labelled with i's marginal contribution v(S + {i}) - v(S);
- a walkthrough of one order: the sources join one by one, each adding its marginal contribution;
  averaged over all n! orders these are the Shapley values;
- the Shapley formula with the game's numbers substituted, term by term;
- (in `games.axioms`) the axioms, efficiency, symmetry, dummy and additivity, checked on any values;
- a Monte Carlo simulation (permutation sampling) beside the exact values;
- what language-model arithmetic saves: n fine-tunings instead of 2^n.

The game is read from the run's evaluation folder (`evaluation.store`); the rest is numpy and pandas.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from itertools import permutations
from math import factorial

import numpy as np
import pandas as pd

from ..errors import UserError
from ..evaluation.store import EvaluationStore
from ..games.axioms import number, utility
from ..games.coalitions import BASE, Coalition, all_coalitions, coalition_name, decode_rows, formula_terms
from ..games.sampling import permutation_shapley
from ..games.shapley import exact_shapley
from ..games.utility_table import UtilityTable
from ..runs import Run

EXAMPLE_GAME = "example game"
MAX_LESSON_PLAYERS = 10  # the lattice has 2^n nodes and n 2^(n-1) edges
MAX_LABELLED_PLAYERS = 5  # beyond this the lattice is drawn without text on nodes and edges
MAX_LISTED_ORDERS = 120  # all n! orders are listed up to n = 5
MAX_FORMULA_TERMS = 16  # beyond this (n > 5) the formula is shown grouped by coalition size


# -----------------------------------------------------------------------------
# which game the lesson plays


@dataclass(frozen=True)
class LessonGame:
    table: UtilityTable
    name: str  # EXAMPLE_GAME, or "run 'NAME'"
    reason: str | None = None  # why the example game stands in for the run's own game

    @property
    def is_example(self) -> bool:
        return self.name == EXAMPLE_GAME


def example_game() -> UtilityTable:
    """Four made-up sources of fine-tuning data and two reward models, for teaching.

    forum and manuals both teach helpful answers and overlap (either alone +0.30, both +0.40);
    forum also carries some rude replies (-0.08 harmlessness) unless refusals are in the mix;
    refusals teach to decline harmful requests (+0.30 harmlessness) but, without a helpful
    source beside them, refuse too much (-0.10 helpfulness, -0.04 with one);
    small-talk changes nothing helpful and always adds a polite +0.02 harmlessness.
    """
    rows = []
    players = ("forum", "manuals", "refusals", "small-talk")
    for s in all_coalitions(players):
        helpful_data = "forum" in s or "manuals" in s
        refusals = "refusals" in s
        helpfulness = (0.40 + 0.30 * helpful_data + 0.10 * ("forum" in s and "manuals" in s)
                       - (0.04 if helpful_data else 0.10) * refusals)
        harmlessness = 0.50 + 0.30 * refusals - 0.08 * ("forum" in s and not refusals) + 0.02 * ("small-talk" in s)
        rows.append({"coalition": coalition_name(s), "helpfulness": round(helpfulness, 4),
                     "harmlessness": round(harmlessness, 4)})
    return UtilityTable.from_frame(pd.DataFrame(rows))


def lesson_game(run: Run | None) -> LessonGame:
    """The run's own game when it has a complete utility table of a few sources, else the example game."""
    if run is None or not run.exists():
        return LessonGame(example_game(), EXAMPLE_GAME, "no run is selected")
    try:
        table = EvaluationStore(run).load()
    except UserError as error:
        return LessonGame(example_game(), EXAMPLE_GAME, str(error))
    n = len(table.players)
    if not 1 <= n <= MAX_LESSON_PLAYERS:
        return LessonGame(example_game(), EXAMPLE_GAME,
                          f"run {run.name!r} has {n} sources; the lesson draws all 2^n coalitions and "
                          f"takes 1 to {MAX_LESSON_PLAYERS} sources")
    missing = table.missing_coalitions()
    if missing:
        return LessonGame(example_game(), EXAMPLE_GAME,
                          f"run {run.name!r} lacks {len(missing)} of its {2 ** n} coalition utilities")
    return LessonGame(table, f"run {run.name!r}")


# -----------------------------------------------------------------------------
# coalitions


def coalition_label(coalition: Coalition, players: Sequence[str]) -> str:
    """'∅' or '{a, b}' with the names in the players' order."""
    return "{" + ", ".join(p for p in players if p in coalition) + "}" if coalition else "∅"


# -----------------------------------------------------------------------------
# the coalition lattice


@dataclass(frozen=True)
class Lattice:
    nodes: pd.DataFrame  # coalition, label, size, utility, x, y
    edges: pd.DataFrame  # source, target (coalition names), added, marginal, x0, y0, x1, y1

    @property
    def labelled(self) -> bool:
        """Small enough to write every node's and edge's text on the drawing."""
        return self.nodes["size"].max() <= MAX_LABELLED_PLAYERS


def lattice(table: UtilityTable, objective: str) -> Lattice:
    """Nodes in rows by size (y = |S|), spread evenly across x in [-0.5, 0.5] within a row."""
    players, v = table.players, utility(table, objective)
    coalitions = all_coalitions(players)
    sizes = pd.Series([len(c) for c in coalitions])
    rank, count = sizes.groupby(sizes).cumcount(), sizes.map(sizes.value_counts())
    nodes = pd.DataFrame({"coalition": [coalition_name(c) for c in coalitions],
                          "label": [coalition_label(c, players) for c in coalitions], "size": sizes,
                          "utility": [v(c) for c in coalitions], "x": (rank + 0.5) / count - 0.5, "y": sizes})
    where = nodes.set_index("coalition")
    edges = []
    for s in coalitions:
        for player in players:
            if player not in s:
                a, b = where.loc[coalition_name(s)], where.loc[coalition_name(s | {player})]
                edges.append({"source": coalition_name(s), "target": coalition_name(s | {player}), "added": player,
                              "marginal": b.utility - a.utility, "x0": a.x, "y0": a.y, "x1": b.x, "y1": b.y})
    return Lattice(nodes, pd.DataFrame(edges))


# -----------------------------------------------------------------------------
# one order of joining, and all of them


def shuffled_order(players: Sequence[str], seed: int) -> list[str]:
    return [players[i] for i in np.random.default_rng(seed).permutation(len(players))]


def walkthrough(table: UtilityTable, order: Sequence[str], objective: str) -> pd.DataFrame:
    """The sources join in `order`; each step's gain v(after) - v(before) is the joiner's marginal contribution.

    Columns: step, source, before, after (coalition names), v_before, v_after, marginal, cumulative
    (= v(after) - v(empty)); the marginals sum to v(N) - v(empty) whatever the order.
    """
    if sorted(order) != sorted(table.players):
        raise ValueError(f"an order must list every source once: {list(table.players)}, got {list(order)}")
    v = utility(table, objective)
    rows, coalition = [], frozenset()
    for step, player in enumerate(order, 1):
        joined = coalition | {player}
        rows.append({"step": step, "source": player, "before": coalition_name(coalition),
                     "after": coalition_name(joined), "v_before": v(coalition), "v_after": v(joined),
                     "marginal": v(joined) - v(coalition), "cumulative": v(joined) - v(frozenset())})
        coalition = joined
    return pd.DataFrame(rows)


def all_orders(table: UtilityTable, objective: str) -> pd.DataFrame:
    """One row per order of the n sources (n! rows): each source's marginal contribution in it.

    The column means are the Shapley values: Shapley is the average over orders.
    """
    players = table.players
    if factorial(len(players)) > MAX_LISTED_ORDERS:
        raise ValueError(f"{len(players)} sources have {factorial(len(players))} orders: too many to list")
    rows = []
    for order in permutations(players):
        marginals = walkthrough(table, order, objective).set_index("source").marginal
        rows.append({"order": " → ".join(order), **{p: marginals[p] for p in players}})
    return pd.DataFrame(rows)


def exact_values(table: UtilityTable) -> np.ndarray:
    """Exact Shapley values [n, m], one column per objective."""
    return exact_shapley(table.players, table, objectives=table.objectives).values


# -----------------------------------------------------------------------------
# the formula with the game's numbers substituted

GENERAL_FORMULA = (r"\phi_i \;=\; \sum_{S \subseteq N \setminus \{i\}} "
                   r"\frac{|S|!\,(n-|S|-1)!}{n!}\,\bigl[v(S \cup \{i\}) - v(S)\bigr]")


def shapley_weight(size: int, n: int) -> Fraction:
    """|S|!(n-|S|-1)!/n!: the chance that exactly the members of S come before i in a random order."""
    return Fraction(factorial(size) * factorial(n - size - 1), factorial(n))


def shapley_terms(table: UtilityTable, player: str, objective: str) -> pd.DataFrame:
    """One row per coalition S of the others: coalition, size, weight, weight_text, v_without = v(S),
    v_with = v(S + i), marginal, product (= weight * marginal). The products sum to phi_i."""
    players, v = table.players, utility(table, objective)
    others = [p for p in players if p != player]
    rows = []
    for s in all_coalitions(others):
        weight = shapley_weight(len(s), len(players))
        marginal = v(s | {player}) - v(s)
        rows.append({"coalition": coalition_label(s, players), "size": len(s), "weight": float(weight),
                     "weight_text": str(weight), "v_without": v(s), "v_with": v(s | {player}),
                     "marginal": marginal, "product": float(weight) * marginal})
    return pd.DataFrame(rows)


def tex_text(name: str) -> str:
    """A name inside \\text{...}, with LaTeX's special characters escaped."""
    for char in "\\{}_&%$#^~":
        name = name.replace(char, {"\\": r"\textbackslash ", "^": r"\^{}", "~": r"\~{}"}.get(char, "\\" + char))
    return rf"\text{{{name}}}"


def _operand(x: float) -> str:
    return f"({number(x)})" if number(x).startswith("-") else number(x)


def _fraction(f: Fraction) -> str:
    return rf"\tfrac{{{f.numerator}}}{{{f.denominator}}}" if f.denominator > 1 else str(f.numerator)


def formula_latex(table: UtilityTable, player: str, objective: str) -> str:
    """phi_player written out: one line per coalition size, every term weight (v(S + i) - v(S)).

    Beyond MAX_FORMULA_TERMS terms, the same sum grouped by size: phi_i = (1/n) sum_s (mean marginal at size s).
    """
    terms = shapley_terms(table, player, objective)
    n, phi = len(table.players), terms["product"].sum()
    name = tex_text(player)
    lines = [rf"\phi_{{{name}}} &= \sum_{{S \subseteq N \setminus \{{{name}\}}}} "
             rf"\tfrac{{|S|!\,(n-|S|-1)!}}{{n!}}\,\bigl[v(S \cup \{{{name}\}}) - v(S)\bigr]"]
    if len(terms) <= MAX_FORMULA_TERMS:
        for size, group in terms.groupby("size"):
            weight = _fraction(shapley_weight(int(size), n))
            parts = [rf"{weight}\,({_operand(t.v_with)} - {_operand(t.v_without)})" for t in group.itertuples()]
            lines.append(("&= " if size == 0 else r"&\quad + ") + " + ".join(parts))
    else:
        means = terms.groupby("size").marginal.mean()
        lines.append(rf"&= \tfrac{{1}}{{{n}}}\bigl(" + " + ".join(_operand(m) for m in means) + r"\bigr)"
                     r"\quad\text{(mean marginal contribution at each size } |S| = 0, \dots, n-1)")
    lines.append(rf"&= {number(phi)}")
    return r"\begin{aligned}" + r" \\ ".join(lines) + r"\end{aligned}"


# -----------------------------------------------------------------------------
# Monte Carlo beside the exact values


@dataclass(frozen=True)
class Simulation:
    trace: pd.DataFrame  # permutations, player, estimate, stderr, exact, error (estimate - exact)
    estimate: np.ndarray  # [n, m] final estimate, every objective
    exact: np.ndarray  # [n, m]
    n_evaluations: int  # distinct coalitions the sampling evaluated


def simulate(table: UtilityTable, objective: str, *, permutations: int, antithetic: bool = True,
             seed: int = 0) -> Simulation:
    """Permutation sampling of the Shapley values, its running estimate against the exact values."""
    result = permutation_shapley(table.players, table, budget_permutations=permutations, seed=seed,
                                 antithetic=antithetic, objectives=table.objectives)
    exact = exact_values(table)
    exact_of = dict(zip(table.players, exact[:, table.objectives.index(objective)]))
    trace = (result.convergence_frame().query("objective == @objective").drop(columns="objective")
             .rename(columns={"value": "estimate"}).reset_index(drop=True))
    trace["exact"] = trace.player.map(exact_of)
    trace["error"] = trace.estimate - trace.exact
    return Simulation(trace, result.values, exact, result.convergence.n_evaluations)


# -----------------------------------------------------------------------------
# what language-model arithmetic saves

ARITHMETIC_FORMULA = (r"\log \pi_S(\cdot \mid x, y_{<t}) \;=\; \sum_{l \in S} \log \pi_l(\cdot \mid x, y_{<t}) "
                      r"\;+\; (1 - |S|)\,\log \pi_0(\cdot \mid x, y_{<t}) \;-\; \log Z_t")


def arithmetic_latex(coalition: Sequence[str]) -> str:
    """The arithmetic for one coalition: its adapters' log-probabilities, the base model's with weight 1 - |S|."""
    if not coalition:
        return r"\log \pi_\varnothing = \log \pi_0 \quad\text{(the base model)}"
    if len(coalition) == 1:
        return rf"\log \pi_{{\{{{tex_text(coalition[0])}\}}}} = \log \pi_{{{tex_text(coalition[0])}}} \quad\text{{(its adapter alone)}}"
    terms = " + ".join(rf"\log \pi_{{{tex_text(p)}}}" for p in coalition)
    base = 1 - len(coalition)
    base_term = "" if base == 0 else (rf" - {-base}\,\log \pi_0" if base < -1 else r" - \log \pi_0")
    name = ", ".join(tex_text(p) for p in coalition)
    return rf"\log \pi_{{\{{{name}\}}}} = {terms}{base_term} - \log Z"


@dataclass(frozen=True)
class ArithmeticCosts:
    """Counts for n sources: models to train, and forward passes per generated token over all coalitions.

    The passes count the sampler's model rows (`coalitions.decode_rows`): coalition S decodes its
    adapters and the base, |S| + 1 rows, but the base model and a singleton need one row.
    """

    sources: int

    @property
    def adapters(self) -> int:
        """Fine-tunings with arithmetic: one adapter per source."""
        return self.sources

    @property
    def coalitions(self) -> int:
        return 2 ** self.sources

    @property
    def fine_tunings_without_arithmetic(self) -> int:
        """One model per non-empty coalition (the empty coalition is the base model)."""
        return self.coalitions - 1

    def _every_coalition(self) -> list[Coalition]:
        return all_coalitions([f"source {i}" for i in range(self.sources)])  # names stand in for the sources

    @property
    def forward_passes_per_token(self) -> int:
        """Model rows one decoding step of every coalition costs: n 2^(n-1) + 2^n - n."""
        return sum(decode_rows(c) for c in self._every_coalition())

    @property
    def base_passes(self) -> int:
        """Rows of the base model: every coalition's but the singletons'."""
        return sum(BASE in dict(formula_terms(c)) for c in self._every_coalition())

    @property
    def adapter_passes(self) -> int:
        """sum over S of |S| = n 2^(n-1): every source sits in half the coalitions."""
        return self.forward_passes_per_token - self.base_passes

    @property
    def teacher_forced_passes(self) -> int:
        """Scoring a fixed response: n + 1 passes give every coalition's log-probabilities by arithmetic."""
        return self.sources + 1
