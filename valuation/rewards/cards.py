"""What the run's reward models are worth: each one's card (what produced it, the pairs it trained
on, its held-out accuracy with a 95% Wilson interval), read without loading the model, and the
one rule for a reward model that may be guessing (near chance: said in words, never drawn).

    <run>/rewards/<objective>/reward.json   the card (`rewards.store` writes it beside the model)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import UserError
from ..runs import Run

HEAD_FILE, CARD_FILE, BOOTSTRAP_FILE = "head.safetensors", "reward.json", "bootstrap.safetensors"


class RewardError(UserError):
    """A reward model that cannot be built, loaded or used; the message says what to change."""


def rewards_dir(run: Run) -> Path:
    return run.path / "rewards"


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


def chance_warning(row: Any) -> str:
    """The warning for a reward model near chance (a row of `accuracy_table`), in one sentence."""
    return (f"The {row.objective} reward model is near chance (its interval includes 50%: held-out accuracy "
            f"{row.accuracy:.1%} [{row.lower:.1%}, {row.upper:.1%}]): its rewards, and the values on {row.objective}, "
            "may be noise.")


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


def read_cards(run: Run) -> dict[str, dict[str, Any]]:
    """Every reward model's card the run holds, by objective; unreadable cards are skipped."""
    cards = {folder.name: read_reward_card(run, folder.name) for folder in sorted(rewards_dir(run).glob("*"))}
    return {objective: card for objective, card in cards.items() if card is not None}


def accuracy_table(cards: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per card: objective, accuracy, lower, upper, pairs, near_chance (missing numbers read as NaN)."""
    rows = []
    for objective, card in cards.items():
        interval = card.get("interval")
        lower, upper = interval if isinstance(interval, list) and len(interval) == 2 else (math.nan, math.nan)
        rows.append({"objective": objective, "accuracy": card.get("heldout_accuracy", math.nan),
                     "lower": lower, "upper": upper, "pairs": card.get("heldout_pairs", math.nan)})
    frame = pd.DataFrame(rows, columns=["objective", "accuracy", "lower", "upper", "pairs"]).astype(
        {"accuracy": float, "lower": float, "upper": float, "pairs": float})
    frame["near_chance"] = [is_near_chance(i) for i in zip(frame.lower, frame.upper)]
    return frame


def at_chance(accuracies: pd.DataFrame) -> set[str]:
    """The objectives of an `accuracy_table` whose reward model is near chance: said in words, never drawn."""
    return set(accuracies[accuracies.near_chance].objective) if not accuracies.empty else set()


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
