"""A four-source run of one's own through the command line, end to end at the quick presets, each
step timed; with --before, an earlier commit's `evaluate` of the same run (its adapters and reward
models) side by side, so the evaluation's gain and the whole run's are ratios from one run.

    .venv/bin/python bench/cli_run.py                       # this tree
    .venv/bin/python bench/cli_run.py --before 9fafd9c      # and that commit's evaluation

The sources are `twin_sources.py`'s four vendors: 250 long single-turn UltraFeedback pairs each (a
twin and a flipped vendor among them), the slice's evaluation pairs as the trusted held-out file,
built at run time and never committed. Each step is `python -m valuation <step> --run R` in its own
process, as a user types it: sources, train, rewards, evaluate, shapley. The whole run before is
this run's other steps plus the earlier evaluation: the steps besides `evaluate` are taken as equal.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twin_sources import build_files
from worktree import HERE, checked_out

STEPS = ["sources", "train", "rewards", "evaluate", "shapley"]


def timed(step: str, run: Path, tree: Path, *flags: str) -> float:
    """Seconds of `python -m valuation <step> --run <run> <flags>`, run from `tree` (its log shows)."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "valuation", step, "--run", str(run), *flags], cwd=tree, check=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=HERE / "runs" / "cli-bench",
                        help="Where the run goes; it must not exist yet (a resumed step would time nothing).")
    parser.add_argument("--before", default="", help="A commit whose `evaluate` runs on a copy of the run after.")
    args = parser.parse_args()
    run = args.run.resolve()
    if run.exists():
        parser.error(f"{run} exists: the timings need a fresh run; remove it or pass another --run.")
    pairs, gold = build_files(run.parent / f"{run.name}-data")
    seconds = {"sources": timed("sources", run, HERE, "--new", "--data", str(pairs), "--heldout-file", str(gold))}
    for step in STEPS[1:]:
        seconds[step] = timed(step, run, HERE)
    whole = sum(seconds.values())
    print("\n| step | seconds |\n| --- | --- |")
    for step, value in seconds.items():
        print(f"| {step} | {value:.0f} |")
    print(f"| the whole run | {whole:.0f} |")
    if args.before:
        with tempfile.TemporaryDirectory(prefix="cli-before-") as scratch, checked_out(args.before) as tree:
            copy = Path(scratch) / run.name
            shutil.copytree(run, copy, ignore=shutil.ignore_patterns("evaluation", "job", "job.lock"))
            before = timed("evaluate", copy, tree)
        print(f"\nevaluate: {args.before} {before:.0f} s, this tree {seconds['evaluate']:.0f} s, "
              f"{before / seconds['evaluate']:.2f}x faster")
        print(f"the whole run: {args.before} {whole - seconds['evaluate'] + before:.0f} s, this tree {whole:.0f} s, "
              f"{(whole - seconds['evaluate'] + before) / whole:.2f}x faster")


if __name__ == "__main__":
    main()
