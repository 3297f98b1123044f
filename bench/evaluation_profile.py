"""Where one real evaluation's time goes, stage by stage; with --before, the same on an earlier
commit side by side, so a change's gain is a ratio measured in one run.

    .venv/bin/python bench/evaluation_profile.py                     # this tree, the demo's adapters
    .venv/bin/python bench/evaluation_profile.py --before 9fafd9c    # and that commit, in a git worktree
    .venv/bin/python bench/evaluation_profile.py --run runs/mine     # a run of your own (adapters, reward models)
    .venv/bin/python bench/evaluation_profile.py --direct-samples 6  # the direct estimator beside pooled, this tree

One pooled evaluation (the evaluate job, 4 prompts of up to 48 tokens by default) of a copy of the
run, under cProfile, then the Shapley values with their bootstrap and the adapters' verdicts on a few
held-out pairs each. A stage is the cumulative time of the functions that do it:

    sampling            the pool and any direct fallback (lm.arithmetic.sample_coalitions)
    direct sampling     coalitions sampled on their own, rewards included: all of direct's work, pooled's fallback
    teacher forcing     every model's next-token log-probs of every pooled response
    token-level weights each coalition's log-probs renormalised over the vocabulary (variant_log_likelihoods)
    reward features     the reward models' scoring of responses
    reward-free         held-out preference accuracy and margin of every coalition (evaluate_preferences)
    bootstrap           the Shapley values with their intervals (value_sources)
    verdicts            each adapter judged on held-out pairs of its source (adapter_verdicts)

Stages nest (teacher forcing and token-level weights run inside weighing and inside the reward-free
utilities), so they do not add up to the total. Below the times, how often each stage was entered
(a time that grows with the same count is slower work, not more of it). Each side runs in its own
process with the same torch threads (1 by default: steady on a shared machine).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from worktree import checked_out

STAGES = {  # stage -> (file suffix, function names): the outermost match's cumulative time
    "sampling": ("valuation/lm/arithmetic.py", ("sample_coalitions",)),
    "direct sampling": ("valuation/evaluation/estimators.py", ("sample_directly",)),
    "teacher forcing": ("valuation/lm/scoring.py", ("scored_replies", "reply_log_probs")),
    "token-level weights": ("valuation/lm/scoring.py", ("variant_log_likelihoods",)),
    "reward features": ("valuation/rewards/models.py", ("score", "score_heads")),
    "reward-free": ("valuation/evaluation/job.py", ("evaluate_preferences",)),
    "bootstrap": ("valuation/games/values.py", ("value_sources",)),
    "verdicts": ("valuation/training/verdicts.py", ("adapter_verdicts",)),
}


def stage_seconds(stats: pstats.Stats) -> dict[str, float]:
    """Each stage's time, and how often it was entered: the largest cumulative time among its
    functions (the outermost call), and that function's calls (a generator's: each item it yields)."""
    found = dict.fromkeys(STAGES, 0.0) | {f"{stage} calls": 0 for stage in STAGES}
    for (file, _, name), (_, calls, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        for stage, (suffix, names) in STAGES.items():
            if file.endswith(suffix) and name in names and cumulative >= found[stage]:
                found[stage], found[f"{stage} calls"] = cumulative, calls
    return found


def profile(tree: Path, run_path: Path, prompts: int, prompts_file: str, tokens: int, verdict_pairs: int,
            threads: int, direct_samples: int) -> dict:
    """One side: the evaluation (pooled, or direct with `direct_samples` per coalition), values and
    verdicts of a copy of `run_path`, with `tree`'s valuation."""
    sys.path.insert(0, str(tree))
    import valuation  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
    import torch

    from valuation.evaluation.settings import EvaluationConfig
    from valuation.games.values import value_sources
    from valuation.jobs.registry import run_job
    from valuation.progress import Reporter
    from valuation.runs import Run
    from valuation.runtime.context import RunContext
    from valuation.training.verdicts import adapter_verdicts
    from valuation.views.snapshot import RunSnapshot

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="profile-") as scratch:
        run = Run(Path(scratch) / run_path.name)
        shutil.copytree(run_path, run.path, ignore=shutil.ignore_patterns("evaluation", "validation", "job", "job.lock"))
        estimator = dict(estimator="direct", samples=direct_samples) if direct_samples else {}
        config = EvaluationConfig(prompts=prompts, max_new_tokens=tokens, prompts_file=prompts_file, **estimator)
        profiler, started = cProfile.Profile(), time.monotonic()
        profiler.enable()
        run_job(run, "evaluate", config)
        evaluated = time.monotonic() - started
        snapshot = RunSnapshot(run)
        value_sources(snapshot.store.load(), snapshot.valuation_config)
        adapter_verdicts(RunContext.open(run), Reporter(run.path / "profile-events.jsonl"), verdict_pairs)
        profiler.disable()
        total = time.monotonic() - started
    return {"tree": str(tree), "evaluation s": evaluated, "total s": total,
            **stage_seconds(pstats.Stats(profiler))}


def side(tree: Path, args: argparse.Namespace, direct_samples: int = 0) -> dict:
    """`profile` in a fresh process (its own imports, threads and memory)."""
    command = [sys.executable, __file__, "--side", str(tree), "--run", str(args.run), "--prompts", str(args.prompts),
               "--prompts-file", args.prompts_file, "--tokens", str(args.tokens), "--verdict-pairs",
               str(args.verdict_pairs), "--threads", str(args.threads), "--direct-samples", str(direct_samples)]
    out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout  # its log and errors show
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=here / "assets" / "demo-run", help="A run with adapters and reward models.")
    parser.add_argument("--before", default="", help="A commit to profile side by side (checked out in a worktree).")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--prompts-file", default="", type=lambda name: str(Path(name).resolve()) if name else "",
                        help="A JSONL of prompts (the demo's own: assets/demo_prompts.jsonl) instead of the split's.")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--verdict-pairs", type=int, default=16, help="Held-out pairs per adapter for the verdicts.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--direct-samples", type=int, default=0,
                        help="Also profile the direct estimator on this tree, this many samples per coalition.")
    parser.add_argument("--side", type=Path, help=argparse.SUPPRESS)  # internal: profile this tree, print JSON
    args = parser.parse_args()
    args.run = args.run.resolve()
    if args.prompts_file and not Path(args.prompts_file).is_file():
        parser.error(f"--prompts-file {args.prompts_file}: no such file (the demo's own: assets/demo_prompts.jsonl).")
    if args.side:
        print(json.dumps(profile(args.side, args.run, args.prompts, args.prompts_file, args.tokens, args.verdict_pairs,
                                 args.threads, args.direct_samples)))
        return
    columns = {"pooled" if args.direct_samples else "this tree": side(here, args)}
    if args.direct_samples:
        columns = {f"direct, {args.direct_samples} samples": side(here, args, args.direct_samples), **columns}
    if args.before:
        with checked_out(args.before) as worktree:
            columns = {args.before: side(worktree, args), **columns}
    rows = ["evaluation s", "total s", *STAGES, *(f"{stage} calls" for stage in STAGES)]
    names = list(columns)
    print(f"| stage | {' | '.join(names)} |" + (f" {names[0]} / {names[1]} |" if len(names) == 2 else ""))
    print("| --- " * (len(names) + 1 + (len(names) == 2)) + "|")
    for row in rows:
        cells = [f"{columns[n][row]:.1f}" if isinstance(columns[n][row], float) else str(columns[n][row]) for n in names]
        ratio = ([f"{columns[names[0]][row] / columns[names[1]][row]:.2f}x" if columns[names[1]][row] else "n/a"]
                 if len(names) == 2 else [])
        print(f"| {row} | {' | '.join(cells + ratio)} |")


if __name__ == "__main__":
    main()
