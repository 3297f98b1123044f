"""The evaluate job's settings: one dataclass and its presets (`job` runs it, `store` records it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import ConfigError, helped
from ..errors import UserError
from ..games.coalitions import EXACT_MAX_PLAYERS, resolved_method

if TYPE_CHECKING:
    from ..lm.arithmetic import SamplingSettings

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
    max_batch_rows: int = helped(64, "Memory budget: model rows decoded together (in the sampler, layers that a "
                                     "group's rows share count once).")

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
        from ..lm.arithmetic import SamplingSettings  # torch: loaded only when sampling, so the CLI starts fast

        return SamplingSettings(temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                                seed=self.seed, max_batch_rows=self.max_batch_rows)

    def resolved_method(self, n_sources: int) -> str:
        """'auto': every coalition while it is affordable: up to EXACT_MAX_PLAYERS sources sampled
        directly, up to POOLED_EXACT_MAX_PLAYERS pooled (a coalition costs n numbers a response)."""
        limit = POOLED_EXACT_MAX_PLAYERS if self.estimator == "pooled" else EXACT_MAX_PLAYERS
        return resolved_method(self.method, n_sources, limit)


PRESETS = {
    # 2 CPU cores: 16 prompts, pools of 4 per anchor (24 responses a prompt at n = 4) of 48 tokens.
    "quick": EvaluationConfig(),
    # A GPU: the paper's scale of held-out prompts and longer answers.
    "paper": EvaluationConfig(prompts=200, samples=4, pool_per_anchor=8, max_new_tokens=256, chunk_prompts=16,
                              max_batch_rows=512),
}
