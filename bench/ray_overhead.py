"""Local against Ray on this machine: four tiny-model adapters and one pooled evaluation.

    python bench/ray_overhead.py [--sources 4] [--prompts 8]

Each job runs three ways, side by side in one process:
  local          the local backend (this process, every core);
  ray, 1 task    Ray started for the job, each task holding every core, so one runs at a time:
                 the same work in the same order, and the difference is Ray's own cost;
  ray, parallel  Ray with one core a task: as many tasks at once as there are cores.
It prints the wall times and the ratios, then a PROJECTION of the wall time with k workers: the
serial part measured here (Ray's start, the workers' model loading, and the driver's own work:
reward models, verdicts, held-out preference utilities) plus the measured per-task times
scheduled greedily onto k workers (longest first). It is a projection, not a measurement: real workers add their own start
(loading the base model), transfers over a network, and a first-use model download.
"""

from __future__ import annotations

import argparse
import heapq
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from valuation.jobs.background import job_dir  # noqa: E402
from valuation.config import BackendConfig, DataConfig, ModelConfig, RunConfig  # noqa: E402
from valuation.evaluation.settings import EvaluationConfig  # noqa: E402
from valuation.jobs.registry import job_config, run_job  # noqa: E402
from valuation.progress import read_progress  # noqa: E402
from valuation.runs import Run, create_run  # noqa: E402
from valuation.data.sources import record_sources  # noqa: E402

SOURCES = ["harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled"]
TRAIN = {"max_pairs": 16, "batch_size": 2, "gradient_accumulation": 1, "max_length": 64, "max_prompt_length": 48}
CORES = os.cpu_count() or 1


def backends() -> dict[str, BackendConfig]:
    return {"local": BackendConfig(),
            "ray, 1 task": BackendConfig(backend="ray", cpus_per_task=float(CORES), workers=1),
            "ray, parallel": BackendConfig(backend="ray", cpus_per_task=1.0)}


def timed(run: Run, job: str, config, backend: BackendConfig) -> float:
    started = time.perf_counter()
    run_job(run, job, config, backend)
    return time.perf_counter() - started


def chunk_seconds(run: Run) -> list[float]:
    """Each evaluation chunk's time, from its first to its last progress event."""
    spans: dict[str, list[float]] = {}
    for event in read_progress(job_dir(run) / "progress.jsonl"):
        stage = event.get("stage", "")
        if event["event"] == "step" and "chunk" in stage:
            spans.setdefault(stage.rsplit(" ", 1)[-1], []).append(event["time"])
    return [max(times) - min(times) for times in spans.values()]


def makespan(task_seconds: list[float], workers: int) -> float:
    """Longest-first greedy schedule of the tasks onto `workers`: when the last one finishes."""
    loads = [0.0] * workers
    for seconds in sorted(task_seconds, reverse=True):
        heapq.heapreplace(loads, loads[0] + seconds)
    return max(loads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=8)
    args = parser.parse_args()
    sources = SOURCES[: args.sources]
    root = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    evaluation = EvaluationConfig(prompts=args.prompts, pool_per_anchor=2, max_new_tokens=16, chunk_prompts=1)
    warm = create_run("warm-up", RunConfig(model=ModelConfig(name="tiny"), data=DataConfig(sources=sources[:1])), root=root)
    record_sources(warm, warm.load_config().data)
    run_job(warm, "train", job_config("train", **TRAIN))  # first-use costs (imports, caches) outside the timings
    walls: dict[str, dict[str, float]] = {"train": {}, "evaluate": {}}
    task_times: dict[str, list[float]] = {}
    trained: Run | None = None
    for name, backend in backends().items():
        run = create_run(name.replace(", ", "-").replace(" ", "-"),
                         RunConfig(model=ModelConfig(name="tiny"), data=DataConfig(sources=sources, eval_prompts=args.prompts)),
                         root=root)
        record_sources(run, run.load_config().data)
        walls["train"][name] = timed(run, "train", job_config("train", **TRAIN), backend)
        if trained is None:  # every backend evaluates the same adapters with the same reward models
            trained = run
            from valuation.lm.adapters import read_record

            task_times["train"] = [read_record(run, s)["wall_time_s"] for s in sources]
            run_job(run, "rewards", job_config("rewards"))  # trained once, outside the timings
        else:
            for folder in ("adapters", "rewards"):
                shutil.rmtree(run.path / folder, ignore_errors=True)
                shutil.copytree(trained.path / folder, run.path / folder)
        walls["evaluate"][name] = timed(run, "evaluate", evaluation, backend)
        if name == "local":
            task_times["evaluate"] = chunk_seconds(run)

    print(f"\n{CORES} cores; tiny model; {len(sources)} sources; evaluation: pooled, {args.prompts} prompts in "
          f"{args.prompts} chunks\n")
    print(f"{'job':<10}" + "".join(f"{name:>16}" for name in walls["train"]) + f"{'ray 1 task/local':>18}"
          + f"{'parallel/local':>16}")
    for job, row in walls.items():
        print(f"{job:<10}" + "".join(f"{seconds:>15.1f}s" for seconds in row.values())
              + f"{row['ray, 1 task'] / row['local']:>17.2f}x{row['ray, parallel'] / row['local']:>15.2f}x")
    print("\nPROJECTION (not measured): the serial part here + the measured per-task times on k workers")
    print(f"{'job':<10}{'serial part':>12}" + "".join(f"{f'k={k}':>10}" for k in (1, 2, 4, 8)))
    for job, row in walls.items():
        fixed = max(0.0, row["ray, 1 task"] - sum(task_times[job]))  # what does not shrink with k
        print(f"{job:<10}{fixed:>11.1f}s" + "".join(f"{fixed + makespan(task_times[job], k):>9.1f}s" for k in (1, 2, 4, 8)))
    print(f"\nper-task seconds (local): train {[round(t, 1) for t in task_times['train']]}, "
          f"evaluate {[round(t, 1) for t in task_times['evaluate']]}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
