"""python -m valuation shapley (--utilities table.csv | --run runs/NAME) [--method exact|permutation] [--format table|json]"""

from __future__ import annotations

import argparse

from ..config import field_help
from ..values import METHODS, ValuationConfig


def configure(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--utilities", help="A CSV of coalition utilities: a `coalition` column (sources joined by "
                                           "'+', empty for the empty coalition), optionally `prompt`, and one "
                                           "numeric column per objective.")
    where.add_argument("--run", help="A run directory (runs/NAME): value its evaluation/utilities.csv.")
    defaults = ValuationConfig()
    parser.add_argument("--method", choices=METHODS, default=defaults.method, help=field_help(ValuationConfig, "method"))
    parser.add_argument("--permutations", type=int, default=defaults.permutations,
                        help=field_help(ValuationConfig, "permutations"))
    parser.add_argument("--seed", type=int, default=defaults.seed, help=field_help(ValuationConfig, "seed"))
    parser.add_argument("--confidence", type=float, default=defaults.confidence,
                        help=field_help(ValuationConfig, "confidence"))
    parser.add_argument("--bootstrap", type=int, default=defaults.bootstrap, help=field_help(ValuationConfig, "bootstrap"))
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="'table': aligned text per objective; 'json': {shapley: {objective: {source: "
                             "{value, lower, upper}}}, banzhaf, efficiency}.")


def run(args: argparse.Namespace) -> int:
    from ..values import format_table, load_run_utilities, load_utilities, reward_accuracies, value_sources
    from ..runs import Run

    config = ValuationConfig(method=args.method, permutations=args.permutations, seed=args.seed,
                             confidence=args.confidence, bootstrap=args.bootstrap)
    if args.run:
        run_dir = Run.at(args.run)
        table, accuracies = load_run_utilities(run_dir), reward_accuracies(run_dir)
    else:
        table, accuracies = load_utilities(args.utilities), None
    valuation = value_sources(table, config)
    if args.format == "json":
        print(valuation.to_json())
    else:
        print(format_table(valuation, accuracies))
    return 0
