"""The validation section: how far the method holds on this run, from each validate job's results
folder. Coalitions built by arithmetic against coalitions trained on their data, and Monte Carlo
against exact Shapley; every number with an interval over held-out pairs or repeated seeds."""

from __future__ import annotations

from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd

from ..training.settings import PRESETS as TRAIN_PRESETS
from ..runs import Run
from ..validation.results import model_utilities, read_scored, retrain_scope, retrain_values
from ..validation.retrain import METHODS
from ..validation.retrain_rewards import retrain_lines
from ..validation.settings import recorded_config, result_folders
from ..views.snapshot import RunSnapshot
from .html import paragraph, section, subheading, table, with_interval


def mean_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean with a normal interval from the standard error (NaN bounds from a single value)."""
    values = np.asarray(values, float)
    if len(values) < 2:
        return float(values.mean()), float("nan"), float("nan")
    half = NormalDist().inv_cdf(0.5 + confidence / 2) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(values.mean() - half), float(values.mean() + half)


def ratio_interval(numerator: np.ndarray, denominator: np.ndarray, confidence: float = 0.95,
                   resamples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """sum(numerator) / sum(denominator) with a percentile bootstrap interval over the rows (held-out pairs)."""
    picks = np.random.default_rng(seed).integers(0, len(numerator), (resamples, len(numerator)))
    ratios = numerator[picks].sum(1) / denominator[picks].sum(1)
    tail = (1 - confidence) / 2 * 100
    return float(numerator.sum() / denominator.sum()), *map(float, np.percentile(ratios, [tail, 100 - tail]))


def comparison_rows(folder: Path, beta: float) -> list[list[object]]:
    """Each compared pair of models: KL(reference ‖ model) per token and the utility gaps, with intervals
    over held-out pairs; the same point values as `validation.results.comparisons`."""
    scores, kls = read_scored(folder)
    if kls.empty:
        return []
    utilities = model_utilities(scores, beta).set_index(["kind", "epochs", "model", "prompt"])
    rows = []
    for (kind, epochs, reference, model), pairs in kls.groupby(["kind", "epochs", "reference", "model"]):
        if reference > model:  # each pair once, as the Validate page shows it
            continue
        per_pair = pairs.groupby("prompt")[["kl", "tokens"]].sum()
        gap = utilities.loc[(kind, epochs, model)] - utilities.loc[(kind, epochs, reference)]
        rows.append([f"{reference} → {model}", f"{epochs:g}",
                     with_interval(*ratio_interval(per_pair.kl.to_numpy(), per_pair.tokens.to_numpy()), ".4f"),
                     with_interval(*mean_interval(gap.preference_accuracy.dropna().to_numpy()), "+.3f"),
                     with_interval(*mean_interval(gap.reward_margin.dropna().to_numpy()), "+.4f")])
    return rows


def scaling_rows(folder: Path) -> list[list[object]]:
    """Monte Carlo against exact Shapley at n = 8, per sampling and budget, over the repeated seeds."""
    path = folder / "scaling.csv"
    if not path.exists():
        return []
    errors = pd.read_csv(path)
    return [[sampling, permutations, with_interval(*mean_interval(group.rmse.to_numpy()), ".4f"),
             with_interval(*np.clip(mean_interval(group.spearman.to_numpy()), -1, 1), ".3f"), len(group)]
            for (sampling, permutations), group in errors.groupby(["sampling", "permutations"])]


def validation_parts(folder: Path) -> list[str]:
    """One results folder's comparisons and scaling tables, under its name (nothing when it holds neither)."""
    preset = recorded_config(folder).training_preset
    parts = [subheading(f"Validation '{folder.name}'")]
    compared = comparison_rows(folder, TRAIN_PRESETS.get(preset, TRAIN_PRESETS["quick"]).beta)
    if compared:
        parts += [paragraph("Coalitions built by arithmetic against coalitions trained by sequential DPO (both orders) "
                            "and on pooled data, on held-out pairs: per-token KL of the next-token distributions "
                            "(bootstrap interval over pairs) and the model's preference accuracy and reward margin minus "
                            "the reference's (95% intervals). Two training orders compared with each other give the "
                            "noise floor the arithmetic can be held to."),
                  table(["reference → model", "epochs", "KL(reference ‖ model) per token [95%]", "accuracy gap [95%]",
                         "margin gap [95%]"], compared)]
    scaling = scaling_rows(folder)
    if scaling:
        parts += [paragraph("Monte Carlo against exact Shapley at n = 8 (utility: preference accuracy): error and rank "
                            "agreement averaged over repeated seeds, with 95% intervals."),
                  table(["sampling", "permutations", "RMSE against exact [95%]", "Spearman rank correlation [95%]",
                         "repeats"], scaling)]
    return parts if len(parts) > 1 else []


def retrain_parts(run: Run) -> list[str]:
    """The retrain experiment: each source's value three ways with intervals, and the agreement in words."""
    values = retrain_values(run)
    if values.empty:
        return []
    wide = values.assign(shown=[with_interval(r.value, r.lower, r.upper, "+.4f") for r in values.itertuples()])
    wide = wide.pivot_table(index=["index", "objective", "player"], columns="method", values="shown", aggfunc="first")
    rows = [[index, objective, player, *(wide.loc[(index, objective, player), m] for m in METHODS)]
            for index, objective, player in wide.index]
    return [subheading("Retrained on every coalition's data"),
            paragraph(retrain_scope(values) + " trained on its members' pairs with the run's settings, "
                      "and the same game valued three ways on the same held-out pairs (the reward models' objectives: "
                      "on the evaluation's pooled responses): retrained, by the arithmetic, "
                      "and by merging the members' LoRA updates (95% intervals over held-out pairs"
                      + (" and training seeds)." if values.seeds.max() > 1 else ", one training seed).")),
            table(["value", "objective", "source", *METHODS], rows),
            *(paragraph(line) for line in retrain_lines(run, values))]


def validation_section(snapshot: RunSnapshot) -> str:
    """Every results folder's tables, or a sentence saying the arithmetic is not measured on this run."""
    parts = [part for folder in result_folders(snapshot.run) for part in validation_parts(folder)]
    parts += retrain_parts(snapshot.run)
    return section("validation", "Validation", parts or [
        paragraph("No validation has run on this run: how far the arithmetic holds here is not measured "
                  "(`python -m valuation validate --run RUN`).")])
