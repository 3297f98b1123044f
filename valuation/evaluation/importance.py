"""Pooled evaluation: every coalition's utility from one pool of responses, by importance weighting.

Direct evaluation samples each of the 2^n coalitions on its own. Pooled evaluation samples one
pool per prompt x and reads every coalition's expected reward off it, because the teacher-forced
scorer gives the exact log-probability of any response under any coalition:

1. Proposal. M responses from a stratified mixture of "anchor" coalitions A_j (the base, each
   singleton, the grand coalition), an equal share a_j of the draws each:

       q(y | x) = sum_j a_j pi~_{A_j}(y | x)

   where pi~ is the token-level arithmetic model at the sampling temperature, untruncated (top-p
   1, so the proposal covers every target's support).
2. Targets, each known up to a constant that cancels below:
   - token level, what the sampler and the Playground sample:
         log pi~_S(y) = sum_t log softmax(z_S,t / T)[y_t],  z_S,t = sum_m c_Sm log pi_m(. | x, y<t)
   - sequence level, DPO's product of experts (the theory's exact form):
         log pi_S(y) = [l_0(y) + sum_{l in S} (l_l(y) - l_0(y))] / T - log Z_S(x),  l_m(y) = log pi_m(y | x)
3. Self-normalised weights per prompt, w_Si = softmax_i(log target_S(y_i) - log q(y_i)), give

       v_x(S) = sum_i w_Si r(y_i)        ESS_x(S) = 1 / sum_i w_Si^2

   with one reward call per response, whatever the number of coalitions.

The sequence-level target costs n numbers per (coalition, response): a matrix product, done in
blocks of coalitions so that 2^16 of them and more fit in memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..games.coalitions import Coalition

BLOCK_FLOATS = 2**22  # coalitions x responses weighted at once (32 MiB of float64)


def anchor_coalitions(sources: Sequence[str]) -> list[Coalition]:
    """The proposal's anchors: the base, each source alone, and all of them (each once)."""
    anchors = [frozenset(), *(frozenset([s]) for s in sources), frozenset(sources)]
    return list(dict.fromkeys(anchors))


def proposal_log_density(anchor_log_probs: np.ndarray) -> np.ndarray:
    """log q(y_i) of the equal-share mixture, from each anchor's log pi~_A(y_i): [anchors, M] -> [M]."""
    return _logsumexp(anchor_log_probs, axis=0) - np.log(len(anchor_log_probs))


def sequence_log_targets(model_log_likelihoods: np.ndarray, membership: np.ndarray, temperature: float) -> np.ndarray:
    """Unnormalised log pi_S(y_i) of the product of experts, tempered: [coalitions, M].

    model_log_likelihoods: [1 + n, M], row 0 the base's l_0(y_i), row l the adapter's l_l(y_i);
    membership: [coalitions, n] booleans.
    """
    base, adapters = model_log_likelihoods[0], model_log_likelihoods[1:]
    return (base + membership.astype(float) @ (adapters - base)) / temperature


def weighted_utilities(log_targets: np.ndarray, log_proposal: np.ndarray, rewards: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Self-normalised importance estimates for one prompt's pool.

    log_targets [coalitions, M], log_proposal [M], rewards [M, objectives] -> (utilities
    [coalitions, objectives], effective sample sizes [coalitions]).
    """
    log_weights = log_targets - log_proposal
    weights = np.exp(log_weights - log_weights.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    return weights @ rewards, 1.0 / (weights ** 2).sum(axis=1)


def sequence_utilities(model_log_likelihoods: np.ndarray, members: np.ndarray, log_proposal: np.ndarray,
                       rewards: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """The sequence-level utilities and ESS of the coalitions `members` describes, for one pool,
    computed in blocks of coalitions so that memory stays bounded however many there are."""
    block = max(1, BLOCK_FLOATS // len(log_proposal))
    utilities, ess = np.empty((len(members), rewards.shape[1])), np.empty(len(members))
    for first in range(0, len(members), block):
        targets = sequence_log_targets(model_log_likelihoods, members[first:first + block], temperature)
        utilities[first:first + block], ess[first:first + block] = weighted_utilities(targets, log_proposal, rewards)
    return utilities, ess


def _logsumexp(values: np.ndarray, axis: int) -> np.ndarray:
    top = values.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(values - top).sum(axis=axis, keepdims=True))).squeeze(axis)
