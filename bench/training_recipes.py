"""Training recipes side by side: held-out margin and accuracy against CPU seconds, per source and seed.

    .venv/bin/python bench/training_recipes.py train --recipes trl-attention trl-all-linear
    .venv/bin/python bench/training_recipes.py judge
    .venv/bin/python bench/training_recipes.py table
    .venv/bin/python bench/training_recipes.py speed      # alone on the machine: seconds per step, side by side

`train` trains each recipe's adapter for every default source (the four offline HH-RLHF subsets)
under 2 seeds, and keeps a snapshot of the LoRA weights at a few points of training with the CPU
seconds spent to reach it. `judge` scores every snapshot on the same 256 held-out pairs of its
source (pairs no recipe trains on: the split's eval and reward parts), by its implicit reward
margin against the base. `table` prints the learning curves and the final verdicts. `speed` times
one optimiser step each way of computing it, side by side, and prints the ratios. Every step
writes its files when done (under --out), so a killed run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import valuation  # noqa: E402,F401  (sets OMP_WAIT_POLICY before torch loads)
import torch  # noqa: E402

from valuation.config import DataConfig, ModelConfig  # noqa: E402
from valuation.data.preferences import load_preferences  # noqa: E402
from valuation.data.splits import judging_pairs, split_preferences  # noqa: E402
from valuation.lm.models import load_model  # noqa: E402
from valuation.progress import Reporter  # noqa: E402
from valuation.lm.trunk import Tokens, cached_trunk_states, judged_replies, layer_count, precision  # noqa: E402
from valuation.rewards.heldout import judged  # noqa: E402
from valuation.training.dpo import fit_adapter, source_seed  # noqa: E402
from valuation.training.pairs import select_pairs  # noqa: E402
from valuation.training.top_layers import first_trained_layer, pair_tokens  # noqa: E402
from valuation.training.settings import PRESETS, TrainConfig  # noqa: E402

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOP4 = replace(TrainConfig(), train_layers=4, lora_targets=ALL_LINEAR, max_pairs=256, epochs=3.0)
RECIPES: dict[str, TrainConfig] = {
    "trl-attention": PRESETS["quick"],  # the quick preset before this bench: every layer, 120 pairs, 1 epoch
    "trl-all-linear": replace(TrainConfig(), lora_targets=ALL_LINEAR),
    "top4": TOP4,  # the top 4 of 30 layers over a cached trunk, every linear module, 256 pairs, 3 epochs
    "top4-attention": replace(TOP4, lora_targets=PRESETS["quick"].lora_targets),
    "top8": replace(TOP4, train_layers=8),
    "top4-robust": replace(TOP4, loss_type="robust", label_smoothing=0.1),
    # twice the pairs, each shorter, for the same tokens: 512 x 96 tokens x 2 epochs against 256 x 128 x 3
    "top4-short": replace(TOP4, max_pairs=512, max_length=96, max_prompt_length=64, epochs=2.0),
    # every pair seen once: up to 1,024 short pairs in one epoch (the helpful sources overfit 256 pairs by the second)
    "top4-more": replace(TOP4, max_pairs=1024, max_length=96, max_prompt_length=64, epochs=1.0),
}
SNAPSHOTS = 3  # points on each curve, evenly spaced in optimiser steps
SEEDS = 2
JUDGED_PAIRS = 256


class SnapshotReporter(Reporter):
    """A quiet reporter that keeps the model's LoRA weights at chosen optimiser steps, with the CPU time spent."""

    def __init__(self, events: Path, model: torch.nn.Module, name: str, started: tuple[float, float]):
        super().__init__(events)
        self.model, self.name, self.started = model, name, started
        self.snapshots: list[dict] = []

    def log(self, message: str) -> None:
        with (self.events.parent / "log.txt").open("a") as handle:
            handle.write(message + "\n")

    def step(self, stage: str, done: int, total: int, **fields) -> None:
        self.event("step", stage=stage, done=done, total=total, **fields)
        if stage != self.name:
            return  # the reference pass: counted in the time, not a point of the curve
        wanted = {round(total * k / SNAPSHOTS) for k in range(1, SNAPSHOTS + 1)}
        if done in wanted:
            weights = {k: v.detach().clone() for k, v in self.model.state_dict().items() if "lora_" in k}
            self.snapshots.append({"step": done, "steps": total, "weights": weights,
                                   "cpu_s": time.process_time() - self.started[0], "wall_s": time.time() - self.started[1],
                                   "loss": fields.get("loss")})


def default_split():
    config = DataConfig()
    data = load_preferences(config)
    return data, split_preferences(data, config)


def train(out: Path, recipes: list[str], seeds: int) -> None:
    data, split = default_split()
    for recipe in recipes:  # one recipe whole (every source, both seeds) before the next
        for replica in range(seeds):
            for source in data.sources:
                folder = out / recipe / f"{source}@{replica + 1}"
                if (folder / "curve.json").exists():
                    continue
                folder.mkdir(parents=True, exist_ok=True)
                loaded = load_model(ModelConfig())
                started = (time.process_time(), time.time())
                reporter = SnapshotReporter(folder / "events.jsonl", loaded.model, source, started)
                _, record = fit_adapter(loaded, source, split.train[source], RECIPES[recipe],
                                        source_seed(0, source, replica), reporter, cache=out / "cache")
                torch.save([s.pop("weights") for s in reporter.snapshots], folder / "snapshots.pt")
                curve = {"recipe": recipe, "source": source, "seed": replica + 1, "pairs": record["pairs_used"],
                         "settings": record["settings"], "points": reporter.snapshots,
                         "cpu_s": time.process_time() - started[0], "wall_s": time.time() - started[1]}
                (folder / "curve.json").write_text(json.dumps(curve, indent=1))
                print(f"{recipe} {source} seed {replica + 1}: {curve['wall_s']:.0f} s wall, {curve['cpu_s']:.0f} s CPU",
                      flush=True)


def judging_tokens(source: str, data, split, tokenizer) -> Tokens:
    """The same 256 pairs for every recipe: the source's pairs in the split's eval and reward parts
    (no recipe trains on them), encoded as training encodes them at the quick preset's lengths."""
    pairs = judging_pairs(source, data, split, DataConfig()) + split.reward[source]  # disjoint from train by prompt
    rows = select_pairs(pairs[:JUDGED_PAIRS], tokenizer, replace(PRESETS["quick"], max_pairs=0)).rows
    return pair_tokens(rows, tokenizer, PRESETS["quick"].max_length)


def judge(out: Path) -> None:
    from peft import LoraConfig, get_peft_model

    data, split = default_split()
    loaded = load_model(ModelConfig())
    base = loaded.model
    scored_base: dict[tuple[str, int], tuple] = {}
    for curve_path in sorted(out.glob("*/*/curve.json")):
        folder = curve_path.parent
        if (folder / "judged.json").exists():
            continue
        curve = json.loads(curve_path.read_text())
        config = TrainConfig(**{k: v for k, v in curve["settings"].items() if k in TrainConfig.__dataclass_fields__})
        first = first_trained_layer(base, config)
        source = curve["source"]
        if (source, first) not in scored_base:
            tokens = judging_tokens(source, data, split, loaded.tokenizer)
            with precision("bfloat16", loaded.device):
                trunks = cached_trunk_states(base, loaded.name, tokens, first, out / "cache")
                scored_base[(source, first)] = (tokens, trunks, judged_replies(base, trunks, tokens, first))
        tokens, trunks, reference = scored_base[(source, first)]
        layers = list(range(first, layer_count(base)))
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, target_modules=config.lora_targets,
                          layers_to_transform=layers, task_type="CAUSAL_LM")
        model = get_peft_model(base, lora)
        points = []
        for point, weights in zip(curve["points"], torch.load(folder / "snapshots.pt")):
            # The snapshot holds the wrapped base's LoRA tensors: under the PeftModel they sit one level down.
            missing = model.load_state_dict({f"base_model.model.{k}": v for k, v in weights.items()}, strict=False)
            assert not missing.unexpected_keys and len(weights), missing.unexpected_keys[:3]
            with precision("bfloat16", loaded.device):
                gain = judged_replies(model, trunks, tokens, first) - reference
            points.append({**point, **judged((0.1 * (gain[0::2] - gain[1::2])).numpy()), "pairs": len(tokens) // 2})
        base = model.unload()
        (folder / "judged.json").write_text(json.dumps(points, indent=1))
        last = points[-1]
        print(f"{curve['recipe']} {source} seed {curve['seed']}: {last['verdict']} margin {last['margin']:+.3f} "
              f"[{last['margin_lower']:+.3f}, {last['margin_upper']:+.3f}] accuracy {last['accuracy']:.2f}", flush=True)


def speed(repeats: int = 3) -> None:
    """Seconds per optimiser step of 4 real pairs (8 sequences), each way of computing it side by side
    in this one process, and their ratios to TRL's way (every layer forward and backward, logits at
    every position). The best of `repeats` each."""
    from peft import LoraConfig, get_peft_model

    from valuation.lm.trunk import decoder, reply_log_likelihoods, run_layers, trunk_states
    from valuation.lm.forward import left_pad

    data, split = default_split()
    loaded = load_model(ModelConfig())
    rows = select_pairs(split.train["helpful-base"], loaded.tokenizer, replace(PRESETS["quick"], max_pairs=4)).rows
    tokens = pair_tokens(rows, loaded.tokenizer, PRESETS["quick"].max_length)
    ids, mask, positions = left_pad(tokens.ids, pad_id=0)
    layers = layer_count(loaded.model)

    def every_position(model, first, trunks):
        """The top layers on the trunk, logits at every position (what a plain forward computes)."""
        stack, head = decoder(model)
        width = ids.shape[1]
        hidden = torch.stack([torch.cat([t.new_zeros(width - len(t), t.shape[1]), t]) for t in trunks]).float()
        return head(stack.norm(run_layers(stack, hidden, mask, positions, stack.layers[first:]))).float().log_softmax(-1).sum()

    def timed(step) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            with precision("bfloat16", loaded.device):
                loss = step()
            loss.backward()
            times.append(time.perf_counter() - started)
        return min(times)

    ways = [  # (name, LoRA targets, layers adapted, how the step runs)
        ("every layer, attention LoRA, all logits (TRL's step)", PRESETS["quick"].lora_targets, layers, "whole"),
        ("every layer, all-linear LoRA, all logits", ALL_LINEAR, layers, "whole"),
        ("top 4 LoRA, whole model forward, all logits", ALL_LINEAR, 4, "whole"),
        ("top 4 LoRA on the cached trunk, all logits", ALL_LINEAR, 4, "trunk, all logits"),
        ("top 4 LoRA on the cached trunk, reply logits only", ALL_LINEAR, 4, "trunk"),
        ("top 8 LoRA on the cached trunk, reply logits only", ALL_LINEAR, 8, "trunk"),
    ]
    results = {}
    for name, targets, adapted, how in ways:
        first = layers - adapted
        trunks = trunk_states(loaded.model, tokens, first)
        model = get_peft_model(loaded.model, LoraConfig(r=8, lora_alpha=16, target_modules=targets,
                                                        layers_to_transform=list(range(first, layers))))
        step = {
            "whole": lambda: model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float().log_softmax(-1).sum(),
            "trunk, all logits": lambda: every_position(model, first, trunks),
            "trunk": lambda: reply_log_likelihoods(model, trunks, tokens, first).sum(),
        }[how]
        results[name] = timed(step)
        loaded.model = model.unload()
    started = time.perf_counter()
    with torch.no_grad(), precision("bfloat16", loaded.device):
        loaded.model(input_ids=ids, attention_mask=mask, position_ids=positions)
    results["the reference (or trunk) pass: every layer forward, no gradient"] = time.perf_counter() - started
    baseline = next(iter(results.values()))
    print("| a step of 4 pairs (8 sequences of at most 128 tokens) | seconds | speed-up over TRL's step |\n|---|---|---|")
    for name, seconds in results.items():
        print(f"| {name} | {seconds:.2f} | {baseline / seconds:.1f}x |")


def table(out: Path) -> None:
    """Markdown: the learning curves (every point of every adapter, averaged per recipe), then each
    source's final verdict under each seed."""
    judged_runs = [(json.loads((f / "curve.json").read_text()), json.loads((f / "judged.json").read_text()))
                   for f in sorted(p.parent for p in out.glob("*/*/judged.json"))]
    recipes = list(dict.fromkeys(curve["recipe"] for curve, _ in judged_runs))
    print("| recipe | point | CPU s | wall s | held-out accuracy | held-out margin | learned |")
    print("|---|---|---|---|---|---|---|")
    for recipe in recipes:
        runs = [points for curve, points in judged_runs if curve["recipe"] == recipe]
        for k in range(min(map(len, runs))):
            at = [points[k] for points in runs]
            mean = lambda key: sum(p[key] for p in at) / len(at)  # noqa: E731
            learned = sum(p["verdict"] == "learned" for p in at)
            print(f"| {recipe} | {at[0]['step']}/{at[0]['steps']} | {mean('cpu_s'):.0f} | {mean('wall_s'):.0f} | "
                  f"{mean('accuracy'):.3f} | {mean('margin'):+.3f} | {learned} of {len(at)} |")
    print("\n| recipe | source | seed | pairs | CPU s | held-out margin [95%] | accuracy [95%] | verdict |")
    print("|---|---|---|---|---|---|---|---|")
    for curve, points in judged_runs:
        last = points[-1]
        print(f"| {curve['recipe']} | {curve['source']} | {curve['seed']} | {curve['pairs']} | {curve['cpu_s']:.0f} | "
              f"{last['margin']:+.3f} [{last['margin_lower']:+.3f}, {last['margin_upper']:+.3f}] | "
              f"{last['accuracy']:.3f} [{last['accuracy_lower']:.3f}, {last['accuracy_upper']:.3f}] | {last['verdict']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["train", "judge", "table", "speed"])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--out", type=Path, default=Path("/tmp/training-recipes"))
    parser.add_argument("--seeds", type=int, default=SEEDS, help="Seeds to train (the first k): 1 to screen recipes.")
    args = parser.parse_args()
    if args.step == "train":
        train(args.out, args.recipes, args.seeds)
    elif args.step == "judge":
        judge(args.out)
    elif args.step == "table":
        table(args.out)
    else:
        speed()


if __name__ == "__main__":
    main()
