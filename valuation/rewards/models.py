"""The reward models themselves: score a reply to a conversation, higher = better.

Two kinds behind one interface (`RewardModel.score(prompts, responses) -> np.ndarray`):
- `FeatureRewardModel` (offline default): a Bradley-Terry logistic head on frozen hidden states of
  the run's own base model (`FeatureExtractor`).
- `HubRewardModel`: any sequence-classification reward model by hub id or local path; online, the
  usual pair is Ray2333's GPT-2 large helpful/harmless models.

Bradley-Terry: P(chosen > rejected) = sigmoid(r(chosen) - r(rejected)) with r(x) = w . f(x), so the
head is a logistic regression without bias on feature differences f(chosen) - f(rejected).
Training them on a run's pairs, and caching them in the run, is `rewards.store`.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..data.preferences import Messages
from ..lm.models import LoadedModel, pick_device
from ..lm.tokens import prompt_ids, reply_ids
from .cards import RewardError
from ..progress import Progress


class RewardModel(Protocol):
    name: str
    key: str  # a digest of everything that produced it: stored scores are reused only under the same key

    def score(self, prompts: list[Messages], responses: list[str], progress: Progress | None = None) -> np.ndarray:
        """One reward per (conversation, assistant reply) pair, float64, higher = better."""
        ...


# -----------------------------------------------------------------------------
# features of the frozen base model


def cut_left(prompt: list[int], reply: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """A transcript cut from the LEFT to max_length tokens, so the judged reply (or its end, if it
    alone is longer) is kept: (the prompt tokens it still sees, the reply tokens)."""
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
            seen, ids = cut_left(prompts_ids[key], reply_ids(tokenizer, reply, end=True), self.max_length)
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
class BootstrapHeads:
    """K Bradley-Terry heads, each refit (standardisation included) on a bootstrap resample of the
    training pairs: the reward model's own sampling noise. Head k scores f . weight[k] + bias[k],
    which is its r(f) = w_k . (f - mean_k) / std_k folded into one affine map (a K x d matrix)."""

    weight: torch.Tensor  # [K, d]
    bias: torch.Tensor  # [K]

    @classmethod
    def fit(cls, chosen: torch.Tensor, rejected: torch.Tensor, l2: float, heads: int, seed: int,
            groups: list[str] | None = None) -> "BootstrapHeads":
        """`heads` refits of `BradleyTerryHead.fit` on pairs drawn with replacement; with `groups`
        (each pair's prompt) whole prompts are drawn, so pairs sharing a prompt stay together."""
        rng = np.random.default_rng(seed)
        keys = groups if groups is not None else list(range(len(chosen)))
        clusters: dict = {}
        for i, key in enumerate(keys):
            clusters.setdefault(key, []).append(i)
        members = list(clusters.values())
        weights, biases = [], []
        for _ in range(heads):
            drawn = rng.integers(len(members), size=len(members))
            rows = torch.tensor([i for c in drawn for i in members[c]])
            head = BradleyTerryHead.fit(chosen[rows], rejected[rows], l2)
            weights.append(head.weight / head.std)
            biases.append(-(head.mean / head.std) @ head.weight)
        return cls(torch.stack(weights), torch.stack(biases))

    def __len__(self) -> int:
        return int(self.weight.shape[0])

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """[responses, K]: every response's reward under every head."""
        return features.float() @ self.weight.T + self.bias

    def save(self, path: Path) -> None:
        save_file({"weight": self.weight.contiguous(), "bias": self.bias.contiguous()}, str(path))

    @classmethod
    def load(cls, path: Path) -> "BootstrapHeads | None":
        """The stored heads, or None when the file is absent or unreadable (the intervals then cover
        prompts only; the main head does not depend on them)."""
        try:
            tensors = load_file(str(path))
            return cls(tensors["weight"], tensors["bias"])
        except Exception:  # absent, truncated or foreign: optional, so no error
            return None


@dataclass
class FeatureRewardModel:
    name: str
    features: FeatureExtractor
    head: BradleyTerryHead
    key: str = ""  # a digest of what produced it (`RewardModel.key`)
    bootstrap: BootstrapHeads | None = None
    bootstrap_key: str = ""  # which bootstrap heads: stored bootstrap rewards are reused only under the same key

    def score(self, prompts: list[Messages], responses: list[str], progress: Progress | None = None) -> np.ndarray:
        return self.head(self.features(prompts, responses, progress)).double().numpy()

    def score_heads(self, prompts: list[Messages], responses: list[str], progress: Progress | None = None
                    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(the main head's rewards [responses], every bootstrap head's [K, responses] or None),
        from one feature extraction."""
        features = self.features(prompts, responses, progress)
        heads = None if self.bootstrap is None else self.bootstrap(features).T.double().numpy()
        return self.head(features).double().numpy(), heads


# -----------------------------------------------------------------------------
# sequence-classification reward models from the hub or a local folder


def hh_transcript(prompt: Messages, reply: str) -> str:
    """Anthropic HH format, the one Ray2333's reward models were trained on."""
    turns = [f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in prompt if m["role"] != "system"]
    return "".join(turns) + f"\n\nAssistant: {reply}"


class HubRewardModel:
    """A sequence classifier whose single logit is the reward (safetensors weights only)."""

    def __init__(self, model: str, name: str = "", device: str = "auto", max_length: int = 1024, batch_size: int = 8,
                 key: str = ""):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.name, self.key = name or Path(model).name, key
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
