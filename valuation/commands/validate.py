"""python -m valuation validate --run runs/NAME [--preset quick|gpu] [--experiments ...] [--sources a b]

Checks how far the coalition arithmetic holds on a run (valuation/validation.py): sequential DPO,
pooled training, epochs, held-out preference accuracy, and Monte Carlo error at n = 8. Holds the
run's job lock (refused while another job works on the run); results land in <run>/validation/,
and a relaunch skips every adapter and result already there.
"""

from __future__ import annotations

import argparse

from ..validation import EXPERIMENTS, PRESETS


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="The run directory (runs/NAME).")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                        help="quick: 2 CPU cores, under an hour; gpu: 3 sources, longer training, epochs to 8.")
    parser.add_argument("--experiments", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS),
                        help="Experiments to run (default: all).")
    parser.add_argument("--sources", nargs="+", help="Sources of the training experiments (default: the run's first 2, 3 on gpu).")


def run(args: argparse.Namespace) -> int:
    from ..jobs import job_session
    from ..runs import Run
    from ..validation import preset_config, summary, validate_run

    run_dir = Run.at(args.run)
    run_dir.load_config()  # a clear error for a missing or broken run, before taking the lock
    config = preset_config(args.preset, sources=args.sources)
    with job_session(run_dir, "validate") as session:
        for path in validate_run(run_dir, args.preset, config, args.experiments, session):
            session.log(f"result: {path}")
        session.log(f"summary: {summary(run_dir, args.preset)}")
    return 0
