"""The rewards job: switch a run's reward models' kind if asked, then train (or load) every
objective's reward model and report its held-out accuracy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import ConfigError, DataConfig, RewardConfig, helped
from ..data.preferences import default_objectives
from .store import reward_models

if TYPE_CHECKING:
    from ..progress import Reporter
    from ..runtime.context import RunContext
    from .models import RewardModel


def default_reward_config(data: DataConfig, kind: str = "features") -> RewardConfig:
    """The offline default ('features'); kind='hub' uses Ray2333's helpful/harmless models instead."""
    return RewardConfig(kind=kind, objectives=default_objectives(data))


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
