"""Did each adapter learn? Every trained adapter judged on held-out pairs of its own source, by its
implicit reward margin against the base (`heldout.judged`), and the verdicts kept beside the adapters:

    <run>/adapters/heldout.csv    source, pairs, accuracy and margin with their 95% intervals, verdict
    <run>/adapters/heldout.json   what produced them (the adapters' records, the pairs per source)
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pandas as pd

from ..data.splits import judging_pairs
from ..games.coalitions import BASE
from ..lm.adapters import adapters_dir, load_adapters, read_record, source_and_replica, trained_adapters
from ..storage import atomic_write_json, atomic_write_text, digest
from .heldout import held_out, judged, responses_of

if TYPE_CHECKING:
    from ..progress import Reporter
    from ..runs import Run
    from ..runtime.context import RunContext


VERDICTS_FILE = "heldout.csv"  # in <run>/adapters/, beside the adapters it judges
VERDICT_PAIRS = 64  # held-out pairs per source: about 3 minutes of 2 CPU cores for a source's first adapter


def adapter_verdicts(context: RunContext, reporter: Reporter, pairs_per_source: int = VERDICT_PAIRS) -> pd.DataFrame:
    """Per trained adapter, on held-out pairs of its own source (the split's eval part; with a trusted
    held-out file, the gold set's evaluation pairs, `data.splits.judging_pairs`), cut to the lengths it
    was trained on: preference accuracy and implicit reward margin against the base, with 95%
    intervals, and a verdict: 'learned' when the margin's interval lies above 0, 'learned the
    opposite' below it, else 'indistinguishable from the base'. Written to adapters/heldout.csv,
    kept while the adapters are."""
    from ..lm.scoring import score_variants  # torch: only when judging

    adapters = trained_adapters(context.run)  # each source's, and those under further seeds
    path = adapters_dir(context.run) / VERDICTS_FILE
    key = digest({a: digest(read_record(context.run, a)) for a in adapters} | {"pairs": pairs_per_source, "cut": "trained"})
    if path.exists() and json.loads((path.with_suffix(".json")).read_text()).get("key") == key:
        return pd.read_csv(path)
    model = load_adapters(context.base, context.run, adapters)
    by_source: dict[str, list[str]] = {}
    for adapter in adapters:
        by_source.setdefault(source_and_replica(adapter)[0], []).append(adapter)
    rows = []
    for source, seeds in by_source.items():  # a source's adapters share their pairs, settings and base pass
        pairs = judging_pairs(source, context.data, context.split, context.config.data)
        record = read_record(context.run, seeds[0])
        prompt_tokens = record["settings"]["max_prompt_length"]
        heldout = held_out(context.base.tokenizer, pairs, record["settings"]["max_length"] - prompt_tokens, prompt_tokens)
        heldout = heldout[:pairs_per_source]
        scored = score_variants(model, context.base.tokenizer, responses_of(heldout),
                                {m: [(m, 1.0)] for m in [BASE, *seeds]},
                                progress=reporter.stage(f"{source}: held-out pairs")).log_likelihoods
        for adapter in seeds:
            gain = scored[adapter] - scored[BASE]  # log pi_l(y) - log pi_0(y), per response
            margin = record["beta"] * (gain[0::2] - gain[1::2])  # chosen, then rejected
            rows.append({"source": adapter, "pairs": len(heldout), **judged(margin)})
    table = pd.DataFrame(rows)
    atomic_write_text(path, table.to_csv(index=False))
    atomic_write_json(path.with_suffix(".json"), {"key": key})
    return table


def read_verdicts(run: Run) -> pd.DataFrame:
    """The verdicts the last train job wrote (empty when none): source, pairs, accuracy, margin, their intervals, verdict."""
    path = adapters_dir(run) / VERDICTS_FILE
    return pd.read_csv(path) if path.exists() else pd.DataFrame()
