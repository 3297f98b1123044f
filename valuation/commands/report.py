"""python -m valuation report --run runs/NAME [--out file.html]: the run in one HTML file that opens offline."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="A run directory (runs/NAME).")
    parser.add_argument("--out", help="Where to write the report (default: <run>/report.html).")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..report.document import write_report
    from ..runs import Run

    run_dir = Run.at(args.run)
    run_dir.load_config()  # a clear error for a missing or broken run
    print(f"report written to {write_report(run_dir, Path(args.out) if args.out else None)}")
    return 0
