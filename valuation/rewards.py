"""Reward models per run: which objectives, trained on which pairs, cached in the run, and how good.

Each objective (helpfulness, harmlessness, ...) is one utility. Its reward model
(`valuation.reward_models`) is trained, for kind 'features', on the run's reward split: pairs
disjoint by prompt from every source's training pairs and from the evaluation prompts. Trained
models live in the run:

    rewards/<objective>/head.safetensors   the Bradley-Terry head (kind 'features')
    rewards/<objective>/bootstrap.safetensors   `head_bootstraps` heads refit on bootstrap resamples of
                                           its training pairs (kind 'features'; absent in older runs):
                                           the reward model's own noise, for the Shapley intervals
    rewards/<objective>/reward.json        its card: what produced it (`key`), the pairs it trained
                                           on, and its held-out accuracy with a 95% interval

A cached model is reused only while everything in its key is unchanged.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .config import ConfigError, DataConfig, RewardConfig, RewardObjective, helped, to_dict
from .data import HH_SUBSETS, PreferencePair
from .progress import Progress
from .errors import UserError
from .runs import Run
from .splits import seeded_uniform
from .storage import atomic_dir, atomic_write_json, digest

if TYPE_CHECKING:
    from .context import RunContext
    from .models import LoadedModel
    from .progress import Reporter
    from .reward_models import RewardModel

HELPFUL_HUB_ID = "Ray2333/gpt2-large-helpful-reward_model"
HARMLESS_HUB_ID = "Ray2333/gpt2-large-harmless-reward_model"
HEAD_FILE, CARD_FILE, BOOTSTRAP_FILE = "head.safetensors", "reward.json", "bootstrap.safetensors"
REWARD_SALT = "rewards\x00"  # reward-model subsets and held-out parts draw independently of the split


class RewardError(UserError):
    """A reward model that cannot be built, loaded or used; the message says what to change."""


# -----------------------------------------------------------------------------
# configuration


def default_objectives(data: DataConfig) -> list[RewardObjective]:
    """HH-RLHF: helpfulness on the helpful subsets, harmlessness on harmless-base (with Ray2333's
    models as the online alternative). Any other dataset: one 'preference' objective on all sources."""
    if data.dataset.strip() != "hh-rlhf":
        return [RewardObjective("preference")]
    return [
        RewardObjective("helpfulness", [s for s in HH_SUBSETS if s.startswith("helpful")], HELPFUL_HUB_ID),
        RewardObjective("harmlessness", ["harmless-base"], HARMLESS_HUB_ID),
    ]


def resolved_objectives(config: RewardConfig, data: DataConfig) -> list[RewardObjective]:
    """The configured objectives, or the dataset's defaults when none are configured."""
    return config.objectives or default_objectives(data)


def default_reward_config(data: DataConfig, kind: str = "features") -> RewardConfig:
    """The offline default ('features'); kind='hub' uses Ray2333's helpful/harmless models instead."""
    return RewardConfig(kind=kind, objectives=default_objectives(data))


# -----------------------------------------------------------------------------
# statistics


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sensible at small n and near 0 or 1)."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return centre - half, centre + half


def is_near_chance(interval: tuple[float, float] | list[float]) -> bool:
    """The one rule for a reward model that may be guessing: its held-out accuracy interval holds 0.5."""
    return interval[0] <= 0.5 <= interval[1]


def pairwise_accuracy(model: RewardModel, pairs: list[PreferencePair], progress: Progress | None = None) -> float:
    """Share of pairs whose chosen reply scores above the rejected one (ties count half)."""
    scores = model.score([p.prompt for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs], progress)
    return float(_accuracy(scores))


def _accuracy(scores: np.ndarray) -> np.ndarray:
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


def rewards_dir(run: Run) -> Path:
    return run.path / "rewards"


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
            _build(context.run, context.base, config, objective, key, pairs, reporter)
        models[objective.name] = load_reward(context.run, objective.name, context.base)
        reporter.log(describe_card(read_reward_card(context.run, objective.name)))
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
           pairs: ObjectivePairs, reporter: Reporter) -> None:
    from .reward_models import BootstrapHeads, BradleyTerryHead, FeatureExtractor, FeatureRewardModel, HubRewardModel

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
            accuracy = float(_accuracy(scores))
            card["bootstrap"]["heldout_accuracy"] = [float(a) for a in np.quantile(_accuracy(heads), [0, 0.5, 1])]
        else:
            accuracy = pairwise_accuracy(model, held, stage)
        correct = round(accuracy * len(pairs.heldout))
        card |= {"heldout_accuracy": accuracy, "interval": list(wilson_interval(correct, len(pairs.heldout))),
                 "heldout_pairs": len(pairs.heldout), "seconds": round(time.monotonic() - started, 1),
                 "train": _describe_pairs(pairs.train), "heldout": _describe_pairs(pairs.heldout)}
        atomic_write_json(folder / CARD_FILE, card)


def read_reward_card(run: Run, objective: str) -> dict[str, Any] | None:
    """What a trained reward model recorded (accuracy, interval, pairs), or None if it has none yet."""
    path = rewards_dir(run) / objective / CARD_FILE
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, or damaged: train again
        return None
    return card if isinstance(card, dict) else None


def describe_card(card: dict[str, Any]) -> str:
    """One line about a reward model: its held-out accuracy and what it trained on, and a warning near chance."""
    low, high = card["interval"]
    warning = "  (near chance: treat its utilities with care)" if is_near_chance(card["interval"]) else ""
    return (f"{card['objective']}: held-out accuracy {card['heldout_accuracy']:.3f} [95% {low:.3f}, {high:.3f}] on "
            f"{card['heldout_pairs']} pairs; trained on {card['train']['per_source']} in {card['seconds']} s{warning}")


def reward_accuracies(run: Run) -> pd.DataFrame:
    """One row per reward model the run holds: objective, accuracy, lower, upper, pairs, near_chance.

    Unreadable cards are skipped; missing numbers read as NaN.
    """
    rows = []
    for folder in sorted(rewards_dir(run).glob("*")):
        card = read_reward_card(run, folder.name)
        if card is None:
            continue
        interval = card.get("interval")
        lower, upper = interval if isinstance(interval, list) and len(interval) == 2 else (math.nan, math.nan)
        rows.append({"objective": folder.name, "accuracy": card.get("heldout_accuracy", math.nan),
                     "lower": lower, "upper": upper, "pairs": card.get("heldout_pairs", math.nan)})
    frame = pd.DataFrame(rows, columns=["objective", "accuracy", "lower", "upper", "pairs"]).astype(
        {"accuracy": float, "lower": float, "upper": float, "pairs": float})
    frame["near_chance"] = [is_near_chance(i) for i in zip(frame.lower, frame.upper)]
    return frame


def at_chance(accuracies: pd.DataFrame) -> set[str]:
    """The objectives of `reward_accuracies` whose reward model is near chance: said in words, never drawn."""
    return set(accuracies[accuracies.near_chance].objective) if not accuracies.empty else set()


def load_reward(run: Run, objective: str, base: LoadedModel) -> RewardModel:
    """A reward model the run holds, without training; a clear error when there is none."""
    from .reward_models import BootstrapHeads, BradleyTerryHead, FeatureExtractor, FeatureRewardModel, HubRewardModel

    card = read_reward_card(run, objective)
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


def bootstrap_heads(card: dict[str, Any] | None) -> tuple[int, str]:
    """(how many bootstrap heads a reward card records, their key), or (0, why there are none)."""
    if card is None:
        return 0, "no reward model card"
    if card.get("kind") == "hub":
        return 0, "a hub reward model cannot be refit"
    info = card.get("bootstrap")
    if not isinstance(info, dict) or not info.get("heads"):
        return 0, "trained without bootstrap heads, which retraining adds"
    return int(info["heads"]), str(info["key"])


# -----------------------------------------------------------------------------
# the job


@dataclass
class RewardJobConfig:
    kind: str = helped("", "Switch the run's reward models (saved in its config): 'features' (offline default), "
                           "Bradley-Terry heads on the base model's hidden states trained on the run's reward pairs; "
                           "'hub': Ray2333's GPT-2 helpful/harmless models (online). Empty: keep the run's.")

    def validate(self) -> None:
        if self.kind not in ("", "features", "hub"):
            raise ConfigError(f"rewards kind={self.kind!r}: use 'features', 'hub', or nothing to keep the run's.")


PRESETS = {"default": RewardJobConfig()}


def run_rewards(context: RunContext, config: RewardJobConfig, reporter: Reporter) -> dict[str, RewardModel]:
    """The rewards job: train (or load) every objective's reward model and report its accuracy."""
    if config.kind and config.kind != context.config.rewards.kind:
        context.config.rewards = default_reward_config(context.config.data, config.kind)
        context.run.save_config(context.config)
    return reward_models(context, reporter)
