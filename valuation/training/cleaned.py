"""A source without its flagged pairs: the audit's loop closed. What would the source be worth had
its vendor left out the pairs the rest of the data labels the other way?

One more adapter is trained on the source's pairs less the flagged ones, with the source's own
settings and seed, and the run's game is played twice on the same held-out pairs: once with the
source's adapter, once with the kept-pairs adapter in its place. Nothing is overwritten:

    <run>/audit/adapters/<source>-kept-<id>/   the adapter (record: the threshold, the dropped pair ids)
    <run>/audit/<source>-values.csv            stage (before, after, change), objective, player, value, lower, upper
    <run>/audit/<source>-values.json           what they were computed on

The utilities are the reward-free ones (`rewards.heldout`): every coalition's held-out preference
accuracy and implicit reward margin, teacher-forced on the pairs behind the evaluation prompts,
exact and cheap. Shapley is linear in the utility, so each source's change in value is the value
of the difference game v_after - v_before, prompt by prompt; one bootstrap over the pairs then gives
the before, after and change intervals on the same resamples.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pandas as pd

from ..games.coalitions import all_coalitions, coalition_name, parse_coalition
from ..games.intervals import bootstrap_intervals
from ..games.utility_table import UtilityTable
from ..lm.adapters import adapter_dir, load_adapters, read_record, trained_adapters, trained_sources
from ..rewards.heldout import games_preferences, held_out
from ..storage import atomic_write_json, atomic_write_text, digest
from .audit import AuditError, audited_pairs, flagged
from .job import fit_missing
from .settings import recorded_config

if TYPE_CHECKING:
    from pathlib import Path

    from ..progress import Reporter
    from ..runs import Run
    from ..runtime.context import RunContext

STAGES = ("before", "after", "change")


def kept_adapters_dir(run: Run) -> Path:
    return run.path / "audit" / "adapters"


def values_path(run: Run, source: str) -> Path:
    return run.path / "audit" / f"{source}-values.csv"


def train_without_flagged(context: RunContext, source: str, audit: pd.DataFrame, threshold: float,
                          reporter: Reporter) -> str:
    """The adapter of `source` trained on its pairs less those flagged at `threshold` (trained unless
    it is there): the source's settings and seed, named by the pairs it kept; its name."""
    pairs = audited_pairs(context, source)
    dropped = set(flagged(audit, threshold).pair_id)
    kept = [p for p in pairs if str(p.pair_id) not in dropped]
    if not dropped:
        raise AuditError(f"No pair of {source!r} is flagged at threshold {threshold:g}: there is nothing to drop. "
                         "Raise the threshold to drop the least agreed-on pairs.")
    if len(kept) < 2:
        raise AuditError(f"Threshold {threshold:g} flags {len(dropped)} of {len(pairs)} pairs of {source!r}, leaving "
                         f"{len(kept)}: an adapter needs at least 2. Lower the threshold.")
    record = read_record(context.run, source)
    name = f"{source}-kept-{digest([p.pair_id for p in kept])[:8]}"  # another threshold's kept pairs get another name
    fit_missing(context, kept_adapters_dir(context.run), name, kept, recorded_config(record), record["seed"], reporter,
                kept_from=source, threshold=threshold, dropped=sorted(dropped))
    return name


def values_without(context: RunContext, source: str, adapter: str, tokens: int, reporter: Reporter,
                   sources: list[str] | None = None) -> pd.DataFrame:
    """Every source's value in the run's reward-free game (of `sources`, default every trained
    source), before and after `adapter` (the kept-pairs one) takes `source`'s place, and the change,
    with 95% bootstrap intervals over the held-out pairs; written to <run>/audit/<source>-values.csv
    and reused while its inputs are the same."""
    run = context.run
    trained = trained_sources(run)
    sources = sorted(sources or trained)
    if set(sources) - set(trained):
        raise AuditError(f"No adapter for {sorted(set(sources) - set(trained))} in run {run.name!r}: value a game of "
                         f"trained sources ({', '.join(trained)}).")
    path, folder = values_path(run, source), kept_adapters_dir(run)
    pairs, kept = context.split.eval_pairs, read_record(folder, adapter)
    key = digest({"adapters": {s: digest(read_record(run, s)) for s in sources},
                  "kept": digest(kept), "pairs": [p.pair_id for p in pairs], "tokens": tokens})
    record = path.with_suffix(".json")
    if path.exists() and record.exists() and json.loads(record.read_text()).get("key") == key:
        return read_values(run, source)
    heldout = held_out(context.base.tokenizer, pairs, tokens)
    model = load_adapters(context.fresh_model(), run, sources)  # a copy: the kept adapter never joins the shared base
    model.load_adapter(adapter_dir(folder, adapter), adapter_name=adapter, is_trainable=False)
    model.eval()
    beta = read_record(run, source)["beta"]
    reporter.log(f"valuing {', '.join(sources)} on {len(heldout)} held-out pairs, with {source} and with {adapter}")
    # After: only the coalitions the kept adapter joins are new (and the base, every margin's reference).
    # Both games in one pass: the base and the other sources' adapters are read once for the two.
    swapped = [adapter if s == source else s for s in sources]
    new = [c for c in all_coalitions(swapped) if not c or adapter in c]
    before, joined = games_preferences(model, context.base.tokenizer, heldout,
                                       [(sources, all_coalitions(sources)), (swapped, new)], beta,
                                       reporter.stage("before and after"))
    joined["coalition"] = [coalition_name({source if m == adapter else m for m in parse_coalition(c)})
                           for c in joined.coalition]
    after = pd.concat([before[~before.coalition.map(lambda c: source in parse_coalition(c))],
                       joined[joined.coalition != ""]], ignore_index=True)
    frame = before_after(before, after, sources)
    atomic_write_text(path, frame.to_csv(index=False, float_format="%.6g"))
    atomic_write_json(record, {"key": key, "source": source, "adapter": adapter, "threshold": kept["threshold"],
                               "dropped": len(kept["dropped"]), "kept": kept["pairs_used"], "pairs": len(heldout),
                               "tokens": tokens})
    return frame


def before_after(before: pd.DataFrame, after: pd.DataFrame, players: list[str]) -> pd.DataFrame:
    """Shapley values of two utility tables of the same players and prompts, and of their difference
    (after - before: the change in value, Shapley being linear), with intervals from one bootstrap
    over the prompts: stage, objective, player, value, lower, upper."""
    index = ["coalition", "prompt"]
    before, after = before.set_index(index).sort_index(), after.set_index(index).sort_index()
    if not before.index.equals(after.index):
        raise ValueError("before and after must hold the same coalitions and prompts")
    objectives = list(before.columns)
    stages = {"before": before, "after": after, "change": after - before}
    wide = pd.concat([table.add_prefix(f"{stage}:") for stage, table in stages.items()], axis=1).reset_index()
    result = bootstrap_intervals(players, UtilityTable.from_frame(wide)).to_frame()
    parts = result.objective.str.split(":", n=1, expand=True)
    frame = result.assign(stage=parts[0], objective=parts[1])[["stage", "objective", "player", "value", "lower", "upper"]]
    return frame[frame.objective.isin(objectives)].reset_index(drop=True)


def read_values(run: Run, source: str) -> pd.DataFrame:
    """The values before and after dropping `source`'s flagged pairs (empty when not computed)."""
    path = values_path(run, source)
    return pd.read_csv(path) if path.exists() else pd.DataFrame()


def cleaned_record(run: Run, source: str) -> dict | None:
    """What the values without the flagged pairs were computed from (the threshold, the pairs dropped
    and kept), or None before they were."""
    path = values_path(run, source).with_suffix(".json")
    return json.loads(path.read_text()) if path.exists() else None


def cleaned_findings(run: Run, source: str) -> list[str]:
    """What dropping the source's flagged pairs did to its value, in words (page, report and command
    line); empty before it was done."""
    values, record = read_values(run, source), cleaned_record(run, source)
    if values.empty or record is None:
        return []
    lines = [f"{source} trained again without its {record['dropped']} pairs flagged at threshold {record['threshold']:g} "
             f"({record['kept']} kept; the same settings and seed), and the run valued with that adapter in its place, "
             f"on {record['pairs']} held-out pairs (95% intervals over them):"]
    for objective, rows in values[values.player == source].groupby("objective", sort=False):
        row = {r.stage: r for r in rows.itertuples()}
        change = row["change"]
        verdict = ("a change the interval cannot tell from none" if change.lower <= 0 <= change.upper
                   else "a rise" if change.lower > 0 else "a fall")
        lines.append(f"{objective}: {source}'s value goes from {interval(row['before'])} to {interval(row['after'])}, "
                     f"a change of {interval(change, '+')}: {verdict}.")
    return lines


def interval(row: object, sign: str = "") -> str:
    return f"{row.value:{sign}.4f} [{row.lower:{sign}.4f}, {row.upper:{sign}.4f}]"


def kept_adapters(run: Run, source: str) -> list[str]:
    """The kept-pairs adapters of `source` trained so far."""
    return [name for name in trained_adapters(kept_adapters_dir(run)) if name.startswith(f"{source}-kept-")]

