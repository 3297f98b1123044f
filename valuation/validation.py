"""Validation: does the coalition arithmetic hold on this run? The paper's checks as plain functions.

The method's claim: a coalition built by adding log-probabilities,

    log pi_S = sum_{l in S} log pi_l + (1 - |S|) log pi_0 - log Z,

behaves like a model trained on S's data. DPO's optimum is pi = pi_ref exp(r / beta) / Z, so under
*sequential* DPO (train on a; then on b with the a-model as the reference) the rewards add and the
arithmetic is exact at convergence. Training on the pooled data is what a practitioner would do,
and it is not the same thing: two sources with the same preferences give r pooled but 2r by
arithmetic. The experiments, each a function from the run's files (and a ValidationConfig) to files:

    sequential   arithmetic vs sequential DPO in both orders: KL per token, utility gaps, order gap
    pooled       arithmetic vs one adapter trained on the pooled data; Shapley by each method
    epochs       the sequential comparison after 1, 2, 4 (, 8) epochs: error against training
    accuracy     held-out preference accuracy of all 2^n coalitions of the run's own adapters,
                 from n+1 teacher-forced passes per pair: a cheap, exact utility
    scaling      8 sources: exact Shapley over 256 coalitions vs permutation Monte Carlo

Utilities here are teacher-forced, never sampled: for a held-out pair (x, y+, y-) a model M has the
implicit reward margin  m_M = [log M(y+|x) - log pi_0(y+|x)] - [log M(y-|x) - log pi_0(y-|x)]
(reported times beta) and preference accuracy 1[m_M > 0], ties (the base against itself) counting
1/2. Held-out pairs are those behind the run's evaluation prompts (the split's eval part, disjoint
by prompt from every training pair), responses cut to `response_tokens`.

    <run>/validation/accuracy_utilities.csv         coalition, prompt, preference_accuracy, reward_margin
    <run>/validation/<preset>/settings.json         the settings these results were made with
    <run>/validation/<preset>/adapters/<name>/      adapters trained for validation (adapters.py layout):
        e1:a            source a alone, 1 epoch        e1:a+b   the pooled data of a and b
        e1:a>b          b trained with e1:a merged into the weights (the second stage of sequential DPO)
    <run>/validation/<preset>/<experiment>-e<E>.scores.csv   log-likelihood of each held-out response per model
    <run>/validation/<preset>/<experiment>-e<E>.kl.csv       per-token KL between pairs of models
    <run>/validation/<preset>/scaling_utilities.csv, scaling.csv   the n = 8 game and Monte Carlo errors

Every adapter and file is written atomically and skipped when present, so a killed job resumes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from itertools import combinations, islice, zip_longest
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .config import ConfigError, from_dict, helped, to_dict
from .errors import UserError
from .values import utilities_path
from .runs import Run
from .shapley import UtilityTable, coalition_name, exact_shapley, permutation_shapley
from .storage import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from .data import PreferencePair
    from .jobs import JobSession

EXPERIMENTS = ("sequential", "pooled", "epochs", "accuracy", "scaling")
BASE = "__base__"  # PEFT's name for the base model in a mixed batch (arithmetic.BASE)


class ValidationError(UserError):
    """A validation that cannot run; the message says what to change."""


@dataclass
class ValidationConfig:
    sources: list[str] = helped([], "Sources of the training experiments (every coalition of two or more is compared); "
                                    "empty: the run's first `n_sources`.")
    n_sources: int = helped(2, "Sources taken when none are named.")
    training_preset: str = helped("quick", "Training settings of every validation adapter (the training presets).")
    max_pairs: int = helped(16, "Training pairs per source; a pooled adapter trains on its members' pairs together.")
    epochs: list[float] = helped([1.0, 2.0, 4.0], "Epochs of the convergence ablation; the first is also used by "
                                                  "the sequential and pooled comparisons.")
    heldout_pairs: int = helped(32, "Held-out pairs (eval part, prompts within the training length cap) on which trained "
                                    "models are compared.")
    response_tokens: int = helped(48, "Held-out responses are cut to this many tokens for teacher-forced scoring.")
    scaling_players: int = helped(8, "Sources of the scaling game: each run source cut into equal parts by a seeded hash.")
    scaling_pairs: int = helped(8, "Training pairs per scaling source (1 epoch).")
    permutations: list[int] = helped([100, 500, 1000], "Monte Carlo budgets (permutations) compared with exact Shapley.")
    repeats: int = helped(20, "Monte Carlo runs per budget, with different seeds: errors are averaged over them.")

    def validate(self) -> None:
        if self.n_sources < 2 and len(self.sources) < 2:
            raise ConfigError("validation needs at least 2 sources to form a coalition.")
        if not self.epochs or min(self.epochs) <= 0:
            raise ConfigError("validation.epochs must list positive numbers of epochs, e.g. 1 2 4.")
        if min(self.max_pairs, self.heldout_pairs, self.response_tokens, self.scaling_pairs, self.repeats, self.scaling_players) < 1:
            raise ConfigError("validation counts (pairs, tokens, players, repeats) must be at least 1.")
        if not self.permutations or min(self.permutations) < 2:
            raise ConfigError("validation.permutations must list budgets of at least 2 permutations.")


# `quick`: one working session on 2 CPU cores (2 sources, 16 pairs, epochs 1/2/4, 8 scaling sources of 8 pairs;
# measured: 55 minutes on 2 cores shared with a training and an evaluation job, a relaunch of a finished one 6 s).
# `gpu`: 3 sources (Shapley over sequential and pooled coalitions too), longer training, epochs to 8.
PRESETS: dict[str, ValidationConfig] = {
    "quick": ValidationConfig(),
    "gpu": ValidationConfig(n_sources=3, training_preset="paper", max_pairs=256, epochs=[1.0, 2.0, 4.0, 8.0],
                            response_tokens=128, scaling_pairs=128, repeats=50),
}


def preset_config(preset: str, **overrides: Any) -> ValidationConfig:
    if preset not in PRESETS:
        raise ConfigError(f"Unknown validation preset {preset!r}: use one of {sorted(PRESETS)}.")
    given = {name: value for name, value in overrides.items() if value is not None}
    config = from_dict(ValidationConfig, {**to_dict(PRESETS[preset]), **given}, "validation")
    config.validate()
    return config


def validation_dir(run: Run, preset: str | None = None) -> Path:
    return run.path / "validation" / (preset or "")


def accuracy_path(run: Run) -> Path:
    return validation_dir(run) / "accuracy_utilities.csv"


def adapter_name(epochs: float, members: str) -> str:
    """'e1:a', 'e2:a>b', 'e0p5:a+b': epochs and what was trained (no '.', PEFT's module names forbid it)."""
    return f"e{epochs:g}:{members}".replace(".", "p")


# ---------------------------------------------------------------- the run's data


@dataclass
class HeldOut:
    prompt_id: str
    messages: list[dict[str, str]]
    chosen: list[int]  # token ids, cut to response_tokens
    rejected: list[int]


@dataclass
class Inputs:
    """What every experiment reads from the run: its training pairs and two held-out sets.

    `heldout`: short pairs of the split's eval part (prompts within the training cap, taken evenly
    across sources), for comparing trained models: teacher-forced passes cost as many rows as models.
    `evaluation`: the pairs behind the run's evaluation prompts, whatever their length, so that the
    accuracy utility lines up, prompt by prompt, with the evaluation's utilities.
    """

    run: Run
    train: dict[str, list["PreferencePair"]]
    heldout: list[HeldOut]
    evaluation: list[HeldOut]
    tokenizer: Any


def read_inputs(run: Run, config: "ValidationConfig") -> Inputs:
    from .arithmetic import response_ids
    from .data import load_preferences
    from .models import load_tokenizer, model_path
    from .splits import part_of, split_preferences
    from .training import preset_config as training_config

    run_config = run.load_config()
    data = load_preferences(run_config.data)
    split = split_preferences(data, run_config.data)
    tokenizer = load_tokenizer(model_path(run_config.model.name))

    def held_out(pair: "PreferencePair") -> HeldOut:
        chosen, rejected = (response_ids(tokenizer, text)[:config.response_tokens] for text in (pair.chosen, pair.rejected))
        return HeldOut(pair.pair_id, pair.prompt, chosen, rejected)

    # The eval part is disjoint by prompt from every training pair (splits.py).
    eval_part = {s: [p for p in data.pairs if p.source == s and part_of(p, run_config.data) == "eval"] for s in split.train}
    per_source = -(-config.heldout_pairs // len(eval_part))
    cap = training_config(config.training_preset).max_prompt_length
    short = [fitting_pairs(pairs, tokenizer, cap, per_source) for pairs in eval_part.values()]
    by_id = {pair.pair_id: pair for pair in data.pairs}
    heldout, evaluation = ([h for h in map(held_out, pairs) if h.chosen and h.rejected] for pairs in (
        [p for row in zip_longest(*short) for p in row if p is not None][:config.heldout_pairs],
        [by_id[prompt.prompt_id] for prompt in split.eval_prompts]))
    if not heldout:
        raise ValidationError(f"Run {run.name!r} has no eval-part pair whose prompt fits {cap} tokens: "
                              "raise the eval fraction on the Sources page.")
    return Inputs(run, split.train, heldout, evaluation, tokenizer)


def fitting_pairs(pairs: list["PreferencePair"], tokenizer: Any, max_prompt_length: int, count: int) -> list["PreferencePair"]:
    """The first `count` pairs whose prompt fits: exactly what training takes (training.select_pairs)."""
    from .arithmetic import prompt_ids

    return list(islice((p for p in pairs if len(prompt_ids(tokenizer, p.prompt)) <= max_prompt_length), count))


# ---------------------------------------------------------------- training validation adapters


def train_adapter(inputs: Inputs, folder: Run, name: str, pairs: list["PreferencePair"], epochs: float,
                  config: ValidationConfig, session: "JobSession", below: list[str] = ()) -> None:
    """Train adapter `name` unless it exists; with `below`, on the base with those adapters merged in.

    Sequential DPO: stage k is trained with the model of stages < k as its reference. Merging the
    earlier adapters into the weights (merge_and_unload) makes that model the trainer's base, whose
    adapter-off self is the reference: exactly what fit_adapter does on a fresh base.
    """
    from peft import PeftModel

    from .adapters import adapter_dir, save_adapter, trained_sources
    from .models import load_model
    from .training import fit_adapter, preset_config as training_config, source_seed

    if name in trained_sources(folder):
        return
    run_config = inputs.run.load_config()
    settings = training_config(config.training_preset, max_pairs=len(pairs), epochs=epochs)
    loaded = load_model(run_config.model)
    for stage in below:
        loaded.model = PeftModel.from_pretrained(loaded.model, adapter_dir(folder, stage)).merge_and_unload()
    model, record = fit_adapter(loaded, name, pairs, settings, source_seed(run_config.seed, name), session)
    save_adapter(model, folder, name, {**record, "merged_below": list(below)})
    session.log(f"{name}: trained in {record['wall_time_s']:.0f}s, final loss {record['final']['loss']}")


def coalitions_of(sources: list[str]) -> list[tuple[str, ...]]:
    """The coalitions compared with trained models: every one of two or more sources."""
    return [c for size in range(2, len(sources) + 1) for c in combinations(sources, size)]


def orders_of(coalition: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The two training orders compared for order invariance: as given and reversed."""
    return [coalition, coalition[::-1]]


def stage_names(epochs: float, order: tuple[str, ...]) -> list[str]:
    """Adapters of sequential DPO in this order: a alone, then a>b on top of it, then a>b>c..."""
    return [adapter_name(epochs, ">".join(order[:k])) for k in range(1, len(order) + 1)]


# ---------------------------------------------------------------- teacher-forced scoring


def score_models(model: Any, tokenizer: Any, heldout: list[HeldOut], variants: dict[str, list[tuple[str, float]]],
                 kl_pairs: list[tuple[str, str]], progress=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Log-likelihood of every held-out response under every variant, and per-token KLs between variants.

    A variant is a list of (adapter, coefficient) terms, combined per token as in arithmetic.py:
    log p = log_softmax(sum_k c_k log pi_k). One mixed-adapter forward pass per pair (both
    responses) gives every adapter's next-token log-probs; for (p, q) in `kl_pairs` the KL summed over
    the response's tokens is sum_t sum_v p_t(v) (log p_t(v) - log q_t(v)).
    """
    import torch

    from .arithmetic import forward_log_probs, left_pad, prompt_ids

    adapters = list(dict.fromkeys(adapter for terms in variants.values() for adapter, _ in terms))
    names = list(variants)
    coefficients = torch.zeros(len(names), len(adapters))
    for v, name in enumerate(names):
        for adapter, coef in variants[name]:
            coefficients[v, adapters.index(adapter)] += coef
    scores, kls = [], []
    for done, pair in enumerate(heldout):
        prompt = prompt_ids(tokenizer, pair.messages)
        responses = {"chosen": pair.chosen, "rejected": pair.rejected}
        width = max(map(len, responses.values()))
        ids, mask, positions = left_pad([prompt + r for r in responses.values() for _ in adapters], tokenizer.pad_token_id)
        log_probs, _ = forward_log_probs(model, ids, mask, positions, adapters * len(responses), keep=width + 1)
        log_probs = log_probs[:, :-1].view(len(responses), len(adapters), width, -1)
        for r, (kind, response) in enumerate(responses.items()):
            own = log_probs[r, :, width - len(response):]  # [adapters, tokens, vocab]
            combined = torch.einsum("va,atk->vtk", coefficients.to(own.device), own).log_softmax(-1)
            picked = combined[:, torch.arange(len(response)), torch.tensor(response)].sum(-1)
            scores += [{"model": name, "prompt": pair.prompt_id, "response": kind, "log_likelihood": float(picked[v])}
                       for v, name in enumerate(names)]
            for p, q in kl_pairs:
                lp, lq = combined[names.index(p)], combined[names.index(q)]
                kls.append({"reference": p, "model": q, "prompt": pair.prompt_id, "response": kind,
                            "kl": float((lp.exp() * (lp - lq)).sum()), "tokens": len(response)})
        if progress is not None:
            progress(done + 1, len(heldout))
    return pd.DataFrame(scores), pd.DataFrame(kls)


def preference_utilities(log_likelihoods: pd.DataFrame, beta: float) -> pd.DataFrame:
    """Per (model, prompt): preference accuracy and implicit reward margin relative to the base.

    `log_likelihoods` has columns model, prompt, chosen, rejected, with the base under model "base".
    m = [log M(y+) - log pi_0(y+)] - [log M(y-) - log pi_0(y-)]; accuracy 1[m > 0] + 1/2 1[m = 0].
    """
    base = log_likelihoods[log_likelihoods.model == "base"].set_index("prompt")
    table = log_likelihoods.join(base[["chosen", "rejected"]], on="prompt", rsuffix="_base")
    margin = (table.chosen - table.chosen_base) - (table.rejected - table.rejected_base)
    return pd.DataFrame({"model": table.model, "prompt": table.prompt,
                         "preference_accuracy": np.where(margin > 0, 1.0, np.where(margin == 0, 0.5, 0.0)),
                         "reward_margin": beta * margin})


# ---------------------------------------------------------------- sequential, pooled and epochs


def compare_trained(inputs: Inputs, config: ValidationConfig, preset: str, sources: list[str], epochs: float,
                    kind: str, session: "JobSession") -> Path:
    """Train what `kind` ('sequential' or 'pooled') needs at `epochs`, score it against the arithmetic.

    Models: the base, each source alone, and per coalition S: arithmetic(S) from the solo adapters,
    and either sequential DPO in both orders (the stage adapters summed in weight space, which is
    what merging earlier stages into the weights did during training) or one adapter on S's pooled pairs.
    """
    from .adapters import load_adapters
    from .arithmetic import formula_terms
    from .merging import merged_coalition_adapter
    from .models import load_model
    from .training import preset_config as training_config

    folder = Run(validation_dir(inputs.run, preset))
    scores_file = folder.path / f"{kind}-e{epochs:g}.scores.csv"
    if scores_file.exists():
        session.log(f"{scores_file.name}: already computed, skipped")
        return scores_file
    settings = training_config(config.training_preset)
    pairs = {s: fitting_pairs(inputs.train[s], inputs.tokenizer, settings.max_prompt_length, config.max_pairs) for s in sources}
    solo = {s: adapter_name(epochs, s) for s in sources}
    for source in sources:
        train_adapter(inputs, folder, solo[source], pairs[source], epochs, config, session)
    trained = {}  # coalition -> [(label, adapter names summed in weight space)]
    for coalition in coalitions_of(sources):
        if kind == "sequential":
            trained[coalition] = []
            for order in orders_of(coalition):
                stages = stage_names(epochs, order)
                for k in range(1, len(order)):
                    train_adapter(inputs, folder, stages[k], pairs[order[k]], epochs, config, session, below=stages[:k])
                trained[coalition].append((f"sequential:{'>'.join(order)}", stages))
        else:
            name = adapter_name(epochs, "+".join(coalition))
            train_adapter(inputs, folder, name, [p for s in coalition for p in pairs[s]], epochs, config, session)
            trained[coalition] = [(f"pooled:{'+'.join(coalition)}", [name])]

    session.log(f"scoring {kind} models after {epochs:g} epochs on {len(inputs.heldout)} held-out pairs")
    loaded = load_model(inputs.run.load_config().model)
    adapters = list(dict.fromkeys([*solo.values(), *(a for models in trained.values() for _, names in models for a in names)]))
    model = load_adapters(loaded, folder, adapters)
    variants = {"base": [(BASE, 1.0)], **{f"solo:{s}": [(solo[s], 1.0)] for s in sources}}
    kl_pairs = []
    for coalition, models in trained.items():
        arithmetic = f"arithmetic:{'+'.join(coalition)}"
        variants[arithmetic] = formula_terms(tuple(solo[s] for s in coalition))
        for label, names in models:
            variants[label] = [(merged_coalition_adapter(model, names), 1.0)]
            kl_pairs += [(arithmetic, label), (label, arithmetic)]
        if kind == "sequential":  # order invariance: the two orders against each other
            first, second = (label for label, _ in models)
            kl_pairs += [(first, second), (second, first)]
    scores, kls = score_models(model, loaded.tokenizer, inputs.heldout, variants, kl_pairs,
                               reporter(session, f"scoring {kind} e{epochs:g}"))
    atomic_write_text(folder.path / f"{kind}-e{epochs:g}.kl.csv", kls.to_csv(index=False))
    atomic_write_text(scores_file, scores.to_csv(index=False))  # last: its presence means both are done
    return scores_file


def read_scored(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every scored comparison in a preset's folder: (scores, kls), each with kind and epochs columns."""
    scores, kls = [], []
    for path in sorted(folder.glob("*-e*.scores.csv")):
        kind, epochs = path.name.removesuffix(".scores.csv").rsplit("-e", 1)
        for frames, file in ((scores, path), (kls, path.with_name(path.name.replace(".scores.", ".kl.")))):
            if file.exists():
                frames.append(pd.read_csv(file).assign(kind=kind, epochs=float(epochs)))
    return (pd.concat(scores, ignore_index=True) if scores else pd.DataFrame(),
            pd.concat(kls, ignore_index=True) if kls else pd.DataFrame())


def model_utilities(scores: pd.DataFrame, beta: float) -> pd.DataFrame:
    """Per (kind, epochs, model, prompt): preference accuracy and reward margin."""
    frames = []
    for (kind, epochs), group in scores.groupby(["kind", "epochs"]):
        wide = group.pivot_table(index=["model", "prompt"], columns="response", values="log_likelihood").reset_index()
        frames.append(preference_utilities(wide, beta).assign(kind=kind, epochs=epochs))
    return pd.concat(frames, ignore_index=True)


def comparisons(folder: Path, beta: float = 0.1) -> pd.DataFrame:
    """One row per compared pair of models: KL per token both ways and the utility gaps.

    reference -> model: KL(reference || model) and KL(model || reference), averaged over every
    held-out response token; accuracy and margin of each, and model minus reference.
    """
    scores, kls = read_scored(folder)
    if kls.empty:
        return pd.DataFrame()
    totals = kls.groupby(["kind", "epochs", "reference", "model"])[["kl", "tokens"]].sum()
    per_token = (totals.kl / totals.tokens).rename("kl")
    utilities = model_utilities(scores, beta).groupby(["kind", "epochs", "model"])[["preference_accuracy", "reward_margin"]].mean()
    rows = []
    for (kind, epochs, reference, model), forward in per_token.items():
        if reference > model:  # each pair once: arithmetic before pooled and sequential, orders alphabetically
            continue
        ref, mod = utilities.loc[(kind, epochs, reference)], utilities.loc[(kind, epochs, model)]
        rows.append({"kind": kind, "epochs": epochs, "coalition": reference.split(":")[1].replace(">", "+"),
                     "reference": reference, "model": model,
                     "kl_reference_model": forward, "kl_model_reference": per_token.get((kind, epochs, model, reference), np.nan),
                     "accuracy_reference": ref.preference_accuracy, "accuracy_model": mod.preference_accuracy,
                     "accuracy_gap": mod.preference_accuracy - ref.preference_accuracy,
                     "margin_reference": ref.reward_margin, "margin_model": mod.reward_margin,
                     "margin_gap": mod.reward_margin - ref.reward_margin})
    return pd.DataFrame(rows)


def method_shapley(folder: Path, beta: float = 0.1) -> pd.DataFrame:
    """Exact Shapley values when v(S) for |S| >= 2 comes from arithmetic, sequential DPO (mean of the
    orders) or pooled training, at the epochs the pooled comparison used; the base and the solo
    adapters are shared by the three methods."""
    scores, _ = read_scored(folder)
    if scores.empty or "pooled" not in set(scores.kind):
        return pd.DataFrame()
    epochs = scores[scores.kind == "pooled"].epochs.min()
    utilities = model_utilities(scores[scores.epochs == epochs], beta)
    utilities = utilities.groupby(["model", "prompt"])[["preference_accuracy", "reward_margin"]].mean().reset_index()
    parts = utilities.model.str.partition(":")  # method, ':', members
    utilities["method"] = parts[0]
    utilities["coalition"] = parts[2].str.replace(">", "+").map(lambda m: coalition_name(m.split("+")) if m else "")
    columns = ["coalition", "prompt", "preference_accuracy", "reward_margin"]
    shared = utilities.loc[utilities.method.isin(["base", "solo"]), columns]
    frames = []
    for name in ("arithmetic", "sequential", "pooled"):
        own = utilities[utilities.method == name].groupby(["coalition", "prompt"])[columns[2:]].mean().reset_index()
        table = UtilityTable.from_frame(pd.concat([shared, own]))
        if own.empty or table.missing_coalitions():
            continue
        frames.append(exact_shapley(table.players, table, objectives=table.objectives).to_frame().assign(method=name))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def accuracy_shapley(run: Run) -> pd.DataFrame:
    """Shapley values of the run's sources under preference accuracy and reward margin, exact with
    bootstrap intervals over held-out pairs; `solo` is v({i}) - v(empty), which the margin's Shapley
    value should nearly equal (the margin is nearly additive across sources)."""
    from .shapley import bootstrap_intervals

    path = accuracy_path(run)
    if not path.exists():
        return pd.DataFrame()
    table = UtilityTable.from_frame(pd.read_csv(path, dtype={"coalition": str, "prompt": str}))
    frame = bootstrap_intervals(table.players, table).to_frame()
    empty = table(frozenset())
    frame["solo"] = [table.value(frozenset([p]), o) - empty[table.objectives.index(o)]
                     for o, p in zip(frame.objective, frame.player)]
    return frame


# ---------------------------------------------------------------- a cheap exact utility for all 2^n coalitions


def coalition_accuracy(model: Any, tokenizer: Any, heldout: list[HeldOut], sources: list[str], beta: float,
                       progress=None) -> pd.DataFrame:
    """Per (coalition, prompt): preference accuracy and reward margin of all 2^n coalitions.

    score_coalitions runs each pair's two responses through the base and each adapter once and
    returns log pi_S(y|x) for every S by arithmetic; the base is the empty coalition.
    """
    from .arithmetic import all_coalitions, score_coalitions

    coalitions = all_coalitions(sources)
    texts = [(pair.messages, response) for pair in heldout for response in (pair.chosen, pair.rejected)]
    rows = []
    for first in range(0, len(texts), 16):  # chunks, for progress
        scored = score_coalitions(model, tokenizer, texts[first:first + 16], coalitions)
        for coalition, values in scored.items():
            for k in range(0, len(values), 2):
                rows.append({"model": coalition_name(coalition) or "base", "prompt": heldout[(first + k) // 2].prompt_id,
                             "chosen": values[k], "rejected": values[k + 1]})
        if progress is not None:
            progress(min(first + 16, len(texts)) // 2, len(heldout))
    table = preference_utilities(pd.DataFrame(rows), beta)
    table.insert(0, "coalition", table.pop("model").replace("base", ""))
    return table


def run_accuracy(inputs: Inputs, session: "JobSession") -> Path:
    """Preference accuracy of every coalition of the run's own adapters, on the held-out pairs.

    Written to <run>/validation/accuracy_utilities.csv; when the evaluation's utilities exist, the
    column preference_accuracy is also added to them for the (coalition, prompt) rows they hold
    (the held-out pairs are those behind the evaluation prompts), so the Shapley page offers it.
    """
    from .adapters import load_adapters, read_record, trained_sources
    from .models import load_model

    path = accuracy_path(inputs.run)
    if not path.exists():
        sources = trained_sources(inputs.run)
        if len(sources) < 2:
            raise ValidationError(f"Run {inputs.run.name!r} needs at least two trained adapters: train the sources first.")
        loaded = load_model(inputs.run.load_config().model)
        model = load_adapters(loaded, inputs.run, sources)
        beta = read_record(inputs.run, sources[0])["beta"]
        session.log(f"accuracy: {2 ** len(sources)} coalitions of {', '.join(sources)} on {len(inputs.evaluation)} held-out pairs")
        table = coalition_accuracy(model, loaded.tokenizer, inputs.evaluation, sources, beta, reporter(session, "accuracy"))
        atomic_write_text(path, table.to_csv(index=False, float_format="%.6g"))
    merge_accuracy(inputs.run, pd.read_csv(path, dtype={"coalition": str, "prompt": str}).fillna({"coalition": ""}), session)
    return path


def merge_accuracy(run: Run, accuracy: pd.DataFrame, session: "JobSession") -> bool:
    """Add preference_accuracy to the evaluation's utilities when every row of theirs has a value."""
    target = utilities_path(run)
    if not target.exists():
        return False
    utilities = pd.read_csv(target, dtype={"coalition": str, "prompt": str}).fillna({"coalition": ""})
    canonical = utilities.coalition.map(lambda c: coalition_name(c.split("+")) if c else "")
    keyed = accuracy.set_index(["coalition", "prompt"]).preference_accuracy
    values = pd.Series([keyed.get((c, p), np.nan) for c, p in zip(canonical, utilities.prompt)], index=utilities.index)
    if values.isna().any():
        session.log("evaluation utilities hold prompts or coalitions without a held-out pair: not merged")
        return False
    utilities["preference_accuracy"] = values
    atomic_write_text(target, utilities.to_csv(index=False))
    session.log(f"preference_accuracy added to {target}")
    return True


# ---------------------------------------------------------------- scaling: exact vs Monte Carlo at n = 8


def scaling_sources(inputs: Inputs, config: ValidationConfig, max_prompt_length: int) -> dict[str, list["PreferencePair"]]:
    """Each run source cut into equal parts by a seeded hash of its pairs: `scaling_players` sources in all."""
    parts = max(1, round(config.scaling_players / len(inputs.train)))
    out = {}
    for source, pairs in inputs.train.items():
        for part in range(parts):
            mine = [p for p in pairs if int(hashlib.sha256(p.pair_id.encode()).hexdigest(), 16) % parts == part]
            out[f"{source}-part{part}"] = fitting_pairs(mine, inputs.tokenizer, max_prompt_length, config.scaling_pairs)
    return out


def rank_correlations(estimate: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    """Spearman's rho (average ranks for ties) and Kendall's tau-b between two value vectors."""
    def ranks(x: np.ndarray) -> np.ndarray:
        order = x.argsort(kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        return np.array([r[x == value].mean() for value in x])

    a, b = ranks(estimate), ranks(exact)
    rho = np.corrcoef(a, b)[0, 1] if a.std() and b.std() else np.nan
    i, j = np.triu_indices(len(exact), 1)
    da, db = np.sign(estimate[i] - estimate[j]), np.sign(exact[i] - exact[j])
    pairs_a, pairs_b = (da != 0).sum(), (db != 0).sum()
    tau = (da * db).sum() / np.sqrt(pairs_a * pairs_b) if pairs_a and pairs_b else np.nan
    return float(rho), float(tau)


def monte_carlo_errors(table: UtilityTable, objective: str, budgets: list[int], repeats: int) -> pd.DataFrame:
    """Permutation Shapley (antithetic and plain) against exact Shapley of the same game, by budget.

    rmse: root mean squared error over players; relative: rmse / root mean square of the exact values.
    """
    players = table.players
    k = table.objectives.index(objective)
    exact = exact_shapley(players, table).values[:, k]
    rows = []
    for antithetic in (True, False):
        for budget in budgets:
            for seed in range(repeats):
                estimate = permutation_shapley(players, table, budget_permutations=budget, seed=seed,
                                               antithetic=antithetic).values[:, k]
                rmse = float(np.sqrt(np.mean((estimate - exact) ** 2)))
                rho, tau = rank_correlations(estimate, exact)
                rows.append({"sampling": "antithetic" if antithetic else "plain", "permutations": budget, "seed": seed,
                             "rmse": rmse, "relative": rmse / float(np.sqrt(np.mean(exact ** 2))),
                             "max_abs": float(np.abs(estimate - exact).max()), "spearman": rho, "kendall": tau})
    return pd.DataFrame(rows)


def run_scaling(inputs: Inputs, config: ValidationConfig, preset: str, session: "JobSession") -> Path:
    """Train one small adapter per scaling source, score all 2^n coalitions (preference accuracy: the
    cheap utility; sampling 256 coalitions would not fit a CPU), and measure Monte Carlo error."""
    from .adapters import load_adapters
    from .models import load_model
    from .training import preset_config as training_config

    folder = Run(validation_dir(inputs.run, preset))
    result, utilities_file = folder.path / "scaling.csv", folder.path / "scaling_utilities.csv"
    if result.exists():
        session.log("scaling.csv: already computed, skipped")
        return result
    settings = training_config(config.training_preset)
    if not utilities_file.exists():
        parts = scaling_sources(inputs, config, settings.max_prompt_length)
        names = {source: adapter_name(1.0, f"scale-{source}") for source in parts}
        for source, pairs in parts.items():
            train_adapter(inputs, folder, names[source], pairs, 1.0, config, session)
        loaded = load_model(inputs.run.load_config().model)
        model = load_adapters(loaded, folder, list(names.values()))
        session.log(f"scaling: {2 ** len(names)} coalitions of {len(names)} sources on {len(inputs.heldout)} held-out pairs")
        table = coalition_accuracy(model, loaded.tokenizer, inputs.heldout, list(names.values()), settings.beta,
                                   reporter(session, "scaling: scoring coalitions"))
        table["coalition"] = table.coalition.str.replace("e1:scale-", "", regex=False)
        atomic_write_text(utilities_file, table.to_csv(index=False, float_format="%.6g"))
    game = UtilityTable.from_frame(pd.read_csv(utilities_file, dtype={"coalition": str, "prompt": str}))
    errors = monte_carlo_errors(game, "preference_accuracy", config.permutations, config.repeats)
    atomic_write_text(result, errors.to_csv(index=False))
    return result


def scaling_summary(folder: Path) -> pd.DataFrame:
    """Mean Monte Carlo error and rank agreement per sampling scheme and budget."""
    path = folder / "scaling.csv"
    if not path.exists():
        return pd.DataFrame()
    errors = pd.read_csv(path)
    return errors.groupby(["sampling", "permutations"])[["rmse", "relative", "max_abs", "spearman", "kendall"]].mean().reset_index()


# ---------------------------------------------------------------- the whole validation


def reporter(session: "JobSession", stage: str):
    """progress(done, total) -> a 'step' event (the job panel's bar) and a tqdm bar in a terminal."""
    from tqdm import tqdm

    bar = tqdm(desc=stage, disable=None, leave=False)

    def progress(done: int, total: int) -> None:
        session.progress.emit("step", stage=stage, done=done, total=total)
        bar.total = total
        bar.update(done - bar.n)
        if done == total:
            bar.close()

    return progress


def latest_progress(events: list[dict[str, Any]]) -> tuple[str | None, str | None, int, int]:
    """(experiment, stage, done, total) of a validation job's latest events: a training step
    (source, step, total) or a scoring step (stage, done, total)."""
    experiments = [e["experiment"] for e in events if e.get("event") == "experiment_start"]
    steps = [e for e in events if e.get("event") == "step" and e.get("total")]
    if not steps:
        return (experiments[-1] if experiments else None), None, 0, 0
    last = steps[-1]
    stage = last.get("stage") or f"training {last.get('source')}"
    return (experiments[-1] if experiments else None), stage, int(last.get("done", last.get("step", 0))), int(last["total"])


def chosen_sources(config: ValidationConfig, available: list[str]) -> list[str]:
    sources = config.sources or available[:config.n_sources]
    unknown = [s for s in sources if s not in available]
    if unknown or len(sources) < 2:
        raise ValidationError(f"Validation sources {sources} must be at least two of the run's sources {available}.")
    return sources


def check_settings(folder: Path, config: ValidationConfig) -> None:
    """Results in a preset's folder are reused only with the settings that made them."""
    recorded = folder / "settings.json"
    wanted = {k: v for k, v in to_dict(config).items() if k not in ("sources", "n_sources")}
    if recorded.exists():
        import json

        used = json.loads(recorded.read_text(encoding="utf-8"))
        if used != wanted:
            raise ValidationError(f"{folder} holds results made with other settings: delete the folder to redo them.")
    atomic_write_json(recorded, wanted)


def validate_run(run: Run, preset: str, config: ValidationConfig, experiments: list[str], session: "JobSession") -> list[Path]:
    """Run the chosen experiments (cheap ones first, so partial results appear early); their files."""
    from .training import _quiet_libraries

    unknown = [e for e in experiments if e not in EXPERIMENTS]
    if unknown:
        raise ValidationError(f"Unknown experiments {unknown}: choose from {', '.join(EXPERIMENTS)}.")
    _quiet_libraries()
    folder = validation_dir(run, preset)
    check_settings(folder, config)
    inputs = read_inputs(run, config)
    sources = chosen_sources(config, sorted(inputs.train))
    session.progress.emit("job_start", experiments=experiments, sources=sources, settings=to_dict(config))
    main = config.epochs[0]
    plan = [("accuracy", lambda: run_accuracy(inputs, session)),
            ("sequential", lambda: compare_trained(inputs, config, preset, sources, main, "sequential", session)),
            ("pooled", lambda: compare_trained(inputs, config, preset, sources, main, "pooled", session)),
            ("scaling", lambda: run_scaling(inputs, config, preset, session))]
    plan += [("epochs", lambda e=e: compare_trained(inputs, config, preset, sources, e, "sequential", session))
             for e in config.epochs[1:]]
    written = []
    for name, step in plan:
        if name in experiments:
            session.progress.emit("experiment_start", experiment=name)
            written.append(step())
            session.progress.emit("experiment_done", experiment=name, path=str(written[-1]))
    return written


def validation_argv(run: Run, preset: str, experiments: list[str], sources: list[str]) -> list[str]:
    """The arguments of `python -m valuation` that run these experiments on `run`."""
    argv = ["validate", "--run", str(run.path.absolute()), "--preset", preset, "--experiments", *experiments]
    return argv + (["--sources", *sources] if sources else [])


def launch_validation(run: Run, preset: str, experiments: list[str], sources: list[str]):
    """Check the settings now, then validate in a background process (jobs.launch_job)."""
    from .jobs import launch_job

    preset_config(preset, sources=sources or None)
    run.load_config()
    return launch_job(run, "validate", validation_argv(run, preset, experiments, sources))


def summary(run: Run, preset: str) -> dict[str, Any]:
    """The headline numbers of a preset's results, for the page and the closing note."""
    folder = validation_dir(run, preset)
    table = comparisons(folder)
    out: dict[str, Any] = {}
    if not table.empty:
        arith = table[table.reference.str.startswith("arithmetic")]
        seq = arith[arith.model.str.startswith("sequential")]
        out["sequential_vs_arithmetic_by_epochs"] = seq.groupby("epochs")[
            ["kl_reference_model", "kl_model_reference", "accuracy_gap", "margin_gap"]].mean().reset_index().to_dict("records")
        out["pooled_vs_arithmetic"] = arith[arith.model.str.startswith("pooled")][
            ["epochs", "coalition", "kl_reference_model", "kl_model_reference", "accuracy_gap", "margin_gap"]].to_dict("records")
        order = table[table.reference.str.startswith("sequential")]
        out["order_invariance"] = order[["epochs", "coalition", "kl_reference_model", "kl_model_reference",
                                         "accuracy_gap", "margin_gap"]].to_dict("records")
    scaling = scaling_summary(folder)
    if not scaling.empty:
        out["monte_carlo"] = scaling.to_dict("records")
    return out

