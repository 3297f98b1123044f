"""Valuing a table's players: Shapley values with intervals where the table allows them, Banzhaf
values and pairwise interactions from the same table, in one `Valuation`.

`value_sources(table, config)` computes Shapley values (exact over all 2^n coalitions by default
while n <= 12, else permutation Monte Carlo) with intervals: a bootstrap over prompts where the
table has per-prompt utilities (and over reward heads and training seeds where it holds them), the
Monte Carlo standard error otherwise. Table problems become `UtilityError`s that say what to fix.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from os import PathLike

import numpy as np
import pandas as pd

from ..config import ConfigError, helped
from ..errors import UserError
from .coalitions import ENUMERABLE_MAX_PLAYERS, EXACT_MAX_PLAYERS, coalition_name, resolved_method
from .intervals import bootstrap_intervals
from .sampling import permutation_shapley
from .shapley import ValuationResult, exact_banzhaf, exact_shapley, pairwise_interactions
from .utility_table import UtilityError, UtilityTable

METHODS = ("auto", "exact", "permutation")


@contextmanager
def table_errors(where: str) -> Iterator[None]:
    """The pure library raises ValueError for table problems; say which table they concern."""
    try:
        yield
    except UserError:
        raise
    except (ValueError, OSError) as error:  # pandas' parser and decoding errors are ValueErrors
        raise UtilityError(f"{where}: {error}") from None


def read_table(path: str | PathLike[str]) -> UtilityTable:
    """A utility table from a CSV file (`UtilityTable.from_csv`), its problems said as `UtilityError`s."""
    with table_errors(str(path)):
        return UtilityTable.from_csv(path)


# -----------------------------------------------------------------------------
# valuation


@dataclass(frozen=True)
class ValuationConfig:
    method: str = helped("auto", "'exact' (all 2^n coalitions), 'permutation' (Monte Carlo over orders of the "
                                 f"sources) or 'auto' (exact while n <= {EXACT_MAX_PLAYERS}).")
    permutations: int = helped(1000, "Monte Carlo budget: random orders of the sources (antithetic pairs count two).")
    seed: int = helped(0, "Seed of the permutations and of the bootstrap.")
    confidence: float = helped(0.95, "Confidence level of the intervals.")
    bootstrap: int = helped(1000, "Bootstrap resamples of the prompts (exact method with per-prompt utilities; 0: none).")

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method={self.method!r}: use one of {', '.join(METHODS)}.")
        if self.permutations < 4:  # two antithetic pairs: the least that gives a standard error
            raise ConfigError(f"permutations={self.permutations}: use at least 4.")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence={self.confidence}: use a level between 0 and 1, such as 0.95.")
        if self.bootstrap < 0:
            raise ConfigError(f"bootstrap={self.bootstrap}: use 0 (no intervals) or more resamples.")

    def resolved_method(self, n_players: int) -> str:
        return resolved_method(self.method, n_players)


@dataclass(frozen=True)
class Valuation:
    """Everything the command and the page show about one table's sources."""

    table: UtilityTable
    shapley: ValuationResult
    banzhaf: ValuationResult | None  # exact only: None when the table lacks coalitions or n is large
    interactions: np.ndarray | None  # [n, n, m] Shapley interaction index, same condition
    confidence: float

    @property
    def players(self) -> tuple[str, ...]:
        return self.shapley.players

    @property
    def objectives(self) -> tuple[str, ...]:
        return self.shapley.objectives

    @property
    def has_intervals(self) -> bool:
        return self.shapley.lower is not None

    def coverage_note(self) -> str:
        """What the intervals cover, in words: prompts always; each reward model's training pairs
        where its bootstrap heads are stored; why not where they are not (a hub model cannot be refit)."""
        shapley = self.shapley
        if not self.has_intervals:
            return "No intervals: the table has one utility per coalition. Per-prompt utilities give bootstrap intervals."
        if shapley.method == "permutation":
            return "The intervals cover the Monte Carlo sampling of orders only."
        heads = self.table.heads
        spread = [f"{objective} ({count} heads)" for objective, count in shapley.reward_heads.items()]
        covered = ("The intervals cover the spread over prompts and over the reward model's training pairs (its "
                   f"head refit on bootstrap resamples) for {', '.join(spread)}" if spread
                   else "The intervals cover the spread over prompts" + (" only" if shapley.seeds == 1 else ""))
        reasons: dict[str, list[str]] = {}
        for objective, why in (heads.missing.items() if heads is not None else ()):
            if objective in self.objectives:
                reasons.setdefault(why, []).append(objective)
        said = "; ".join(f"{', '.join(objectives)}: {why}" for why, objectives in reasons.items())
        if said:
            covered += f"; over prompts only for {said}" if spread else f" ({said})"
        return covered + "."

    def seeds_note(self) -> str:
        """Whether training noise is in the values and intervals: how many training seeds they average."""
        seeds = self.table.seeds.count if self.table.seeds is not None else 1
        if seeds == 1:
            return "Each source has one adapter (one training seed), so adapter training noise is not in them."
        spread = ("and the intervals include the spread between them" if self.shapley.seeds > 1
                  else "but the intervals do not include their spread")
        return f"The values average over {seeds} training seeds of every source's adapter, {spread}."

    def interval_note(self) -> str:
        """What the intervals cover and whether training noise is in them, in two sentences."""
        return f"{self.coverage_note()} {self.seeds_note()}"

    def spans_zero(self) -> np.ndarray:
        """[n, m]: the interval includes zero (all False without intervals)."""
        return self.shapley.spans_zero() if self.has_intervals else np.zeros(self.shapley.values.shape, bool)

    def values_frame(self) -> pd.DataFrame:
        """Shapley values in long format, with error-bar lengths `minus`/`plus` and `spans_zero`."""
        frame = self.shapley.to_frame()
        frame["minus"] = frame.value - frame.lower
        frame["plus"] = frame.upper - frame.value
        frame["spans_zero"] = self.spans_zero().T.ravel()  # to_frame runs objective-major
        return frame

    def objective_pair_frame(self, x: str, y: str) -> pd.DataFrame:
        """One row per player: its values on objectives x and y, each with its error bars (for a scatter)."""
        if x == y:
            raise UtilityError(f"pick two different objectives to plot against each other (both are {x!r})")
        frame = self.values_frame().set_index(["objective", "player"])

        def columns(objective: str) -> pd.DataFrame:
            return frame.loc[objective, ["value", "minus", "plus"]].rename(
                columns={"value": objective, "minus": f"{objective}_minus", "plus": f"{objective}_plus"})

        return columns(x).join(columns(y)).reset_index()

    def efficiency_frame(self) -> pd.DataFrame:
        """Per objective: v(empty), v(N), the sum of the values and the gap (zero for Shapley)."""
        v_empty = self.table(frozenset())
        return pd.DataFrame({"objective": self.objectives, "v_empty": v_empty, "v_full": v_empty + self.shapley.total,
                             "sum_of_values": self.shapley.values.sum(0), "gap": self.shapley.efficiency_gap()})

    def interaction_frame(self, objective: str) -> pd.DataFrame:
        """Players x players interaction matrix for one objective."""
        if self.interactions is None:
            raise UtilityError("interactions need every coalition of the sources in the table")
        k = self.objectives.index(objective)
        return pd.DataFrame(self.interactions[:, :, k], index=list(self.players), columns=list(self.players))

    def export_frame(self) -> pd.DataFrame:
        """Shapley (and Banzhaf) values in long format: method, objective, player, value, stderr, lower, upper."""
        frames = [self.values_frame().drop(columns=["minus", "plus"]).assign(method="shapley")]
        if self.banzhaf is not None:
            frames.append(self.banzhaf.to_frame().assign(method="banzhaf"))
        frame = pd.concat(frames, ignore_index=True)
        return frame[["method", *[c for c in frame.columns if c != "method"]]]

    def to_csv(self) -> str:
        return self.export_frame().to_csv(index=False)

    def to_json_dict(self) -> dict:
        """{method, confidence, shapley: {objective: {player: {value, lower, upper}}}, banzhaf, efficiency}."""
        efficiency = self.efficiency_frame().set_index("objective")
        return {
            "method": self.shapley.describe(),
            "confidence": self.confidence if self.has_intervals else None,
            "players": list(self.players),
            "shapley": self.shapley.to_json_dict(),
            "banzhaf": None if self.banzhaf is None else {
                o: {p: float(self.banzhaf.values[i, k]) for i, p in enumerate(self.players)}
                for k, o in enumerate(self.objectives)},
            "efficiency": {o: {key: float(value) for key, value in row.items()} for o, row in efficiency.iterrows()},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_json_dict(), indent=2)


def value_sources(table: UtilityTable, config: ValuationConfig = ValuationConfig()) -> Valuation:
    """Shapley values of the table's players, with intervals where the data allow them.

    Exact with per-prompt utilities: a bootstrap over prompts. Permutation Monte Carlo: normal
    intervals from the standard error of the sampling. Exact without prompts: exact, no interval.
    """
    config.validate()
    players = table.players
    if not players:
        raise UtilityError("the utility table has no sources: it holds only the empty coalition")
    method = config.resolved_method(len(players))
    with table_errors("cannot value the sources"):
        missing = table.missing_coalitions() if len(players) <= ENUMERABLE_MAX_PLAYERS else None
        complete = missing == []
        if method == "exact" and not complete:
            raise UtilityError(_missing_message(missing, len(players)))
        if method == "permutation":
            shapley = permutation_shapley(players, table, budget_permutations=config.permutations, seed=config.seed,
                                          confidence=config.confidence, objectives=table.objectives)
        elif table.prompts is not None and len(table.prompts) > 1 and config.bootstrap > 0:
            shapley = bootstrap_intervals(players, table, n_boot=config.bootstrap, confidence=config.confidence,
                                          seed=config.seed)
        else:
            shapley = exact_shapley(players, table, objectives=table.objectives)
        small = complete and len(players) <= EXACT_MAX_PLAYERS
        banzhaf = exact_banzhaf(players, table, objectives=table.objectives) if small else None
        interactions = pairwise_interactions(players, table) if small and len(players) > 1 else None
    return Valuation(table, shapley, banzhaf, interactions, config.confidence)


def _missing_message(missing: list | None, n: int) -> str:
    if missing is None:
        return f"exact Shapley over {n} sources needs 2^{n} coalitions: use the permutation method"
    shown = ", ".join(f"'{coalition_name(c)}'" for c in missing[:5]) + (", ..." if len(missing) > 5 else "")
    return (f"the utility table lacks {len(missing)} of the {2 ** n} coalitions exact Shapley needs ({shown}): "
            "evaluate them, or use the permutation method")


def values_by_target(tables: Mapping[str, UtilityTable], config: ValuationConfig) -> pd.DataFrame:
    """Each target's Shapley values side by side: target, objective, player, value, lower, upper, ..."""
    return pd.concat([value_sources(table, config).values_frame().assign(target=target)
                      for target, table in tables.items()], ignore_index=True)
