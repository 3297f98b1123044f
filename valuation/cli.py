"""`python -m valuation <command>`: the command-line face of the library (the app is the other).

Jobs (train, rewards, evaluate, validate; `jobs.registry`) get their flags from their config's
fields: `--run`, `--preset`, one flag per setting, then the backend's flags. The other commands live in
`valuation/commands/<name>.py` with `configure(parser)` and `run(args) -> int`; heavy imports
(torch, transformers) happen only when work runs, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UserError

COMMANDS = {
    "sources": "List a dataset's sources with pair counts; with --run, record the choice and its split.",
    "shapley": "Shapley values of the sources from a table of coalition utilities (or a run's), with intervals.",
    "report": "Write a run's report: one HTML file (values with intervals, caveats, commands) that opens offline.",
    "demo": "Make the demo run the app opens on (the quick presets on the offline default) and export it to assets/.",
}


def build_parser() -> argparse.ArgumentParser:
    from .config import BackendConfig
    from .jobs.flags import add_flags
    from .jobs.registry import JOBS

    parser = argparse.ArgumentParser(prog="python -m valuation", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, kind in JOBS.items():
        sub = commands.add_parser(name, help=kind.summary.replace("%", "%%"), description=kind.summary)
        sub.add_argument("--run", required=True, help="The run directory (runs/NAME).")
        sub.add_argument("--preset", choices=list(kind.presets), default=kind.default_preset,
                         help="Starting settings; the flags below override them.")
        add_flags(sub.add_argument_group("settings (default: the preset's)"), kind.config)
        add_flags(sub.add_argument_group("backend (default: the run's config)"), BackendConfig)
    for name, summary in COMMANDS.items():
        sub = commands.add_parser(name, help=summary.replace("%", "%%"), description=summary)
        importlib.import_module(f"valuation.commands.{name}").configure(sub)
    return parser


def run_command(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .jobs.background import job_session
    from .config import BackendConfig
    from .jobs.flags import overrides_from
    from .jobs.registry import JOBS, job_config, run_in_session
    from .runs import Run

    if args.command not in JOBS:
        return importlib.import_module(f"valuation.commands.{args.command}").run(args)
    run = Run.at(args.run)
    recorded = run.load_config()  # a clear error for a missing or broken run, before its lock and job files exist
    with job_session(run, args.command) as reporter:
        # Inside the session: a bad setting is recorded as the job's error, for the app to show.
        config = job_config(args.command, args.preset, **overrides_from(args, JOBS[args.command].config))
        backend = replace(recorded.backend, **overrides_from(args, BackendConfig))
        run_in_session(run, args.command, config, reporter, backend, recorded)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_command(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
