"""Scaling: exact Shapley over the 2^8 coalitions of 8 small sources against permutation Monte Carlo.

Each run source is cut into equal parts by a seeded hash of its pairs, one small adapter per part;
the utility is held-out preference accuracy (sampling generations for 256 coalitions would not fit
a CPU), and Monte Carlo estimates at several budgets are compared with the exact values.

    <folder>/scaling_utilities.csv   the n = 8 game: coalition, prompt, preference_accuracy, reward_margin
    <folder>/scaling.csv             per sampling scheme, budget and seed: errors and rank agreement
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..lm.adapters import load_adapters
from ..games.sampling import permutation_shapley
from ..games.shapley import exact_shapley
from ..storage import atomic_write_text
from ..games.utility_table import UtilityTable
from ..rewards.heldout import coalition_preferences
from .accuracy import read_utilities
from ..training.pairs import fitting_pairs
from .inputs import Inputs, adapter_name, train_adapter

if TYPE_CHECKING:
    from ..data.preferences import PreferencePair
    from ..progress import Reporter


def scaling_sources(inputs: Inputs) -> dict[str, list[PreferencePair]]:
    """Each run source cut into equal parts by a seeded hash of its pairs: `scaling_players` sources in all."""
    parts = max(1, round(inputs.config.scaling_players / len(inputs.train)))
    out = {}
    for source, pairs in inputs.train.items():
        for part in range(parts):
            mine = [p for p in pairs if int(hashlib.sha256(p.pair_id.encode()).hexdigest(), 16) % parts == part]
            out[f"{source}-part{part}"] = fitting_pairs(mine, inputs.tokenizer, inputs.training.max_prompt_length,
                                                        inputs.config.scaling_pairs)
    return out


def rank_correlations(estimate: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    """Spearman's rho (average ranks for ties) and Kendall's tau-b between two value vectors."""
    def ranks(x: np.ndarray) -> np.ndarray:
        order = x.argsort(kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        return np.array([r[x == value].mean() for value in x])

    a, b = ranks(estimate), ranks(exact)
    rho = np.corrcoef(a, b)[0, 1] if a.std() and b.std() else np.nan
    # tau-b = (concordant - discordant) / sqrt(pairs untied in the estimate * pairs untied in the exact)
    i, j = np.triu_indices(len(exact), 1)
    da, db = np.sign(estimate[i] - estimate[j]), np.sign(exact[i] - exact[j])
    pairs_a, pairs_b = (da != 0).sum(), (db != 0).sum()
    tau = (da * db).sum() / np.sqrt(pairs_a * pairs_b) if pairs_a and pairs_b else np.nan
    return float(rho), float(tau)


def monte_carlo_errors(table: UtilityTable, objective: str, budgets: list[int], repeats: int) -> pd.DataFrame:
    """Permutation Shapley (antithetic and plain) against exact Shapley of the same game, by budget.

    rmse: root mean squared error over players; relative: rmse / root mean square of the exact values.
    """
    players = table.players
    k = table.objectives.index(objective)
    exact = exact_shapley(players, table).values[:, k]
    rows = []
    for antithetic in (True, False):
        for budget in budgets:
            for seed in range(repeats):
                estimate = permutation_shapley(players, table, budget_permutations=budget, seed=seed,
                                               antithetic=antithetic).values[:, k]
                rmse = float(np.sqrt(np.mean((estimate - exact) ** 2)))
                rho, tau = rank_correlations(estimate, exact)
                rows.append({"sampling": "antithetic" if antithetic else "plain", "permutations": budget, "seed": seed,
                             "rmse": rmse, "relative": rmse / float(np.sqrt(np.mean(exact ** 2))),
                             "max_abs": float(np.abs(estimate - exact).max()), "spearman": rho, "kendall": tau})
    return pd.DataFrame(rows)


def run_scaling(inputs: Inputs, reporter: Reporter) -> Path:
    """Train one small adapter per scaling source, score all 2^n coalitions, measure Monte Carlo error."""
    result, utilities_file = inputs.folder / "scaling.csv", inputs.folder / "scaling_utilities.csv"
    if result.exists():
        reporter.log("scaling.csv: already computed, skipped")
        return result
    if not utilities_file.exists():
        parts = scaling_sources(inputs)
        names = {source: adapter_name(1.0, f"scale-{source}") for source in parts}
        for source, pairs in parts.items():
            train_adapter(inputs, names[source], pairs, 1.0, reporter)
        loaded = inputs.context.fresh_model()  # validation's own adapters stay off the shared base
        model = load_adapters(loaded, inputs.adapters, list(names.values()))
        reporter.log(f"scaling: {2 ** len(names)} coalitions of {len(names)} sources on {len(inputs.heldout)} held-out pairs")
        table = coalition_preferences(model, loaded.tokenizer, inputs.heldout, list(names.values()), inputs.training.beta,
                                   reporter.stage("scaling: scoring coalitions"))
        table["coalition"] = table.coalition.str.replace("e1:scale-", "", regex=False)
        atomic_write_text(utilities_file, table.to_csv(index=False, float_format="%.6g"))
    game = UtilityTable.from_frame(read_utilities(utilities_file))
    errors = monte_carlo_errors(game, "preference_accuracy", inputs.config.permutations, inputs.config.repeats)
    atomic_write_text(result, errors.to_csv(index=False))
    return result
