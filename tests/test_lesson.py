"""The Learn page's lesson on known games: the glove game, a game with a planted dummy, the example game."""

from __future__ import annotations

from itertools import permutations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from valuation.games.axioms import check_axioms, dummies, symmetric_pairs
from valuation.games.coalitions import all_coalitions, coalition_name, decode_rows
from valuation.views.lesson import (
    EXAMPLE_GAME,
    ArithmeticCosts,
    all_orders,
    arithmetic_latex,
    example_game,
    exact_values,
    formula_latex,
    lattice,
    lesson_game,
    shapley_terms,
    shuffled_order,
    simulate,
    tex_text,
    walkthrough,
)
from valuation.runs import create_run
from valuation.games.utility_table import UtilityTable
from helpers import utilities_csv

GLOVES = ("L", "R1", "R2")  # one left glove, two right gloves: v(S) = pairs of gloves in S
GLOVE_SHAPLEY = [2 / 3, 1 / 6, 1 / 6]


def table_of(players: tuple[str, ...], game) -> UtilityTable:
    """A table with two objectives: the game and twice the game plus a constant."""
    rows = [{"coalition": coalition_name(s), "first": game(s), "second": 2 * game(s) + 1}
            for s in all_coalitions(players)]
    return UtilityTable.from_frame(pd.DataFrame(rows))


def gloves(s) -> float:
    left = int("L" in s)
    return min(left, len(s & {"R1", "R2"}))


@pytest.fixture
def glove_table() -> UtilityTable:
    return table_of(GLOVES, gloves)


@pytest.fixture
def dummy_table() -> UtilityTable:
    """The glove game plus 'D', who always adds 0.5: a dummy."""
    return table_of((*GLOVES, "D"), lambda s: gloves(s) + 0.5 * ("D" in s))


def test_lattice_nodes_and_edge_labels(glove_table: UtilityTable) -> None:
    graph = lattice(glove_table, "first")
    assert len(graph.nodes) == 8 and len(graph.edges) == 3 * 2 ** 2
    assert graph.nodes.y.tolist() == graph.nodes["size"].tolist() == [0, 1, 1, 1, 2, 2, 2, 3]
    assert graph.nodes.x.between(-0.5, 0.5).all() and graph.labelled
    utility = graph.nodes.set_index("coalition").utility
    for edge in graph.edges.itertuples():
        assert edge.marginal == utility[edge.target] - utility[edge.source]
        assert set(edge.target.split("+")) == set(filter(None, edge.source.split("+"))) | {edge.added}
    labels = graph.edges.set_index(["source", "added"]).marginal
    assert labels[("", "L")] == 0 and labels[("R1", "L")] == 1 and labels[("L+R1", "R2")] == 0


@pytest.mark.parametrize("order", list(permutations(GLOVES)))
def test_walkthrough_adds_up_to_the_total(glove_table: UtilityTable, order) -> None:
    steps = walkthrough(glove_table, order, "second")
    assert steps.source.tolist() == list(order)
    assert steps.marginal.sum() == pytest.approx(2)  # v(N) - v(empty) = (2 * 1 + 1) - 1
    assert steps.cumulative.iloc[-1] == pytest.approx(2)
    assert steps.after.iloc[-1] == "L+R1+R2" and steps.before.iloc[0] == ""


def test_walkthrough_rejects_an_incomplete_order(glove_table: UtilityTable) -> None:
    with pytest.raises(ValueError, match="every source once"):
        walkthrough(glove_table, ["L", "R1"], "first")


def test_averaging_all_orders_is_exact_shapley(dummy_table: UtilityTable) -> None:
    orders = all_orders(dummy_table, "first")
    assert len(orders) == 24
    np.testing.assert_allclose(orders[list(dummy_table.players)].mean(), exact_values(dummy_table)[:, 0])


def test_formula_terms_sum_to_the_value(glove_table: UtilityTable) -> None:
    exact = exact_values(glove_table)
    for i, player in enumerate(glove_table.players):
        terms = shapley_terms(glove_table, player, "first")
        assert len(terms) == 4 and terms.weight.sum() == pytest.approx(1)
        assert terms["product"].sum() == pytest.approx(GLOVE_SHAPLEY[i]) == pytest.approx(exact[i, 0])
    terms = shapley_terms(glove_table, "L", "first")
    assert terms.weight_text.tolist() == ["1/3", "1/6", "1/6", "1/3"]
    latex = formula_latex(glove_table, "L", "first")
    assert latex.startswith(r"\begin{aligned}") and latex.endswith(r"&= 0.6667\end{aligned}")
    assert r"\tfrac{1}{6}\,(1 - 0)" in latex


def test_formula_groups_by_size_beyond_sixteen_terms() -> None:
    players = tuple("abcdef")
    table = table_of(players, lambda s: len(s) ** 2)
    latex = formula_latex(table, "a", "first")
    assert r"\tfrac{1}{6}\bigl(" in latex
    assert latex.endswith(f"&= {exact_values(table)[0, 0]:.4g}\\end{{aligned}}")


def test_axioms_pass_on_exact_values(glove_table: UtilityTable, dummy_table: UtilityTable) -> None:
    assert symmetric_pairs(glove_table, "first") == [("R1", "R2")]
    assert dummies(glove_table, "first") == {}
    for table in (glove_table, dummy_table):
        checks = check_axioms(table, exact_values(table), "first")
        assert [c.axiom for c in checks] == ["efficiency", "symmetry", "dummy", "additivity"]
        assert {c.axiom: c.passed for c in checks}["efficiency"] and checks[1].passed and checks[3].passed
    assert check_axioms(glove_table, exact_values(glove_table), "first")[2].passed is None  # no dummy to check


def test_dummy_check_catches_a_planted_dummy(dummy_table: UtilityTable) -> None:
    assert dummies(dummy_table, "first") == {"D": pytest.approx(0.5)}
    values = exact_values(dummy_table)
    d = dummy_table.players.index("D")
    assert values[d, 0] == pytest.approx(0.5)
    # move some of D's credit to L: efficiency still holds, the dummy check does not
    values[d, 0] -= 0.25
    values[dummy_table.players.index("L"), 0] += 0.25
    checks = {c.axiom: c for c in check_axioms(dummy_table, values, "first")}
    assert checks["efficiency"].passed and not checks["dummy"].passed
    assert "D always adds 0.5 and gets 0.25" in checks["dummy"].detail
    assert not checks["additivity"].passed


def test_symmetry_and_efficiency_failures_show_numbers(glove_table: UtilityTable) -> None:
    values = exact_values(glove_table) + np.array([[0.0, 0], [0.1, 0], [0, 0]])
    checks = {c.axiom: c for c in check_axioms(glove_table, values, "first")}
    assert not checks["efficiency"].passed and "gap 1.0e-01" in checks["efficiency"].detail
    assert not checks["symmetry"].passed and "0.2667 vs 0.1667" in checks["symmetry"].detail


def test_additivity_needs_two_objectives() -> None:
    table = UtilityTable.from_frame(pd.DataFrame({"coalition": ["", "a"], "only": [0.0, 1.0]}))
    (additivity,) = [c for c in check_axioms(table, exact_values(table), "only") if c.axiom == "additivity"]
    assert additivity.passed is None


def test_example_game_teaches_every_axiom() -> None:
    table = example_game()
    assert table.players == ("forum", "manuals", "refusals", "small-talk")
    assert table.objectives == ("helpfulness", "harmlessness") and not table.missing_coalitions()
    assert symmetric_pairs(table, "helpfulness") == [("forum", "manuals")]
    assert dummies(table, "harmlessness") == {"manuals": pytest.approx(0), "small-talk": pytest.approx(0.02)}
    for objective in table.objectives:
        assert all(c.passed in (True, None) for c in check_axioms(table, exact_values(table), objective))


def test_simulation_converges_to_exact(glove_table: UtilityTable) -> None:
    simulation = simulate(glove_table, "first", permutations=400, antithetic=True, seed=1)
    assert simulation.trace.permutations.max() == 400 and len(simulation.trace) == 200 * 3
    last = simulation.trace[simulation.trace.permutations == 400]
    np.testing.assert_allclose(last.exact, GLOVE_SHAPLEY)
    assert (last.error.abs() < 4 * last.stderr + 1e-9).all()
    assert simulation.estimate.shape == (3, 2) and simulation.n_evaluations <= 8
    plain = simulate(glove_table, "first", permutations=10, antithetic=False, seed=1)
    assert plain.trace.permutations.tolist()[::3] == list(range(1, 11))
    # every order splits v(N) - v(empty) exactly, so the estimate keeps efficiency
    assert check_axioms(glove_table, plain.estimate, "first")[0].passed


def test_arithmetic_counts() -> None:
    costs = ArithmeticCosts(4)
    assert (costs.adapters, costs.coalitions, costs.fine_tunings_without_arithmetic) == (4, 16, 15)
    # sum over S of |S|; a base row for every coalition but the 4 singletons (each is its adapter alone)
    assert costs.adapter_passes == 32 and costs.base_passes == 16 - 4
    assert costs.forward_passes_per_token == 2 ** 3 * 4 + 2 ** 4 - 4 == 44
    assert costs.forward_passes_per_token == sum(decode_rows(s) for s in all_coalitions("abcd"))  # as the sampler
    assert costs.teacher_forced_passes == 5


def test_arithmetic_latex() -> None:
    assert arithmetic_latex(["a", "b", "c"]) == (r"\log \pi_{\{\text{a}, \text{b}, \text{c}\}} = \log \pi_{\text{a}} "
                                                 r"+ \log \pi_{\text{b}} + \log \pi_{\text{c}} - 2\,\log \pi_0 - \log Z")
    assert r"- \log \pi_0 - \log Z" in arithmetic_latex(["a", "b"])
    assert "adapter alone" in arithmetic_latex(["a"]) and "base model" in arithmetic_latex([])
    assert tex_text("my_data&co") == r"\text{my\_data\&co}"


def test_shuffled_order_is_a_seeded_permutation() -> None:
    assert sorted(shuffled_order(GLOVES, 3)) == sorted(GLOVES)
    assert shuffled_order(GLOVES, 3) == shuffled_order(GLOVES, 3)


def test_lesson_game_falls_back_to_the_example(tmp_path: Path, glove_table: UtilityTable) -> None:
    assert lesson_game(None).name == EXAMPLE_GAME and lesson_game(None).reason == "no run is selected"
    run = create_run("demo", root=tmp_path)
    game = lesson_game(run)
    assert game.is_example and "no coalition utilities yet" in game.reason

    utilities_csv(run).parent.mkdir(parents=True)
    frame = glove_table.to_frame().drop(columns="size")
    frame[frame.coalition != "L+R1"].to_csv(utilities_csv(run), index=False)
    assert "lacks 1 of its 8 coalition utilities" in lesson_game(run).reason

    frame.to_csv(utilities_csv(run), index=False)
    game = lesson_game(run)
    assert not game.is_example and game.name == "run 'demo'" and game.table.players == GLOVES
