"""Sources with a known answer, valued end to end at the default settings: two vendors selling the
very same pairs, one clean vendor, and one whose every label is flipped.

    .venv/bin/python bench/twin_sources.py [--run runs/twins] [--seeds 1]

The file is built at run time from the offline UltraFeedback slice (never committed): 250 pairs for
`vendor-a`, the same 250 again as `vendor-a-twin`, the next 250 as `vendor-b`, and the next 250 with
chosen and rejected swapped as `vendor-flipped`. The slice's 200 evaluation pairs are the trusted
held-out file, as a buyer with a small gold set would give it: the reward model and the reward-free
utilities are judged on it, not on the vendors' own (partly flipped) labels. The run then trains,
evaluates and values with the quick presets, like a user who changes nothing; each job resumes.

What must come out: the twins equal within their intervals and neither a finding on its own, no
clean vendor a finding; and, ideally, the flipped vendor found (its interval below zero).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import valuation  # noqa: E402,F401  (sets OMP_WAIT_POLICY before torch loads)

from valuation import cli  # noqa: E402
from valuation.config import DataConfig, RunConfig, default_data_dir  # noqa: E402
from valuation.data.sources import record_sources  # noqa: E402
from valuation.jobs.registry import job_config, run_job  # noqa: E402
from valuation.runs import Run, create_run  # noqa: E402

PER_VENDOR = 250


def build_files(folder: Path) -> tuple[Path, Path]:
    """The vendors' file and the trusted held-out file, from the offline UltraFeedback slice."""
    slice_dir = Path(default_data_dir()) / "ultrafeedback-slice"
    rows = [json.loads(line) for line in (slice_dir / "train_clean.jsonl").read_text().splitlines()]
    a, b, c = (rows[k * PER_VENDOR:(k + 1) * PER_VENDOR] for k in range(3))
    vendors = ([dict(r, source="vendor-a") for r in a] + [dict(r, source="vendor-a-twin") for r in a]
               + [dict(r, source="vendor-b") for r in b]
               + [dict(r, source="vendor-flipped", chosen=r["rejected"], rejected=r["chosen"]) for r in c])
    folder.mkdir(parents=True, exist_ok=True)
    pairs, gold = folder / "vendors.jsonl", folder / "gold.jsonl"
    keep = ("prompt", "chosen", "rejected", "source")
    pairs.write_text("".join(json.dumps({k: r[k] for k in keep}) + "\n" for r in vendors))
    gold.write_text("".join(json.dumps({k: r[k] for k in keep[:3]}) + "\n"
                            for r in map(json.loads, (slice_dir / "eval_clean.jsonl").read_text().splitlines())))
    return pairs, gold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/twins")
    parser.add_argument("--seeds", type=int, help="Training seeds per source (default: the quick preset's).")
    args = parser.parse_args()
    run = Run.at(args.run)
    if not run.exists():
        pairs, gold = build_files(run.path.parent / f"{run.name}-data")
        create_run(run.name, RunConfig(), root=run.path.parent)
        record_sources(run, DataConfig(dataset=str(pairs), heldout_file=str(gold)))
    seeds = {} if args.seeds is None else {"seeds": args.seeds}
    run_job(run, "train", job_config("train", **seeds))
    run_job(run, "evaluate", job_config("evaluate"))
    for target in ("token", "preference"):
        cli.main(["shapley", "--run", str(run.path), "--target", target])


if __name__ == "__main__":
    main()
