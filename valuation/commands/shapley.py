"""python -m valuation shapley (--utilities table.csv | --run runs/NAME) [--method exact|permutation] [--format table|json]"""

from __future__ import annotations

import argparse
from dataclasses import replace

import json

import pandas as pd

from ..config import field_help
from ..games.values import METHODS, Valuation, ValuationConfig
from ..views.caveats import AT_CHANCE, Caveat, unchecked
from ..views.snapshot import EVALUATION_SETTINGS  # with --run they default to the run's: it measured the coalitions they pick
from ..views.values import TARGET_LABELS



def _from_the_run(name: str) -> str:
    return (f"{field_help(ValuationConfig, name)} Default: with --run the run's evaluation setting, "
            f"else {getattr(ValuationConfig(), name)}.")


def configure(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--utilities", help="A CSV of coalition utilities: a `coalition` column (sources joined by "
                                           "'+', empty for the empty coalition), optionally `prompt`, and one "
                                           "numeric column per objective.")
    where.add_argument("--run", help="A run directory (runs/NAME): value its evaluation/utilities.csv.")
    defaults = ValuationConfig()
    parser.add_argument("--method", choices=METHODS, help=_from_the_run("method"))
    parser.add_argument("--permutations", type=int, help=_from_the_run("permutations"))
    parser.add_argument("--seed", type=int, help=_from_the_run("seed"))
    parser.add_argument("--confidence", type=float, default=defaults.confidence,
                        help=field_help(ValuationConfig, "confidence"))
    parser.add_argument("--bootstrap", type=int, default=defaults.bootstrap, help=field_help(ValuationConfig, "bootstrap"))
    parser.add_argument("--target", choices=tuple(TARGET_LABELS),
                        help="With --run: the utilities to value. After a pooled evaluation 'token' (default) or "
                             "'sequence'; on every run 'preference', the reward-free held-out pair utilities.")
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="'table': aligned text per objective, then the caveats; 'json': {shapley: {objective: "
                             "{source: {value, lower, upper}}}, banzhaf, efficiency, caveats}.")


def run(args: argparse.Namespace) -> int:
    from ..games.values import read_table, value_sources
    from ..runs import Run
    from ..views.caveats import run_caveats, value_caveats
    from ..views.findings import findings_text
    from ..views.snapshot import RunSnapshot

    given = {name: getattr(args, name) for name in EVALUATION_SETTINGS if getattr(args, name) is not None}
    if args.run:
        snapshot = RunSnapshot(Run.at(args.run))
        config = replace(snapshot.valuation_config, confidence=args.confidence, bootstrap=args.bootstrap, **given)
        valuation = value_sources(snapshot.store.load(args.target), config)
        accuracies = snapshot.accuracies
        caveats = run_caveats(snapshot, {args.target or snapshot.store.primary(): valuation})
    else:
        config = ValuationConfig(confidence=args.confidence, bootstrap=args.bootstrap, **given)
        valuation, accuracies = value_sources(read_table(args.utilities), config), None
        caveats = value_caveats({"": valuation})
    if args.format == "json":
        print(json.dumps(valuation.to_json_dict() | {"caveats": [{"kind": c.kind, "text": c.text, "about": list(c.about)}
                                                                  for c in caveats]},
                         indent=2))
    else:
        print(format_table(valuation, caveats, accuracies))
        if args.run:  # what survives every caveat, in words
            found = findings_text(snapshot, {args.target or snapshot.store.primary(): valuation})
            print("\nfindings:\n" + "\n".join(f"- {sentence}" for sentence in found))
    return 0


def _number(x: float) -> str:
    return f"{x:+.4f}"


def format_table(valuation: Valuation, caveats: list[Caveat], accuracies: pd.DataFrame | None = None) -> str:
    """A readable aligned table per objective: value, interval, a note where it spans zero; the
    efficiency check; the reward models' accuracies; then every caveat. An objective whose reward
    model is at chance gets its caveat instead of its values."""
    shapley, intervals = valuation.shapley, valuation.has_intervals
    efficiency = valuation.efficiency_frame().set_index("objective")
    spans = valuation.spans_zero()
    hidden = {c.about[0]: c.text for c in caveats if c.kind == AT_CHANCE}
    not_yet = unchecked(caveats)
    width = max(len("source"), *map(len, valuation.players))
    header = f"{valuation.confidence:.0%} interval" if intervals else ""
    lines = [f"method: {shapley.describe()}" + ("" if intervals else " (no interval: add a prompt column to bootstrap one)")]
    for k, objective in enumerate(valuation.objectives):
        lines += ["", objective]
        if objective in hidden:
            lines.append(f"  {hidden[objective]}")
            continue
        lines.append(f"  {'source':<{width}}  {'value':>8}  {header}".rstrip())
        for i, player in enumerate(valuation.players):
            row = f"  {player:<{width}}  {_number(shapley.values[i, k]):>8}"
            if intervals:
                row += f"  [{_number(shapley.lower[i, k])}, {_number(shapley.upper[i, k])}]"
            if spans[i, k]:
                row += "  spans zero: not distinguishable from no effect"
            elif f"{player} on {objective}" in not_yet:
                row += "  one training seed: not yet checked against training noise"
            lines.append(row)
        e = efficiency.loc[objective]
        lines.append(f"  efficiency: sum of values {_number(e.sum_of_values)} vs v(N) - v(empty) = "
                     f"{e.v_full:.4f} - {e.v_empty:.4f} = {_number(e.v_full - e.v_empty)} (gap {e.gap:.1e})")
    for row in (accuracies if accuracies is not None else pd.DataFrame()).itertuples():
        lines += ["", f"reward model {row.objective}: held-out accuracy {row.accuracy:.3f} "
                      f"[{row.lower:.3f}, {row.upper:.3f}] on {row.pairs:.0f} pairs"
                      + ("  warning: near chance (the interval includes 0.5)" if row.near_chance else "")]
    shown = [c for c in caveats if c.kind != AT_CHANCE]
    return "\n".join([*lines, "", "caveats:", *(f"- {c.text}" for c in shown)] if shown else lines)
