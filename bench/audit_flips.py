"""How well the per-pair audit finds planted label flips: on the bad-source benchmark's runs
(`bench/bad_sources.py`, whose source noisy-30 has 30% of its labels flipped at run time), the
audit of noisy-30 by the other sources' adapters against the baseline, noisy-30's own adapter's
DPO loss per pair.

    .venv/bin/python bench/audit_flips.py --root runs/bad-sources      # after bench/bad_sources.py

For each replicate and ranking: AUC of finding the flipped pairs, precision and recall among the
top 30% (the planted share), and how many pairs the audit flags at its default threshold (0).
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

from bad_sources import NOISE  # noqa: E402
from valuation.jobs.registry import job_config, run_job  # noqa: E402
from valuation.runs import Run  # noqa: E402
from valuation.training.audit import flagged, read_audit  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="runs/bad-sources")
    args = parser.parse_args()
    root = Path(args.root)
    planted_ids = flipped_ids(root / "data" / "sources.jsonl")
    rows = []
    for folder in sorted(root.glob("replicate-*")):
        run = Run.at(folder)
        run_job(run, "audit", job_config("audit", source=SOURCE, show=0))
        audit = read_audit(run, SOURCE)
        planted = audit.pair_id.isin(planted_ids).to_numpy()
        for ranking, suspicion in (("audit: the other sources' margin", -audit.rest_margin),
                                   ("baseline: own adapter's loss", audit.own_loss)):
            rows.append({"replicate": folder.name, "ranking": ranking, "pairs": len(audit), "flipped": int(planted.sum()),
                         **ranking_quality(suspicion.to_numpy(), planted)})
        rows[-2]["flagged at 0"] = len(flagged(audit))
        rows[-2]["flipped among flagged"] = int(audit.pair_id[audit.rest_margin < 0].isin(planted_ids).sum())
    pd.set_option("display.width", 200)
    print(pd.DataFrame(rows).to_string(index=False, float_format="%.3f"))


if __name__ == "__main__":
    main()
