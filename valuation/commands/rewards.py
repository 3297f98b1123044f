"""python -m valuation rewards --run runs/NAME [--kind features|hub]"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="A run directory (runs/NAME) whose sources are chosen.")
    parser.add_argument("--kind", choices=["features", "hub"], default=None,
                        help="Switch the run's reward models (saved in its config): 'features' (offline default), "
                        "Bradley-Terry heads on the base model's hidden states trained on the run's reward pairs; "
                        "'hub': Ray2333's GPT-2 helpful/harmless models (online).")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..jobs import job_session
    from ..models import load_model
    from ..rewards import default_reward_config, is_near_chance, load_or_train_rewards, read_reward_card
    from ..runs import Run

    run_dir = Run.at(args.run)
    config = run_dir.load_config()
    if args.kind and args.kind != config.rewards.kind:
        config.rewards = default_reward_config(config.data, args.kind)
        run_dir.save_config(config)
    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.setdefault(stage, tqdm(total=total, desc=stage, unit="text"))
        bar.update(done - bar.n)

    with job_session(run_dir, "rewards"):
        models = load_or_train_rewards(run_dir, load_model(config.model), config.rewards, progress)
    for bar in bars.values():
        bar.close()
    for name in models:
        card = read_reward_card(run_dir, name)
        low, high = card["interval"]
        warning = "  (near chance: treat its utilities with care)" if is_near_chance(card["heldout_accuracy"], card["interval"]) else ""
        print(f"{name}: held-out accuracy {card['heldout_accuracy']:.3f} [95% {low:.3f}, {high:.3f}] on "
              f"{card['heldout_pairs']} pairs; trained on {card['train']['per_source']} in {card['seconds']} s{warning}")
    return 0
