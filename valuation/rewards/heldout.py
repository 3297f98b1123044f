"""Reward-free utilities, exact for all 2^n coalitions: held-out preference accuracy and the
implicit reward margin, teacher-forced on held-out pairs (no sampling, no reward model).

For a held-out pair (x, y+, y-) a model M has the implicit reward margin

    m_M = [log M(y+|x) - log pi_0(y+|x)] - [log M(y-|x) - log pi_0(y-|x)]

(reported times beta), and preference accuracy 1[m_M > 0], ties (the base against itself) counting
1/2. The scorer reads every coalition off n + 1 forward passes per response. The evaluate job
computes them for every run (`evaluation.job.evaluate_preferences`); the train job judges each adapter by its own
margin (`training.verdicts`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..games.coalitions import BASE, TOKEN_LEVEL_MAX_PLAYERS, Coalition, all_coalitions, coalition_name, membership
from ..lm.tokens import reply_ids
from .cards import wilson_interval

if TYPE_CHECKING:
    from ..data.preferences import Messages, PreferencePair
    from ..progress import Progress


@dataclass
class HeldOut:
    prompt_id: str
    messages: Messages
    chosen: list[int]  # token ids, cut to the response length
    rejected: list[int]


def held_out(tokenizer: Any, pairs: list[PreferencePair], tokens: int) -> list[HeldOut]:
    """Pairs as token ids, replies cut to `tokens`; a pair with an empty reply is left out."""
    held = []
    for pair in pairs:
        chosen, rejected = reply_ids(tokenizer, pair.chosen)[:tokens], reply_ids(tokenizer, pair.rejected)[:tokens]
        if chosen and rejected:
            held.append(HeldOut(pair.pair_id, pair.prompt, chosen, rejected))
    return held


def responses_of(heldout: list[HeldOut]) -> list[tuple[Messages, list[int]]]:
    """Each pair's two responses, chosen then rejected: what the scorer scores."""
    return [(h.messages, reply) for h in heldout for reply in (h.chosen, h.rejected)]


def preference_utilities(log_likelihoods: pd.DataFrame, beta: float, base: str = "base") -> pd.DataFrame:
    """Per (model, prompt): preference accuracy and implicit reward margin relative to the base.

    `log_likelihoods` has columns model, prompt, chosen, rejected, with the base under model `base`.
    """
    base_rows = log_likelihoods[log_likelihoods.model == base].set_index("prompt")
    table = log_likelihoods.join(base_rows[["chosen", "rejected"]], on="prompt", rsuffix="_base")
    margin = (table.chosen - table.chosen_base) - (table.rejected - table.rejected_base)
    return pd.DataFrame({"model": table.model, "prompt": table.prompt,
                         "preference_accuracy": np.where(margin > 0, 1.0, np.where(margin == 0, 0.5, 0.0)),
                         "reward_margin": beta * margin})


def coalition_preferences(model: Any, tokenizer: Any, heldout: list[HeldOut], sources: list[str], beta: float,
                          progress: Progress | None = None, coalitions: list[Coalition] | None = None) -> pd.DataFrame:
    """Per (coalition, prompt): preference accuracy and reward margin of all 2^n coalitions of the
    model's adapters `sources` (or of `coalitions` of them, the empty one among them); the empty
    coalition (coalition '') is the base.

    Up to TOKEN_LEVEL_MAX_PLAYERS sources a coalition is the token-level arithmetic model (what the
    sampler samples); beyond, the sequence-level product of experts, log pi_S = l_0 + sum_{l in S}
    (l_l - l_0) up to log Z_S(x), which cancels in a margin: its margin is the sum of its members'."""
    game = (sources, all_coalitions(sources) if coalitions is None else coalitions)
    return games_preferences(model, tokenizer, heldout, [game], beta, progress)[0]


def games_preferences(model: Any, tokenizer: Any, heldout: list[HeldOut], games: list[tuple[list[str], list[Coalition]]],
                      beta: float, progress: Progress | None = None) -> list[pd.DataFrame]:
    """`coalition_preferences` of several games at once, each given by its adapters and coalitions
    (one per training seed, or a game before and after one player changed): every response is read
    in one pass for all of them, so the base and the layers below the adapters are computed once."""
    from ..lm.scoring import score_coalitions, score_variants

    token_level = [len(sources) <= TOKEN_LEVEL_MAX_PLAYERS for sources, _ in games]
    by_tokens = [c for (_, coalitions), token in zip(games, token_level) if token for c in coalitions]
    experts = list(dict.fromkeys(m for (sources, _), token in zip(games, token_level) if not token for m in sources))
    scored = score_coalitions(model, tokenizer, responses_of(heldout), list(dict.fromkeys(by_tokens)),
                              progress=progress) if by_tokens else {}
    alone = score_variants(model, tokenizer, responses_of(heldout), {m: [(m, 1.0)] for m in [BASE, *experts]},
                           progress=progress).log_likelihoods if experts else {}
    tables = []
    for (sources, coalitions), token in zip(games, token_level):
        if token:
            game = {c: scored[c] for c in coalitions}
        else:
            gains = np.array([alone[s] - alone[BASE] for s in sources])  # [n, responses]
            game = {c: alone[BASE] + row for c, row in zip(coalitions, membership(coalitions, sources).astype(float) @ gains)}
        tables.append(coalition_utilities({coalition_name(c): values for c, values in game.items()}, heldout, beta))
    return tables


def coalition_utilities(log_likelihoods: Mapping[str, np.ndarray], heldout: list[HeldOut], beta: float) -> pd.DataFrame:
    """Per (coalition, prompt): preference accuracy and reward margin, from each coalition's
    log-likelihoods of `responses_of(heldout)`; the base is coalition ''."""
    rows = [{"model": coalition, "prompt": pair.prompt_id, "chosen": values[2 * k],
             "rejected": values[2 * k + 1]}  # responses_of: chosen then rejected
            for coalition, values in log_likelihoods.items() for k, pair in enumerate(heldout)]
    return preference_utilities(pd.DataFrame(rows), beta, base="").rename(columns={"model": "coalition"})


def judged(margin: np.ndarray, enough: int = 0) -> dict[str, Any]:
    """Accuracy (Wilson interval) and mean margin (t interval) of an adapter's held-out margins, and
    the verdict; one that finds no effect on fewer than `enough` pairs says they were too few."""
    accuracy = float(((margin > 0) + 0.5 * (margin == 0)).mean())
    half = 1.96 * margin.std(ddof=1) / np.sqrt(len(margin)) if len(margin) > 1 else np.inf
    low, high = margin.mean() - half, margin.mean() + half
    verdict = "learned" if low > 0 else "learned the opposite" if high < 0 else "indistinguishable from the base"
    if verdict.startswith("indistinguishable") and len(margin) < enough:
        verdict += f" (only {len(margin)} pairs: too few to tell a weak effect from none)"
    accuracy_low, accuracy_high = wilson_interval(round(accuracy * len(margin)), len(margin))
    return {"accuracy": accuracy, "accuracy_lower": accuracy_low, "accuracy_upper": accuracy_high,
            "margin": float(margin.mean()), "margin_lower": float(low), "margin_upper": float(high), "verdict": verdict}
