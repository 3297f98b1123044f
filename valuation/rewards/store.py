"""Reward models per run: which objectives, trained on which pairs, built once and cached in the run.

Each objective (helpfulness, harmlessness, ...) is one utility. Its reward model
(`rewards.models`) is trained, for kind 'features', on the run's reward split: pairs
disjoint by prompt from every source's training pairs and from the evaluation prompts. Trained
models live in the run:

    rewards/<objective>/head.safetensors   the Bradley-Terry head (kind 'features')
    rewards/<objective>/bootstrap.safetensors   `head_bootstraps` heads refit on bootstrap resamples of
                                           its training pairs (kind 'features'; absent in older runs):
                                           the reward model's own noise, for the Shapley intervals
    rewards/<objective>/reward.json        its card: what produced it (`key`), the pairs it trained
                                           on, and its held-out accuracy with a 95% interval (`rewards.cards`)

A cached model is reused only while everything in its key is unchanged.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import DataConfig, RewardConfig, RewardObjective, to_dict
from ..data.preferences import PreferencePair, resolved_objectives
from ..data.splits import seeded_uniform
from ..runs import Run
from ..storage import atomic_dir, atomic_write_json, digest
from .cards import (BOOTSTRAP_FILE, CARD_FILE, HEAD_FILE, RewardError, describe_card, read_reward_card, rewards_dir,
                    wilson_interval)

if TYPE_CHECKING:
    from ..runtime.context import RunContext
    from ..lm.models import LoadedModel
    from ..progress import Progress, Reporter
    from .models import RewardModel

REWARD_SALT = "rewards\x00"  # reward-model subsets and held-out parts draw independently of the split


# -----------------------------------------------------------------------------
# held-out accuracy


def pairwise_accuracy(model: RewardModel, pairs: list[PreferencePair], progress: Progress | None = None) -> float:
    """Share of pairs whose chosen reply scores above the rejected one (ties count half)."""
    scores = model.score([p.prompt for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs], progress)
    return float(accuracy_of(scores))


def accuracy_of(scores: np.ndarray) -> np.ndarray:
    """[..., 2 * pairs] scores, the chosen replies first -> [...] shares of pairs won (ties count half)."""
    half = scores.shape[-1] // 2
    chosen, rejected = scores[..., :half], scores[..., half:]
    return ((chosen > rejected) + 0.5 * (chosen == rejected)).mean(-1)


# -----------------------------------------------------------------------------
# training data: the run's reward split, per objective, with a held-out part


@dataclass
class ObjectivePairs:
    train: list[PreferencePair]
    heldout: list[PreferencePair]


def objective_pairs(reward: dict[str, list[PreferencePair]], objective: RewardObjective, config: RewardConfig) -> ObjectivePairs:
    """The objective's sources' reward pairs, capped to a seeded subset, split by prompt into train and held-out."""
    unknown = sorted(set(objective.sources) - set(reward))
    if unknown:
        raise RewardError(f"Reward objective {objective.name!r} names unknown source(s) {unknown}; available: {sorted(reward)}.")
    pairs = [p for s in (objective.sources or sorted(reward)) for p in reward[s]]
    pairs.sort(key=lambda p: seeded_uniform(config.seed, p.pair_id, REWARD_SALT))
    if config.max_pairs:
        pairs = pairs[: config.max_pairs]
    heldout = [p for p in pairs if seeded_uniform(config.seed, p.prompt_key, REWARD_SALT) < config.holdout_fraction]
    train = [p for p in pairs if seeded_uniform(config.seed, p.prompt_key, REWARD_SALT) >= config.holdout_fraction]
    if len(train) < 10 or len(heldout) < 5:
        raise RewardError(
            f"Reward objective {objective.name!r} has {len(train)} training and {len(heldout)} held-out pairs: too few. "
            "Raise data.reward_fraction or rewards.max_pairs, or train it on more sources."
        )
    return ObjectivePairs(train, heldout)


def _describe_pairs(pairs: list[PreferencePair]) -> dict[str, Any]:
    return {"count": len(pairs), "per_source": dict(sorted(Counter(p.source for p in pairs).items())),
            "pair_ids": [p.pair_id for p in pairs]}


# -----------------------------------------------------------------------------
# train, cache and load, per run

def reward_models(context: RunContext, reporter: Reporter) -> dict[str, RewardModel]:
    """Every objective's reward model: loaded from the run when what produced it is unchanged,
    else trained (kind 'features') or measured (kind 'hub') on the run's reward split and saved."""
    config, data = context.config.rewards, context.config.data
    config.validate()
    models: dict[str, RewardModel] = {}
    for objective in resolved_objectives(config, data):
        key = _cache_key(config, objective, context.base, data)
        card = read_reward_card(context.run, objective.name)
        if card is None or card.get("key") != key:
            pairs = objective_pairs(context.split.reward, objective, config)
            card = _build(context.run, context.base, config, objective, key, pairs, reporter)
        models[objective.name] = load_reward(context.run, objective.name, context.base, card)
        reporter.log(describe_card(card))
    return models


def _cache_key(config: RewardConfig, objective: RewardObjective, base: LoadedModel, data: DataConfig) -> dict[str, Any]:
    """Everything that decides a reward model; a cached one is reused only when all of it matches."""
    split = {k: v for k, v in to_dict(data).items() if k != "sources"}
    if not split["heldout_file"]:  # unset: the key of runs made before the setting existed
        del split["heldout_file"]
    pairs = {"sources": objective.sources, "max_pairs": config.max_pairs, "holdout_fraction": config.holdout_fraction,
             "seed": config.seed, "data": split}
    if config.kind == "hub":
        return {"kind": "hub", "hub_model": objective.hub_model, "max_length": config.max_length, **pairs}
    return {"kind": "features", "base_model": base.name, "layers": config.layers, "max_length": config.max_length,
            "autocast": config.autocast, "l2": config.l2, **pairs}


def _build(run: Run, base: LoadedModel, config: RewardConfig, objective: RewardObjective, key: dict[str, Any],
           pairs: ObjectivePairs, reporter: Reporter) -> dict[str, Any]:
    """Train (or, for a hub model, measure) one objective's reward model into the run; its card."""
    from .models import BootstrapHeads, BradleyTerryHead, FeatureExtractor, FeatureRewardModel, HubRewardModel

    started = time.monotonic()
    card: dict[str, Any] = {"objective": objective.name, "kind": config.kind, "key": key}
    with atomic_dir(rewards_dir(run) / objective.name) as folder:
        if config.kind == "hub":
            model: RewardModel = HubRewardModel(objective.hub_model, objective.name, str(base.device), config.max_length,
                                                config.batch_size)
            card["hub_model"] = objective.hub_model
        else:
            features = FeatureExtractor(base, config.layers, config.max_length, config.autocast, config.batch_tokens)
            train = pairs.train
            extracted = features([p.prompt for p in train] * 2, [p.chosen for p in train] + [p.rejected for p in train],
                                 reporter.stage(f"{objective.name}: features of training pairs"))
            chosen, rejected = extracted[: len(train)], extracted[len(train):]
            head = BradleyTerryHead.fit(chosen, rejected, config.l2)
            head.save(folder / HEAD_FILE)
            model = FeatureRewardModel(objective.name, features, head)
            card |= {**features.settings(), "l2": config.l2, "feature_size": int(chosen.shape[1]),
                     "train_accuracy": float(((head(chosen) > head(rejected)).float().mean()))}
            if config.head_bootstraps:  # the main head above is the same with or without them
                seed = int(digest({"seed": config.seed, "objective": objective.name, "salt": "heads"}), 16)
                model.bootstrap = BootstrapHeads.fit(chosen, rejected, config.l2, config.head_bootstraps, seed,
                                                     [p.prompt_key for p in train])
                model.bootstrap.save(folder / BOOTSTRAP_FILE)
                card["bootstrap"] = {"heads": config.head_bootstraps, "resampled": "training prompts",
                                     "key": digest({"reward": key, "heads": config.head_bootstraps, "seed": seed})}
        stage = reporter.stage(f"{objective.name}: held-out accuracy")
        held = pairs.heldout
        if isinstance(model, FeatureRewardModel) and model.bootstrap is not None:
            scores, heads = model.score_heads([p.prompt for p in held] * 2, [p.chosen for p in held] + [p.rejected for p in held],
                                              stage)
            accuracy = float(accuracy_of(scores))
            card["bootstrap"]["heldout_accuracy"] = [float(a) for a in np.quantile(accuracy_of(heads), [0, 0.5, 1])]
        else:
            accuracy = pairwise_accuracy(model, held, stage)
        correct = round(accuracy * len(pairs.heldout))
        card |= {"heldout_accuracy": accuracy, "interval": list(wilson_interval(correct, len(pairs.heldout))),
                 "heldout_pairs": len(pairs.heldout), "seconds": round(time.monotonic() - started, 1),
                 "train": _describe_pairs(pairs.train), "heldout": _describe_pairs(pairs.heldout)}
        atomic_write_json(folder / CARD_FILE, card)
    return card


def load_reward(run: Run, objective: str, base: LoadedModel, card: dict[str, Any] | None = None) -> RewardModel:
    """A reward model the run holds, without training (`card`: its card when the caller has read it);
    a clear error when there is none."""
    from .models import BootstrapHeads, BradleyTerryHead, FeatureExtractor, FeatureRewardModel, HubRewardModel

    card = card or read_reward_card(run, objective)
    if card is None:
        trained = sorted(p.name for p in rewards_dir(run).glob("*") if (p / CARD_FILE).exists())
        raise RewardError(f"Run {run.name!r} has no reward model {objective!r} (trained: {trained or 'none'}): train it first.")
    key = digest(card["key"])
    if card["kind"] == "hub":
        return HubRewardModel(card["hub_model"], objective, str(base.device), card["key"]["max_length"], key=key)
    if card["base_model"] != base.name:
        raise RewardError(f"Reward model {objective!r} reads features of {card['base_model']!r}, not of {base.name!r}: retrain it.")
    features = FeatureExtractor(base, card["layers"], card["max_length"], card["autocast"])
    head = BradleyTerryHead.load(rewards_dir(run) / objective / HEAD_FILE)
    bootstrap = BootstrapHeads.load(rewards_dir(run) / objective / BOOTSTRAP_FILE) if card.get("bootstrap") else None
    return FeatureRewardModel(objective, features, head, key, bootstrap, card["bootstrap"]["key"] if bootstrap else "")
