"""What the Validate page reads: the experiments' files turned into tables and headline numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..games.coalitions import coalition_name, parse_coalition
from ..games.intervals import bootstrap_intervals
from ..runs import Run
from ..games.shapley import exact_shapley
from ..games.utility_table import UtilityTable, with_seeds
from ..rewards.heldout import preference_utilities
from .accuracy import read_utilities
from .scaling import rank_correlations
from .settings import accuracy_path, retrain_dir


def read_scored(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every scored comparison in a results folder: (scores, kls), each with kind and epochs columns."""
    scores, kls = [], []
    for path in sorted(folder.glob("*-e*.scores.csv")):
        kind, epochs = path.name.removesuffix(".scores.csv").rsplit("-e", 1)
        for frames, file in ((scores, path), (kls, path.with_name(path.name.replace(".scores.", ".kl.")))):
            if file.exists():
                frames.append(pd.read_csv(file).assign(kind=kind, epochs=float(epochs)))
    return (pd.concat(scores, ignore_index=True) if scores else pd.DataFrame(),
            pd.concat(kls, ignore_index=True) if kls else pd.DataFrame())


def model_utilities(scores: pd.DataFrame, beta: float) -> pd.DataFrame:
    """Per (kind, epochs, model, prompt): preference accuracy and reward margin."""
    frames = []
    for (kind, epochs), group in scores.groupby(["kind", "epochs"]):
        wide = group.pivot_table(index=["model", "prompt"], columns="response", values="log_likelihood").reset_index()
        frames.append(preference_utilities(wide, beta).assign(kind=kind, epochs=epochs))
    return pd.concat(frames, ignore_index=True)


def comparisons(folder: Path, beta: float = 0.1) -> pd.DataFrame:
    """One row per compared pair of models: KL per token both ways and the utility gaps.

    reference -> model: KL(reference || model) and KL(model || reference), averaged over every
    held-out response token; accuracy and margin of each, and model minus reference.
    """
    scores, kls = read_scored(folder)
    if kls.empty:
        return pd.DataFrame()
    totals = kls.groupby(["kind", "epochs", "reference", "model"])[["kl", "tokens"]].sum()
    per_token = (totals.kl / totals.tokens).rename("kl")
    utilities = model_utilities(scores, beta).groupby(["kind", "epochs", "model"])[["preference_accuracy", "reward_margin"]].mean()
    rows = []
    for (kind, epochs, reference, model), forward in per_token.items():
        if reference > model:  # each pair once: arithmetic before pooled and sequential, orders alphabetically
            continue
        ref, mod = utilities.loc[(kind, epochs, reference)], utilities.loc[(kind, epochs, model)]
        rows.append({"kind": kind, "epochs": epochs, "coalition": reference.split(":")[1].replace(">", "+"),
                     "reference": reference, "model": model,
                     "kl_reference_model": forward, "kl_model_reference": per_token.get((kind, epochs, model, reference), np.nan),
                     "accuracy_reference": ref.preference_accuracy, "accuracy_model": mod.preference_accuracy,
                     "accuracy_gap": mod.preference_accuracy - ref.preference_accuracy,
                     "margin_reference": ref.reward_margin, "margin_model": mod.reward_margin,
                     "margin_gap": mod.reward_margin - ref.reward_margin})
    return pd.DataFrame(rows)


def method_shapley(folder: Path, beta: float = 0.1) -> pd.DataFrame:
    """Exact Shapley values when v(S) for |S| >= 2 comes from arithmetic, sequential DPO (mean of the
    orders) or pooled training, at the epochs the pooled comparison used; the base and the solo
    adapters are shared by the three methods."""
    scores, _ = read_scored(folder)
    if scores.empty or "pooled" not in set(scores.kind):
        return pd.DataFrame()
    epochs = scores[scores.kind == "pooled"].epochs.min()
    utilities = model_utilities(scores[scores.epochs == epochs], beta)
    utilities = utilities.groupby(["model", "prompt"])[["preference_accuracy", "reward_margin"]].mean().reset_index()
    parts = utilities.model.str.partition(":")  # method, ':', members
    utilities["method"] = parts[0]
    utilities["coalition"] = parts[2].str.replace(">", "+").map(lambda members: coalition_name(parse_coalition(members)))
    columns = ["coalition", "prompt", "preference_accuracy", "reward_margin"]
    shared = utilities.loc[utilities.method.isin(["base", "solo"]), columns]
    frames = []
    for name in ("arithmetic", "sequential", "pooled"):
        own = utilities[utilities.method == name].groupby(["coalition", "prompt"])[columns[2:]].mean().reset_index()
        table = UtilityTable.from_frame(pd.concat([shared, own]))
        if own.empty or table.missing_coalitions():
            continue
        frames.append(exact_shapley(table.players, table, objectives=table.objectives).to_frame().assign(method=name))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def accuracy_shapley(run: Run) -> pd.DataFrame:
    """Shapley values of the run's sources under preference accuracy and reward margin, exact with
    bootstrap intervals over held-out pairs; `solo` is v({i}) - v(empty), which the margin's Shapley
    value should nearly equal (the margin is nearly additive across sources)."""
    path = accuracy_path(run)
    if not path.exists():
        return pd.DataFrame()
    table = UtilityTable.from_frame(read_utilities(path))
    frame = bootstrap_intervals(table.players, table).to_frame()
    empty = table(frozenset())
    frame["solo"] = [table.value(frozenset([p]), o) - empty[table.objectives.index(o)]
                     for o, p in zip(frame.objective, frame.player)]
    return frame


def retrain_values(run: Run) -> pd.DataFrame:
    """Each source's value three ways (retrained, arithmetic, merged), by Shapley (where every
    coalition was retrained) and by leave-one-out, exact, with bootstrap intervals over held-out pairs
    (the reward-free objectives) or the evaluation's prompts (the reward models'), and training seeds
    where there are several: method, index, objective, player, value, stderr, lower, upper. Empty
    before the experiment ran."""
    frames = [frame for utilities in retrain_tables(run) for frame in retrain_game_values(utilities)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def retrain_tables(run: Run) -> list[pd.DataFrame]:
    """The retrain games' utilities as written: on held-out pairs (the reward-free objectives), and on
    the evaluation's pooled responses (the reward models' objectives) where they were read off."""
    folder = retrain_dir(run)
    return [read_utilities(folder / name) for name in ("utilities.csv", "rewards.csv") if (folder / name).exists()]


def retrain_game_values(utilities: pd.DataFrame) -> list[pd.DataFrame]:
    """One table's values, per method and index (Shapley where every coalition is in it)."""
    frames = []
    for method, rows in utilities.groupby("method", sort=False):
        tables = [UtilityTable.from_frame(part.drop(columns=["method", "seed"])) for _, part in rows.groupby("seed")]
        table = with_seeds(tables[0], tables[1:], [f"seed {k + 2}" for k in range(len(tables) - 1)]) if len(tables) > 1 \
            else tables[0]
        for index in ("shapley", "leave-one-out") if not table.missing_coalitions() else ("leave-one-out",):
            result = bootstrap_intervals(table.players, table, index=index)
            frames.append(result.to_frame().assign(method=method, index=index, seeds=result.seeds))
    return frames


def retrain_scope(values: pd.DataFrame) -> str:
    """Which coalitions were retrained, in words (page and report)."""
    return ("Every coalition of two or more sources" if "shapley" in set(values["index"]) else
            "The coalitions leave-one-out reads (all sources but one, and all of them: Shapley would need every "
            "coalition)")


def retrain_agreement(values: pd.DataFrame) -> pd.DataFrame:
    """How far each shortcut (arithmetic, merged) is from retraining, per index and objective:
    Spearman's rho and Kendall's tau of its values against the retrained ones over the sources, and
    the largest difference in units of the retrained interval's half-width (above 1: outside it)."""
    rows = []
    for (index, objective), group in values.groupby(["index", "objective"], sort=False):
        truth = group[group.method == "retrained"].set_index("player")
        for method in ("arithmetic", "merged"):
            shortcut = group[group.method == method].set_index("player").loc[truth.index]
            rho, tau = rank_correlations(shortcut.value.to_numpy(), truth.value.to_numpy())
            difference = (shortcut.value - truth.value).abs()
            half = ((truth.upper - truth.lower) / 2).to_numpy()
            # An interval of width zero (every pair agrees): any difference is infinitely far outside it.
            in_widths = pd.Series(np.divide(difference.to_numpy(), half, where=half > 0,
                                            out=np.where(difference.to_numpy() > 0, np.inf, 0.0)), difference.index)
            rows.append({"index": index, "objective": objective, "method": method, "spearman": rho, "kendall": tau,
                         "largest_difference": difference.max(), "largest_in_half_widths": in_widths.max(),
                         "where": in_widths.idxmax()})
    return pd.DataFrame(rows)


def retrain_findings(agreement: pd.DataFrame) -> list[str]:
    """The agreement in words, one line per shortcut, index and objective: for the page, the report
    and the command line alike."""
    lines = []
    for row in agreement.itertuples():
        where = "inside" if row.largest_in_half_widths <= 1 else "outside"
        lines.append(f"{row.method} against retraining, {row.index} values on {row.objective}: Spearman "
                     f"{row.spearman:+.2f}, Kendall {row.kendall:+.2f}; the largest difference, {row.largest_difference:.3g} "
                     f"({row.where}), is {row.largest_in_half_widths:.1f} half-widths: {where} the retrained interval.")
    return lines


def retrain_coalitions(run: Run) -> pd.DataFrame:
    """Every coalition's utility (mean over held-out pairs and seeds) by each method, for the scatter:
    coalition, size, objective, retrained, arithmetic, merged."""
    tables = retrain_tables(run)
    if not tables:
        return pd.DataFrame()
    long = pd.concat([utilities.melt(id_vars=["method", "seed", "coalition", "prompt"], var_name="objective",
                                     value_name="utility") for utilities in tables])
    wide = long.pivot_table(index=["coalition", "objective"], columns="method", values="utility", aggfunc="mean")
    wide = wide.reset_index()
    wide.insert(1, "size", wide.coalition.map(lambda c: len(parse_coalition(c))))
    return wide[["coalition", "size", "objective", "retrained", "arithmetic", "merged"]]


def scaling_summary(folder: Path) -> pd.DataFrame:
    """Mean Monte Carlo error and rank agreement per sampling scheme and budget."""
    path = folder / "scaling.csv"
    if not path.exists():
        return pd.DataFrame()
    errors = pd.read_csv(path)
    return errors.groupby(["sampling", "permutations"])[["rmse", "relative", "max_abs", "spearman", "kendall"]].mean().reset_index()


def summary(folder: Path) -> dict[str, Any]:
    """The headline numbers of a results folder, for the page and the closing note."""
    table = comparisons(folder)
    out: dict[str, Any] = {}
    if not table.empty:
        gaps = ["kl_reference_model", "kl_model_reference", "accuracy_gap", "margin_gap"]
        arith = table[table.reference.str.startswith("arithmetic")]
        seq = arith[arith.model.str.startswith("sequential")]
        out["sequential_vs_arithmetic_by_epochs"] = seq.groupby("epochs")[gaps].mean().reset_index().to_dict("records")
        out["pooled_vs_arithmetic"] = arith[arith.model.str.startswith("pooled")][["epochs", "coalition", *gaps]].to_dict("records")
        order = table[table.reference.str.startswith("sequential")]
        out["order_invariance"] = order[["epochs", "coalition", *gaps]].to_dict("records")
    scaling = scaling_summary(folder)
    if not scaling.empty:
        out["monte_carlo"] = scaling.to_dict("records")
    return out
