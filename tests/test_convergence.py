"""Values on the first k prompts: intervals narrow as prompts are added, the last point is the full
table's value, prompts count in the order they were evaluated, and a partial table says what it lacks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from helpers import GLOVE_SHAPLEY, additive_prompt_frame, frame_convergence, glove_frame, store, write_utilities
from valuation.games.utility_table import UtilityError, UtilityTable
from valuation.games.values import ValuationConfig, value_sources
from valuation.views.convergence import (
    COLUMNS,
    answered_table,
    convergence_frame,
    first_prompts,
    prefix_sizes,
)


def widths(frame: pd.DataFrame) -> pd.DataFrame:
    """Interval width per (prompts, objective, player), one column per prompt count."""
    return frame.assign(width=frame.upper - frame.lower).pivot_table(
        index=["objective", "player"], columns="prompts", values="width")


def test_intervals_narrow_as_prompts_are_added_and_end_at_the_full_tables_value() -> None:
    frame = additive_prompt_frame(n_prompts=40)
    table = UtilityTable.from_frame(frame)
    trace = convergence_frame(table, sizes=[5, 10, 20, 40])
    assert list(trace.columns) == COLUMNS and sorted(trace.prompts.unique()) == [5, 10, 20, 40]
    width = widths(trace)
    assert (width[40] < width[5]).all().all()  # every source, every objective
    assert np.all(np.diff(width.mean().to_numpy()) < 0)  # narrower at each step, on average
    # the last point is what the Shapley page shows for the whole table: value and interval
    full = value_sources(table).shapley.to_frame().set_index(["objective", "player"])
    last = trace[trace.prompts == 40].set_index(["objective", "player"])
    pd.testing.assert_frame_equal(last[["value", "lower", "upper"]], full.loc[last.index, ["value", "lower", "upper"]])
    # an additive game: on k prompts each value is the mean weight over those prompts, exactly
    first = UtilityTable.from_frame(frame[frame.prompt.isin(table.prompts[:5])])  # the table's order, without one given
    np.testing.assert_allclose(trace[trace.prompts == 5].value, value_sources(first).shapley.to_frame().value)


def test_a_game_without_prompt_noise_converges_at_once() -> None:
    """The glove game repeated on every prompt: every prefix has the exact values, with zero-width intervals."""
    gloves = glove_frame().drop(columns="harmlessness")
    frame = pd.concat([gloves.assign(prompt=f"q{k}") for k in range(6)], ignore_index=True)
    trace = frame_convergence(frame, chunk=2)
    assert sorted(trace.prompts.unique()) == [2, 4, 6]
    for player, value in GLOVE_SHAPLEY.items():
        rows = trace[trace.player == player]
        np.testing.assert_allclose(rows.value, value)
        np.testing.assert_allclose(rows.upper - rows.lower, 0, atol=1e-12)


def test_prompts_count_in_the_order_they_were_evaluated() -> None:
    frame = additive_prompt_frame(n_prompts=6)
    evaluated = ["p5", "p2", "p0", "p4", "p1", "p3"]  # not the sorted order the table keeps
    frame = pd.concat([frame[frame.prompt == p] for p in evaluated], ignore_index=True)
    table, order = answered_table(frame)
    assert order == tuple(evaluated) and table.prompts == tuple(sorted(evaluated))
    trace = frame_convergence(frame, chunk=2)
    on_two = value_sources(UtilityTable.from_frame(frame[frame.prompt.isin(evaluated[:2])])).shapley.to_frame()
    np.testing.assert_allclose(trace[trace.prompts == 2].value, on_two.value)
    np.testing.assert_allclose(trace[trace.prompts == 2].lower, on_two.lower)
    # one prompt: a value, but no interval
    single = convergence_frame(table, sizes=[1], order=order)
    assert single.lower.isna().all() and single.upper.isna().all()
    np.testing.assert_allclose(single.value, value_sources(first_prompts(table, ["p5"])).shapley.values.T.ravel())


def test_a_partial_table_waits_for_every_coalition() -> None:
    frame = additive_prompt_frame(n_prompts=4)
    grand = frame.coalition.iloc[-1]
    # a coalition that has not reached the last two prompts yet: those prompts wait
    behind = frame[~((frame.coalition == grand) & frame.prompt.isin(["p2", "p3"]))]
    table, order = answered_table(behind)
    assert order == ("p0", "p1") and table.prompts == ("p0", "p1")
    assert frame_convergence(behind).prompts.max() == 2
    # a coalition with no prompt at all: no value yet, said in words
    with pytest.raises(UtilityError, match="not available until every coalition has a prompt"):
        answered_table(frame[(frame.coalition == grand) == (frame.prompt == "p0")])  # grand on p0 alone, the rest not
    # every prompt answered by the coalitions present, but exact values need one the table lacks
    with pytest.raises(UtilityError, match="lacks 1 of the 8 coalitions"):
        frame_convergence(frame[frame.coalition != grand])
    with pytest.raises(UtilityError, match="no prompts"):
        answered_table(glove_frame())


def test_the_config_decides_the_method_and_the_level() -> None:
    table = UtilityTable.from_frame(additive_prompt_frame(n_prompts=10))
    narrow = convergence_frame(table, ValuationConfig(confidence=0.5), sizes=[10])
    wide = convergence_frame(table, ValuationConfig(confidence=0.99), sizes=[10])
    assert ((narrow.upper - narrow.lower) < (wide.upper - wide.lower)).all()
    monte_carlo = convergence_frame(table, ValuationConfig(method="permutation", permutations=20), sizes=[3, 10])
    np.testing.assert_allclose(monte_carlo[monte_carlo.prompts == 10].value, narrow.value, atol=1e-12)  # additive


def test_prefix_sizes_follow_the_chunks_and_stay_few() -> None:
    assert prefix_sizes(8, chunk=2) == [2, 4, 6, 8]
    assert prefix_sizes(9, chunk=4) == [4, 8, 9]  # the last, short chunk too
    assert prefix_sizes(0, chunk=4) == []
    assert prefix_sizes(3) == [1, 2, 3]
    many = prefix_sizes(200, chunk=1, most=12)
    assert len(many) == 12 and many[0] == 1 and many[-1] == 200 and many == sorted(many)
    assert prefix_sizes(100) == list(range(9, 100, 9)) + [100]


def test_the_table_as_written_keeps_the_base_and_the_file_order(tmp_path) -> None:
    run = write_utilities(tmp_path / "r", additive_prompt_frame(n_prompts=3).iloc[::-1])
    read = store(run).frame_of()
    assert "" in set(read.coalition) and list(pd.unique(read.prompt)) == ["p2", "p1", "p0"]
    store(run).table_path("utilities").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UtilityError):
        store(run).frame_of()
    assert store(run).settings is None
    (store(run).folder / "settings.json").write_text(json.dumps({"prompts": 8, "chunk_prompts": 2}))
    settings = store(run).settings
    assert (settings.prompts, settings.chunk_prompts) == (8, 2)
