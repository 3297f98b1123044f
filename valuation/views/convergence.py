"""How the Shapley values settle as prompts are added: each source's value and interval on the first
k prompts of a utility table, for a few k (an evaluation's chunk boundaries).

An evaluation rewrites utilities.csv after every chunk of prompts (`evaluation.estimators`), its
prompts in the file in the order they were evaluated (`EvaluationStore.frame_of` reads it so).
Valuing the first k of them for growing k shows the intervals narrow: live while the evaluation
runs, and afterwards as a record of how many prompts the values needed. Each prefix is valued by
`games.values.value_sources` with the page's config, so a point is exactly what the Shapley page
would show for a table of those prompts, and the last point (every prompt) is the full table's value.

Pure: a utilities frame or a `UtilityTable` in, a tidy frame out

    prompts, objective, player, value, lower, upper     (lower, upper NaN where there is no interval)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from ..games.utility_table import UtilityError, UtilityTable
from ..games.values import ValuationConfig, value_sources

COLUMNS = ["prompts", "objective", "player", "value", "lower", "upper"]
MOST_SIZES = 12  # prefix sizes drawn at the most: each is one valuation


def answered_table(frame: pd.DataFrame) -> tuple[UtilityTable, tuple[str, ...]]:
    """The table of the prompts that every coalition in `frame` has answered, and those prompts in
    file order (the order they were evaluated). A chunk's rows land together, but a partial table
    may hold coalitions that have not reached a prompt yet: those prompts wait."""
    if "prompt" not in frame.columns:
        raise UtilityError("the table has one utility per coalition, no prompts: nothing to add up prompt by prompt")
    prompts = frame.prompt.astype(str)
    coalitions = frame.coalition.nunique()
    answered = prompts.groupby(prompts, sort=False).transform("size") == coalitions  # one row per coalition
    if not answered.any():
        raise UtilityError("no prompt has been answered by every coalition yet: the values are not available until "
                           "every coalition has a prompt")
    try:
        table = UtilityTable.from_frame(frame[answered.to_numpy()])
    except ValueError as error:
        raise UtilityError(f"cannot read the utilities: {error}") from None
    return table, tuple(pd.unique(prompts[answered]))


def first_prompts(table: UtilityTable, prompts: Sequence[str]) -> UtilityTable:
    """The table on `prompts` only, kept in the table's own order: on every prompt it is the table itself."""
    if table.per_prompt is None or table.prompts is None:
        raise UtilityError("the table has no per-prompt utilities: give it a 'prompt' column")
    chosen = set(prompts)
    keep = np.array([p in chosen for p in table.prompts])
    if not keep.any():
        raise UtilityError(f"none of the prompts {list(prompts)[:3]} is in the table")
    per_prompt = {c: u[:, keep] for c, u in table.per_prompt.items()}
    return replace(table, values={c: u.mean(-1) for c, u in per_prompt.items()}, per_prompt=per_prompt,
                   prompts=tuple(p for p, k in zip(table.prompts, keep) if k))


def prefix_sizes(n_prompts: int, chunk: int | None = None, most: int = MOST_SIZES) -> list[int]:
    """Where to value the first k prompts: every chunk boundary (every `chunk` prompts, and the last
    prompt), thinned evenly to at most `most` sizes, the last always kept. Without a chunk size,
    `most` evenly spaced sizes."""
    if n_prompts < 1:
        return []
    step = chunk if chunk and chunk > 0 else max(1, -(-n_prompts // most))
    sizes = sorted({*range(step, n_prompts + 1, step), n_prompts})
    if len(sizes) <= most:
        return sizes
    picks = np.unique(np.round(np.linspace(0, len(sizes) - 1, most)).astype(int))
    return [sizes[i] for i in picks]


def convergence_frame(table: UtilityTable, config: ValuationConfig = ValuationConfig(),
                      sizes: Sequence[int] | None = None, order: Sequence[str] | None = None) -> pd.DataFrame:
    """Each player's value and interval per objective on the first k prompts of `order` (default:
    the table's prompt order), for each k of `sizes` (default: `prefix_sizes`). A prefix of one
    prompt has no interval. Raises UtilityError when the table cannot be valued (a coalition the
    method needs is missing: then no prefix can be)."""
    order = tuple(order) if order is not None else table.prompts
    if order is None:
        raise UtilityError("the table has no per-prompt utilities: give it a 'prompt' column")
    unknown = set(order) - set(table.prompts or ())
    if unknown:
        raise UtilityError(f"prompts {sorted(unknown)[:3]} are not in the table")
    sizes = prefix_sizes(len(order)) if sizes is None else sorted({int(k) for k in sizes if 1 <= k <= len(order)})
    frames = [value_sources(first_prompts(table, order[:k]), config).shapley.to_frame().assign(prompts=k)
              for k in sizes]
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(frames, ignore_index=True)[COLUMNS]
