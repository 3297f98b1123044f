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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .coalitions import BASE, TOKEN_LEVEL_MAX_PLAYERS, Coalition, coalition_name
from .config import to_dict
from .pooled import anchor_coalitions, membership, proposal_log_density, sequence_utilities, weighted_utilities
from .runs import Run
from .samples import SampleSet, evaluation_dir, mean_rewards, read_jsonl, samples_key
from .splits import EvalPrompt
from .storage import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from .arithmetic import SamplingSettings
    from .context import RunContext
    from .game import EvaluationConfig
    from .data import Messages
    from .progress import Reporter
    from .reward_models import RewardModel


@dataclass
class Engine:
    """What shards run on, loaded once: the base with every adapter, its tokenizer, the reward models."""

    model: Any
    tokenizer: Any
    rewards: dict[str, RewardModel]


@dataclass(frozen=True)
class Shard:
    """One chunk of prompts' work, the same wherever it runs: every coalition's `samples` responses
    to each prompt, their rewards, and (pooled) their log-likelihoods under every variant. It writes
    only files named by its key and index (`paths`), so it can run here or on a Ray worker whose
    files the driver copies in."""

    key: str  # the SampleSet's key: what produced the samples
    index: int
    prompts: tuple[EvalPrompt, ...]  # this chunk's prompts
    first: int  # the global index of the first: seeds follow the prompt, not the chunk
    coalitions: tuple[Coalition, ...]
    samples: int
    settings: SamplingSettings
    reward_keys: dict[str, tuple[str, str]]  # objective -> the scoring keys it must be scored under (`scoring_keys`)
    variants: dict | None = None  # pooled: what each response is weighed under (`pool_variants`)

    def store(self, run: Run) -> SampleSet:
        return SampleSet(run, self.key)

    def paths(self, run: Run) -> list[Path]:
        store = self.store(run)
        paths = [store.samples_path(self.index), *(store.scores_path(o, self.index) for o in self.reward_keys)]
        return paths + ([store.weights_path(self.index)] if self.variants is not None else [])

    def is_done(self, run: Run) -> bool:
        store = self.store(run)
        return (all(path.exists() for path in self.paths(run))
                and all(store.is_scored(o, self.index, *keys) for o, keys in self.reward_keys.items()))


def run_shard(run: Run, shard: Shard, engine: Engine, reporter: Reporter) -> None:
    """Sample, score and weigh one shard into `run`, skipping whatever is stored already."""
    from .arithmetic import coalition_requests, sample_coalitions

    store, number = shard.store(run), shard.index + 1

    def generate():
        requests = coalition_requests([p.messages for p in shard.prompts], shard.coalitions, shard.samples)
        requests = [replace(r, prompt_index=r.prompt_index + shard.first) for r in requests]  # seeds by global index
        stage = reporter.stage(f"sampling chunk {number}")
        done = 0

        def tick(finished: int) -> None:  # the sampler says how many groups just finished
            nonlocal done
            done += finished
            stage(done, len(requests))

        return sample_coalitions(engine.model, engine.tokenizer, requests, shard.settings, progress=tick)

    if store.sample(shard.index, {shard.first + i: p.prompt_id for i, p in enumerate(shard.prompts)}, generate):
        reporter.log(f"chunk {number} sampled")
    messages = {p.prompt_id: p.messages for p in shard.prompts}
    store.score(shard.index, engine.rewards, messages, reporter)
    path = store.weights_path(shard.index)
    if shard.variants is not None and not path.exists():
        rows = read_jsonl(store.samples_path(shard.index))
        weights = weigh(engine.model, engine.tokenizer, [(messages[r["prompt_id"]], r["token_ids"]) for r in rows],
                        shard.variants, shard.settings.max_batch_rows, reporter.stage(f"weighing chunk {number}"))
        atomic_write_json(path, weights)


Runner = Callable[[list[Shard]], Iterator[Shard]]  # runs shards, yielding each as it finishes


@contextmanager
def shard_runner(context: RunContext, engine: Engine, reporter: Reporter) -> Iterator[Runner]:
    """Where shards run: here on `engine`, one after another, or on a Ray cluster's workers, each
    loading its own engine (`valuation.cluster`)."""
    if context.backend.backend == "ray":
        from .cluster import ray_shard_runner

        with ray_shard_runner(context, list(engine.rewards), reporter) as runner:
            yield runner
        return

    def run_here(shards: list[Shard]) -> Iterator[Shard]:
        for shard in shards:
            run_shard(context.run, shard, engine, reporter)
            yield shard

    yield run_here


def make_shards(context: RunContext, config: EvaluationConfig, prompts: list[EvalPrompt], coalitions: list[Coalition],
                samples: int, reward_keys: dict[str, tuple[str, str]], what: dict[str, Any],
                variants: dict | None = None) -> list[Shard]:
    """The evaluation cut into chunks of `chunk_prompts` prompts, keyed by everything that decides the samples."""
    from .adapters import read_record

    sampling = config.sampling()
    key = samples_key(context.base.name, {s: read_record(context.run, s) for s in context.sources}, prompts, {
        **what,
        "sampling": to_dict(sampling) | {"max_batch_rows": None},  # batching never changes results
        "chunk_prompts": config.chunk_prompts,
    })
    starts = range(0, len(prompts), config.chunk_prompts)
    return [Shard(key, index, tuple(prompts[first:first + config.chunk_prompts]), first, tuple(coalitions), samples,
                  sampling, reward_keys, variants) for index, first in enumerate(starts)]


def sample_directly(context: RunContext, runner: Runner, config: EvaluationConfig, prompts: list[EvalPrompt],
                    coalitions: list[Coalition], reward_keys: dict[str, tuple[str, str]], write: bool) -> pd.DataFrame:
    """Direct utilities of `coalitions`: the mean reward of their own samples, per prompt; with
    `write`, utilities.csv is rewritten after every chunk (what the Shapley page reads live)."""
    objectives = list(reward_keys)
    shards = make_shards(context, config, prompts, coalitions, config.samples, reward_keys, {
        "coalitions": [sorted(c) for c in coalitions], "samples": config.samples})
    frames: dict[int, pd.DataFrame] = {}
    for shard in runner(shards):
        frames[shard.index] = shard.store(context.run).frame(shard.index, objectives)
        if write:
            write_table(context.run, "utilities.csv", mean_rewards(in_order(frames), objectives))
    return mean_rewards(in_order(frames), objectives)


def in_order(parts: dict[int, pd.DataFrame]) -> list[pd.DataFrame]:
    """Chunks finish in any order on a cluster; tables list them by chunk."""
    return [parts[index] for index in sorted(parts)]


def write_table(run: Run, name: str, table: pd.DataFrame) -> None:
    atomic_write_text(evaluation_dir(run) / name, table.to_csv(index=False))


def evaluate_pooled(context: RunContext, runner: Runner, config: EvaluationConfig, prompts: list[EvalPrompt],
                    coalitions: list[Coalition], reward_keys: dict[str, tuple[str, str]], reporter: Reporter) -> None:
    """Pooled utilities of `coalitions`, chunk by chunk (utilities.csv rewritten after each), then
    the direct fallback for the coalitions the pool reaches poorly."""
    sources, objectives = context.sources, list(reward_keys)
    anchors = anchor_coalitions(sources)
    token_level = len(sources) <= TOKEN_LEVEL_MAX_PLAYERS
    variants = pool_variants(anchors, coalitions if token_level else [], sources, config.temperature)
    shards = make_shards(context, config, prompts, anchors, config.pool_per_anchor, reward_keys, {
        "estimator": "pooled", "anchors": [sorted(a) for a in anchors], "pool_per_anchor": config.pool_per_anchor},
        variants)
    targets = ("token", "sequence") if token_level else ("sequence",)
    weighed: dict[str, dict[int, pd.DataFrame]] = {target: {} for target in targets}
    primary = targets[0]
    for shard in runner(shards):
        store = shard.store(context.run)
        weights = json.loads(store.weights_path(shard.index).read_text())
        estimates = pool_utilities(store.frame(shard.index, objectives), weights, sources, anchors, coalitions,
                                   objectives, config.temperature)
        for target, tables in weighed.items():  # (the anchors alone may cover every coalition's token level too)
            tables[shard.index] = estimates[target]
        write_pooled(context.run, weighed, primary, objectives, config.ess_floor, fallback=pd.DataFrame())
    ess = pd.concat(in_order(weighed[primary])).groupby("coalition", sort=False).ess.mean()
    poor = [c for c in coalitions if ess[coalition_name(c)] < config.ess_floor]
    direct = pd.DataFrame()
    if poor and token_level:  # the sampler samples the token-level model: it can stand in for its weights
        reporter.log(f"{len(poor)} coalition(s) below ESS {config.ess_floor:g}: sampled directly")
        direct = sample_directly(context, runner, config, prompts, poor, reward_keys, write=False)
    write_pooled(context.run, weighed, primary, objectives, config.ess_floor, direct)


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


def write_pooled(run: Run, weighed: dict[str, dict[int, pd.DataFrame]], primary: str, objectives: list[str],
                 ess_floor: float, fallback: pd.DataFrame) -> None:
    """utilities.csv (the primary target, with the fallback's direct rows in place of its poorly
    reached coalitions), utilities-sequence.csv beside a token-level primary, and estimation.csv."""
    folder, estimation = evaluation_dir(run), []
    for target, parts in weighed.items():
        table = pd.concat(in_order(parts), ignore_index=True)
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
