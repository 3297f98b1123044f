"""The coalition game: which coalitions, on which prompts, and their utilities v(S), the mean
reward of coalition S's model's responses. Two estimators give the same game:

- direct: every coalition samples `samples` responses per prompt (2^n x prompts x samples responses);
- pooled: each prompt gets one pool of responses from a few anchor coalitions, and every
  coalition's utility is read off it by importance weighting (`valuation.pooled`): inference grows
  with n instead of 2^n. Coalitions the pool reaches poorly (effective sample size below a floor)
  are sampled directly instead.

The evaluate job is a plain function from a config and the run's files to more files in the run
(stored generations: `valuation.samples`):

    <run>/evaluation/settings.json        the EvaluationConfig of the last evaluation
    <run>/evaluation/coalitions.json      the coalitions it values (all 2^n, or those a seeded
                                          permutation sample visits)
    <run>/evaluation/utilities.csv        coalition, prompt, one column per objective: the game
    <run>/evaluation/utilities-sequence.csv   (pooled) the same under the sequence-level target
    <run>/evaluation/estimation.csv       (pooled) per coalition and target: how it was estimated, its ESS
    <run>/evaluation/preference.csv       reward-free utilities on held-out pairs (valuation.preference)

Every coalition answers the same prompts with the same seeds (common random numbers), so
differences between coalitions come from the coalitions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .coalitions import EXACT_MAX_PLAYERS, Coalition, all_coalitions, coalition_name, decode_rows
from .config import ConfigError, helped, to_dict
from .errors import UserError
from .monte_carlo import permutation_shapley
from .estimators import Engine, evaluate_pooled, sample_directly, shard_runner, write_table
from .pooled import anchor_coalitions
from .preference import evaluate_preferences
from .samples import evaluation_dir, read_jsonl, record_throughput, scoring_keys
from .shapley import CachedGame
from .splits import EvalPrompt
from .storage import atomic_write_json

if TYPE_CHECKING:  # the engine imports torch: loaded only when sampling, so the CLI starts fast
    from .arithmetic import SamplingSettings
    from .context import RunContext
    from .progress import Reporter

ESTIMATORS = ("pooled", "direct")
POOLED_EXACT_MAX_PLAYERS = 16  # 2^16 coalitions weighed from one pool: seconds (bench/pooled_vs_direct.py)


class EvaluationError(UserError):
    """An evaluation that cannot run; the message says what to change."""


@dataclass
class EvaluationConfig:
    estimator: str = helped("pooled", "'pooled': one pool of responses per prompt from the anchor coalitions (the "
                                      "base, each source, all sources), every coalition by importance weighting; "
                                      "'direct': every coalition sampled on its own.")
    prompts: int = helped(16, "Held-out evaluation prompts to answer (taken evenly across sources).")
    prompts_file: str = helped("", "A JSONL of your own prompts ({prompt_id, messages} per line) instead of the "
                                   "run's held-out split (the demo run uses the project's own prompts).")
    samples: int = helped(2, "Responses per prompt of each coalition sampled directly (direct, and the pooled fallback).")
    pool_per_anchor: int = helped(4, "Pooled: responses per prompt from each anchor; the pool holds (n + 2) x this.")
    ess_floor: float = helped(2.0, "Pooled: a coalition whose effective sample size, averaged over prompts, is below "
                                   "this is sampled directly instead (2 matches the default direct samples).")
    max_new_tokens: int = helped(48, "Most tokens per response.")
    temperature: float = helped(0.7, "Sampling temperature of the combined distribution (0: greedy, direct only).")
    top_p: float = helped(1.0, "Nucleus sampling after combining (1: off). Pooled weights need 1: a truncated "
                               "target can hold tokens no anchor proposes.")
    seed: int = helped(0, "Seed of the draws: the same for every coalition (common random numbers).")
    method: str = helped("auto", "'exact' (all 2^n coalitions), 'permutation' (those sampled permutations visit), "
                                 f"or 'auto' (exact up to {EXACT_MAX_PLAYERS} sources, {POOLED_EXACT_MAX_PLAYERS} pooled).")
    permutations: int = helped(200, "With 'permutation': permutations sampled (antithetic pairs).")
    chunk_prompts: int = helped(4, "Prompts per unit of work: a relaunch resumes at the first missing chunk.")
    max_batch_rows: int = helped(64, "Memory budget: model rows decoded together.")

    def validate(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"evaluation.estimator={self.estimator!r}: use pooled or direct.")
        if min(self.prompts, self.samples, self.chunk_prompts, self.pool_per_anchor) < 1:
            raise ConfigError("evaluation: prompts, samples, pool_per_anchor and chunk_prompts must each be at least 1.")
        if self.estimator == "pooled" and (self.top_p < 1 or self.temperature == 0):
            raise ConfigError("evaluation: pooled weights need the untruncated model: set top_p to 1 and a positive "
                              "temperature, or use the direct estimator.")
        if self.ess_floor < 0:
            raise ConfigError(f"evaluation.ess_floor={self.ess_floor}: use 0 (never fall back) or more.")
        if self.method not in ("auto", "exact", "permutation"):
            raise ConfigError(f"evaluation.method={self.method!r}: use auto, exact or permutation.")
        if self.permutations < 4:  # two antithetic pairs: the least that gives the values a standard error
            raise ConfigError(f"evaluation.permutations={self.permutations}: sample at least 4 (two antithetic pairs).")
        self.sampling().validate()

    def sampling(self) -> SamplingSettings:
        from .arithmetic import SamplingSettings

        return SamplingSettings(temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                                seed=self.seed, max_batch_rows=self.max_batch_rows)

    def resolved_method(self, n_sources: int) -> str:
        """'auto': every coalition while it is affordable: up to EXACT_MAX_PLAYERS sources sampled
        directly, up to POOLED_EXACT_MAX_PLAYERS pooled (a coalition costs n numbers a response)."""
        if self.method != "auto":
            return self.method
        limit = POOLED_EXACT_MAX_PLAYERS if self.estimator == "pooled" else EXACT_MAX_PLAYERS
        return "exact" if n_sources <= limit else "permutation"


PRESETS = {
    # 2 CPU cores: 16 prompts, pools of 4 per anchor (24 responses a prompt at n = 4) of 48 tokens.
    "quick": EvaluationConfig(),
    # A GPU: the paper's scale of held-out prompts and longer answers.
    "paper": EvaluationConfig(prompts=200, samples=4, pool_per_anchor=8, max_new_tokens=256, chunk_prompts=16,
                              max_batch_rows=512),
}


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
    prompts = read_prompts_file(Path(config.prompts_file)) if config.prompts_file else context.split.eval_prompts
    if len(prompts) < config.prompts:
        raise EvaluationError(f"Only {len(prompts)} evaluation prompts are available, fewer than the {config.prompts} "
                              "asked for: lower the number of prompts, or raise 'Evaluation prompts' on the Sources page.")
    return prompts[: config.prompts]


def read_prompts_file(path: Path) -> list[EvalPrompt]:
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
# The job


def run_evaluate(context: RunContext, config: EvaluationConfig, reporter: Reporter) -> Path:
    """The evaluate job: sample, score with every reward model, and write utilities.csv after each
    chunk of prompts (a killed job resumes at the next)."""
    from .adapters import load_adapters, trained_seeds, trained_sources
    from .rewards import reward_models
    from .seeds import by_sources, every_seed, on_seed, remove_seed_tables, seed_table

    run, sources = context.run, context.sources
    missing = sorted(set(sources) - set(trained_sources(run)))
    if missing:
        raise EvaluationError(f"No trained adapter for {missing}: train them on the Training page (or "
                              f"`python -m valuation train --run {run.path}`) before evaluating.")
    if len(sources) < 2:
        raise EvaluationError("Evaluate at least two sources: pick them on the Sources page and train their adapters.")
    prompts = evaluation_prompts(context, config)
    coalitions = coalitions_to_evaluate(sources, config)
    folder = evaluation_dir(run)
    # The method as resolved: the Shapley page values exactly the coalitions this evaluation measured.
    atomic_write_json(folder / "settings.json", to_dict(config) | {"method": config.resolved_method(len(sources))})
    atomic_write_json(folder / "coalitions.json", [coalition_name(c) for c in coalitions])
    for stale in ("utilities-sequence.csv", "estimation.csv"):  # from an earlier evaluation of another kind
        (folder / stale).unlink(missing_ok=True)
    replicas = trained_seeds(run, sources)  # training seeds every source has an adapter for
    remove_seed_tables(folder, replicas)

    rewards = reward_models(context, reporter)  # trained here if missing: every worker loads the same ones
    reward_keys = {objective: scoring_keys(reward) for objective, reward in rewards.items()}
    seeds = f", each under {replicas} training seeds" if replicas > 1 else ""
    reporter.log(f"{config.estimator} evaluation: {len(coalitions)} coalitions of {len(sources)} sources{seeds} on "
                 f"{len(prompts)} prompts ({context.backend.describe()})")
    engine = Engine(load_adapters(context.base, run, every_seed(run, sources)), context.base.tokenizer, rewards)
    started = time.monotonic()
    with shard_runner(context, engine, reporter) as runner:
        if config.estimator == "direct":
            for replica in range(replicas):  # a further seed's coalitions are sampled again
                table = sample_directly(context, runner, config, prompts, on_seed(coalitions, replica), reward_keys,
                                        write=replica == 0)
                if replica:
                    write_table(run, seed_table(folder / "utilities.csv", replica).name, by_sources(table))
        else:
            evaluate_pooled(context, runner, config, prompts, coalitions, reward_keys, reporter, replicas)
    evaluate_preferences(context, engine.model, config.max_new_tokens, reporter, replicas)  # the reward-free utilities
    cost = evaluation_cost(sources, coalitions, config, replicas)
    if context.backend.backend == "local":  # the estimate is for this machine
        record_throughput(run, cost.decode_row_tokens + cost.teacher_forced_tokens, time.monotonic() - started)
    reporter.log(f"utilities written to {folder / 'utilities.csv'}")
    return folder / "utilities.csv"
