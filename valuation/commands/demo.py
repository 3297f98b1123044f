"""python -m valuation demo [--run runs/demo-build]: make the demo run and export it to assets/demo-run.

Three jobs on the quick presets (train under 3 seeds, evaluate on the project's own prompts,
validate), each resumable: adapters already trained, and chunks already sampled and scored, are kept.
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", default="runs/demo-build", help="Where to build the demo run (kept: a relaunch resumes).")
    parser.add_argument("--no-validate", action="store_true", help="Skip the Validate page's quick experiments.")
    parser.add_argument("--seeds", type=int, default=3, help="Training seeds per source: the values average them and "
                                                             "their spread is in the intervals.")


def run(args: argparse.Namespace) -> int:
    from ..config import DataConfig
    from ..jobs.demo import DEMO_PROMPTS, export_demo
    from ..jobs.registry import job_config, run_job
    from ..runs import Run, create_run
    from ..data.sources import record_sources

    run_dir = Run.at(args.run)
    if not run_dir.exists():
        create_run(run_dir.name, root=run_dir.path.parent)
        record_sources(run_dir, DataConfig())
    run_job(run_dir, "train", job_config("train", seeds=args.seeds))
    run_job(run_dir, "evaluate", job_config("evaluate", prompts_file=str(DEMO_PROMPTS), prompts=32))
    if not args.no_validate:
        run_job(run_dir, "validate", job_config("validate"))
    print(f"demo exported to {export_demo(run_dir)}")
    return 0
