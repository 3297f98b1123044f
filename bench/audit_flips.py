"""How well the per-pair audit finds planted label flips, and what dropping the flagged pairs does to
the source's value: on the bad-source benchmark's runs (`bench/bad_sources.py`, whose source
noisy-30 has 30% of its labels flipped at run time and flipped all of them).

    .venv/bin/python bench/audit_flips.py --root runs/bad-sources      # after bench/bad_sources.py

For each replicate: the audit of noisy-30 by the other sources' adapters, against the baseline
(noisy-30's own adapter's DPO loss per pair) and against the second opinion, a reward model trained
on the benchmark's trusted set (its reward part: the rewards job, run here): AUC of finding the
flipped pairs, precision and recall among the top 30% (the planted share), and how many pairs the
audit flags at its default threshold (0). Then, for each --drop source, its adapter trained again
without its flagged pairs and its value before and after, in its scenario's game (the clean sources
and it), on the reward-free utilities with 95% intervals.
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

from bad_sources import NOISE, SCENARIOS  # noqa: E402
from valuation.jobs.registry import job_config, run_job  # noqa: E402
from valuation.runs import Run  # noqa: E402
from valuation.training.audit import flagged, read_audit  # noqa: E402
from valuation.training.cleaned import cleaned_record, read_values  # noqa: E402

SOURCE = "noisy-30"


def flipped_ids(table: Path) -> set[str]:
    """The pair ids of noisy-30's flipped pairs: the rows bad_sources.build_files swapped, named as the
    loader names pairs (source:line)."""
    lines = [(k, json.loads(line)["source"]) for k, line in enumerate(table.read_text().splitlines())]
    rows = [k for k, source in lines if source == SOURCE]
    swapped = set(random.Random(0).sample(range(len(rows)), round(NOISE * len(rows))))
    return {f"{SOURCE}:{rows[k]}" for k in swapped}


def ranking_quality(suspicion: np.ndarray, planted: np.ndarray) -> dict[str, float]:
    """AUC (a planted pair ranked above a clean one), precision and recall among the top 30%."""
    bad, good = suspicion[planted], suspicion[~planted]
    auc = (bad[:, None] > good[None, :]).mean() + 0.5 * (bad[:, None] == good[None, :]).mean()
    top = np.argsort(-suspicion, kind="stable")[:round(NOISE * len(suspicion))]
    hits = planted[top].sum()
    return {"auc": float(auc), "precision@30%": hits / len(top), "recall@30%": hits / planted.sum()}


def audit_quality(run: Run, planted_ids: set[str]) -> list[dict]:
    """Each ranking of noisy-30's pairs (the audit, the baseline, each reward model) at finding the flips."""
    audit = read_audit(run, SOURCE)
    planted = audit.pair_id.isin(planted_ids).to_numpy()
    rankings = {"audit: the other sources' margin": -audit.rest_margin, "baseline: own adapter's loss": audit.own_loss,
                **{f"second opinion: {c.removeprefix('reward:')} reward model (trusted set)": -audit[c]
                   for c in audit.columns if c.startswith("reward:")}}
    rows = [{"replicate": run.name, "ranking": ranking, "pairs": len(audit), "flipped": int(planted.sum()),
             **ranking_quality(suspicion.to_numpy(), planted)} for ranking, suspicion in rankings.items()]
    rows[0]["flagged at 0"] = len(flagged(audit))
    rows[0]["flipped among flagged"] = int(flagged(audit).pair_id.isin(planted_ids).sum())
    return rows


def recovery(run: Run, source: str) -> list[dict]:
    """The source's value before and after dropping its flagged pairs, and the change, per objective."""
    values, record = read_values(run, source), cleaned_record(run, source)
    mine = values[values.player == source]
    return [{"replicate": run.name, "source": source, "objective": objective, "dropped": record["dropped"],
             "kept": record["kept"], **{f"{r.stage}": f"{r.value:+.4f} [{r.lower:+.4f}, {r.upper:+.4f}]"
                                          for r in rows.itertuples()}}
            for objective, rows in mine.groupby("objective", sort=False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="runs/bad-sources")
    parser.add_argument("--drop", nargs="*", default=[SOURCE, "flipped"],
                        help="Sources to train again without their flagged pairs and value before and after.")
    args = parser.parse_args()
    root = Path(args.root)
    planted_ids = flipped_ids(root / "data" / "sources.jsonl")
    quality, recovered = [], []
    for folder in sorted(root.glob("replicate-*")):
        run = Run.at(folder)
        run_job(run, "rewards", job_config("rewards"))  # on the trusted set's reward part: the second opinion
        run_job(run, "audit", job_config("audit", source=SOURCE, show=0))
        quality += audit_quality(run, planted_ids)
        for source in args.drop:
            run_job(run, "audit", job_config("audit", source=source, show=0, drop_flagged=True,
                                             game_sources=SCENARIOS[source][0]))
            recovered += recovery(run, source)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_colwidth", 60)
    print(pd.DataFrame(quality).to_string(index=False, float_format="%.3f"))
    print()
    print(pd.DataFrame(recovered).to_string(index=False))

if __name__ == "__main__":
    main()
