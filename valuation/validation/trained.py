"""Trained models against the arithmetic: sequential DPO in both orders, DPO on the pooled data,
and the epochs ablation (the sequential comparison after longer training).

Models compared, per coalition S of two or more sources: arithmetic(S) from the solo adapters, and
either sequential DPO in both orders (the stage adapters summed in weight space, which is what
merging earlier stages into the weights did during training) or one adapter on S's pooled pairs.
The base and each source alone are scored too: they are every method's small coalitions.

    <folder>/<kind>-e<E>.scores.csv   model, prompt, response, log_likelihood (teacher-forced)
    <folder>/<kind>-e<E>.kl.csv       reference, model, prompt, response, kl (summed over tokens), tokens
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ..lm.adapters import load_adapters
from ..games.coalitions import BASE, all_coalitions, formula_terms
from ..rewards.heldout import HeldOut, responses_of
from ..storage import atomic_write_text
from ..training.pairs import fitting_pairs
from .inputs import Inputs, adapter_name, train_adapter

if TYPE_CHECKING:
    from ..data.preferences import PreferencePair
    from ..progress import Reporter
    from ..lm.scoring import Scores, Variant

Models = dict[tuple[str, ...], list[tuple[str, list[str]]]]  # coalition -> [(label, adapters summed in weight space)]


def orders_of(coalition: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The two training orders compared for order invariance: as given and reversed."""
    return [coalition, coalition[::-1]]


def stage_names(epochs: float, order: tuple[str, ...]) -> list[str]:
    """Adapters of sequential DPO in this order: a alone, then a>b on top of it, then a>b>c..."""
    return [adapter_name(epochs, ">".join(order[:k])) for k in range(1, len(order) + 1)]


def train_models(inputs: Inputs, pairs: dict[str, list[PreferencePair]], epochs: float, kind: str,
                 reporter: Reporter) -> Models:
    """Train (or find) every adapter `kind` needs at `epochs`: per coalition, its trained models."""
    models: Models = {}
    for coalition in (tuple(sorted(c)) for c in all_coalitions(sorted(pairs)) if len(c) >= 2):
        if kind == "sequential":
            models[coalition] = []
            for order in orders_of(coalition):
                stages = stage_names(epochs, order)
                for k in range(1, len(order)):
                    train_adapter(inputs, stages[k], pairs[order[k]], epochs, reporter, below=stages[:k])
                models[coalition].append((f"sequential:{'>'.join(order)}", stages))
        else:
            name = adapter_name(epochs, "+".join(coalition))
            train_adapter(inputs, name, [p for s in coalition for p in pairs[s]], epochs, reporter)
            models[coalition] = [(f"pooled:{'+'.join(coalition)}", [name])]
    return models


def compare_trained(inputs: Inputs, sources: list[str], epochs: float, kind: str, reporter: Reporter) -> Path:
    """Train what `kind` ('sequential' or 'pooled') needs at `epochs`, score it against the arithmetic."""
    from ..lm.merging import merged_coalition_adapter
    from ..lm.scoring import score_variants

    scores_file = inputs.folder / f"{kind}-e{epochs:g}.scores.csv"
    if scores_file.exists():
        reporter.log(f"{scores_file.name}: already computed, skipped")
        return scores_file
    pairs = {s: fitting_pairs(inputs.train[s], inputs.tokenizer, inputs.training.max_prompt_length, inputs.config.max_pairs)
             for s in sources}
    solo = {s: adapter_name(epochs, s) for s in sources}
    for source in sources:
        train_adapter(inputs, solo[source], pairs[source], epochs, reporter)
    trained = train_models(inputs, pairs, epochs, kind, reporter)

    reporter.log(f"scoring {kind} models after {epochs:g} epochs on {len(inputs.heldout)} held-out pairs")
    loaded = inputs.context.fresh_model()  # weight-space merges join this copy, never the shared base
    needed = [*solo.values(), *(name for models in trained.values() for _, names in models for name in names)]
    model = load_adapters(loaded, inputs.adapters, list(dict.fromkeys(needed)))
    variants: dict[str, Variant] = {"base": [(BASE, 1.0)], **{f"solo:{s}": [(solo[s], 1.0)] for s in sources}}
    kl_pairs = []
    for coalition, models in trained.items():
        arithmetic = f"arithmetic:{'+'.join(coalition)}"
        variants[arithmetic] = formula_terms(solo[s] for s in coalition)
        for label, names in models:
            variants[label] = [(merged_coalition_adapter(model, names), 1.0)]
            kl_pairs += [(arithmetic, label), (label, arithmetic)]
        if kind == "sequential":  # order invariance: the two orders against each other
            first, second = (label for label, _ in models)
            kl_pairs += [(first, second), (second, first)]
    scores = score_variants(model, loaded.tokenizer, responses_of(inputs.heldout), variants, kl_pairs,
                            progress=reporter.stage(f"scoring {kind} e{epochs:g}"))
    log_likelihoods, kls = score_tables(inputs.heldout, scores)
    atomic_write_text(inputs.folder / f"{kind}-e{epochs:g}.kl.csv", kls.to_csv(index=False))
    atomic_write_text(scores_file, log_likelihoods.to_csv(index=False))  # last: its presence means both are done
    return scores_file


def score_tables(heldout: list[HeldOut], scores: Scores) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The scorer's arrays as tables, one row per (model or pair of models, prompt, response)."""
    where = [(h.prompt_id, response, len(reply)) for h in heldout
             for response, reply in (("chosen", h.chosen), ("rejected", h.rejected))]  # responses_of's order
    log_likelihoods = [{"model": model, "prompt": prompt, "response": response, "log_likelihood": float(value)}
                       for model, values in scores.log_likelihoods.items()
                       for (prompt, response, _), value in zip(where, values)]
    kls = [{"reference": reference, "model": model, "prompt": prompt, "response": response, "kl": float(value),
            "tokens": tokens}
           for (reference, model), values in scores.kls.items()
           for (prompt, response, tokens), value in zip(where, values)]
    return pd.DataFrame(log_likelihoods), pd.DataFrame(kls)
