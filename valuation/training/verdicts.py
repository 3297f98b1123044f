"""Did each adapter learn? Every trained adapter judged on up to VERDICT_PAIRS pairs of its own
source that it never trained on (`data.splits.verdict_pairs`), by its implicit reward margin
against the base (`heldout.judged`), and the verdicts kept beside the adapters:

    <run>/adapters/heldout.csv    source, pairs, accuracy and margin with their 95% intervals, verdict
    <run>/adapters/heldout.json   what produced them, and the base's log-likelihoods on each source's pairs

The pairs are read as training read them (prompt cut to its end, reply closed and cut to the
length), through the frozen trunk (`lm.trunk`): the lower layers once per pair for the base and
every adapter (kept in the run's cache), the base's log-likelihoods once per run, and each adapter
runs only the layers it changed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..data.splits import verdict_pairs
from ..games.coalitions import BASE
from ..lm.adapters import adapters_dir, load_adapters, read_record, source_and_replica, trained_adapters
from ..storage import atomic_write_json, atomic_write_text, digest
from ..rewards.heldout import judged
from .pairs import select_pairs
from .settings import recorded_config

if TYPE_CHECKING:
    from ..progress import Reporter
    from ..runs import Run
    from ..runtime.context import RunContext
    from .settings import TrainConfig


VERDICTS_FILE = "heldout.csv"  # in <run>/adapters/, beside the adapters it judges
VERDICT_PAIRS = 256  # pairs per source: enough to see an adapter at 55-60% accuracy; fewer are said to be too few


def adapter_verdicts(context: RunContext, reporter: Reporter, pairs_per_source: int = VERDICT_PAIRS) -> pd.DataFrame:
    """Per trained adapter, on up to `pairs_per_source` pairs of its source that no adapter of it
    trained on, read as it was trained: preference accuracy and implicit reward margin against the
    base, with 95% intervals, and a verdict: 'learned' when the margin's interval lies above 0,
    'learned the opposite' below it, else 'indistinguishable from the base' (saying so when too few
    pairs were left to judge a weak effect). Written to adapters/heldout.csv, kept while the adapters are."""
    adapters = trained_adapters(context.run)  # each source's, and those under further seeds
    path = adapters_dir(context.run) / VERDICTS_FILE
    records = {a: read_record(context.run, a) for a in adapters}
    key = digest({a: digest(records[a]) for a in adapters} | {"pairs": pairs_per_source, "rule": "unread, trunk"})
    kept = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").exists() else {}
    if path.exists() and kept.get("key") == key:
        return pd.read_csv(path)
    started = time.time()
    by_source: dict[str, list[str]] = {}
    for adapter in adapters:
        by_source.setdefault(source_and_replica(adapter)[0], []).append(adapter)
    base, tokenizer = context.base, context.base.tokenizer
    plan, bases = {}, kept.get("base", {})
    for source, seeds in by_source.items():  # every adapter of a source shares its settings and pairs
        record = records[seeds[0]]
        settings = recorded_config(record)
        read = max(records[a]["pairs_used"] + records[a].get("pairs_dropped_by_length", 0) for a in seeds)
        pairs = verdict_pairs(source, context.data, context.split, context.config.data, read)
        rows = select_pairs(pairs, tokenizer, replace(settings, max_pairs=pairs_per_source)).rows
        judged_pairs = read_pairs(context, rows, settings, reporter, f"{source}: held-out pairs")
        tokens_key = digest({"model": base.name, "first": judged_pairs.first, "ids": judged_pairs.tokens.ids})
        # The base's log-likelihoods, once per run and set of pairs (a trusted held-out set judges every source).
        known = {kept_base["tokens"]: kept_base["log_likelihoods"] for kept_base in bases.values()}
        scored = known.get(tokens_key) or pair_log_likelihoods(base.model, judged_pairs, BASE, reporter).tolist()
        bases[source] = {"tokens": tokens_key, "log_likelihoods": scored}
        plan[source] = (seeds, judged_pairs)
    model = load_adapters(base, context.run, adapters, records=records)
    table = []
    for source, (seeds, judged_pairs) in plan.items():
        reference = np.array(bases[source]["log_likelihoods"])
        for adapter in seeds:
            gain = pair_log_likelihoods(model, judged_pairs, adapter, reporter) - reference  # log pi_l(y) - log pi_0(y)
            margin = records[adapter]["beta"] * (gain[0::2] - gain[1::2])  # chosen, then rejected
            table.append({"source": adapter, "pairs": len(margin), **judged(margin, enough=pairs_per_source)})
    frame = pd.DataFrame(table)
    atomic_write_text(path, frame.to_csv(index=False))
    atomic_write_json(path.with_suffix(".json"), {"key": key, "seconds": round(time.time() - started, 1), "base": bases})
    reporter.log(f"verdicts: {len(adapters)} adapter(s) judged in {time.time() - started:.0f} s")
    return frame


@dataclass
class ReadPairs:
    """Preference pairs read as training read them (`top_layers.pair_tokens`: chosen then rejected
    sequence of each pair) and their trunks, computed once under the base (kept in the run's cache):
    every model's log-likelihoods of them are read off its top layers."""

    label: str  # what the progress bars call them
    tokens: Any  # lm.trunk.Tokens
    first: int  # the first layer the adapters change
    trunks: list[Any]
    precision: str


def read_pairs(context: RunContext, rows: list[dict[str, Any]], settings: TrainConfig, reporter: Reporter,
               label: str) -> ReadPairs:
    """`rows` (TRL's conversational rows, as `select_pairs` gives them) tokenised and through the
    base's lower layers, for adapters trained with `settings`."""
    from ..lm.trunk import active, cached_trunk_states, precision, trunk_cache  # torch: only when judging
    from .top_layers import first_trained_layer, pair_tokens

    base = context.base
    tokens = pair_tokens(rows, base.tokenizer, settings.max_length)
    first = first_trained_layer(base.model, settings)
    with active(base.model, BASE), precision(settings.precision, base.device):
        trunks = cached_trunk_states(base.model, base.name, tokens, first, trunk_cache(context.run),
                                     progress=reporter.stage(f"{label}, lower layers"))
    return ReadPairs(label, tokens, first, trunks, settings.precision)


def pair_log_likelihoods(model: Any, pairs: ReadPairs, name: str, reporter: Reporter) -> np.ndarray:
    """log pi(y | x) of every sequence of `pairs` (chosen, rejected, chosen, ...) under adapter `name`
    of `model` (BASE: the base), in float32."""
    from ..lm.forward import model_device
    from ..lm.trunk import active, judged_replies, precision

    with active(model, name), precision(pairs.precision, model_device(model)):
        return judged_replies(model, pairs.trunks, pairs.tokens, pairs.first,
                              progress=reporter.stage(f"{pairs.label}, {'base' if name == BASE else name}")).numpy()


def read_verdicts(run: Run) -> pd.DataFrame:
    """The verdicts the last train job wrote (empty when none): source, pairs, accuracy, margin, their intervals, verdict."""
    path = adapters_dir(run) / VERDICTS_FILE
    return pd.read_csv(path) if path.exists() else pd.DataFrame()
