"""python -m valuation demo [--run runs/demo-build]: make the demo run and export it to assets/demo-run.

Every step is resumable: sources already trained, and chunks already sampled and scored, are kept.
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", default="runs/demo-build", help="Where to build the demo run (kept: a relaunch resumes).")
    parser.add_argument("--no-validate", action="store_true", help="Skip the Validate page's quick experiments.")


def run(args: argparse.Namespace) -> int:
    from ..cli import main
    from ..config import DataConfig
    from ..demo import DEMO_PROMPTS, export_demo
    from ..game import evaluate_run, preset_config
    from ..jobs import job_session
    from ..runs import Run, create_run
    from ..sources import record_sources
    from ..training import preset_config as training_preset, train_sources

    run_dir = Run.at(args.run)
    if not run_dir.exists():
        create_run(run_dir.name, root=run_dir.path.parent)
        record_sources(run_dir, DataConfig())
    with job_session(run_dir, "demo") as session:
        train_sources(run_dir, training_preset("quick"), None, session)
        evaluate_run(run_dir, preset_config("quick", prompts_file=str(DEMO_PROMPTS), prompts=16), log=session.log)
    if not args.no_validate and main(["validate", "--run", str(run_dir.path), "--preset", "quick"]) != 0:
        return 2
    print(f"demo exported to {export_demo(run_dir)}")
    return 0
