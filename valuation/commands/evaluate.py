"""python -m valuation evaluate --run runs/NAME [--preset quick] [--prompts 16 --samples 2 ...]"""

from __future__ import annotations

import argparse
import dataclasses

from ..game import PRESETS, EvaluationConfig

OVERRIDABLE = ("prompts", "prompts_file", "samples", "max_new_tokens", "temperature", "top_p", "seed", "method", "permutations",
               "chunk_prompts", "max_batch_rows")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="The run directory (runs/NAME) with trained adapters.")
    parser.add_argument("--preset", default="quick", choices=sorted(PRESETS), help="Starting settings; flags override them.")
    fields = {f.name: f for f in dataclasses.fields(EvaluationConfig)}
    for name in OVERRIDABLE:
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(fields[name].default), default=None,
                            help=fields[name].metadata["help"])


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..game import evaluate_run, preset_config
    from ..jobs import job_session
    from ..runs import Run

    run_dir = Run.at(args.run)
    run_dir.load_config()  # a clear error for a missing or broken run, before taking the lock
    config = preset_config(args.preset, **{name: getattr(args, name) for name in OVERRIDABLE})
    with job_session(run_dir, "evaluate") as session:
        bars: dict[str, tqdm] = {}

        def progress(stage: str, done: int, total: int) -> None:
            session.progress.emit("step", stage=stage, done=done, total=total)
            bar = bars.get(stage)
            if bar is None:
                for old in bars.values():
                    old.close()
                bar = bars[stage] = tqdm(total=total, desc=stage, disable=None, leave=False)
            bar.update(done - bar.n)

        session.progress.emit("start", settings=dataclasses.asdict(config))
        path = evaluate_run(run_dir, config, log=session.log, progress=progress)
        session.log(f"utilities written to {path}")
    return 0
