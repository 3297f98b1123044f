"""`python -m valuation <command>`: the command-line face of the library (the app is the other).

Each command lives in `valuation/commands/<name>.py` with `configure(parser)` and `run(args) -> int`;
heavy imports (torch, transformers) happen inside `run`, so `--help` and table commands stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UserError

COMMANDS = {
    "sources": "List a dataset's sources with pair counts; with --run, record the choice and its split.",
    "train": "Train one DPO LoRA adapter per source of a run, in the foreground (the app launches it in the background).",
    "rewards": "Train (or load) a run's reward models and print each held-out accuracy with its 95% interval.",
    "evaluate": "Sample every coalition model on held-out prompts, score them with reward models, write utilities.",
    "validate": "Check the arithmetic on a run: sequential and pooled DPO, epochs, preference accuracy, Monte Carlo error.",
    "demo": "Make the demo run the app opens on (the quick presets on the offline default) and export it to assets/.",
    "shapley": "Shapley values of the sources from a table of coalition utilities (or a run's), with intervals.",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m valuation", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, summary in COMMANDS.items():
        sub = commands.add_parser(name, help=summary.replace("%", "%%"), description=summary)
        importlib.import_module(f"valuation.commands.{name}").configure(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return importlib.import_module(f"valuation.commands.{args.command}").run(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
