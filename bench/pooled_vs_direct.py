"""Pooled against direct evaluation, side by side in one run: what each pays and how far their
Shapley values agree.

    .venv/bin/python bench/pooled_vs_direct.py                  # n = 4 and 8, random adapters, tiny model
    .venv/bin/python bench/pooled_vs_direct.py --demo           # n = 4: the demo's trained adapters, real model
    .venv/bin/python bench/pooled_vs_direct.py --pooled-only 12 16

Counts come from the cost model (`game.evaluation_cost`, the rows the sampler really decodes) and
the pooled fallback's extra direct samples; wall time is measured. Agreement: the largest
|pooled - direct| over sources and objectives in units of the direct value's interval half-width,
and Spearman's rank correlation of the two value vectors per objective. The random-adapter games
use the tiny random model and a synthetic dataset of this script's own making (8 topics); their
reward model is a Bradley-Terry head trained on it, so its values mean nothing, but the costs and
the agreement of the two estimators are real.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import valuation  # noqa: E402,F401  (sets OMP_WAIT_POLICY before torch loads)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from valuation.config import DataConfig, ModelConfig, RewardConfig, RunConfig  # noqa: E402
from valuation.data.sources import record_sources  # noqa: E402
from valuation.evaluation.job import coalitions_to_evaluate, evaluation_cost  # noqa: E402
from valuation.evaluation.settings import EvaluationConfig  # noqa: E402
from valuation.evaluation.store import EvaluationStore  # noqa: E402
from valuation.games.values import value_sources  # noqa: E402
from valuation.jobs.demo import DEMO_PROMPTS, DEMO_SOURCE  # noqa: E402
from valuation.jobs.registry import run_job  # noqa: E402
from valuation.lm.adapters import SEED_MARK  # noqa: E402
from valuation.lm.synthetic import save_random_adapters  # noqa: E402
from valuation.rewards.job import RewardJobConfig  # noqa: E402
from valuation.runs import Run, create_run  # noqa: E402
from valuation.validation.scaling import rank_correlations  # noqa: E402
from valuation.views.snapshot import RunSnapshot  # noqa: E402

TOPICS = ["garden", "kitchen", "travel", "money", "health", "music", "school", "sport", "code", "films", "books",
          "pets", "cars", "weather", "games", "art"]


def synthetic_run(root: Path, n: int) -> Run:
    """n sources of 60 pairs each on the tiny model, with random adapters and a trained reward head."""
    rows = [{"source": topic, "prompt": f"What should I know first about {topic}, question {i}?",
             "chosen": f"Start small with {topic}: plan, practise, and ask for help when stuck ({i}).",
             "rejected": "No idea." if i % 2 else "Why would you ask that?"} for topic in TOPICS[:n] for i in range(60)]
    data = root / f"pairs-{n}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = RunConfig(model=ModelConfig(name="tiny"), data=DataConfig(dataset=str(data), eval_prompts=32),
                       rewards=RewardConfig(max_pairs=400, max_length=64, batch_tokens=2048))
    run = create_run(f"random-{n}", config, root=root)
    record_sources(run, config.data)
    save_random_adapters(run, TOPICS[:n], scale=0.3)
    return run


def demo_run(root: Path) -> Run:
    """The demo's first training seed: its other seeds' adapters left out (with them direct would sample
    every coalition under every seed, and pooled weigh each seed; the issue's 2.5x had one seed)."""
    run = Run(root / "demo")
    shutil.copytree(DEMO_SOURCE, run.path, ignore=shutil.ignore_patterns("evaluation", "validation", f"*{SEED_MARK}*"))
    return run


def measure(run: Run, config: EvaluationConfig) -> dict:
    """One evaluation from none: its costs, wall time, and the Shapley values of its token-level game.
    The run's evaluation folder goes first: the reward-free table stays in a run from one evaluation
    to the next, and each estimator pays for its own."""
    shutil.rmtree(EvaluationStore(run).folder, ignore_errors=True)
    started = time.monotonic()
    run_job(run, "evaluate", config)
    seconds = time.monotonic() - started
    sources = run.load_config().data.sources or sorted(p.name for p in (run.path / "adapters").iterdir())
    cost = evaluation_cost(sources, coalitions_to_evaluate(sources, config), config)
    estimated = RunSnapshot(run).store.estimation()
    fallback = estimated[(estimated.target == "token") & (estimated.estimator == "direct")].coalition.tolist()
    extra = (evaluation_cost(sources, [frozenset(c.split("+")) if c else frozenset() for c in fallback],
                             EvaluationConfig(estimator="direct", prompts=config.prompts, samples=config.samples,
                                              max_new_tokens=config.max_new_tokens)) if fallback else None)
    steps = cost.decode_row_tokens // config.max_new_tokens + (extra.decode_row_tokens // config.max_new_tokens if extra else 0)
    return {"decode rows": steps, "teacher-forced rows": cost.scored_responses * (len(sources) + 1),
            "reward calls": cost.reward_calls + (extra.reward_calls if extra else 0), "seconds": seconds,
            "fallback": len(fallback), "valuation": value_sources(RunSnapshot(run).store.load())}


def agreement(direct, pooled) -> tuple[float, float]:
    """max |pooled - direct| / half-width of direct's interval, and the lowest Spearman rho over objectives."""
    half = (direct.shapley.upper - direct.shapley.lower) / 2
    worst = float(np.max(np.abs(pooled.shapley.values - direct.shapley.values) / half))
    rho = min(rank_correlations(pooled.shapley.values[:, k], direct.shapley.values[:, k])[0]
              for k in range(len(direct.objectives)))
    return worst, rho


def compare(run: Run, prompts: int, tokens: int, samples: int, per_anchor: int, fallback_samples: int,
            prompts_file: str = "") -> dict:
    common = dict(prompts=prompts, max_new_tokens=tokens, temperature=0.7, top_p=1.0, prompts_file=prompts_file)
    run_job(run, "rewards", RewardJobConfig())
    direct = measure(run, EvaluationConfig(estimator="direct", samples=samples, **common))
    pooled = measure(run, EvaluationConfig(estimator="pooled", samples=fallback_samples, pool_per_anchor=per_anchor,
                                           **common))
    worst, rho = agreement(direct["valuation"], pooled["valuation"])
    row = {"n": len(direct["valuation"].players)}
    for what in ("decode rows", "teacher-forced rows", "reward calls", "seconds"):
        row[f"direct {what}"], row[f"pooled {what}"] = direct[what], pooled[what]
    row |= {"decode rows ratio": direct["decode rows"] / pooled["decode rows"],
            "reward calls ratio": direct["reward calls"] / pooled["reward calls"],
            "wall time ratio": direct["seconds"] / pooled["seconds"], "pooled fallback coalitions": pooled["fallback"],
            "max |diff| / direct half-width": worst, "min Spearman": rho}
    return row


def pooled_only(root: Path, n: int, prompts: int, tokens: int, per_anchor: int) -> dict:
    run = synthetic_run(root, n)
    run_job(run, "rewards", RewardJobConfig())
    started = time.monotonic()
    run_job(run, "evaluate", EvaluationConfig(prompts=prompts, max_new_tokens=tokens, pool_per_anchor=per_anchor,
                                              ess_floor=0))  # auto: every coalition, pooled, up to 16 sources
    evaluated = time.monotonic() - started
    started = time.monotonic()
    snapshot = RunSnapshot(run)
    values = value_sources(snapshot.store.load(), snapshot.valuation_config)
    return {"n": n, "coalitions": 2 ** n, "pooled evaluation s": evaluated,
            "exact Shapley with bootstrap s": time.monotonic() - started, "method": values.shapley.describe()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, nargs="*", default=[4, 8], help="Random-adapter games to compare.")
    parser.add_argument("--demo", action="store_true", help="Also compare on the demo's trained adapters (real model).")
    parser.add_argument("--pooled-only", type=int, nargs="*", default=[], help="Sizes timed with the pooled estimator only.")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--samples", type=int, default=2, help="Direct samples per prompt and coalition.")
    parser.add_argument("--per-anchor", type=int, default=4, help="Pooled draws per prompt and anchor.")
    parser.add_argument("--fallback-samples", type=int, default=EvaluationConfig.samples,
                        help="Pooled: direct samples of a coalition below its ESS floor (default: the pooled "
                             "estimator's own, matched to the floor of 2).")
    args = parser.parse_args()
    rows, timings = [], []
    with tempfile.TemporaryDirectory(prefix="pooled-bench-") as scratch:
        root = Path(scratch)
        for n in args.sources:
            rows.append(compare(synthetic_run(root, n), args.prompts, args.tokens, args.samples, args.per_anchor,
                                args.fallback_samples))
            print(pd.Series(rows[-1]).to_string(), flush=True)
        if args.demo:
            rows.append(compare(demo_run(root), args.prompts, args.tokens, args.samples, args.per_anchor,
                                args.fallback_samples, prompts_file=str(DEMO_PROMPTS)) | {"n": "4 (demo)"})
            print(pd.Series(rows[-1]).to_string(), flush=True)
        for n in args.pooled_only:
            timings.append(pooled_only(root, n, args.prompts, args.tokens, args.per_anchor))
            print(pd.Series(timings[-1]).to_string(), flush=True)
    if rows:
        print("\n" + pd.DataFrame(rows).set_index("n").T.to_string(float_format="{:.3g}".format))
    if timings:
        print("\n" + pd.DataFrame(timings).to_string(index=False, float_format="{:.3g}".format))


if __name__ == "__main__":
    main()
