"""Shapley machinery against games whose values are known, and against brute force over orderings."""

from __future__ import annotations

import json
from itertools import combinations, permutations
from math import factorial

import numpy as np
import pandas as pd
import pytest

from valuation.games.coalitions import (
    BASE,
    Coalition,
    all_coalitions,
    coalition_name,
    decode_rows,
    formula,
    formula_terms,
    parse_coalition,
)
from valuation.games.intervals import bootstrap_intervals
from valuation.games.sampling import MaxPermutations, StandardErrorBelow, permutation_shapley
from valuation.games.shapley import (
    CachedGame,
    ValuationResult,
    exact_banzhaf,
    exact_shapley,
    pairwise_interactions,
    shapley_weights,
    values_by_mask,
)
from valuation.games.utility_table import UtilityTable

# -----------------------------------------------------------------------------
# games and independent oracles


def glove_game(coalition: Coalition) -> float:
    left = len(coalition & {"L"})
    return min(left, len(coalition) - left)  # pairs of gloves


def weighted_voting(weights: dict[str, int], quota: int):
    return lambda coalition: float(sum(weights[p] for p in coalition) >= quota)


def random_game(players: tuple[str, ...], m: int, seed: int):
    """A table of independent random utilities, m objectives, v(empty) arbitrary too."""
    rng = np.random.default_rng(seed)
    table = {frozenset(s): rng.normal(size=m) for k in range(len(players) + 1) for s in combinations(players, k)}
    return table.__getitem__


def brute_shapley(players: tuple[str, ...], game) -> np.ndarray:
    """Average marginal contribution over all n! orderings."""
    phi = np.zeros((len(players), np.atleast_1d(game(frozenset())).size))
    for order in permutations(range(len(players))):
        coalition: Coalition = frozenset()
        for i in order:
            phi[i] += np.asarray(game(coalition | {players[i]})) - np.asarray(game(coalition))
            coalition = coalition | {players[i]}
    return phi / factorial(len(players))


def brute_banzhaf(players: tuple[str, ...], game) -> np.ndarray:
    n = len(players)
    phi = np.zeros((n, np.atleast_1d(game(frozenset())).size))
    for i, p in enumerate(players):
        others = [q for q in players if q != p]
        for k in range(n):
            for s in combinations(others, k):
                phi[i] += np.asarray(game(frozenset(s) | {p})) - np.asarray(game(frozenset(s)))
    return phi / 2 ** (n - 1)


def brute_interaction(players: tuple[str, ...], game, i: int, j: int) -> np.ndarray:
    n = len(players)
    a, b = players[i], players[j]
    others = [q for q in players if q not in (a, b)]
    total = 0.0
    for k in range(n - 1):
        w = factorial(k) * factorial(n - k - 2) / factorial(n - 1)
        for s in map(frozenset, combinations(others, k)):
            total = total + w * (np.asarray(game(s | {a, b})) - game(s | {a}) - game(s | {b}) + game(s))
    return total


# -----------------------------------------------------------------------------
# exact values on known games


def test_glove_game():
    players = ("L", "R1", "R2")
    result = exact_shapley(players, glove_game)
    np.testing.assert_allclose(result.values[:, 0], [2 / 3, 1 / 6, 1 / 6])
    np.testing.assert_allclose(exact_banzhaf(players, glove_game).values[:, 0], [3 / 4, 1 / 4, 1 / 4])
    interactions = pairwise_interactions(players, glove_game)[:, :, 0]
    np.testing.assert_allclose(interactions, [[0, 1 / 2, 1 / 2], [1 / 2, 0, -1 / 2], [1 / 2, -1 / 2, 0]])


def test_airport_game():
    costs = {"a": 1.0, "b": 3.0, "c": 4.0, "d": 8.0}  # sorted ascending
    players = tuple(costs)
    result = exact_shapley(players, lambda s: max((costs[p] for p in s), default=0.0))
    # runway segment k (c_k - c_{k-1}) is shared equally by the n-k+1 planes that need it
    c = np.array([0.0, *costs.values()])
    n = len(players)
    expected = [sum((c[k] - c[k - 1]) / (n - k + 1) for k in range(1, i + 1)) for i in range(1, n + 1)]
    np.testing.assert_allclose(result.values[:, 0], expected)
    np.testing.assert_allclose(result.efficiency_gap(), 0, atol=1e-12)


def test_weighted_voting_game():
    weights = {"A": 3, "B": 2, "C": 1, "D": 1}
    players, game = tuple(weights), weighted_voting(weights, quota=4)
    # by hand: A is pivotal in 12 of 24 orderings, each of B, C, D in 4
    np.testing.assert_allclose(exact_shapley(players, game).values[:, 0], [1 / 2, 1 / 6, 1 / 6, 1 / 6])
    np.testing.assert_allclose(exact_shapley(players, game).values, brute_shapley(players, game))
    np.testing.assert_allclose(exact_banzhaf(players, game).values[:, 0], [3 / 4, 1 / 4, 1 / 4, 1 / 4])


def test_additive_game():
    own = {"a": 1.0, "b": -2.0, "c": 0.5, "d": 3.0}
    players = tuple(own)
    game = lambda s: [sum(own[p] for p in s), 2 * sum(own[p] for p in s)]  # noqa: E731
    expected = np.array([[x, 2 * x] for x in own.values()])
    np.testing.assert_allclose(exact_shapley(players, game).values, expected)
    np.testing.assert_allclose(exact_banzhaf(players, game).values, expected)
    np.testing.assert_allclose(pairwise_interactions(players, game), 0, atol=1e-12)


def test_unanimity_pair_has_unit_interaction():
    players = ("a", "b", "c", "d")
    interactions = pairwise_interactions(players, lambda s: float({"a", "b"} <= s))[:, :, 0]
    expected = np.zeros((4, 4))
    expected[0, 1] = expected[1, 0] = 1
    np.testing.assert_allclose(interactions, expected, atol=1e-12)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_random_games_match_brute_force(n: int):
    players = tuple(f"p{i}" for i in range(n))
    game = random_game(players, m=3, seed=n)
    result = exact_shapley(players, game, objectives=["x", "y", "z"])
    assert result.objectives == ("x", "y", "z")
    np.testing.assert_allclose(result.values, brute_shapley(players, game))
    np.testing.assert_allclose(result.efficiency_gap(), 0, atol=1e-12)
    np.testing.assert_allclose(exact_banzhaf(players, game).values, brute_banzhaf(players, game))
    interactions = pairwise_interactions(players, game)
    for i, j in combinations(range(n), 2):
        np.testing.assert_allclose(interactions[i, j], brute_interaction(players, game, i, j))
        np.testing.assert_allclose(interactions[j, i], interactions[i, j])
    np.testing.assert_allclose(interactions[range(n), range(n)], 0)


def test_weights_are_a_matrix_product():
    w = shapley_weights(12)
    assert w.shape == (4096, 12)
    np.testing.assert_allclose(w.sum(0), 0, atol=1e-12)  # a constant game is worth nothing to anyone
    np.testing.assert_allclose(w[-1].sum(), 1)  # efficiency: the grand coalition enters with total weight 1
    with pytest.raises(ValueError, match="n = 21 > 20"):
        shapley_weights(21)


# -----------------------------------------------------------------------------
# Monte Carlo


def test_monte_carlo_converges_to_exact():
    players = tuple(f"p{i}" for i in range(8))
    game = random_game(players, m=2, seed=7)
    exact = exact_shapley(players, game)
    mc = permutation_shapley(players, game, budget_permutations=2000, seed=1)
    assert np.all(np.abs(mc.values - exact.values) < 4 * mc.stderr)
    np.testing.assert_allclose(mc.efficiency_gap(), 0, atol=1e-9)  # every ordering is efficient
    assert mc.convergence is not None and mc.convergence.n_permutations == 2000
    assert mc.convergence.values.shape == (1000, 8, 2)  # one row per antithetic pair
    assert mc.convergence.n_evaluations <= 2**8
    np.testing.assert_array_equal(mc.convergence.values[-1], mc.values)
    assert np.all(mc.lower < mc.values) and np.all(mc.values < mc.upper)
    assert len(mc.convergence_frame()) == 1000 * 8 * 2


def test_antithetic_cancels_size_driven_variance():
    own = dict(zip("abcdef", [1.0, 2.0, -1.0, 0.5, 0.0, 3.0]))
    players = tuple(own)
    # marginal of i after s others is own_i + 2s + 1; its reverse sees n-1-s others: the pair mean is exact
    game = lambda s: sum(own[p] for p in s) + len(s) ** 2  # noqa: E731
    exact = exact_shapley(players, game).values
    anti = permutation_shapley(players, game, budget_permutations=200, seed=0, antithetic=True)
    plain = permutation_shapley(players, game, budget_permutations=200, seed=0, antithetic=False)
    np.testing.assert_allclose(anti.values, exact)
    np.testing.assert_allclose(anti.stderr, 0, atol=1e-12)
    assert np.all(plain.stderr > 0.1)
    assert np.all(np.abs(plain.values - exact) < 4 * plain.stderr)


def test_monte_carlo_is_seeded():
    players = tuple(f"p{i}" for i in range(6))
    game = random_game(players, m=1, seed=3)
    a, b, c = (permutation_shapley(players, game, budget_permutations=50, seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.convergence.stderr, b.convergence.stderr)
    assert not np.array_equal(a.values, c.values)


def test_stopping_rule_stops_early_and_cache_is_reused():
    players = tuple(f"p{i}" for i in range(8))
    game = CachedGame(random_game(players, m=1, seed=2))
    rule = StandardErrorBelow(0.2, burn_in=20) | MaxPermutations(10_000)
    result = permutation_shapley(players, game, budget_permutations=100_000, seed=0, stopping=rule)
    steps = result.convergence
    assert 20 <= steps.n_permutations < 10_000
    assert np.all(steps.stderr[-1] < 0.2)
    assert not np.all(steps.stderr[-2] < 0.2) or steps.n_permutations == 20  # stopped at the first chance
    evaluated = game.n_evaluations
    again = permutation_shapley(players, game, budget_permutations=10, seed=0)
    assert game.n_evaluations == evaluated  # the same orderings hit the cache
    assert again.convergence.n_evaluations == evaluated


def test_max_permutations_counts_antithetic_pairs_twice():
    players = ("a", "b", "c")
    result = permutation_shapley(players, glove_game, budget_permutations=10, seed=0)
    np.testing.assert_array_equal(result.convergence.permutations, [2, 4, 6, 8, 10])


# -----------------------------------------------------------------------------
# utility tables from CSV


def write(tmp_path, text: str):
    path = tmp_path / "utilities.csv"
    path.write_text(text)
    return path


def test_csv_round_trip_and_order_insensitive_names(tmp_path):
    path = write(tmp_path, "coalition,helpfulness,harmlessness\n,0,0\na,1,0.5\n b ,2,0\nb + a,4,1\n")
    table = UtilityTable.from_csv(path)
    assert table.players == ("a", "b")
    assert table.objectives == ("helpfulness", "harmlessness")
    assert table.value(frozenset({"a", "b"}), "helpfulness") == 4
    assert table.value(frozenset(), "harmlessness") == 0
    assert table.missing_coalitions() == []
    frame = table.to_frame()
    assert frame["coalition"].tolist() == ["", "a", "b", "a+b"]
    assert frame["size"].tolist() == [0, 1, 1, 2]
    result = exact_shapley(table.players, table, objectives=table.objectives)
    np.testing.assert_allclose(result.values, [[1.5, 0.75], [2.5, 0.25]])


def test_coalition_names():
    assert parse_coalition(" b+a ") == frozenset({"a", "b"})
    assert parse_coalition("") == parse_coalition(float("nan")) == parse_coalition(None) == frozenset()
    assert coalition_name(frozenset({"b", "a"})) == "a+b" and coalition_name(frozenset()) == ""
    with pytest.raises(ValueError, match="empty player name"):
        parse_coalition("a++b")
    with pytest.raises(ValueError, match="repeated player"):
        parse_coalition("a+a")


def test_coalitions_their_formulas_and_costs():
    assert all_coalitions(["b", "a"]) == [frozenset(), {"b"}, {"a"}, {"a", "b"}]  # by size, then players' order
    assert len(all_coalitions(list("abcd"))) == 16
    with pytest.raises(ValueError, match="n = 21 > 20"):
        all_coalitions([f"p{i}" for i in range(21)])
    assert formula_terms(frozenset()) == [(BASE, 1.0)]
    assert formula_terms({"b"}) == [("b", 1.0)]  # a singleton is its adapter alone: no base row
    assert formula_terms({"c", "a", "b"}) == [(BASE, -2.0), ("a", 1.0), ("b", 1.0), ("c", 1.0)]  # sorted
    assert [decode_rows(c) for c in all_coalitions(list("abc"))] == [1, 1, 1, 1, 3, 3, 3, 4]
    assert formula(()) == "log π = log π_0" and formula({"a"}) == "log π = log π_a"
    assert formula({"b", "a"}) == "log π = log π_a + log π_b − log π_0"
    assert formula({"c", "b", "a"}) == "log π = log π_a + log π_b + log π_c − 2 log π_0"


def test_exact_rows_are_bitmasks():
    """Row `mask` of the exact computation holds the coalition of the players whose bits are set."""
    rows = values_by_mask(("a", "b", "c"), lambda s: np.array([coalition_name(s)], dtype=object))
    assert rows[:, 0].tolist() == ["", "a", "b", "a+b", "c", "a+c", "b+c", "a+b+c"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("source,helpfulness\na,1\n", "needs a 'coalition' column"),
        ("coalition\na\n", "no objective columns"),
        ("coalition,helpfulness\na,1\nb,lots\n", "non-numeric value 'lots' in objective column 'helpfulness'"),
        ("coalition,helpfulness\na,1\nb,\n", "missing value in objective column 'helpfulness'"),
        ("coalition,helpfulness\na+b,1\nb+a,2\n", "duplicate coalition 'a\\+b'"),
        ("coalition,helpfulness\n,1\n,2\n", "duplicate coalition '' \\(the empty coalition\\)"),
        ("coalition,prompt,helpfulness\na,q0,1\na,q0,2\n", "duplicate coalition 'a' for prompt 'q0'"),
    ],
)
def test_csv_errors(tmp_path, text: str, message: str):
    with pytest.raises(ValueError, match=message):
        UtilityTable.from_csv(write(tmp_path, text))


def test_missing_coalition_is_named(tmp_path):
    table = UtilityTable.from_csv(write(tmp_path, "coalition,v\n,0\na,1\nb,2\n"))
    assert table.missing_coalitions() == [frozenset({"a", "b"})]
    with pytest.raises(ValueError, match="no row for coalition 'a\\+b'"):
        exact_shapley(table.players, table)


# -----------------------------------------------------------------------------
# intervals over prompts


def per_prompt_table(players: tuple[str, ...], per_prompt, n_prompts: int) -> UtilityTable:
    """Long frame (coalition, prompt, u1, u2) from per_prompt(coalition, prompt) -> [u1, u2]."""
    rows = [
        {"coalition": "+".join(s), "prompt": f"q{k}", **dict(zip(("u1", "u2"), per_prompt(frozenset(s), k)))}
        for size in range(len(players) + 1)
        for s in combinations(players, size)
        for k in range(n_prompts)
    ]
    return UtilityTable.from_frame(pd.DataFrame(rows))


def test_bootstrap_mean_of_per_prompt_values_is_shapley_of_mean():
    players = ("a", "b", "c", "d")
    rng = np.random.default_rng(0)
    noise = {frozenset(s): rng.normal(size=(40, 2)) for k in range(5) for s in combinations(players, k)}
    table = per_prompt_table(players, lambda s, k: glove_game(s & {"a", "b"}) + noise[s][k], 40)
    assert len(table.prompts) == 40
    result = bootstrap_intervals(players, table, n_boot=500, seed=0)
    np.testing.assert_allclose(result.values, exact_shapley(players, table).values)
    np.testing.assert_allclose(result.efficiency_gap(), 0, atol=1e-12)
    assert np.all(result.lower <= result.values) and np.all(result.values <= result.upper)
    assert np.all(result.upper - result.lower > 0)
    t = bootstrap_intervals(players, table, interval="t")
    np.testing.assert_allclose(t.values, result.values)
    assert np.all(t.lower <= t.values) and np.all(t.values <= t.upper)
    np.testing.assert_allclose(t.upper - t.lower, result.upper - result.lower, rtol=0.3)  # both ~ 2 x 1.96 SE


def test_bootstrap_width_zero_for_identical_prompts():
    players = ("L", "R1", "R2")
    table = per_prompt_table(players, lambda s, k: [glove_game(s), 2 * glove_game(s)], 10)
    result = bootstrap_intervals(players, table, n_boot=200)
    np.testing.assert_allclose(result.values[:, 0], [2 / 3, 1 / 6, 1 / 6])
    np.testing.assert_allclose(result.upper - result.lower, 0, atol=1e-12)
    assert not result.spans_zero().any()


def test_leave_one_out_is_what_each_player_adds_last_with_its_own_intervals():
    # Glove game, one left glove L and two right: L leaving loses the pair, either right glove
    # leaving loses nothing (the other is still there). Shapley says 2/3, 1/6, 1/6.
    players = ("L", "R1", "R2")
    rng = np.random.default_rng(1)
    noise = {frozenset(s): rng.normal(scale=0.1, size=30) for k in range(4) for s in combinations(players, k)}
    table = per_prompt_table(players, lambda s, k: [glove_game(s) + noise[s][k]], 30)
    loo = bootstrap_intervals(players, table, index="leave-one-out", n_boot=500)
    grand = table.prompt_values(frozenset(players))
    expected = [(grand - table.prompt_values(frozenset(players) - {p})).mean(-1)[0] for p in players]
    np.testing.assert_allclose(loo.values[:, 0], expected)
    np.testing.assert_allclose(loo.values[:, 0], [1, 0, 0], atol=0.1)
    assert loo.index == "leave-one-out" and not loo.spans_zero()[0, 0] and loo.spans_zero()[1:, 0].all()


def test_bootstrap_needs_prompts():
    table = UtilityTable.from_frame(pd.DataFrame({"coalition": ["", "a"], "v": [0.0, 1.0]}))
    with pytest.raises(ValueError, match="no per-prompt values"):
        bootstrap_intervals(table.players, table)


def test_prompts_must_match_across_coalitions():
    df = pd.DataFrame({"coalition": ["", "", "a"], "prompt": ["q0", "q1", "q0"], "v": [0.0, 1.0, 2.0]})
    with pytest.raises(ValueError, match="coalition 'a' lacks prompts \\[.q1.\\]"):
        UtilityTable.from_frame(df)


# -----------------------------------------------------------------------------
# results


def test_result_frames_and_flags():
    result = ValuationResult(
        players=("a", "b"), objectives=("help", "harm"), values=np.array([[1.0, -0.1], [0.5, 0.2]]),
        total=np.array([1.5, 0.1]), method="test",
        lower=np.array([[0.8, -0.3], [-0.1, 0.1]]), upper=np.array([[1.2, 0.1], [1.1, 0.3]]),
    )
    np.testing.assert_array_equal(result.spans_zero(), [[False, True], [True, False]])
    np.testing.assert_allclose(result.efficiency_gap(), 0)
    frame = result.to_frame()
    pairs = [["help", "a"], ["help", "b"], ["harm", "a"], ["harm", "b"]]
    assert frame[["objective", "player"]].values.tolist() == pairs
    assert frame["stderr"].isna().all()
    payload = json.loads(json.dumps(result.to_json_dict()))
    assert payload["harm"]["a"] == {"value": -0.1, "lower": -0.3, "upper": 0.1}
    point = exact_shapley(("a",), lambda s: len(s))
    assert point.to_json_dict() == {"0": {"a": {"value": 1.0, "lower": None, "upper": None}}}
    with pytest.raises(ValueError, match="no intervals"):
        point.spans_zero()
