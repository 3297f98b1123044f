"""python -m valuation shapley (--utilities table.csv | --run runs/NAME) [--method exact|permutation] [--format table|json]"""

from __future__ import annotations

import argparse
from dataclasses import replace

from ..config import field_help
from ..values import METHODS, TARGET_LABELS, ValuationConfig

# With --run these default to the run's evaluation settings: it measured the coalitions they pick.
EVALUATION_FLAGS = ("method", "permutations", "seed")


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
                        help="'table': aligned text per objective; 'json': {shapley: {objective: {source: "
                             "{value, lower, upper}}}, banzhaf, efficiency}.")


def run(args: argparse.Namespace) -> int:
    from ..runs import Run
    from ..rewards import reward_accuracies
    from ..values import (format_table, load_run_utilities, load_utilities, run_valuation_config,
                          value_sources)

    if args.run:
        run_dir = Run.at(args.run)
        table = load_run_utilities(run_dir, args.target)
        accuracies, config = reward_accuracies(run_dir), run_valuation_config(run_dir)
    else:
        table, accuracies, config = load_utilities(args.utilities), None, ValuationConfig()
    given = {name: getattr(args, name) for name in EVALUATION_FLAGS if getattr(args, name) is not None}
    valuation = value_sources(table, replace(config, confidence=args.confidence, bootstrap=args.bootstrap, **given))
    if args.format == "json":
        print(valuation.to_json())
    else:
        print(format_table(valuation, accuracies))
    return 0
