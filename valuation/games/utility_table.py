"""Measured coalition utilities as a table: read from CSV (optionally one row per prompt), and
itself a game, `table(coalition)` -> utilities, one per objective.

A malformed table raises ValueError naming the row; what a user must fix about a table they gave
(a combination that cannot be made, a table that cannot be valued) is a `UtilityError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from os import PathLike

import numpy as np
import pandas as pd

from ..errors import UserError
from .coalitions import Coalition, all_coalitions, coalition_name, parse_coalition


class UtilityError(UserError):
    """A utility table that cannot be used as asked; the message says what is wrong and where."""


def _describe(coalition: Coalition) -> str:
    return f"'{coalition_name(coalition)}'" if coalition else "'' (the empty coalition)"


def _lookup(table: Mapping[Coalition, np.ndarray], coalition: Coalition) -> np.ndarray:
    try:
        return table[coalition]
    except KeyError:
        raise ValueError(f"utility table has no row for coalition {_describe(coalition)}") from None


@dataclass(frozen=True)
class RewardHeads:
    """A table's per-prompt utilities again under each bootstrap head of its reward models
    (written by the evaluation, read by `evaluation.store`): what the Shapley intervals need to carry the reward model's noise."""

    per_prompt: Mapping[str, Mapping[Coalition, np.ndarray]]  # objective -> coalition -> [K, n_prompts]
    missing: Mapping[str, str] = field(default_factory=dict)  # objective -> why it has no heads (a hub model, ...)

    def count(self, objective: str) -> int:
        """How many heads `objective` has (0: none)."""
        utilities = self.per_prompt.get(objective)
        return 0 if not utilities else len(next(iter(utilities.values())))


@dataclass(frozen=True)
class SeedReplicas:
    """A table's per-prompt utilities under each training seed of its sources' adapters
    (`evaluation.seeds`), the first seed first: the table itself holds their mean."""

    per_prompt: Mapping[Coalition, np.ndarray]  # coalition -> [k, m, n_prompts]

    @property
    def count(self) -> int:
        return len(next(iter(self.per_prompt.values())))


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
    heads: RewardHeads | None = None  # per-head utilities of the same coalitions and prompts, where stored
    seeds: SeedReplicas | None = None  # with adapters under several training seeds: each seed's utilities

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
        return [c for c in all_coalitions(self.players) if c not in self.values]

    def to_frame(self) -> pd.DataFrame:
        df = pd.DataFrame(
            [{"coalition": coalition_name(c), "size": len(c), **dict(zip(self.objectives, v.tolist()))}
             for c, v in self.values.items()]
        )
        return df.sort_values(["size", "coalition"], ignore_index=True)


def with_seeds(first: UtilityTable, further: list[UtilityTable], names: list[str]) -> UtilityTable:
    """The mean of the tables of the same game under each training seed (`first`, then `further`,
    each with per-prompt utilities of the same coalitions, prompts and objectives; `names` say which
    file each came from), keeping each seed's for the intervals. The first seed's reward heads stay."""
    for table, name in zip(further, names):
        same = (set(table.values) == set(first.values), table.prompts == first.prompts, table.objectives == first.objectives)
        if first.per_prompt is None or table.per_prompt is None or not all(same):
            what = ["coalitions", "prompts", "objectives"][same.index(False)] if not all(same) else "per-prompt utilities"
            raise ValueError(f"{name} does not match the first seed's table ({what} differ): evaluate again")
    stacked = {c: np.stack([first.per_prompt[c], *(t.per_prompt[c] for t in further)]) for c in first.per_prompt}
    mean = {c: u.mean(0) for c, u in stacked.items()}
    return UtilityTable(first.players, first.objectives, {c: u.mean(-1) for c, u in mean.items()}, mean, first.prompts,
                        first.heads, SeedReplicas(stacked))


def with_combined(table: UtilityTable, weight: float, first: str, second: str,
                  name: str = "combined") -> UtilityTable:
    """Add objective `name` = weight * first + (1 - weight) * second, per prompt where there are prompts.

    Shapley is linear in v, so its value is weight * phi_first + (1 - weight) * phi_second, and
    bootstrapping the per-prompt combination keeps its intervals honest.
    """
    if not 0 <= weight <= 1:
        raise UtilityError(f"combined weight {weight} is outside [0, 1]")
    for objective in (first, second):
        if objective not in table.objectives:
            raise UtilityError(f"no objective {objective!r} to combine; the table has {list(table.objectives)}")
    if name in table.objectives:
        raise UtilityError(f"the table already has an objective called {name!r}")
    a, b = table.objectives.index(first), table.objectives.index(second)

    def combine(u: np.ndarray) -> np.ndarray:  # u: [m] or [m, n_prompts]
        return np.concatenate([u, weight * u[a:a + 1] + (1 - weight) * u[b:b + 1]])

    per_prompt = None if table.per_prompt is None else {c: combine(u) for c, u in table.per_prompt.items()}
    seeds = None if table.seeds is None else SeedReplicas({c: np.stack([combine(v) for v in u])
                                                           for c, u in table.seeds.per_prompt.items()})
    return replace(table, objectives=(*table.objectives, name), heads=_combined_heads(table, weight, first, second, name),
                   values={c: combine(u) for c, u in table.values.items()}, per_prompt=per_prompt, seeds=seeds)


def _combined_heads(table: UtilityTable, weight: float, first: str, second: str, name: str) -> RewardHeads | None:
    """The combination's utilities under head k: head k of each objective that has heads (the two
    were refit independently, so any pairing is a draw of both), its main utilities otherwise."""
    heads = table.heads
    if heads is None or not (heads.count(first) or heads.count(second)):
        return heads
    k = min(c for c in (heads.count(first), heads.count(second)) if c)
    a, b = table.objectives.index(first), table.objectives.index(second)

    def under(objective: str, row: int, coalition) -> np.ndarray:  # [K, n_prompts]
        own = heads.per_prompt.get(objective)
        return own[coalition][:k] if own else table.per_prompt[coalition][row][None]

    combined = {c: weight * under(first, a, c) + (1 - weight) * under(second, b, c) for c in table.per_prompt}
    return replace(heads, per_prompt={**heads.per_prompt, name: combined})
