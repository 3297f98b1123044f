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

With adapters under further training seeds (`valuation.seeds`), each replica of the game is
estimated the same way: direct samples its coalitions again; pooled weighs the same pool under
the replica's adapters (n + 1 more teacher-forced rows per response and seed) and samples only
its poorly reached coalitions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
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
from .seeds import by_sources, on_seed, replica_sources, seed_table
from .storage import atomic_write_json, atomic_write_text, digest

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
    weighings: tuple[tuple[str, dict], ...] = ()  # pooled, per seed: (its weights' folder, what each response is weighed under)

    def store(self, run: Run) -> SampleSet:
        return SampleSet(run, self.key)

    def paths(self, run: Run) -> list[Path]:
        store = self.store(run)
        paths = [store.samples_path(self.index), *(store.scores_path(o, self.index) for o in self.reward_keys)]
        return paths + [store.weights_path(self.index, folder) for folder, _ in self.weighings]

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
    for replica, (folder, variants) in enumerate(shard.weighings):
        path = store.weights_path(shard.index, folder)
        if not path.exists():
            rows = read_jsonl(store.samples_path(shard.index))
            stage = reporter.stage(f"weighing chunk {number}" + (f", seed {replica + 1}" if replica else ""))
            weights = weigh(engine.model, engine.tokenizer, [(messages[r["prompt_id"]], r["token_ids"]) for r in rows],
                            variants, shard.settings.max_batch_rows, stage)
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
                weighings: tuple[tuple[str, dict], ...] = ()) -> list[Shard]:
    """The evaluation cut into chunks of `chunk_prompts` prompts, keyed by everything that decides the samples."""
    from .adapters import read_record

    sampling = config.sampling()
    adapters = dict.fromkeys([*context.sources, *sorted(set().union(*coalitions))])  # a further seed's too
    key = samples_key(context.base.name, {a: read_record(context.run, a) for a in adapters}, prompts, {
        **what,
        "sampling": to_dict(sampling) | {"max_batch_rows": None},  # batching never changes results
        "chunk_prompts": config.chunk_prompts,
    })
    starts = range(0, len(prompts), config.chunk_prompts)
    return [Shard(key, index, tuple(prompts[first:first + config.chunk_prompts]), first, tuple(coalitions), samples,
                  sampling, reward_keys, weighings) for index, first in enumerate(starts)]


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
                    coalitions: list[Coalition], reward_keys: dict[str, tuple[str, str]], reporter: Reporter,
                    replicas: int = 1) -> None:
    """Pooled utilities of `coalitions`, chunk by chunk (utilities.csv rewritten after each), then
    the direct fallback for the coalitions the pool reaches poorly; then the same for each further
    training seed, from the same pool, weighed under that seed's adapters in the same pass."""
    sources = context.sources
    anchors = anchor_coalitions(sources)
    token_level = len(sources) <= TOKEN_LEVEL_MAX_PLAYERS
    weighings = tuple(seed_weighing(context, anchors if replica == 0 else [],
                                    on_seed(coalitions, replica) if token_level else [], replica, config.temperature)
                      for replica in range(replicas))
    shards = make_shards(context, config, prompts, anchors, config.pool_per_anchor, reward_keys, {
        "estimator": "pooled", "anchors": [sorted(a) for a in anchors], "pool_per_anchor": config.pool_per_anchor},
        weighings)
    for replica in range(replicas):
        finished = runner(shards) if replica == 0 else iter(shards)  # the first pass weighed every seed
        pooled_replica(context, runner, config, prompts, coalitions, reward_keys, finished, replica, reporter)


def seed_weighing(context: RunContext, anchors: list[Coalition], coalitions: list[Coalition], replica: int,
                  temperature: float) -> tuple[str, dict]:
    """What the pool is weighed under for training seed `replica` (`pool_variants`), and the folder
    its weights go to: the first seed's beside the samples, a further one's named by its adapters."""
    from .adapters import read_record

    sources = replica_sources(context.sources, replica)
    variants = pool_variants(anchors, coalitions, sources, temperature)
    folder = "" if replica == 0 else digest({"adapters": {a: digest(read_record(context.run, a)) for a in sources},
                                             "variants": sorted(map(list, variants))})[:16]
    return folder, variants


def pooled_replica(context: RunContext, runner: Runner, config: EvaluationConfig, prompts: list[EvalPrompt],
                   coalitions: list[Coalition], reward_keys: dict[str, tuple[str, str]], finished: Iterable[Shard],
                   replica: int, reporter: Reporter) -> None:
    """One training seed's pooled utilities from the `finished` shards' pools, then its direct fallback."""
    sources, objectives = replica_sources(context.sources, replica), list(reward_keys)
    anchors = anchor_coalitions(context.sources)  # the pool's proposal: the first seed's anchors
    game = on_seed(coalitions, replica)
    token_level = len(sources) <= TOKEN_LEVEL_MAX_PLAYERS
    targets = ("token", "sequence") if token_level else ("sequence",)
    weighed: dict[str, dict[int, pd.DataFrame]] = {target: {} for target in targets}
    primary = targets[0]
    for shard in finished:
        store = shard.store(context.run)
        estimates = pool_utilities(store.frame(shard.index, objectives), seed_weights(store, shard, replica), sources,
                                   anchors, game, objectives, config.temperature)
        for target, tables in weighed.items():  # (the anchors alone may cover every coalition's token level too)
            tables[shard.index] = estimates[target]
        if replica == 0:  # what the Shapley page reads live
            write_pooled(context.run, weighed, primary, objectives, config.ess_floor, fallback=pd.DataFrame())
    ess = pd.concat(in_order(weighed[primary])).groupby("coalition", sort=False).ess.mean()
    poor = [c for c in game if ess[coalition_name(c)] < config.ess_floor]
    direct = pd.DataFrame()
    if poor and token_level:  # the sampler samples the token-level model: it can stand in for its weights
        seed = f" (seed {replica + 1})" if replica else ""
        reporter.log(f"{len(poor)} coalition(s){seed} below ESS {config.ess_floor:g}: sampled directly")
        direct = sample_directly(context, runner, config, prompts, poor, reward_keys, write=False)
    write_pooled(context.run, weighed, primary, objectives, config.ess_floor, direct, replica)


def seed_weights(store: SampleSet, shard: Shard, replica: int) -> dict[str, dict[str, list[float]]]:
    """A chunk's log-likelihoods for training seed `replica`: the first seed's (the anchors, the
    proposal), with the seed's own adapters' and coalitions' added."""
    first, own = (json.loads(store.weights_path(shard.index, folder).read_text())
                  for folder in (shard.weighings[0][0], shard.weighings[replica][0]))
    return {kind: {**first[kind], **own[kind]} for kind in ("token", "model")}


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
                 ess_floor: float, fallback: pd.DataFrame, replica: int = 0) -> None:
    """utilities.csv (the primary target, with the fallback's direct rows in place of its poorly
    reached coalitions), utilities-sequence.csv beside a token-level primary, and estimation.csv;
    for a further training seed, their `seed_table`s, coalitions named by their sources."""
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
        atomic_write_text(seed_table(folder / name, replica), by_sources(table[["coalition", "prompt", *objectives]])
                          .to_csv(index=False))
    atomic_write_text(seed_table(folder / "estimation.csv", replica), by_sources(pd.concat(estimation)).to_csv(index=False))
