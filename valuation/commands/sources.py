"""python -m valuation sources --data hh-rlhf [--run runs/NAME --sources a b]"""

from __future__ import annotations

import argparse

from ..config import DataConfig, field_help


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="hh-rlhf", help=field_help(DataConfig, "dataset"))
    parser.add_argument("--data-dir", default="", help=field_help(DataConfig, "data_dir"))
    parser.add_argument("--ultrafeedback-file", default="", help=field_help(DataConfig, "ultrafeedback_file"))


def configure(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--run", help="A run directory (runs/NAME): record the chosen sources and split there.")
    parser.add_argument("--sources", nargs="*", default=[], help=field_help(DataConfig, "sources"))
    parser.add_argument("--heldout-file", default="", help=field_help(DataConfig, "heldout_file"))
    parser.add_argument("--eval-prompts", type=int, default=DataConfig.eval_prompts,
                        help=field_help(DataConfig, "eval_prompts") + " The paper preset evaluates 200.")
    parser.add_argument("--new", action="store_true", help="Create the run if it does not exist yet.")


def run(args: argparse.Namespace) -> int:
    from ..data.preferences import load_preferences
    from ..data.sources import check_source_names, describe_provenance, describe_sources, record_sources
    from ..runs import Run, create_run

    data_config = DataConfig(dataset=args.data, data_dir=args.data_dir,
                             ultrafeedback_file=args.ultrafeedback_file, sources=args.sources,
                             heldout_file=args.heldout_file, eval_prompts=args.eval_prompts)
    data_config.validate()
    data = load_preferences(data_config)
    print(describe_sources(data).to_string())
    for line in data.report.summary():
        print(f"note: {line}")
    if args.run:
        check_source_names(data_config.sources or data.sources)  # before the run exists: nothing to undo
        run_dir = Run.at(args.run)
        if not run_dir.exists():
            if not args.new:
                print(f"error: no run at {run_dir.path}; add --new to create it.")
                return 2
            create_run(run_dir.name, root=run_dir.path.parent)
        split = record_sources(run_dir, data_config)
        summary = split.summary()
        print(f"recorded in {run_dir.config_path}: sources {sorted(summary['train_pairs'])}, "
              f"{len(summary['eval_prompt_ids'])} evaluation prompts")
        print(f"provenance: {describe_provenance(summary)}")
    return 0
