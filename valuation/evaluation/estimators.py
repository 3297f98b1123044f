"""The two estimators of the coalition game, as steps of the evaluate job (`evaluation.job`).

direct: every coalition samples its own responses, and v_x(S) is their mean reward.
pooled: every prompt gets one pool of responses from the anchor coalitions; each response is scored
    once teacher-forced under the base and every adapter, and once per reward model; every
    coalition's v_x(S) is then an importance-weighted mean of the pool's rewards (`importance`),
    under two targets:
      token     the arithmetic model the sampler and the Playground sample (utilities.csv), and
      sequence  DPO's product of experts (utilities-sequence.csv).
    Coalitions whose effective sample size, averaged over prompts, falls below `ess_floor` are
    sampled directly instead; estimation.csv records, per coalition and target, which it was.

Both read a reward model's bootstrap heads the way they read its main head: a coalition's utility
is linear in the rewards and the weights do not depend on them, so each head's utilities come from
the same means and weights, and are written beside the table (`store.write_heads`).

With adapters under further training seeds (`seeds`), each replica of the game is estimated the
same way: direct samples its coalitions again; pooled weighs the same pool under the replica's
adapters (n + 1 more teacher-forced rows per response and seed) and samples only its poorly
reached coalitions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..config import to_dict
from ..games.coalitions import BASE, TOKEN_LEVEL_MAX_PLAYERS, Coalition, coalition_name, formula_terms, membership
from ..storage import digest
from .importance import anchor_coalitions, proposal_log_density, sequence_utilities, weighted_utilities
from .seeds import on_seed, replica_sources
from .store import ESTIMATION, SEQUENCE, UTILITIES, EvaluationStore, mean_rewards, samples_key

if TYPE_CHECKING:
    from ..data.preferences import Messages
    from ..data.splits import EvalPrompt
    from ..lm.arithmetic import SamplingSettings
    from ..progress import Reporter
    from ..rewards.models import RewardModel
    from ..runtime.context import RunContext
    from .settings import EvaluationConfig


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

    key: str  # what produced the samples (`store.samples_key`)
    index: int
    prompts: tuple[EvalPrompt, ...]  # this chunk's prompts
    first: int  # the global index of the first: seeds follow the prompt, not the chunk
    coalitions: tuple[Coalition, ...]
    samples: int
    settings: SamplingSettings
    reward_keys: dict[str, tuple[str, str]]  # objective -> the scoring keys it must be scored under (`scoring_keys`)
    weighings: tuple[tuple[str, dict], ...] = ()  # pooled, per seed: (its weights' folder, what each response is weighed under)

    def paths(self, store: EvaluationStore) -> list[Path]:
        paths = [store.samples_path(self.key, self.index),
                 *(store.scores_path(o, self.key, self.index) for o in self.reward_keys)]
        return paths + [store.weights_path(self.key, self.index, folder) for folder, _ in self.weighings]

    def responses(self, store: EvaluationStore) -> list[tuple[Messages, list[int]]]:
        """The chunk's sampled responses, each with its prompt: what teacher forcing reads."""
        messages = {p.prompt_id: p.messages for p in self.prompts}
        return [(messages[r["prompt_id"]], r["token_ids"]) for r in store.rows(self.key, self.index)]

    def is_done(self, store: EvaluationStore) -> bool:
        return (store.has_samples(self.key, self.index)
                and all(store.is_scored(o, self.key, self.index, *keys) for o, keys in self.reward_keys.items())
                and all(store.has_weights(self.key, self.index, folder) for folder, _ in self.weighings))


def run_shard(store: EvaluationStore, shard: Shard, engine: Engine, reporter: Reporter) -> None:
    """Sample, score and weigh one shard into `store`, skipping whatever is stored already."""
    from ..lm.arithmetic import coalition_requests, sample_coalitions

    number = shard.index + 1
    if not store.has_samples(shard.key, shard.index):
        requests = coalition_requests([p.messages for p in shard.prompts], shard.coalitions, shard.samples)
        requests = [replace(r, prompt_index=r.prompt_index + shard.first) for r in requests]  # seeds by global index
        stage, done = reporter.stage(f"sampling chunk {number}"), 0

        def tick(finished: int) -> None:  # the sampler says how many groups just finished
            nonlocal done
            done += finished
            stage(done, len(requests))

        generated = sample_coalitions(engine.model, engine.tokenizer, requests, shard.settings, progress=tick)
        store.write_samples(shard.key, shard.index, {shard.first + i: p.prompt_id for i, p in enumerate(shard.prompts)},
                            generated)
        reporter.log(f"chunk {number} sampled")
    messages = {p.prompt_id: p.messages for p in shard.prompts}
    store.score(shard.key, shard.index, engine.rewards, messages, reporter)
    for replica, (folder, variants) in enumerate(shard.weighings):
        if not store.has_weights(shard.key, shard.index, folder):
            stage = reporter.stage(f"weighing chunk {number}" + (f", seed {replica + 1}" if replica else ""))
            weights = weigh(engine.model, engine.tokenizer, shard.responses(store), variants,
                            shard.settings.max_batch_rows, stage)
            store.write_weights(shard.key, shard.index, folder, weights)


Runner = Callable[[list[Shard]], Iterator[Shard]]  # runs shards, yielding each as it finishes


@dataclass
class Evaluation:
    """One evaluate job's inputs, gathered once: what each step of either estimator reads."""

    context: RunContext
    config: EvaluationConfig
    store: EvaluationStore
    prompts: list[EvalPrompt]
    coalitions: list[Coalition]
    reward_keys: dict[str, tuple[str, str]]  # objective -> its reward model's scoring keys
    runner: Runner
    reporter: Reporter

    @property
    def objectives(self) -> list[str]:
        return list(self.reward_keys)

    @property
    def heads(self) -> dict[str, str]:
        """objective -> the key of the bootstrap heads it is scored under (objectives that have them)."""
        return {objective: heads for objective, (_, heads) in self.reward_keys.items() if heads}

    def frame(self, shard: Shard) -> pd.DataFrame:
        """A finished shard's responses with their rewards, and each bootstrap head's (`<objective>@<k>`)."""
        return self.store.frame(shard.key, shard.index, self.objectives, self.heads)

    def shards(self, coalitions: list[Coalition], samples: int, what: dict[str, Any],
               weighings: tuple[tuple[str, dict], ...] = ()) -> list[Shard]:
        """The evaluation cut into chunks of `chunk_prompts` prompts, keyed by everything that decides the samples."""
        config, context, prompts = self.config, self.context, self.prompts
        sampling = config.sampling()
        adapters = dict.fromkeys([*context.sources, *sorted(set().union(*coalitions))])  # a further seed's too
        key = samples_key(context.base.name, {a: context.record(a) for a in adapters}, prompts, {
            **what,
            "sampling": to_dict(sampling) | {"max_batch_rows": None},  # batching never changes results
            "chunk_prompts": config.chunk_prompts,
        })
        starts = range(0, len(prompts), config.chunk_prompts)
        return [Shard(key, index, tuple(prompts[first:first + config.chunk_prompts]), first, tuple(coalitions),
                      samples, sampling, self.reward_keys, weighings) for index, first in enumerate(starts)]


def reward_columns(frame: pd.DataFrame, objectives: list[str]) -> list[str]:
    """The objectives' reward columns of a chunk's frame, then every bootstrap head's."""
    return [*objectives, *(column for column in frame.columns if "@" in column)]


def in_order(parts: dict[int, pd.DataFrame]) -> list[pd.DataFrame]:
    """Chunks finish in any order on a cluster; tables list them by chunk."""
    return [parts[index] for index in sorted(parts)]


def write_utilities(store: EvaluationStore, name: str, table: pd.DataFrame, objectives: list[str],
                    replica: int = 0) -> None:
    """A table of utilities and, for the first training seed, its utilities under every bootstrap head."""
    store.write_table(name, table[["coalition", "prompt", *objectives]], replica)
    if replica == 0:
        store.write_heads(name, table)


# ---------------------------------------------------------------------------------------------
# direct


def sample_directly(evaluation: Evaluation, coalitions: list[Coalition], write: bool) -> pd.DataFrame:
    """Direct utilities of `coalitions`: the mean reward of their own samples, per prompt (and each
    bootstrap head's); with `write`, utilities.csv is rewritten after every chunk (what the Shapley
    page reads live)."""
    samples = evaluation.config.samples
    shards = evaluation.shards(coalitions, samples, {"coalitions": [sorted(c) for c in coalitions], "samples": samples})
    frames: dict[int, pd.DataFrame] = {}
    for shard in evaluation.runner(shards):
        frames[shard.index] = evaluation.frame(shard)
        if write:
            table = mean_rewards(in_order(frames), reward_columns(frames[shard.index], evaluation.objectives))
            write_utilities(evaluation.store, UTILITIES, table, evaluation.objectives)
    return mean_rewards(in_order(frames), reward_columns(next(iter(frames.values())), evaluation.objectives))


def evaluate_directly(evaluation: Evaluation, replicas: int) -> None:
    """Every coalition sampled on its own, under each training seed (a further seed's coalitions are
    sampled again, and written as that seed's table)."""
    for replica in range(replicas):
        table = sample_directly(evaluation, on_seed(evaluation.coalitions, replica), write=replica == 0)
        if replica:
            write_utilities(evaluation.store, UTILITIES, table, evaluation.objectives, replica)


# ---------------------------------------------------------------------------------------------
# pooled


def evaluate_pooled(evaluation: Evaluation, replicas: int = 1) -> None:
    """Pooled utilities of the coalitions, chunk by chunk (utilities.csv rewritten after each), then
    the direct fallback for the coalitions the pool reaches poorly; then the same for each further
    training seed, from the same pool, weighed under that seed's adapters in the same pass."""
    shards = pool_shards(evaluation, replicas)
    for replica in range(replicas):
        finished = evaluation.runner(shards) if replica == 0 else iter(shards)  # the first pass weighed every seed
        pooled_replica(evaluation, finished, replica)


def pool_shards(evaluation: Evaluation, replicas: int) -> list[Shard]:
    """The pooled evaluation's chunks: the anchors' pool of each chunk of prompts, weighed under every
    training seed's adapters (each seed's coalitions at the token level, where the game is small enough)."""
    context, config = evaluation.context, evaluation.config
    anchors = anchor_coalitions(context.sources)
    token_level = len(context.sources) <= TOKEN_LEVEL_MAX_PLAYERS
    weighings = tuple(seed_weighing(context, anchors if replica == 0 else [],
                                    on_seed(evaluation.coalitions, replica) if token_level else [], replica,
                                    config.temperature)
                      for replica in range(replicas))
    return evaluation.shards(anchors, config.pool_per_anchor, {
        "estimator": "pooled", "anchors": [sorted(a) for a in anchors], "pool_per_anchor": config.pool_per_anchor},
        weighings)


def seed_weighing(context: RunContext, anchors: list[Coalition], coalitions: list[Coalition], replica: int,
                  temperature: float) -> tuple[str, dict]:
    """What the pool is weighed under for training seed `replica` (`pool_variants`), and the folder
    its weights go to: the first seed's beside the samples, a further one's named by its adapters."""
    sources = replica_sources(context.sources, replica)
    variants = pool_variants(anchors, coalitions, sources, temperature)
    folder = "" if replica == 0 else digest({"adapters": {a: digest(context.record(a)) for a in sources},
                                             "variants": sorted(map(list, variants))})[:16]
    return folder, variants


def pooled_replica(evaluation: Evaluation, finished: Iterable[Shard], replica: int) -> None:
    """One training seed's pooled utilities from the `finished` shards' pools, then its direct fallback."""
    context, config, store = evaluation.context, evaluation.config, evaluation.store
    sources, objectives = replica_sources(context.sources, replica), evaluation.objectives
    anchors = anchor_coalitions(context.sources)  # the pool's proposal: the first seed's anchors
    game = on_seed(evaluation.coalitions, replica)
    token_level = len(sources) <= TOKEN_LEVEL_MAX_PLAYERS
    targets = ("token", "sequence") if token_level else ("sequence",)
    weighed: dict[str, dict[int, pd.DataFrame]] = {target: {} for target in targets}
    primary = targets[0]
    for shard in finished:
        frame = evaluation.frame(shard)
        rewards = reward_columns(frame, objectives) if replica == 0 else objectives  # heads: the first seed's only
        estimates = pool_utilities(frame, seed_weights(store, shard, replica), sources, anchors, game, rewards,
                                   config.temperature)
        for target, tables in weighed.items():  # (the anchors alone may cover every coalition's token level too)
            tables[shard.index] = estimates[target]
        if replica == 0:  # what the Shapley page reads live
            write_pooled(store, weighed, primary, objectives, config.ess_floor, fallback=pd.DataFrame())
    ess = pd.concat(in_order(weighed[primary])).groupby("coalition", sort=False).ess.mean()
    poor = [c for c in game if ess[coalition_name(c)] < config.ess_floor]
    direct = pd.DataFrame()
    if poor and token_level:  # the sampler samples the token-level model: it can stand in for its weights
        seed = f" (seed {replica + 1})" if replica else ""
        evaluation.reporter.log(f"{len(poor)} coalition(s){seed} below ESS {config.ess_floor:g}: sampled directly")
        direct = sample_directly(evaluation, poor, write=False)
    write_pooled(store, weighed, primary, objectives, config.ess_floor, direct, replica)


def seed_weights(store: EvaluationStore, shard: Shard, replica: int) -> dict[str, dict[str, list[float]]]:
    """A chunk's log-likelihoods for training seed `replica`: the first seed's (the anchors, the
    proposal), with the seed's own adapters' and coalitions' added."""
    first, own = (store.weights(shard.key, shard.index, folder)
                  for folder in (shard.weighings[0][0], shard.weighings[replica][0]))
    return {kind: {**first[kind], **own[kind]} for kind in ("token", "model")}


def pool_variants(anchors: list[Coalition], coalitions: list[Coalition], sources: list[str],
                  temperature: float) -> dict[tuple[str, str], list[tuple[str, float]]]:
    """What each pool response is scored under: each anchor and coalition at the sampling
    temperature (token level: the formula's coefficients divided by T), and each model alone,
    untempered (the sequence level's l_m)."""
    tempered = {("token", coalition_name(c)): [(m, w / temperature) for m, w in formula_terms(c)]
                for c in dict.fromkeys([*anchors, *coalitions])}
    return tempered | {("model", m): [(m, 1.0)] for m in [BASE, *sources]}


def weigh(model, tokenizer, responses: list[tuple[Messages, list[int]]], variants: dict, max_batch_rows: int,
          progress=None) -> dict[str, dict[str, list[float]]]:
    """{"token": {coalition: [log pi~_S,T(y_i)]}, "model": {model: [l_m(y_i)]}}, from n + 1 teacher-forced passes."""
    from ..lm.scoring import score_variants

    scores = score_variants(model, tokenizer, responses, variants, max_batch_rows=max_batch_rows,
                            progress=progress).log_likelihoods
    weights: dict[str, dict[str, list[float]]] = {"token": {}, "model": {}}
    for (kind, name), values in scores.items():
        weights[kind][name] = [float(v) for v in values]
    return weights


def pool_utilities(frame: pd.DataFrame, weights: dict[str, dict[str, list[float]]], sources: list[str],
                   anchors: list[Coalition], coalitions: list[Coalition], rewards: list[str],
                   temperature: float) -> dict[str, pd.DataFrame]:
    """Per target, per (coalition, prompt) of one chunk: the weighted utilities of each reward
    column of `frame` and the ESS."""
    names = [coalition_name(c) for c in coalitions]
    members = membership(coalitions, sources)
    tables: dict[str, list[pd.DataFrame]] = {"token": [], "sequence": []}
    for prompt_id in frame.prompt_id.unique():
        pool = np.flatnonzero(frame.prompt_id.to_numpy() == prompt_id)  # the prompt's responses, in file order
        values = frame[rewards].to_numpy(float)[pool]

        def read(kind: str, keys: list[str]) -> np.ndarray:
            return np.array([np.asarray(weights[kind][key])[pool] for key in keys])

        log_q = proposal_log_density(read("token", [coalition_name(a) for a in anchors]))
        estimates = {"sequence": sequence_utilities(read("model", [BASE, *sources]), members, log_q, values, temperature)}
        if set(names) <= set(weights["token"]):  # weighed under every coalition's token-level target
            estimates["token"] = weighted_utilities(read("token", names), log_q, values)
        for target, (utilities, ess) in estimates.items():
            table = pd.DataFrame(utilities, columns=rewards)
            table.insert(0, "prompt", prompt_id)
            table.insert(0, "coalition", names)
            tables[target].append(table.assign(ess=ess))
    return {target: pd.concat(parts) for target, parts in tables.items() if parts}


def write_pooled(store: EvaluationStore, weighed: dict[str, dict[int, pd.DataFrame]], primary: str,
                 objectives: list[str], ess_floor: float, fallback: pd.DataFrame, replica: int = 0) -> None:
    """utilities.csv (the primary target, with the fallback's direct rows in place of its poorly
    reached coalitions), utilities-sequence.csv beside a token-level primary, and estimation.csv;
    for a further training seed, their seed tables, coalitions named by their sources."""
    estimation = []
    for target, parts in weighed.items():
        table = pd.concat(in_order(parts), ignore_index=True)
        replaced = set(fallback.coalition) if target == primary and not fallback.empty else set()
        summary = table.groupby("coalition", sort=False).ess.agg(ess_mean="mean", ess_min="min").reset_index()
        summary.insert(1, "target", target)
        summary.insert(2, "estimator", ["direct" if c in replaced else "pooled" for c in summary.coalition])
        summary["below_floor"] = summary.ess_mean < ess_floor
        estimation.append(summary)
        table = pd.concat([table[~table.coalition.isin(replaced)], fallback]) if replaced else table
        write_utilities(store, UTILITIES if target == primary else SEQUENCE, table, objectives, replica)
    store.write_table(ESTIMATION, pd.concat(estimation), replica)
