"""Planted faults, and how well each valuation finds them.

    .venv/bin/python bench/bad_sources.py [--root runs/bad-sources] [--replicates 2] [--pairs 250]

One data file is built at run time from one offline HH-RLHF subset (`--subset`, harmless-base by
default; never committed). Its sources, each on pairs of its own unless said otherwise:

    clean-1 .. clean-4   `--pairs` pairs each
    flipped              `--pairs` pairs, every label swapped
    noisy-30             `--pairs` pairs, 30% of the labels swapped (a seeded choice)
    duplicate            clean-1's pairs again, under its own name (so its own training seed)
    few                  16 pairs

and a trusted held-out file of `--gold` further pairs of the subset, as a buyer with a small gold set
would give it: every adapter's verdict and every coalition's utility are judged on it, never on the
sources' own labels. Each replicate is a run of its own (run seed r: its own training seeds) that
trains the eight adapters once at the quick preset; every scenario is then a game on a subset of
them, its coalitions' utilities read off one table of all 2^8 coalitions (held-out preference
accuracy and reward margin: `validate --experiments accuracy`):

    flipped     clean-1..4 + flipped            planted: flipped
    noisy-30    clean-1..4 + noisy-30           planted: noisy-30
    few         clean-1..4 + few                planted: few
    mixed       clean-1..3 + flipped + noisy-30 + few   planted: the last three
    duplicate   clean-1..4 + duplicate          nothing planted: the duplicate must equal clean-1 (symmetry)

Valuations: Shapley and leave-one-out on each objective (95% bootstrap intervals over the held-out
pairs), and two baselines a practitioner would try first: each source's own adapter's held-out
margin (with its interval) and its DPO training loss (mean of the last quarter of its steps; no
interval). For each, over scenarios and replicates: AUC (a planted source ranked more suspicious
than a clean one), top-k hits (k = planted sources), planted sources *found* (interval entirely on
the bad side of zero) and clean sources falsely found so. Every job resumes; the table is printed
and written to <root>/results.csv.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import valuation  # noqa: E402,F401  (sets OMP_WAIT_POLICY before torch loads)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from valuation.config import DataConfig, ModelConfig, RunConfig  # noqa: E402
from valuation.data.preferences import load_preferences  # noqa: E402
from valuation.data.sources import record_sources  # noqa: E402
from valuation.games.coalitions import parse_coalition  # noqa: E402
from valuation.games.intervals import bootstrap_intervals  # noqa: E402
from valuation.games.utility_table import UtilityTable  # noqa: E402
from valuation.jobs.registry import job_config, run_job  # noqa: E402
from valuation.lm.adapters import adapters_dir, read_record  # noqa: E402
from valuation.runs import Run, create_run  # noqa: E402
from valuation.training.verdicts import VERDICTS_FILE  # noqa: E402
from valuation.validation.accuracy import read_utilities  # noqa: E402
from valuation.validation.settings import accuracy_path  # noqa: E402

CLEAN = ["clean-1", "clean-2", "clean-3", "clean-4"]
SCENARIOS = {  # name: (sources, planted)
    "flipped": (CLEAN + ["flipped"], ["flipped"]),
    "noisy-30": (CLEAN + ["noisy-30"], ["noisy-30"]),
    "few": (CLEAN + ["few"], ["few"]),
    "mixed": (CLEAN[:3] + ["flipped", "noisy-30", "few"], ["flipped", "noisy-30", "few"]),
    "duplicate": (CLEAN + ["duplicate"], []),
}
FEW_PAIRS = 16
NOISE = 0.3


# ---------------------------------------------------------------- the planted data


def build_files(folder: Path, subset: str, pairs: int, gold: int) -> tuple[Path, Path]:
    """The sources' file and the trusted held-out file, from one offline HH-RLHF subset (one kind
    of preference, so that a clean source and a flipped one pull in opposite directions)."""
    pool = iter(load_preferences(DataConfig(sources=[subset])).by_source()[subset])

    def take(count: int) -> list:  # the next pairs of the subset, each used once
        return [next(pool) for _ in range(count)]

    sources = {name: [(p, False) for p in take(pairs)] for name in CLEAN}
    swapped = set(random.Random(0).sample(range(pairs), round(NOISE * pairs)))
    sources |= {"flipped": [(p, True) for p in take(pairs)],
                "noisy-30": [(p, k in swapped) for k, p in enumerate(take(pairs))],
                "duplicate": sources["clean-1"],
                "few": [(p, False) for p in take(FEW_PAIRS)]}
    folder.mkdir(parents=True, exist_ok=True)
    table, trusted = folder / "sources.jsonl", folder / "gold.jsonl"
    table.write_text("".join(row(p, flip, name) for name, rows in sources.items() for p, flip in rows))
    trusted.write_text("".join(row(p, False) for p in take(gold)))
    return table, trusted


def row(pair, flip: bool, source: str | None = None) -> str:
    chosen, rejected = (pair.rejected, pair.chosen) if flip else (pair.chosen, pair.rejected)
    return json.dumps({"prompt": pair.prompt, "chosen": chosen, "rejected": rejected,
                       **({"source": source} if source else {})}) + "\n"


def replicate(root: Path, seed: int, table: Path, trusted: Path, model: str, training: dict) -> Run:
    """One replicate: its run trained, judged and scored on every coalition (each step resumes)."""
    run = Run.at(root / f"replicate-{seed}")
    if not run.exists():
        create_run(run.name, RunConfig(model=ModelConfig(name=model), seed=seed), root=root)
        # The gold set: a sixth for the reward part (unused here); the rest judges, all of it as evaluation prompts.
        record_sources(run, DataConfig(dataset=str(table), heldout_file=str(trusted), reward_fraction=0.1,
                                       eval_fraction=0.5, eval_prompts=10_000, seed=seed))
    run_job(run, "train", job_config("train", **training))
    run_job(run, "validate", job_config("validate", experiments=["accuracy"]))
    return run


# ---------------------------------------------------------------- the valuations


def valuations(run: Run, sources: list[str]) -> pd.DataFrame:
    """Per valuation and source: value, lower, upper (NaN without an interval) and suspicion (higher:
    more suspect)."""
    utilities = read_utilities(accuracy_path(run))
    game = UtilityTable.from_frame(utilities[utilities.coalition.map(lambda c: parse_coalition(c) <= set(sources))])
    frames = []
    for index in ("shapley", "leave-one-out"):
        result = bootstrap_intervals(game.players, game, index=index).to_frame()
        frames.append(result.assign(valuation=index + ":" + result.objective))
    verdicts = pd.read_csv(adapters_dir(run) / VERDICTS_FILE).set_index("source").loc[sources]
    frames.append(pd.DataFrame({"valuation": "own adapter's held-out margin", "player": sources,
                                "value": verdicts.margin.to_numpy(), "lower": verdicts.margin_lower.to_numpy(),
                                "upper": verdicts.margin_upper.to_numpy()}))
    losses = [np.mean([s["loss"] for s in history[-max(1, len(history) // 4):]])
              for history in (read_record(run, s)["history"] for s in sources)]
    frames.append(pd.DataFrame({"valuation": "training loss", "player": sources, "value": losses,
                                "lower": np.nan, "upper": np.nan}))
    out = pd.concat(frames, ignore_index=True)[["valuation", "player", "value", "lower", "upper"]]
    out["suspicion"] = np.where(out.valuation == "training loss", out.value, -out.value)
    return out


def detection(values: pd.DataFrame, planted: list[str]) -> dict[str, float]:
    """How one valuation's values on one scenario single out its planted sources."""
    bad = values.player.isin(planted)
    planted_s, clean_s = values.suspicion[bad].to_numpy(), values.suspicion[~bad].to_numpy()
    above = (planted_s[:, None] > clean_s[None, :]).mean() + 0.5 * (planted_s[:, None] == clean_s[None, :]).mean()
    top = values.nlargest(len(planted), "suspicion").player
    found_side = values.upper < 0  # entirely on the bad side (a training loss has no interval: never)
    return {"auc": float(above), "top_k_hits": int(top.isin(planted).sum()), "planted": len(planted),
            "found": int((found_side & bad).sum()), "clean": int((~bad).sum()), "false_findings": int((found_side & ~bad).sum())}


def symmetry(values: pd.DataFrame) -> pd.DataFrame:
    """The duplicate against its original, per valuation: both values and whether their intervals overlap."""
    rows = []
    for valuation, group in values.groupby("valuation", sort=False):
        one, two = (group.set_index("player").loc[name] for name in ("clean-1", "duplicate"))
        overlap = bool(one.lower <= two.upper and two.lower <= one.upper) if pd.notna(one.lower) else None
        rows.append({"valuation": valuation, "clean-1": one.value, "duplicate": two.value, "intervals_overlap": overlap})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="runs/bad-sources")
    parser.add_argument("--replicates", type=int, default=2, help="Runs under run seeds 0, 1, ...")
    parser.add_argument("--subset", default="harmless-base", help="The HH-RLHF subset every source is cut from.")
    parser.add_argument("--pairs", type=int, default=250, help="Pairs of each full-size source.")
    parser.add_argument("--gold", type=int, default=320, help="Pairs of the trusted held-out file.")
    parser.add_argument("--model", default=ModelConfig().name, help="The base model ('tiny' to try the script).")
    parser.add_argument("--train", default="{}", help="Training overrides as JSON, e.g. '{\"train_layers\": 1}'.")
    args = parser.parse_args()
    root = Path(args.root)
    table, trusted = build_files(root / "data", args.subset, args.pairs, args.gold)
    rows, symmetric = [], []
    for seed in range(args.replicates):
        run = replicate(root, seed, table, trusted, args.model, json.loads(args.train))
        for scenario, (sources, planted) in SCENARIOS.items():
            values = valuations(run, sources)
            if planted:
                rows += [{"scenario": scenario, "replicate": seed, "valuation": valuation, **detection(group, planted)}
                         for valuation, group in values.groupby("valuation", sort=False)]
            else:
                symmetric.append(symmetry(values).assign(replicate=seed))
    results = pd.DataFrame(rows)
    results.to_csv(root / "results.csv", index=False)
    summary = results.groupby(["scenario", "valuation"], sort=False).agg(
        auc=("auc", "mean"), top_k_hits=("top_k_hits", "sum"), planted=("planted", "sum"), found=("found", "sum"),
        false_findings=("false_findings", "sum"), clean=("clean", "sum")).reset_index()
    pd.set_option("display.width", 200)
    print(summary.to_string(index=False, float_format="%.2f"))
    print("\nthe duplicate against clean-1 (symmetry):")
    print(pd.concat(symmetric).to_string(index=False, float_format="%+.4f"))


if __name__ == "__main__":
    main()
