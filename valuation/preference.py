"""Reward-free utilities, exact for all 2^n coalitions: held-out preference accuracy and the
implicit reward margin, teacher-forced on held-out pairs (no sampling, no reward model).

For a held-out pair (x, y+, y-) a model M has the implicit reward margin

    m_M = [log M(y+|x) - log pi_0(y+|x)] - [log M(y-|x) - log pi_0(y-|x)]

(reported times beta), and preference accuracy 1[m_M > 0], ties (the base against itself) counting
1/2. The scorer reads every coalition off n + 1 forward passes per response. The evaluate job
writes them for every run, on the split's held-out pairs (those behind its evaluation prompts):

    <run>/evaluation/preference.csv    coalition, prompt (the pair), preference_accuracy, reward_margin
    <run>/evaluation/preference.json   what produced it (adapters, pairs, response length)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .coalitions import BASE, TOKEN_LEVEL_MAX_PLAYERS, all_coalitions, coalition_name
from .pooled import membership
from .samples import evaluation_dir
from .storage import atomic_write_json, atomic_write_text, digest
from .tokens import fit_prompt, reply_ids

if TYPE_CHECKING:
    from .context import RunContext
    from .runs import Run
    from .data import Messages, PreferencePair
    from .progress import Progress, Reporter


@dataclass
class HeldOut:
    prompt_id: str
    messages: Messages
    chosen: list[int]  # token ids, cut to the response length
    rejected: list[int]


def held_out(tokenizer: Any, pairs: list[PreferencePair], tokens: int, prompt_tokens: int | None = None) -> list[HeldOut]:
    """Pairs as token ids, replies cut to `tokens`; a pair with an empty reply is left out. With
    `prompt_tokens`, prompts are cut to their end as training cut them (`tokens.fit_prompt`), and a
    pair whose last user turn alone is longer is left out too."""
    held = []
    for pair in pairs:
        prompt = pair.prompt if prompt_tokens is None else fit_prompt(tokenizer, pair.prompt, prompt_tokens)
        chosen, rejected = reply_ids(tokenizer, pair.chosen)[:tokens], reply_ids(tokenizer, pair.rejected)[:tokens]
        if prompt is not None and chosen and rejected:
            held.append(HeldOut(pair.pair_id, prompt, chosen, rejected))
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
                          progress: Progress | None = None) -> pd.DataFrame:
    """Per (coalition, prompt): preference accuracy and reward margin of all 2^n coalitions of the
    model's adapters `sources`; the empty coalition (coalition '') is the base.

    Up to TOKEN_LEVEL_MAX_PLAYERS sources a coalition is the token-level arithmetic model (what the
    sampler samples); beyond, the sequence-level product of experts, log pi_S = l_0 + sum_{l in S}
    (l_l - l_0) up to log Z_S(x), which cancels in a margin: its margin is the sum of its members'."""
    from .scoring import score_coalitions, score_variants

    coalitions = all_coalitions(sources)
    if len(sources) <= TOKEN_LEVEL_MAX_PLAYERS:
        scored = score_coalitions(model, tokenizer, responses_of(heldout), coalitions, progress=progress)
    else:
        alone = score_variants(model, tokenizer, responses_of(heldout), {m: [(m, 1.0)] for m in [BASE, *sources]},
                               progress=progress).log_likelihoods
        gains = np.array([alone[s] - alone[BASE] for s in sources])  # [n, responses]
        scored = {c: alone[BASE] + row for c, row in zip(coalitions, membership(coalitions, sources).astype(float) @ gains)}
    rows = [{"model": coalition_name(coalition), "prompt": pair.prompt_id, "chosen": values[2 * k],
             "rejected": values[2 * k + 1]}  # responses_of: chosen then rejected
            for coalition, values in scored.items() for k, pair in enumerate(heldout)]
    return preference_utilities(pd.DataFrame(rows), beta, base="").rename(columns={"model": "coalition"})


def evaluate_preferences(context: RunContext, model: Any, tokens: int, reporter: Reporter, replicas: int = 1) -> Path:
    """preference.csv for the run's adapters on the pairs behind the split's evaluation prompts
    (whatever prompts the evaluation sampled on), and its `seed_table` for each further training
    seed; each kept while what produced it is unchanged."""
    from .adapters import read_record
    from .seeds import by_sources, replica_sources, seed_table

    pairs = context.split.eval_pairs  # from the sources, or from the trusted held-out file
    folder = evaluation_dir(context.run)
    heldout = None
    for replica in range(replicas):
        sources = replica_sources(context.sources, replica)
        key = digest({"adapters": {s: digest(read_record(context.run, s)) for s in sources},
                      "pairs": [p.pair_id for p in pairs], "tokens": tokens})
        record = seed_table(folder / "preference.json", replica)
        if record.exists() and json.loads(record.read_text()).get("key") == key:
            continue
        heldout = heldout or held_out(context.base.tokenizer, pairs, tokens)
        seed = f" (seed {replica + 1})" if replica else ""
        reporter.log(f"reward-free utilities{seed}: {2 ** len(sources)} coalitions on {len(heldout)} held-out pairs")
        table = coalition_preferences(model, context.base.tokenizer, heldout, sources, read_record(context.run, sources[0])["beta"],
                                      reporter.stage("held-out preference pairs" + seed))
        atomic_write_text(seed_table(folder / "preference.csv", replica),
                          by_sources(table).to_csv(index=False, float_format="%.6g"))
        atomic_write_json(record, {"key": key, "pairs": len(heldout), "tokens": tokens})
    return folder / "preference.csv"


# -----------------------------------------------------------------------------
# did each adapter learn?

VERDICTS_FILE = "heldout.csv"  # in <run>/adapters/, beside the adapters it judges
VERDICT_PAIRS = 64  # held-out pairs per source: about 3 minutes of 2 CPU cores for a source's first adapter


def adapter_verdicts(context: RunContext, reporter: Reporter, pairs_per_source: int = VERDICT_PAIRS) -> pd.DataFrame:
    """Per trained adapter, on held-out pairs of its own source (the split's eval part; with a trusted
    held-out file, the gold set's evaluation pairs, `splits.judging_pairs`), cut to the lengths it
    was trained on: preference accuracy and implicit reward margin against the base, with 95%
    intervals, and a verdict: 'learned' when the margin's interval lies above 0, 'learned the
    opposite' below it, else 'indistinguishable from the base'. Written to adapters/heldout.csv,
    kept while the adapters are."""
    from .adapters import adapters_dir, load_adapters, read_record, source_and_replica, trained_adapters
    from .scoring import score_variants
    from .splits import judging_pairs

    adapters = trained_adapters(context.run)  # each source's, and those under further seeds
    path = adapters_dir(context.run) / VERDICTS_FILE
    key = digest({a: digest(read_record(context.run, a)) for a in adapters} | {"pairs": pairs_per_source, "cut": "trained"})
    if path.exists() and json.loads((path.with_suffix(".json")).read_text()).get("key") == key:
        return pd.read_csv(path)
    model = load_adapters(context.base, context.run, adapters)
    by_source: dict[str, list[str]] = {}
    for adapter in adapters:
        by_source.setdefault(source_and_replica(adapter)[0], []).append(adapter)
    rows = []
    for source, seeds in by_source.items():  # a source's adapters share their pairs, settings and base pass
        pairs = judging_pairs(source, context.data, context.split, context.config.data)
        record = read_record(context.run, seeds[0])
        prompt_tokens = record["settings"]["max_prompt_length"]
        heldout = held_out(context.base.tokenizer, pairs, record["settings"]["max_length"] - prompt_tokens, prompt_tokens)
        heldout = heldout[:pairs_per_source]
        scored = score_variants(model, context.base.tokenizer, responses_of(heldout),
                                {m: [(m, 1.0)] for m in [BASE, *seeds]},
                                progress=reporter.stage(f"{source}: held-out pairs")).log_likelihoods
        for adapter in seeds:
            gain = scored[adapter] - scored[BASE]  # log pi_l(y) - log pi_0(y), per response
            margin = record["beta"] * (gain[0::2] - gain[1::2])  # chosen, then rejected
            rows.append({"source": adapter, "pairs": len(heldout), **judged(margin)})
    table = pd.DataFrame(rows)
    atomic_write_text(path, table.to_csv(index=False))
    atomic_write_json(path.with_suffix(".json"), {"key": key})
    return table


def judged(margin: np.ndarray) -> dict[str, Any]:
    """Accuracy (Wilson interval) and mean margin (t interval) of an adapter's held-out margins, and the verdict."""
    from .rewards import wilson_interval

    accuracy = float(((margin > 0) + 0.5 * (margin == 0)).mean())
    half = 1.96 * margin.std(ddof=1) / np.sqrt(len(margin)) if len(margin) > 1 else np.inf
    low, high = margin.mean() - half, margin.mean() + half
    verdict = "learned" if low > 0 else "learned the opposite" if high < 0 else "indistinguishable from the base"
    accuracy_low, accuracy_high = wilson_interval(round(accuracy * len(margin)), len(margin))
    return {"accuracy": accuracy, "accuracy_lower": accuracy_low, "accuracy_upper": accuracy_high,
            "margin": float(margin.mean()), "margin_lower": float(low), "margin_upper": float(high), "verdict": verdict}


def read_verdicts(run: Run) -> pd.DataFrame:
    """The verdicts the last train job wrote (empty when none): source, pairs, accuracy, margin, their intervals, verdict."""
    from .adapters import adapters_dir

    path = adapters_dir(run) / VERDICTS_FILE
    return pd.read_csv(path) if path.exists() else pd.DataFrame()
