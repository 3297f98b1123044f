"""DPO on the top layers: a LoRA adapter on the top K decoder layers, trained over a frozen trunk.

TRL's DPOTrainer runs every pair through the whole model in every step. When the adapter sits on
the top K layers only, the layers below compute the same thing in every step, epoch and seed, so:

1. Each pair's chosen and rejected sequences go once through the base's lower layers; the hidden
   states entering layer L - K (the trunk, `lm.trunk`) are kept in the run's cache.
2. The reference log-likelihoods log pi_0(y|x) are read off the base's top layers on that trunk,
   once per pair, before the adapter exists.
3. Each step runs only the top K layers forward and backward (the vocabulary projection only where
   a reply token is predicted) and takes DPO's loss on the implicit reward margin

       z = beta * ( [log pi(y+|x) - log pi_0(y+|x)] - [log pi(y-|x) - log pi_0(y-|x)] )
       sigmoid:  -log sigmoid(z)                                       (DPO)
       robust:   (-(1 - e) log sigmoid(z) + e log sigmoid(-z)) / (1 - 2e)   (rDPO, labels flipped at rate e)

   the same reference-relative losses, with TRL's names and formulas, that the arithmetic rests on.

The optimiser (AdamW), the schedule with warm-up, gradient clipping at 1 and the batch shape are
those TRL's trainer uses, so a preset reads the same whichever trainer runs it.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..lm.tokens import prompt_ids, reply_ids
from ..lm.trunk import Tokens, cached_trunk_states, judged_replies, layer_count, precision, reply_log_likelihoods
from .settings import TrainConfig, TrainingError

if TYPE_CHECKING:
    from pathlib import Path

    from ..lm.models import LoadedModel
    from ..progress import Reporter

MAX_GRAD_NORM = 1.0  # the Trainer's default, which TRL's DPO runs use


def first_trained_layer(model: torch.nn.Module, config: TrainConfig) -> int:
    """The lowest layer an adapter trained with `config` changes: L - train_layers (0: every layer)."""
    layers = layer_count(model)
    if config.train_layers > layers:
        raise TrainingError(f"training.train_layers={config.train_layers} but the model has {layers} decoder layers: "
                            f"choose at most {layers} (0 trains every layer).")
    return layers - config.train_layers if config.train_layers else 0


def pair_tokens(rows: list[dict[str, Any]], tokenizer: Any, max_length: int) -> Tokens:
    """Each training row's chosen then rejected sequence: its prompt (already cut to fit) and the
    reply closed by the end token, cut at the end to `max_length` tokens in all."""
    ids, replies = [], []
    for row in rows:
        prompt = prompt_ids(tokenizer, row["prompt"])
        for side in ("chosen", "rejected"):
            reply = reply_ids(tokenizer, row[side][0]["content"], end=True)[:max(1, max_length - len(prompt))]
            ids.append(prompt + reply)
            replies.append(len(reply))
    return Tokens(ids, replies)


def dpo_loss(margin: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """Mean DPO loss over pairs of implicit reward margins z (already times beta)."""
    if config.loss_type == "robust":
        e = config.label_smoothing
        return ((-(1 - e) * F.logsigmoid(margin) + e * F.logsigmoid(-margin)) / (1 - 2 * e)).mean()
    return -F.logsigmoid(margin).mean()


def batches(pairs: int, config: TrainConfig, seed: int) -> list[list[list[int]]]:
    """The optimiser steps, each a list of micro-batches of pair indices: `epochs` passes (the last
    one partial when epochs is fractional) over the pairs, reshuffled each pass by the seed."""
    generator = torch.Generator().manual_seed(seed)
    visits = round(pairs * config.epochs)
    order = torch.cat([torch.randperm(pairs, generator=generator) for _ in range(math.ceil(visits / pairs))])[:visits]
    micro = [order[k:k + config.batch_size].tolist() for k in range(0, visits, config.batch_size)]
    return [micro[k:k + config.gradient_accumulation] for k in range(0, len(micro), config.gradient_accumulation)]


def fit_top_layers(loaded: LoadedModel, name: str, rows: list[dict[str, Any]], config: TrainConfig, seed: int,
                   reporter: Reporter, cache: Path | None) -> tuple[Any, list[dict[str, Any]]]:
    """Train a LoRA adapter on the top `config.train_layers` layers of `loaded.model` by DPO over the
    cached trunk of `rows` (TRL's conversational rows); the PeftModel and its curve (one point a step)."""
    from peft import LoraConfig, get_peft_model
    from transformers import get_scheduler

    torch.manual_seed(seed)
    model, device = loaded.model, loaded.device
    first = first_trained_layer(model, config)
    tokens = pair_tokens(rows, loaded.tokenizer, config.max_length)
    # 1. the trunk, once per pair; 2. the reference, once per pair, on the base's own top layers
    with precision(config.precision, device):
        trunks = cached_trunk_states(model, loaded.name, tokens, first, cache, progress=reporter.stage(f"{name}: trunk"))
        reference = judged_replies(model, trunks, tokens, first, progress=reporter.stage(f"{name}: reference log-probs"))
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.lora_targets, layers_to_transform=list(range(first, layer_count(model))),
                      task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    steps = batches(len(rows), config, seed)
    scheduler = get_scheduler(config.scheduler if config.scheduler != "constant" else "constant_with_warmup", optimizer,
                              num_warmup_steps=math.ceil(config.warmup_ratio * len(steps)), num_training_steps=len(steps))
    # 3. each step: the top layers forward and backward on its pairs' trunks, and DPO's loss
    history, started = [], time.time()
    model.train()
    for step, micro_batches in enumerate(steps, start=1):
        margins, losses = [], []
        for pairs in micro_batches:
            rows_of = [2 * p + side for p in pairs for side in (0, 1)]  # chosen, rejected
            with precision(config.precision, device):
                scored = reply_log_likelihoods(model, [trunks[r] for r in rows_of], tokens.take(rows_of), first)
            gain = scored - reference[rows_of]
            margin = config.beta * (gain[0::2] - gain[1::2])
            loss = dpo_loss(margin, config)
            (loss * len(pairs) / sum(map(len, micro_batches))).backward()
            margins.append(margin.detach())
            losses.append(loss.detach() * len(pairs))
        torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        margin = torch.cat(margins)
        point = {"step": step, "loss": float(sum(losses) / len(margin)), "accuracy": float((margin > 0).float().mean()),
                 "margin": float(margin.mean())}
        history.append(point)
        elapsed = time.time() - started
        reporter.step(name, step, len(steps), loss=point["loss"], accuracy=point["accuracy"], margin=point["margin"],
                      eta=elapsed / step * (len(steps) - step))
    return model.eval(), history
