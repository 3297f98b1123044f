"""The reward model's own noise, for the Shapley intervals: a run's utilities under each bootstrap head.

A 'features' reward model is a Bradley-Terry head fit on a few hundred or thousand pairs; refit on
a resample of them it scores the same responses differently. `valuation.rewards` stores K such
refits beside the head, and the evaluation stores every response's reward under each of them
beside its main reward (`SampleSet.score`). This module turns those rewards into the table's
per-prompt utilities under each head, with exactly the estimator that produced the table:

- direct rows: the mean over the coalition's samples (`samples.mean_rewards`);
- pooled rows: the same importance weights applied to the heads' rewards (`estimators.pool_utilities`:
  a coalition's utility is linear in the rewards, and the weights do not depend on them).

Every sample set in the run is a candidate; a coalition takes its heads' utilities from the one
whose main rewards reproduce the table's row for every prompt, so stale samples, a later change
to the estimator, or chunks scored before the heads existed leave an objective prompt-only rather
than wrong. `valuation.monte_carlo.bootstrap_intervals` folds the heads into the intervals.

Hub reward models cannot be refit here (their training data is not the run's): their intervals
cover the prompts only, and `RewardHeads.missing` says so.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from .coalitions import coalition_name
from .rewards import bootstrap_heads, read_reward_card, rewards_dir
from .runs import Run
from .samples import SampleSet, evaluation_dir, head_column, mean_rewards
from .utility_table import RewardHeads, UtilityTable

HEAD_FLOATS = 2**25  # per-head utilities kept at most (256 MiB of float64); beyond, the intervals cover prompts only


def with_reward_heads(path: Path, table: UtilityTable) -> UtilityTable:
    """`table` read from `path`, with its reward models' bootstrap heads where the run holds them."""
    heads = reward_heads(path, table)
    return table if heads is None else replace(table, heads=heads)


def reward_heads(path: Path, table: UtilityTable) -> RewardHeads | None:
    """The per-head utilities of a run's table (<run>/evaluation/utilities*.csv), or None when the
    table is not a run's reward utilities (another file, the reward-free preference table)."""
    path = Path(path)
    run = Run(path.parent.parent)
    if path.parent.name != "evaluation" or table.prompts is None or not rewards_dir(run).is_dir():
        return None
    cards = {objective: read_reward_card(run, objective) for objective in table.objectives}
    if all(card is None for card in cards.values()):
        return None
    found = {objective: bootstrap_heads(card) for objective, card in cards.items()}
    keys = {objective: key for objective, (count, key) in found.items() if count}
    missing = {objective: why for objective, (count, why) in found.items() if not count}
    if not keys:
        return RewardHeads({}, missing)
    counts = {objective: found[objective][0] for objective in keys}
    if len(table.values) * len(table.prompts) * sum(counts.values()) > HEAD_FLOATS:
        too_many = f"{len(table.values)} coalitions x {len(table.prompts)} prompts x heads is too many to keep"
        return RewardHeads({}, missing | {objective: too_many for objective in keys})
    try:
        per_prompt, unmatched = _rebuild(run, path, table, keys, counts)
    except (OSError, ValueError, KeyError, TypeError) as error:  # a damaged or foreign file: prompt-only
        per_prompt, unmatched = {}, {o: f"its stored rewards cannot be read ({type(error).__name__})" for o in keys}
    return RewardHeads(per_prompt, missing | unmatched)


def _target(path: Path) -> str:
    """Which estimate the table holds: a pooled target (token, sequence) or 'direct'."""
    if path.name != "utilities.csv":
        return path.stem.removeprefix("utilities-")
    estimation = path.parent / "estimation.csv"
    if not estimation.is_file():
        return "direct"
    targets = pd.read_csv(estimation, keep_default_na=False).target
    return str(targets.iloc[0]) if len(targets) else "direct"


def _rebuild(run: Run, path: Path, table: UtilityTable, keys: dict[str, str], counts: dict[str, int]
             ) -> tuple[dict, dict[str, str]]:
    """(objective -> coalition -> [K, n_prompts], objective -> why it has none)."""
    from .estimators import pool_utilities  # read-only use of the evaluation's own estimator
    from .pooled import anchor_coalitions

    folder, target = evaluation_dir(run), _target(path)
    settings = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
    objectives = list(table.objectives)
    head_columns = [head_column(o, k) for o in keys for k in range(counts[o])]
    sources, coalitions = list(table.players), list(table.values)
    candidates = []
    for samples in sorted((folder / "samples").glob("*")):
        store = SampleSet(run, samples.name)
        indices = sorted(int(p.stem.split("-")[1]) for p in samples.glob("chunk-*.jsonl"))
        frames = [store.frame(i, objectives, keys) for i in indices]
        if not frames or any(f is None for f in frames):
            continue
        frames = [f.reindex(columns=[*f.columns, *(c for c in head_columns if c not in f.columns)]) for f in frames]
        pooled = all(store.weights_path(i).exists() for i in indices)
        if not pooled:
            if target in ("direct", "token"):  # direct rows: a direct evaluation, or the pooled fallback
                candidates.append(mean_rewards(frames, objectives + head_columns))
            continue
        parts = []
        for i, frame in zip(indices, frames):
            weights = json.loads(store.weights_path(i).read_text(encoding="utf-8"))
            try:
                estimates = pool_utilities(frame, weights, sources, anchor_coalitions(sources), coalitions,
                                           objectives + head_columns, float(settings["temperature"]))
            except (KeyError, IndexError, ValueError):  # weighed for other sources or coalitions: another evaluation
                parts = []
                break
            if target not in estimates:
                parts = []
                break
            parts.append(estimates[target])
        if parts:
            candidates.append(pd.concat(parts, ignore_index=True))

    return _pick(candidates, table, objectives, keys, counts)


def _pick(candidates: list[pd.DataFrame], table: UtilityTable, objectives: list[str], keys: dict[str, str],
          counts: dict[str, int]) -> tuple[dict, dict[str, str]]:
    """Per coalition, the first candidate whose main rewards give exactly the table's utilities on
    every prompt; its head columns become that coalition's per-head utilities."""
    coalitions, prompts = list(table.values), list(table.prompts)
    index = pd.MultiIndex.from_product([[coalition_name(c) for c in coalitions], prompts], names=["coalition", "prompt"])
    expected = np.stack([table.prompt_values(c).T for c in coalitions])  # [coalitions, prompts, objectives]
    columns = [head_column(o, k) for o in keys for k in range(counts[o])]
    heads = np.full((len(coalitions), len(prompts), len(columns)), np.nan)
    found = np.zeros(len(coalitions), bool)
    for candidate in candidates:
        candidate = candidate.assign(prompt=candidate.prompt.astype(str))
        if candidate.duplicated(["coalition", "prompt"]).any():
            continue
        grid = candidate.set_index(["coalition", "prompt"]).reindex(index)
        main = grid[objectives].to_numpy(float).reshape(expected.shape)
        take = ~found & np.isclose(main, expected, rtol=1e-9, atol=1e-12).all(axis=(1, 2))  # NaN: no match
        heads[take] = grid[columns].to_numpy(float).reshape(heads.shape)[take]
        found |= take
    if not found.all():
        return {}, {o: "the stored samples do not reproduce these utilities (evaluate again)" for o in keys}
    per_prompt, unscored, first = {}, {}, 0
    for objective in keys:
        block = heads[:, :, first:first + counts[objective]]  # [coalitions, prompts, K]
        first += counts[objective]
        if np.isnan(block).any():
            unscored[objective] = "some of its stored rewards predate its bootstrap heads (evaluate again to score them)"
        else:
            per_prompt[objective] = {c: block[i].T for i, c in enumerate(coalitions)}
    return per_prompt, unscored
