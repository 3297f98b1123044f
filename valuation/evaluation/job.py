"""The evaluate job: which coalitions, on which prompts, and their utilities v(S), the mean reward
of coalition S's model's responses. Two estimators give the same game (`estimators`):

- direct: every coalition samples `samples` responses per prompt (2^n x prompts x samples responses);
- pooled: each prompt gets one pool of responses from a few anchor coalitions, and every
  coalition's utility is read off it by importance weighting (`importance`): inference grows
  with n instead of 2^n. Coalitions the pool reaches poorly (effective sample size below a floor)
  are sampled directly instead.

The job is a plain function from a config and the run's files to more files in the run's
evaluation folder (`store` owns it and lists them), written chunk by chunk so that a killed job
resumes at the next chunk, then the reward-free utilities on held-out pairs (`rewards.heldout`).

Every coalition answers the same prompts with the same seeds (common random numbers), so
differences between coalitions come from the coalitions.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import PROJECT_ROOT
from ..data.splits import EvalPrompt
from ..games.coalitions import Coalition, all_coalitions, decode_rows
from ..games.sampling import permutation_shapley
from ..games.shapley import CachedGame
from ..lm.adapters import trained_seeds, trained_sources
from ..rewards.heldout import games_preferences, held_out
from ..rewards.store import reward_models
from ..storage import digest
from .estimators import Engine, Evaluation, Runner, Shard, evaluate_directly, evaluate_pooled, run_shard
from .importance import anchor_coalitions
from .seeds import every_seed, replica_sources
from .settings import EvaluationConfig, EvaluationError
from .store import EvaluationStore, read_jsonl, scoring_keys

if TYPE_CHECKING:
    from ..progress import Reporter
    from ..runtime.context import RunContext


# ---------------------------------------------------------------------------------------------
# What to evaluate


def coalitions_to_evaluate(sources: list[str], config: EvaluationConfig) -> list[Coalition]:
    """All 2^n coalitions, or exactly those that `permutation_shapley` with this seed and budget visits,
    so the Shapley page's Monte Carlo estimate finds every coalition it asks for."""
    if config.resolved_method(len(sources)) == "exact":
        return all_coalitions(sources)
    recorder = CachedGame(lambda coalition: 0.0)
    permutation_shapley(sorted(sources), recorder, budget_permutations=config.permutations, seed=config.seed)
    return sorted(recorder.cache, key=lambda c: (len(c), sorted(c)))


def evaluation_prompts(context: RunContext, config: EvaluationConfig) -> list[EvalPrompt]:
    """The first `config.prompts` of the run's held-out prompts (drawn evenly across sources by the
    split), or of the prompts file."""
    prompts = read_prompts_file(config.prompts_file) if config.prompts_file else context.split.eval_prompts
    if len(prompts) < config.prompts:
        raise EvaluationError(f"Only {len(prompts)} evaluation prompts are available, fewer than the {config.prompts} "
                              "asked for: lower the number of prompts, or raise 'Evaluation prompts' on the Sources page.")
    return prompts[: config.prompts]


def read_prompts_file(name: str) -> list[EvalPrompt]:
    """A prompts file's prompts; a relative name that is not found here is looked for in the project
    (the shipped demo's evaluation names its prompts file relative to it)."""
    path = Path(name).expanduser()
    if not path.is_absolute() and not path.exists() and (PROJECT_ROOT / path).exists():
        path = PROJECT_ROOT / path
    try:
        rows = read_jsonl(path)
        return [EvalPrompt(str(r["prompt_id"]), str(r.get("kind", "")), list(r["messages"])) for r in rows]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise EvaluationError(f"{path}: not a prompts file ({type(error).__name__}: {error}); each line needs "
                              '{"prompt_id": ..., "messages": [{"role": "user", "content": ...}]}.') from None


@dataclass(frozen=True)
class Cost:
    """What an evaluation pays, before it runs."""

    decode_row_tokens: int  # model rows x tokens decoded
    scored_responses: int  # responses scored teacher-forced under the base and every adapter (pooled)
    teacher_forced_tokens: int  # their tokens x models, prompts included (a guess: TYPICAL_PROMPT_TOKENS each)
    reward_calls: int  # responses scored by each reward model


TYPICAL_PROMPT_TOKENS = 48  # a chat-templated HH-RLHF prompt; only the time estimate uses it


def evaluation_cost(sources: list[str], coalitions: list[Coalition], config: EvaluationConfig, seeds: int = 1) -> Cost:
    """The cost model: a decoding step of coalition S costs `decode_rows(S)` rows; a pooled response
    is read once by each of the n + 1 models, and again by n + 1 for each further training seed;
    direct sampling samples every seed's coalitions; the pooled fallback is not known in advance."""
    if config.estimator == "direct":
        rows, responses = sum(map(decode_rows, coalitions)) * config.samples, len(coalitions) * config.samples
        return Cost(rows * config.prompts * config.max_new_tokens * seeds, 0, 0, responses * config.prompts * seeds)
    anchors = anchor_coalitions(sources)
    rows, responses = sum(map(decode_rows, anchors)) * config.pool_per_anchor, len(anchors) * config.pool_per_anchor
    scored = responses * config.prompts
    read = scored * (len(sources) + 1) * seeds * (TYPICAL_PROMPT_TOKENS + config.max_new_tokens)
    return Cost(rows * config.prompts * config.max_new_tokens, scored, read, scored)


def estimate_seconds(cost: Cost, row_tokens_per_second: float) -> float:
    """Forward passes only (decoding and teacher forcing); the reward models come on top."""
    return (cost.decode_row_tokens + cost.teacher_forced_tokens) / row_tokens_per_second


# ---------------------------------------------------------------------------------------------
# The reward-free utilities


def evaluate_preferences(context: RunContext, store: EvaluationStore, model: Any, tokens: int, reporter: Reporter,
                         replicas: int = 1) -> None:
    """The preference table of the run's adapters on the pairs behind the split's evaluation prompts
    (whatever prompts the evaluation sampled on), replies cut to `tokens`, and again for each further
    training seed; each kept while what produced it is unchanged. The seeds' games are scored in one
    pass: the base and the layers below the adapters once for all of them."""
    pairs = context.split.eval_pairs  # from the sources, or from the trusted held-out file
    keys = {replica: digest({"adapters": {s: digest(context.record(s)) for s in replica_sources(context.sources, replica)},
                             "pairs": [p.pair_id for p in pairs], "tokens": tokens})
            for replica in range(replicas)}
    pending = [replica for replica, key in keys.items() if store.preference_key(replica) != key]
    if not pending:
        return
    heldout = held_out(context.base.tokenizer, pairs, tokens)
    seeds = f" (seed {', '.join(str(r + 1) for r in pending)})" if pending != [0] else ""
    reporter.log(f"reward-free utilities{seeds}: {2 ** len(context.sources)} coalitions on {len(heldout)} held-out pairs")
    games = [(sources, all_coalitions(sources)) for sources in (replica_sources(context.sources, r) for r in pending)]
    tables = games_preferences(model, context.base.tokenizer, heldout, games, context.record(context.sources[0])["beta"],
                               reporter.stage("held-out preference pairs" + seeds))
    for replica, table in zip(pending, tables):
        store.write_preference(table, replica, {"key": keys[replica], "pairs": len(heldout), "tokens": tokens})


# ---------------------------------------------------------------------------------------------
# The job


@contextmanager
def shard_runner(context: RunContext, store: EvaluationStore, engine: Engine, reporter: Reporter) -> Iterator[Runner]:
    """Where shards run: here on `engine`, one after another, or on a Ray cluster's workers, each
    loading its own engine (`evaluation.cluster`)."""
    if context.backend.backend == "ray":
        from .cluster import ray_shard_runner

        with ray_shard_runner(context, store, list(engine.rewards), reporter) as runner:
            yield runner
        return

    def run_here(shards: list[Shard]) -> Iterator[Shard]:
        for shard in shards:
            run_shard(store, shard, engine, reporter)
            yield shard

    yield run_here


def run_evaluate(context: RunContext, config: EvaluationConfig, reporter: Reporter) -> Path:
    """The evaluate job: sample, score with every reward model, and write the utilities after each
    chunk of prompts (a killed job resumes at the next), then the reward-free utilities."""
    from ..lm.adapters import load_adapters  # peft and torch: only when the job runs

    run, sources = context.run, context.sources
    missing = sorted(set(sources) - set(trained_sources(run)))
    if missing:
        raise EvaluationError(f"No trained adapter for {missing}: train them on the Training page (or "
                              f"`python -m valuation train --run {run.path}`) before evaluating.")
    if len(sources) < 2:
        raise EvaluationError("Evaluate at least two sources: pick them on the Sources page and train their adapters.")
    prompts = evaluation_prompts(context, config)
    coalitions = coalitions_to_evaluate(sources, config)
    store = EvaluationStore(run)
    store.write_settings(config, config.resolved_method(len(sources)), coalitions)
    replicas = trained_seeds(run, sources)  # training seeds every source has an adapter for
    store.clear_tables(replicas)

    rewards = reward_models(context, reporter)  # trained here if missing: every worker loads the same ones
    store.write_reward_keys(rewards)
    seeds = f", each under {replicas} training seeds" if replicas > 1 else ""
    reporter.log(f"{config.estimator} evaluation: {len(coalitions)} coalitions of {len(sources)} sources{seeds} on "
                 f"{len(prompts)} prompts ({context.backend.describe()})")
    adapters = every_seed(run, sources)
    engine = Engine(load_adapters(context.base, run, adapters, {a: context.record(a) for a in adapters}),
                    context.base.tokenizer, rewards)
    started = time.monotonic()
    with shard_runner(context, store, engine, reporter) as runner:
        evaluation = Evaluation(context, config, store, prompts, coalitions,
                                {objective: scoring_keys(reward) for objective, reward in rewards.items()}, runner,
                                reporter)
        if config.estimator == "direct":
            evaluate_directly(evaluation, replicas)
        else:
            evaluate_pooled(evaluation, replicas)
    evaluate_preferences(context, store, engine.model, config.max_new_tokens, reporter, replicas)
    cost = evaluation_cost(sources, coalitions, config, replicas)
    if context.backend.backend == "local":  # the estimate is for this machine
        store.record_throughput(cost.decode_row_tokens + cost.teacher_forced_tokens, time.monotonic() - started)
    path = store.table_path("utilities")
    reporter.log(f"utilities written to {path}")
    return path
