"""Valuing a run's sources from its coalition utilities: the glue the `shapley` command and the
Shapley page share.

    <run>/evaluation/utilities.csv     coalition, prompt, one column per objective (written by evaluation)
    <run>/evaluation/settings.json     the evaluation's settings: its method, permutation budget and seed
    <run>/rewards/<objective>/reward.json   the reward model's held-out accuracy

`value_sources(table, config)` computes Shapley values (exact over all 2^n coalitions by default
while n <= 12, else permutation Monte Carlo) with intervals, plus Banzhaf values and pairwise
interactions from the same table; `run_valuation_config(run)` is the config a run's table needs.
Table problems become `UtilityError`s that say what to fix.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from .coalitions import ENUMERABLE_MAX_PLAYERS, EXACT_MAX_PLAYERS, coalition_name
from .config import ConfigError, from_dict, helped
from .errors import UserError
from .monte_carlo import bootstrap_intervals, permutation_shapley
from .runs import Run
from .shapley import ValuationResult, exact_banzhaf, exact_shapley, pairwise_interactions
from .utility_table import RewardHeads, SeedReplicas, UtilityTable, with_seeds

METHODS = ("auto", "exact", "permutation")
EVALUATION_SETTINGS = ("method", "permutations", "seed")  # what the evaluation decided about which coalitions exist


class UtilityError(UserError):
    """A utility table that cannot be valued; the message says what is wrong and where."""


@contextmanager
def _table_errors(where: str) -> Iterator[None]:
    """The pure library raises ValueError for table problems; say which table they concern."""
    try:
        yield
    except UserError:
        raise
    except (ValueError, OSError) as error:  # pandas' parser and decoding errors are ValueErrors
        raise UtilityError(f"{where}: {error}") from None


# -----------------------------------------------------------------------------
# where utilities and reward accuracies live


def _run_dir(run: Run | str | PathLike[str]) -> Path:
    return run.path if isinstance(run, Run) else Path(run)


def utilities_path(run: Run | str | PathLike[str]) -> Path:
    """Where a run's coalition utilities live: <run>/evaluation/utilities.csv."""
    return _run_dir(run) / "evaluation" / "utilities.csv"


def evaluation_settings_path(run: Run | str | PathLike[str]) -> Path:
    """The settings of a run's last evaluation: <run>/evaluation/settings.json."""
    return _run_dir(run) / "evaluation" / "settings.json"


def load_utilities(path: str | PathLike[str]) -> UtilityTable:
    """A utility table; a run's reward utilities come with their reward models' bootstrap heads
    where the run stores them (`valuation.reward_spread`), and with the same table under every
    further training seed beside it (`valuation.seeds`: the table becomes their mean), so their
    intervals carry that noise too."""
    from .reward_spread import with_reward_heads
    from .seeds import seed_tables

    path = Path(path)
    if not path.is_file():
        raise UtilityError(f"no utility table at {path}")
    def read(table_path: Path) -> UtilityTable:
        with _table_errors(str(table_path)):
            return UtilityTable.from_csv(table_path)

    table = with_reward_heads(path, read(path))
    further = seed_tables(path)
    with _table_errors(str(path)):
        return with_seeds(table, [read(p) for p in further], [p.name for p in further]) if further else table


def load_run_utilities(run: Run | str | PathLike[str], target: str | None = None) -> UtilityTable:
    """A run's game: utilities.csv, or the table of another pooled target (see `target_tables`)."""
    tables = target_tables(run)
    path = tables.get(target, utilities_path(run)) if target else utilities_path(run)
    if target and target not in tables:
        raise UtilityError(f"run {_run_dir(run).name!r} has no {target!r} utilities; it has {sorted(tables) or 'none'}")
    if not path.is_file():
        raise UtilityError(f"run {_run_dir(run).name!r} has no coalition utilities yet ({path}): "
                           "train adapters, then evaluate the coalitions")
    return load_utilities(path)


def estimation(run: Run | str | PathLike[str]) -> pd.DataFrame:
    """How a pooled evaluation estimated each coalition, per target: coalition, target, estimator
    (pooled, or direct where the pool's ESS fell below the floor), ess_mean, ess_min, below_floor
    (a sequence-level coalition below the floor has no direct stand-in). Empty after a direct evaluation."""
    path = _run_dir(run) / "evaluation" / "estimation.csv"
    if not path.is_file():
        return pd.DataFrame(columns=["coalition", "target", "estimator", "ess_mean", "ess_min", "below_floor"])
    with _table_errors(str(path)):
        return pd.read_csv(path, dtype={"coalition": str}, keep_default_na=False)


def target_tables(run: Run | str | PathLike[str]) -> dict[str, Path]:
    """Utility tables by what they measure: the expected reward under 'direct' sampling of each
    coalition or a pooled evaluation's 'token' and 'sequence' targets (valuation.estimators), and
    'preference', the reward-free accuracy and margin on held-out pairs (valuation.preference)."""
    folder = _run_dir(run) / "evaluation"
    targets = list(dict.fromkeys(estimation(run).target))
    tables = ({target: folder / ("utilities.csv" if k == 0 else f"utilities-{target}.csv") for k, target in enumerate(targets)}
              if targets else {"direct": folder / "utilities.csv"})
    tables["preference"] = folder / "preference.csv"  # reward-free: held-out pairs, every run
    return {target: path for target, path in tables.items() if path.is_file()}


def values_by_target(tables: dict[str, UtilityTable], config: ValuationConfig) -> pd.DataFrame:
    """Each target's Shapley values side by side: target, objective, player, value, lower, upper, ..."""
    return pd.concat([value_sources(table, config).values_frame().assign(target=target)
                      for target, table in tables.items()], ignore_index=True)


# -----------------------------------------------------------------------------
# a combined objective


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
        if self.method != "auto":
            return self.method
        return "exact" if n_players <= EXACT_MAX_PLAYERS else "permutation"


def run_valuation_config(run: Run | str | PathLike[str]) -> ValuationConfig:
    """The config a run's values must use: its evaluation's method, permutation budget and seed.

    With the permutation method (auto: beyond EXACT_MAX_PLAYERS sources) the evaluation measured only
    the coalitions that `permutation_shapley` visits with that budget and seed: any other budget or
    seed asks for coalitions that were never evaluated. Without settings (no evaluation ran): the defaults.
    """
    path = evaluation_settings_path(run)
    if not path.is_file():
        return ValuationConfig()
    with _table_errors(str(path)):  # a JSON error is a ValueError
        settings = json.loads(path.read_text(encoding="utf-8"))
    config = from_dict(ValuationConfig, {key: settings[key] for key in EVALUATION_SETTINGS if key in settings}, str(path))
    config.validate()  # an evaluation may sample fewer permutations than a standard error needs
    return config


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

    def interval_note(self) -> str:
        """What the intervals cover, in words: prompts always; each reward model's training pairs
        where its bootstrap heads are stored; why not where they are not (a hub model cannot be refit)."""
        if not self.has_intervals:
            return "No intervals: the table has one utility per coalition. Per-prompt utilities give bootstrap intervals."
        if "permutation" in self.shapley.method:
            covered = "The intervals cover the Monte Carlo sampling of orders only"
        else:
            heads, nested = self.table.heads, "reward heads" in self.shapley.method  # the nested bootstrap ran
            spread = [f"{o} ({heads.count(o)} heads)" for o in self.objectives if nested and heads.count(o)]
            covered = ("The intervals cover the spread over prompts and over the reward model's training pairs (its "
                       f"head refit on bootstrap resamples) for {', '.join(spread)}" if spread
                       else "The intervals cover the spread over prompts only")
            reasons: dict[str, list[str]] = {}
            for objective, why in (heads.missing.items() if heads is not None else ()):
                if objective in self.objectives:
                    reasons.setdefault(why, []).append(objective)
            said = "; ".join(f"{', '.join(objectives)}: {why}" for why, objectives in reasons.items())
            if said:
                covered += f"; over prompts only for {said}" if spread else f" ({said})"
        seeds = self.table.seeds.count if self.table.seeds is not None else 1
        if seeds == 1:
            return covered + ". Each source has one adapter (one training seed), so adapter training noise is not in them."
        spread = ("and the intervals include the spread between them" if "training seeds" in self.shapley.method
                  else "but the intervals do not include their spread")
        return covered + f". The values average over {seeds} training seeds of every source's adapter, {spread}."

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
            "method": self.shapley.method,
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
    with _table_errors("cannot value the sources"):
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


# -----------------------------------------------------------------------------
# text for the command line


def _number(x: float) -> str:
    return f"{x:+.4f}"


def format_table(valuation: Valuation, accuracies: pd.DataFrame | None = None) -> str:
    """A readable aligned table per objective: value, interval, a note where it spans zero; the efficiency check."""
    shapley, intervals = valuation.shapley, valuation.has_intervals
    efficiency = valuation.efficiency_frame().set_index("objective")
    spans = valuation.spans_zero()
    width = max(len("source"), *map(len, valuation.players))
    header = f"{valuation.confidence:.0%} interval" if intervals else ""
    lines = [f"method: {shapley.method}" + ("" if intervals else " (no interval: add a prompt column to bootstrap one)")]
    for k, objective in enumerate(valuation.objectives):
        lines += ["", objective, f"  {'source':<{width}}  {'value':>8}  {header}".rstrip()]
        for i, player in enumerate(valuation.players):
            row = f"  {player:<{width}}  {_number(shapley.values[i, k]):>8}"
            if intervals:
                row += f"  [{_number(shapley.lower[i, k])}, {_number(shapley.upper[i, k])}]"
            if spans[i, k]:
                row += "  spans zero: not distinguishable from no effect"
            lines.append(row)
        e = efficiency.loc[objective]
        lines.append(f"  efficiency: sum of values {_number(e.sum_of_values)} vs v(N) - v(empty) = "
                     f"{e.v_full:.4f} - {e.v_empty:.4f} = {_number(e.v_full - e.v_empty)} (gap {e.gap:.1e})")
    for row in (accuracies if accuracies is not None else pd.DataFrame()).itertuples():
        lines += ["", f"reward model {row.objective}: held-out accuracy {row.accuracy:.3f} "
                      f"[{row.lower:.3f}, {row.upper:.3f}] on {row.pairs:.0f} pairs"
                      + ("  warning: near chance (the interval includes 0.5)" if row.near_chance else "")]
    return "\n".join([*lines, "", valuation.interval_note()])


TARGET_LABELS = {"direct": "direct sampling of every coalition", "token": "pooled, token-level target",
                 "sequence": "pooled, sequence-level target",
                 "preference": "held-out preference pairs (no reward model)"}


def not_distinguishable(valuation: Valuation) -> list[str]:
    """'source on objective' for every value whose interval includes zero."""
    spans = valuation.spans_zero()
    return [f"{player} on {objective}" for k, objective in enumerate(valuation.objectives)
            for i, player in enumerate(valuation.players) if spans[i, k]]
