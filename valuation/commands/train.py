"""python -m valuation train --run runs/NAME [--preset quick|paper] [--sources a b] [--max-pairs 100 ...]

Trains the sources not trained yet (all chosen ones with --retrain), holding the run's job lock:
refused while another job works on the run. Every TrainConfig field has a flag (--max-pairs,
--epochs, --max-length, --learning-rate, --batch-size, ...) that overrides the preset.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from ..config import field_help
from ..training import PRESETS, TrainConfig, flag


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="The run directory (runs/NAME); it must exist with its config.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                        help="quick: a CPU in minutes; paper: a GPU, whole sources. Flags below override it.")
    parser.add_argument("--sources", nargs="+", help="Sources to train (default: the run's sources, else every source).")
    parser.add_argument("--retrain", action="store_true", help="Train the chosen sources again even if already trained.")
    settings = parser.add_argument_group("training settings (default: the preset's)")
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        kind, help = hints[field.name], field_help(TrainConfig, field.name)
        if kind is bool:
            settings.add_argument(flag(field.name), action=argparse.BooleanOptionalAction, default=None, help=help)
        elif typing.get_origin(kind) is list:
            settings.add_argument(flag(field.name), nargs="+", type=typing.get_args(kind)[0], default=None, help=help)
        else:
            settings.add_argument(flag(field.name), type=kind, default=None, help=help)


def run(args: argparse.Namespace) -> int:
    from ..jobs import job_session
    from ..runs import Run
    from ..training import preset_config, train_sources

    run_dir = Run.at(args.run)
    run_dir.load_config()  # the run must exist before its lock and job files can
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None}
    with job_session(run_dir, "train") as session:
        config = preset_config(args.preset, **overrides)  # a bad setting is recorded as the job's error
        records = train_sources(run_dir, config, args.sources, session, retrain=args.retrain)
        session.log(f"done: {len(records)} adapter(s) trained in {run_dir.path / 'adapters'}")
    return 0
