"""The two estimators of the coalition game, as steps of the evaluate job (`game.run_evaluate`).

direct: every coalition samples its own responses, and v_x(S) is their mean reward.
pooled: every prompt gets one pool of responses from the anchor coalitions; each response is scored
    once teacher-forced under the base and every adapter, and once per reward model; every
    coalition's v_x(S) is then an importance-weighted mean of the pool's rewards (`valuation.pooled`),
    under two targets:
      token     the arithmetic model the sampler and the Playground sample (utilities.csv), and
      sequence  DPO's product of experts (utilities-sequence.csv).
    Coalitions whose effective sample size, averaged over prompts, falls below `ess_floor` are
    sampled directly instead; estimation.csv records, per coalition and target, which it was.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .coalitions import BASE, TOKEN_LEVEL_MAX_PLAYERS, Coalition, coalition_name
from .config import to_dict
from .pooled import anchor_coalitions, membership, proposal_log_density, sequence_utilities, weighted_utilities
from .runs import Run
from .samples import SampleSet, evaluation_dir, mean_rewards, read_jsonl, samples_key
from .storage import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from .arithmetic import SamplingSettings
    from .context import RunContext
    from .game import EvaluationConfig
    from .data import Messages
    from .progress import Reporter
    from .reward_models import RewardModel
    from .splits import EvalPrompt

def chunks_of(prompts: list[EvalPrompt], config: EvaluationConfig) -> list[list[int]]:
    return [list(range(i, min(i + config.chunk_prompts, len(prompts)))) for i in range(0, len(prompts), config.chunk_prompts)]


def sample_chunk(store: SampleSet, index: int, model, context: RunContext, prompts: list[EvalPrompt], chunk: list[int],
                 coalitions: list[Coalition], samples: int, settings: SamplingSettings, reporter: Reporter,
                 rewards: dict[str, RewardModel]) -> None:
    """One chunk of prompts: every coalition's `samples` responses, stored, then scored by every reward model."""
    from .arithmetic import coalition_requests, sample_coalitions

    def generate():
        requests = coalition_requests([prompts[i].messages for i in chunk], coalitions, samples)
        requests = [replace(r, prompt_index=r.prompt_index + chunk[0]) for r in requests]  # seeds by global index
        stage = reporter.stage(f"sampling chunk {index + 1}")
        done = 0

        def tick(finished: int) -> None:  # the sampler says how many groups just finished
            nonlocal done
            done += finished
            stage(done, len(requests))

        return sample_coalitions(model, context.base.tokenizer, requests, settings, progress=tick)

    if store.sample(index, prompts, generate):
        reporter.log(f"chunk {index + 1} sampled")
    store.score(index, rewards, {p.prompt_id: p.messages for p in prompts}, reporter)


def sample_directly(context: RunContext, model, config: EvaluationConfig, prompts: list[EvalPrompt],
                    coalitions: list[Coalition], rewards: dict[str, RewardModel], reporter: Reporter,
                    write: bool) -> pd.DataFrame:
    """Direct utilities of `coalitions`: the mean reward of their own samples, per prompt; with
    `write`, utilities.csv is rewritten after every chunk (what the Shapley page reads live)."""
    from .adapters import read_record

    sampling = config.sampling()
    store = SampleSet(context.run, samples_key(context.base.name, {s: read_record(context.run, s) for s in context.sources},
                                               prompts, {
        "coalitions": [sorted(c) for c in coalitions],
        "sampling": to_dict(sampling) | {"max_batch_rows": None},  # batching never changes results
        "samples": config.samples,
        "chunk_prompts": config.chunk_prompts,
    }))
    frames = []
    for index, chunk in enumerate(chunks_of(prompts, config)):
        sample_chunk(store, index, model, context, prompts, chunk, coalitions, config.samples, sampling, reporter, rewards)
        frames.append(store.frame(index, list(rewards)))
        if write:
            write_table(context.run, "utilities.csv", mean_rewards(frames, list(rewards)))
    return mean_rewards(frames, list(rewards))


def write_table(run: Run, name: str, table: pd.DataFrame) -> None:
    atomic_write_text(evaluation_dir(run) / name, table.to_csv(index=False))


def evaluate_pooled(context: RunContext, model, config: EvaluationConfig, prompts: list[EvalPrompt],
                    coalitions: list[Coalition], rewards: dict[str, RewardModel], reporter: Reporter) -> None:
    """Pooled utilities of `coalitions`, chunk by chunk (utilities.csv rewritten after each), then
    the direct fallback for the coalitions the pool reaches poorly."""
    from .adapters import read_record

    sources, objectives = context.sources, list(rewards)
    anchors, sampling = anchor_coalitions(sources), config.sampling()
    token_level = len(sources) <= TOKEN_LEVEL_MAX_PLAYERS
    store = SampleSet(context.run, samples_key(context.base.name, {s: read_record(context.run, s) for s in sources},
                                               prompts, {
        "estimator": "pooled",
        "anchors": [sorted(a) for a in anchors],
        "sampling": to_dict(sampling) | {"max_batch_rows": None},
        "pool_per_anchor": config.pool_per_anchor,
        "chunk_prompts": config.chunk_prompts,
    }))
    weighed = {target: [] for target in (("token", "sequence") if token_level else ("sequence",))}
    primary = "token" if token_level else "sequence"
    for index, chunk in enumerate(chunks_of(prompts, config)):
        sample_chunk(store, index, model, context, prompts, chunk, anchors, config.pool_per_anchor, sampling, reporter,
                     rewards)
        weights = pool_log_likelihoods(store, index, model, context, {p.prompt_id: p.messages for p in prompts},
                                       anchors, coalitions if token_level else [], config, reporter)
        estimates = pool_utilities(store.frame(index, objectives), weights, sources, anchors, coalitions, objectives,
                                   config.temperature)
        for target, tables in weighed.items():  # (the anchors alone may cover every coalition's token level too)
            tables.append(estimates[target])
        write_pooled(context.run, weighed, primary, objectives, config.ess_floor, fallback=pd.DataFrame())
    ess = pd.concat(weighed[primary]).groupby("coalition", sort=False).ess.mean()
    poor = [c for c in coalitions if ess[coalition_name(c)] < config.ess_floor]
    direct = pd.DataFrame()
    if poor and token_level:  # the sampler samples the token-level model: it can stand in for its weights
        reporter.log(f"{len(poor)} coalition(s) below ESS {config.ess_floor:g}: sampled directly")
        direct = sample_directly(context, model, config, prompts, poor, rewards, reporter, write=False)
    write_pooled(context.run, weighed, primary, objectives, config.ess_floor, direct)


def pool_log_likelihoods(store: SampleSet, index: int, model, context: RunContext, messages: dict[str, Messages],
                         anchors: list[Coalition], coalitions: list[Coalition], config: EvaluationConfig,
                         reporter: Reporter) -> dict[str, dict[str, list[float]]]:
    """Chunk `index`'s pool weighed (`weigh`), stored beside it: a relaunch does not score it again."""

    path = store.weights_path(index)
    if path.exists():
        return json.loads(path.read_text())
    rows = read_jsonl(store.samples_path(index))
    weights = weigh(model, context.base.tokenizer, [(messages[r["prompt_id"]], r["token_ids"]) for r in rows],
                    pool_variants(anchors, coalitions, context.sources, config.temperature), config.max_batch_rows,
                    reporter.stage(f"weighing chunk {index + 1}"))
    atomic_write_json(path, weights)
    return weights


def pool_variants(anchors: list[Coalition], coalitions: list[Coalition], sources: list[str],
                  temperature: float) -> dict[tuple[str, str], list[tuple[str, float]]]:
    """What each pool response is scored under: each anchor and coalition at the sampling
    temperature (token level: the formula's coefficients divided by T), and each model alone,
    untempered (the sequence level's l_m)."""
    from .coalitions import formula_terms

    tempered = {("token", coalition_name(c)): [(m, w / temperature) for m, w in formula_terms(c)]
                for c in dict.fromkeys([*anchors, *coalitions])}
    return tempered | {("model", m): [(m, 1.0)] for m in [BASE, *sources]}


def weigh(model, tokenizer, responses: list[tuple[Messages, list[int]]], variants: dict, max_batch_rows: int,
          progress=None) -> dict[str, dict[str, list[float]]]:
    """{"token": {coalition: [log pi~_S,T(y_i)]}, "model": {model: [l_m(y_i)]}}, from n + 1 teacher-forced passes."""
    from .scoring import score_variants

    scores = score_variants(model, tokenizer, responses, variants, max_batch_rows=max_batch_rows,
                            progress=progress).log_likelihoods
    weights: dict[str, dict[str, list[float]]] = {"token": {}, "model": {}}
    for (kind, name), values in scores.items():
        weights[kind][name] = [float(v) for v in values]
    return weights


def pool_utilities(frame: pd.DataFrame, weights: dict[str, dict[str, list[float]]], sources: list[str],
                   anchors: list[Coalition], coalitions: list[Coalition], objectives: list[str],
                   temperature: float) -> dict[str, pd.DataFrame]:
    """Per target, per (coalition, prompt) of one chunk: the weighted utilities and the ESS."""
    names = [coalition_name(c) for c in coalitions]
    members = membership(coalitions, sources)
    tables: dict[str, list[pd.DataFrame]] = {"token": [], "sequence": []}
    for prompt_id in frame.prompt_id.unique():
        pool = np.flatnonzero(frame.prompt_id.to_numpy() == prompt_id)  # the prompt's responses, in file order
        rewards = frame[objectives].to_numpy(float)[pool]

        def read(kind: str, keys: list[str]) -> np.ndarray:
            return np.array([np.asarray(weights[kind][key])[pool] for key in keys])

        log_q = proposal_log_density(read("token", [coalition_name(a) for a in anchors]))
        estimates = {"sequence": sequence_utilities(read("model", [BASE, *sources]), members, log_q, rewards, temperature)}
        if set(names) <= set(weights["token"]):  # weighed under every coalition's token-level target
            estimates["token"] = weighted_utilities(read("token", names), log_q, rewards)
        for target, (utilities, ess) in estimates.items():
            table = pd.DataFrame(utilities, columns=objectives)
            table.insert(0, "prompt", prompt_id)
            table.insert(0, "coalition", names)
            tables[target].append(table.assign(ess=ess))
    return {target: pd.concat(parts) for target, parts in tables.items() if parts}


def write_pooled(run: Run, weighed: dict[str, list[pd.DataFrame]], primary: str, objectives: list[str],
                 ess_floor: float, fallback: pd.DataFrame) -> None:
    """utilities.csv (the primary target, with the fallback's direct rows in place of its poorly
    reached coalitions), utilities-sequence.csv beside a token-level primary, and estimation.csv."""
    folder, estimation = evaluation_dir(run), []
    for target, parts in weighed.items():
        table = pd.concat(parts, ignore_index=True)
        replaced = set(fallback.coalition) if target == primary and not fallback.empty else set()
        summary = table.groupby("coalition", sort=False).ess.agg(ess_mean="mean", ess_min="min").reset_index()
        summary.insert(1, "target", target)
        summary.insert(2, "estimator", ["direct" if c in replaced else "pooled" for c in summary.coalition])
        summary["below_floor"] = summary.ess_mean < ess_floor
        estimation.append(summary)
        table = pd.concat([table[~table.coalition.isin(replaced)], fallback]) if replaced else table
        name = "utilities.csv" if target == primary else f"utilities-{target}.csv"
        atomic_write_text(folder / name, table[["coalition", "prompt", *objectives]].to_csv(index=False))
    atomic_write_text(folder / "estimation.csv", pd.concat(estimation).to_csv(index=False))
