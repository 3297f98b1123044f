"""Reward models: score a reply to a conversation, higher = better. One utility per reward model.

Two kinds behind one interface (`RewardModel.score(prompts, responses) -> np.ndarray`):
- `FeatureRewardModel` (offline default): a Bradley-Terry logistic head on frozen hidden states of
  the run's own base model, trained on the run's reward split (pairs disjoint by prompt from every
  source's training pairs and from the evaluation prompts).
- `HubRewardModel`: any sequence-classification reward model by hub id or local path; online, the
  usual pair is Ray2333's GPT-2 large helpful/harmless models.

Bradley-Terry: P(chosen > rejected) = sigmoid(r(chosen) - r(rejected)) with r(x) = w . f(x), so the
head is a logistic regression without bias on feature differences f(chosen) - f(rejected).

Trained heads live in the run: rewards/<objective>/head.safetensors + reward.json (what produced
it, the pairs it trained on, its held-out accuracy with a 95% interval).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .config import DataConfig, RewardConfig, RewardObjective, to_dict
from .data import HH_SUBSETS, Messages, PreferencePair, load_preferences
from .errors import UserError
from .models import LoadedModel, chat_prompt, pick_device
from .runs import Run
from .splits import seeded_uniform, split_preferences
from .storage import atomic_dir, atomic_write_json

HELPFUL_HUB_ID = "Ray2333/gpt2-large-helpful-reward_model"
HARMLESS_HUB_ID = "Ray2333/gpt2-large-harmless-reward_model"
HEAD_FILE, CARD_FILE = "head.safetensors", "reward.json"
REWARD_SALT = "rewards\x00"  # reward-model subsets and held-out parts draw independently of the split

Progress = Callable[[int, int], None]  # (texts done, texts in all)
TrainingProgress = Callable[[str, int, int], None]  # (what is happening, done, total)


class RewardError(UserError):
    """A reward model that cannot be built, loaded or used; the message says what to change."""


class RewardModel(Protocol):
    name: str

    def score(self, prompts: list[Messages], responses: list[str], progress: Progress | None = None) -> np.ndarray:
        """One reward per (conversation, assistant reply) pair, float64, higher = better."""
        ...


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


def is_near_chance(accuracy: float, interval: tuple[float, float] | list[float]) -> bool:
    """True when a reward model barely beats a coin: its interval holds 0.5 or its accuracy is below 0.55."""
    return accuracy < 0.55 or interval[0] <= 0.5 <= interval[1]


def pairwise_accuracy(model: RewardModel, pairs: list[PreferencePair], progress: Progress | None = None) -> float:
    """Share of pairs whose chosen reply scores above the rejected one (ties count half)."""
    chosen, rejected = _score_pairs(model, pairs, progress)
    return float(np.mean((chosen > rejected) + 0.5 * (chosen == rejected)))


def _score_pairs(model: RewardModel, pairs: list[PreferencePair], progress: Progress | None) -> tuple[np.ndarray, np.ndarray]:
    scores = model.score([p.prompt for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs], progress)
    return scores[: len(pairs)], scores[len(pairs):]


# -----------------------------------------------------------------------------
# features of the frozen base model


def transcript_ids(tokenizer, prompt: Messages, reply: str, max_length: int) -> tuple[list[int], list[int]]:
    """One transcript as (prompt ids, reply ids): chat-template(prompt) + reply + end token, cut from
    the LEFT to max_length tokens, so the judged reply (or its end, if it alone is longer) is kept."""
    return cut_left(prompt_ids(tokenizer, prompt), reply_ids(tokenizer, reply), max_length)


def prompt_ids(tokenizer, prompt: Messages) -> list[int]:
    return tokenizer(chat_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]


def reply_ids(tokenizer, reply: str) -> list[int]:
    ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else ids


def cut_left(prompt: list[int], reply: list[int], max_length: int) -> tuple[list[int], list[int]]:
    reply = reply[-max_length:]
    room = max_length - len(reply)
    return (prompt[-room:] if room else []), reply


@dataclass
class _Packed:
    """One forward-pass row: a prompt once, then several replies to it, each seeing only the prompt
    and itself (as if it were alone), so a conversation is read once however many replies it has."""

    prompt: list[int]
    replies: list[tuple[int, list[int], int]]  # (index in the caller's list, reply ids, prompt tokens it sees)

    def __len__(self) -> int:
        return len(self.prompt) + sum(len(ids) for _, ids, _ in self.replies)

    def layout(self, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """input ids, position ids and the [width, width] attention mask (True = may attend), right-padded."""
        p = len(self.prompt)
        ids, positions, segment, sees_from = list(self.prompt), list(range(p)), [0] * p, [0] * p
        for number, (_, reply, seen) in enumerate(self.replies, start=1):
            ids += reply
            positions += range(p, p + len(reply))  # every reply continues the prompt at the same position
            segment += [number] * len(reply)
            sees_from += [p - seen] * len(reply)
        pad = width - len(ids)
        segment_t = torch.tensor(segment + [-1] * pad)
        k = torch.arange(width)
        causal = k[None, :] <= k[:, None]
        visible_prompt = (segment_t[None, :] == 0) & (k[None, :] >= torch.tensor(sees_from + [0] * pad)[:, None])
        own_segment = segment_t[None, :] == segment_t[:, None]
        mask = (causal & (visible_prompt | own_segment) & (segment_t[:, None] >= 0)) | torch.eye(width, dtype=torch.bool)
        return torch.tensor(ids + [0] * pad), torch.tensor(positions + [0] * pad), mask


@dataclass
class FeatureExtractor:
    """Per transcript, for each chosen layer: the last token's hidden state and the mean over the
    reply's tokens, concatenated (2 * layers * hidden numbers).

    Replies to the same conversation are packed behind one copy of it (`_Packed`): each reply sees
    the prompt and itself at the positions it would have alone, so the prompt is paid for once
    (a pair costs prompt + 2 replies instead of 2 prompts + 2 replies; many samples, far less)."""

    base: LoadedModel
    layers: list[int]
    max_length: int
    autocast: str = "bfloat16"
    batch_tokens: int = 4096

    @property
    def layer_indices(self) -> list[int]:
        depth = self.base.model.config.num_hidden_layers
        return sorted({min(layer, depth) for layer in self.layers})

    @torch.inference_mode()
    def __call__(self, prompts: list[Messages], responses: list[str], progress: Progress | None = None) -> torch.Tensor:
        rows = self._pack(prompts, responses)
        features: list[torch.Tensor | None] = [None] * len(responses)
        done = 0
        for batch in self._batches(rows):
            for index, row in self._batch_features(batch):
                features[index] = row
            done += sum(len(r.replies) for r in batch)
            if progress:
                progress(done, len(responses))
        return torch.stack(features) if features else torch.empty(0)

    def _pack(self, prompts: list[Messages], responses: list[str]) -> list[_Packed]:
        """Group replies by conversation, up to 2 * max_length tokens a row; longest rows first."""
        tokenizer, rows, prompts_ids = self.base.tokenizer, {}, {}
        for index, (prompt, reply) in enumerate(zip(prompts, responses)):
            key = json.dumps(prompt, sort_keys=True)
            if key not in prompts_ids:
                prompts_ids[key] = prompt_ids(tokenizer, prompt)
            seen, ids = cut_left(prompts_ids[key], reply_ids(tokenizer, reply), self.max_length)
            group = rows.setdefault(key, [])
            if not group or len(group[-1]) + len(ids) > 2 * self.max_length:
                # The row holds the longest prompt view (beside a one-token reply); each reply sees its own tail.
                group.append(_Packed(prompts_ids[key][-(self.max_length - 1):], []))
            group[-1].replies.append((index, ids, len(seen)))
        return sorted((row for group in rows.values() for row in group), key=len, reverse=True)

    def _batches(self, rows: list[_Packed]) -> list[list[_Packed]]:
        """Consecutive rows (sorted by length) while the padded batch stays within batch_tokens."""
        batches: list[list[_Packed]] = []
        for row in rows:
            if batches and len(batches[-1][0]) * (len(batches[-1]) + 1) <= self.batch_tokens:
                batches[-1].append(row)
            else:
                batches.append([row])
        return batches

    def _batch_features(self, batch: list[_Packed]) -> list[tuple[int, torch.Tensor]]:
        width = len(batch[0])
        ids, positions, mask = (torch.stack(parts).to(self.base.device) for parts in zip(*(r.layout(width) for r in batch)))
        mask = mask[:, None]
        if self.base.model.config._attn_implementation != "sdpa":  # eager attention adds the mask: 0 or -inf
            mask = torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
        with self._base_only(), self._precision():
            hidden = self._decoder()(input_ids=ids, position_ids=positions, attention_mask=mask,
                                     output_hidden_states=True).hidden_states
        out = []
        for b, row in enumerate(batch):
            start = len(row.prompt)
            for index, reply, _ in row.replies:
                span = [hidden[layer][b, start:start + len(reply)].float() for layer in self.layer_indices]
                # The last token summarises the transcript; the mean summarises the reply.
                out.append((index, torch.cat([part for h in span for part in (h[-1], h.mean(0))]).cpu()))
                start += len(reply)
        return out

    def _decoder(self) -> torch.nn.Module:
        """The transformer without its language-model head (no vocabulary-sized logits to pay for)."""
        model = self.base.model
        model = model.get_base_model() if hasattr(model, "get_base_model") else model
        return model.get_decoder()

    def _base_only(self):
        """Adapters attached to the shared base (a PeftModel) are switched off while reading features."""
        model = self.base.model
        return model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()

    def _precision(self):
        if self.autocast == "float32":
            return nullcontext()
        return torch.autocast(self.base.device.type, dtype=torch.bfloat16)

    def settings(self) -> dict[str, Any]:
        return {"base_model": self.base.name, "layers": self.layer_indices, "max_length": self.max_length,
                "autocast": self.autocast}


# -----------------------------------------------------------------------------
# the Bradley-Terry head


@dataclass
class BradleyTerryHead:
    """r(x) = w . (f(x) - mean) / std; mean and std of the training features."""

    weight: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, chosen: torch.Tensor, rejected: torch.Tensor, l2: float, max_iter: int = 500) -> "BradleyTerryHead":
        """Minimise mean_i log(1 + exp(-w . d_i)) + l2/2 |w|^2 with d_i = standardised f(chosen_i) - f(rejected_i)."""
        everything = torch.cat([chosen, rejected]).double()
        mean, std = everything.mean(0), everything.std(0).clamp_min(1e-6)
        differences = (chosen.double() - rejected.double()) / std  # the mean cancels in a difference
        weight = torch.zeros(differences.shape[1], dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.LBFGS([weight], max_iter=max_iter, tolerance_grad=1e-7, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimiser.zero_grad()
            loss = torch.nn.functional.softplus(-differences @ weight).mean() + 0.5 * l2 * weight.dot(weight)
            loss.backward()
            return loss

        optimiser.step(closure)
        return cls(weight.detach().float(), mean.float(), std.float())

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return ((features.float() - self.mean) / self.std) @ self.weight

    def save(self, path: Path) -> None:
        save_file({"weight": self.weight, "mean": self.mean, "std": self.std}, str(path))

    @classmethod
    def load(cls, path: Path) -> "BradleyTerryHead":
        if not path.exists():
            raise RewardError(f"Reward head {path} is missing: retrain the reward models (python -m valuation rewards --run ...).")
        try:
            tensors = load_file(str(path))
            return cls(tensors["weight"], tensors["mean"], tensors["std"])
        except Exception as error:  # a truncated or foreign file
            raise RewardError(f"Reward head {path} cannot be read ({type(error).__name__}): retrain the reward models.") from None


@dataclass
class FeatureRewardModel:
    name: str
    features: FeatureExtractor
    head: BradleyTerryHead

    def score(self, prompts: list[Messages], responses: list[str], progress: Progress | None = None) -> np.ndarray:
        return self.head(self.features(prompts, responses, progress)).double().numpy()


# -----------------------------------------------------------------------------
# sequence-classification reward models from the hub or a local folder


def hh_transcript(prompt: Messages, reply: str) -> str:
    """Anthropic HH format, the one Ray2333's reward models were trained on."""
    turns = [f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in prompt if m["role"] != "system"]
    return "".join(turns) + f"\n\nAssistant: {reply}"


class HubRewardModel:
    """A sequence classifier whose single logit is the reward (safetensors weights only)."""

    def __init__(self, model: str, name: str = "", device: str = "auto", max_length: int = 1024, batch_size: int = 8):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.name = name or Path(model).name
        self.batch_size = batch_size
        path = _reward_model_path(model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
            self.model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=False, use_safetensors=True)
        except OSError as error:
            raise RewardError(f"Reward model {model!r} cannot be loaded (safetensors weights are required): {error}") from None
        if self.model.config.num_labels != 1:
            raise RewardError(f"Reward model {model!r} has {self.model.config.num_labels} outputs; a reward model has one.")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id  # the classifier reads the last non-pad token
        self.tokenizer.padding_side, self.tokenizer.truncation_side = "right", "left"  # the judged reply is at the end
        self.model.to(pick_device(device)).eval()
        self.max_length = min(max_length, getattr(self.model.config, "max_position_embeddings", None) or max_length)

    def render(self, prompt: Messages, reply: str) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": reply}], tokenize=False)
        return hh_transcript(prompt, reply)

    @torch.inference_mode()
    def score(self, prompts: list[Messages], responses: list[str], progress: Progress | None = None) -> np.ndarray:
        texts = [self.render(p, r) for p, r in zip(prompts, responses)]
        scores = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                   truncation=True, max_length=self.max_length).to(self.model.device)
            scores.append(self.model(**batch).logits[:, 0].float().cpu())
            if progress:
                progress(min(start + self.batch_size, len(texts)), len(texts))
        return torch.cat(scores).double().numpy() if scores else np.zeros(0)


def _reward_model_path(model: str) -> str:
    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser())
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(model, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"])
    except Exception as error:  # offline, unknown id, gated repo: one clear message for all
        raise RewardError(
            f"Reward model {model!r} is neither a local folder nor available from the hub ({type(error).__name__}). "
            "Offline, use rewards.kind='features' (reward heads trained here on the run's reward pairs)."
        ) from None


# -----------------------------------------------------------------------------
# training data: the run's reward split, per objective, with a held-out part


@dataclass
class ObjectivePairs:
    train: list[PreferencePair]
    heldout: list[PreferencePair]


def reward_split(data: DataConfig) -> dict[str, list[PreferencePair]]:
    """The reward part of the split over ALL the dataset's sources: disjoint by prompt from every
    source's training pairs and from the evaluation prompts, whichever sources a run values."""
    every_source = dataclasses.replace(data, sources=[])
    return split_preferences(load_preferences(every_source), every_source).reward


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


def load_or_train_rewards(run: Run, base: LoadedModel, config: RewardConfig | None = None,
                          progress: TrainingProgress | None = None) -> dict[str, RewardModel]:
    """Every objective's reward model: loaded from the run when what produced it is unchanged,
    else trained (kind 'features') or evaluated (kind 'hub') on the run's reward split and saved."""
    run_config = run.load_config()
    data = run_config.data
    config = config or run_config.rewards
    config.validate()
    objectives = resolved_objectives(config, data)
    models: dict[str, RewardModel] = {}
    reward: dict[str, list[PreferencePair]] | None = None
    for objective in objectives:
        key = _cache_key(config, objective, base, data)
        card = read_reward_card(run, objective.name)
        if card is None or card.get("key") != key:
            reward = reward if reward is not None else reward_split(data)
            _build(run, base, config, objective, key, objective_pairs(reward, objective, config), progress)
        models[objective.name] = load_reward(run, objective.name, base)
    return models


def _cache_key(config: RewardConfig, objective: RewardObjective, base: LoadedModel, data: DataConfig) -> dict[str, Any]:
    """Everything that decides a reward model; a cached one is reused only when all of it matches."""
    split = {k: v for k, v in to_dict(data).items() if k != "sources"}
    pairs = {"sources": objective.sources, "max_pairs": config.max_pairs, "holdout_fraction": config.holdout_fraction,
             "seed": config.seed, "data": split}
    if config.kind == "hub":
        return {"kind": "hub", "hub_model": objective.hub_model, "max_length": config.max_length, **pairs}
    return {"kind": "features", "base_model": base.name, "layers": config.layers, "max_length": config.max_length,
            "autocast": config.autocast, "l2": config.l2, **pairs}


def _build(run: Run, base: LoadedModel, config: RewardConfig, objective: RewardObjective, key: dict[str, Any],
           pairs: ObjectivePairs, progress: TrainingProgress | None) -> None:
    started = time.monotonic()

    def report(stage: str) -> Progress | None:
        return (lambda done, total: progress(f"{objective.name}: {stage}", done, total)) if progress else None

    card: dict[str, Any] = {"objective": objective.name, "kind": config.kind, "key": key}
    target = rewards_dir(run) / objective.name
    with atomic_dir(target) as folder:
        if config.kind == "hub":
            model: RewardModel = HubRewardModel(objective.hub_model, objective.name, str(base.device), config.max_length,
                                                config.batch_size)
            card["hub_model"] = objective.hub_model
        else:
            features = FeatureExtractor(base, config.layers, config.max_length, config.autocast, config.batch_tokens)
            train = pairs.train
            extracted = features([p.prompt for p in train] * 2, [p.chosen for p in train] + [p.rejected for p in train],
                                 report("features of training pairs"))
            chosen, rejected = extracted[: len(train)], extracted[len(train):]
            head = BradleyTerryHead.fit(chosen, rejected, config.l2)
            head.save(folder / HEAD_FILE)
            model = FeatureRewardModel(objective.name, features, head)
            card |= {**features.settings(), "l2": config.l2, "feature_size": int(chosen.shape[1]),
                     "train_accuracy": float(((head(chosen) > head(rejected)).float().mean()))}
        accuracy = pairwise_accuracy(model, pairs.heldout, report("held-out accuracy"))
        correct = round(accuracy * len(pairs.heldout))
        card |= {"heldout_accuracy": accuracy, "interval": list(wilson_interval(correct, len(pairs.heldout))),
                 "heldout_pairs": len(pairs.heldout), "seconds": round(time.monotonic() - started, 1),
                 "train": _describe_pairs(pairs.train), "heldout": _describe_pairs(pairs.heldout)}
        atomic_write_json(folder / CARD_FILE, card)


def read_reward_card(run: Run, objective: str) -> dict[str, Any] | None:
    """What a trained reward model recorded (accuracy, interval, pairs), or None if it has none yet."""
    path = rewards_dir(run) / objective / CARD_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # a damaged card means: train again


def load_reward(run: Run, objective: str, base: LoadedModel) -> RewardModel:
    """A reward model the run holds, without training; a clear error when there is none."""
    card = read_reward_card(run, objective)
    if card is None:
        trained = sorted(p.name for p in rewards_dir(run).glob("*") if (p / CARD_FILE).exists())
        raise RewardError(f"Run {run.name!r} has no reward model {objective!r} (trained: {trained or 'none'}): train it first.")
    if card["kind"] == "hub":
        return HubRewardModel(card["hub_model"], objective, str(base.device), card["key"]["max_length"])
    if card["base_model"] != base.name:
        raise RewardError(f"Reward model {objective!r} reads features of {card['base_model']!r}, not of {base.name!r}: retrain it.")
    features = FeatureExtractor(base, card["layers"], card["max_length"], card["autocast"])
    return FeatureRewardModel(objective, features, BradleyTerryHead.load(rewards_dir(run) / objective / HEAD_FILE))
