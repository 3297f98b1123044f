"""The jobs, all of one shape: a config dataclass with its presets, and one function

    run_<job>(context: RunContext, config, reporter: Reporter)

that does the work and writes its results into the run. This module registers them (one line a
job), and runs one either here, in the foreground (`run_job`, what the command line does), or in a
background process that outlives the page that started it (`launch`, what the app does). Both
paths hold the run's lock, so one job works on a run at a time. The command line makes each job's
flags from its config's fields (`jobs.flags`), and `launch` writes the same flags back, so a
job launched from the app is exactly the command it shows. Every job also takes the backend flags
(`config.BackendConfig`: --backend ray --address auto ...): where its parallel parts run, the run's
own backend unless a flag says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import PROJECT_ROOT, BackendConfig, RunConfig, preset_config, to_dict
from ..evaluation.job import run_evaluate
from ..evaluation.settings import PRESETS as EVALUATE_PRESETS, EvaluationConfig
from ..progress import Reporter
from ..rewards.job import PRESETS as REWARD_PRESETS, RewardJobConfig, run_rewards
from ..runs import Run
from ..runtime.context import RunContext
from ..runtime.quiet import quiet_libraries
from ..training.audit import PRESETS as AUDIT_PRESETS, AuditConfig
from ..training.audit_job import run_audit
from ..training.job import run_train
from ..training.settings import PRESETS as TRAIN_PRESETS, TrainConfig
from ..validation.job import run_validate
from ..validation.settings import PRESETS as VALIDATE_PRESETS, ValidationConfig
from .background import Job, job_session, launch_job
from .flags import flags_of


@dataclass(frozen=True)
class JobKind:
    summary: str  # one line for --help
    config: type
    presets: dict[str, Any]  # the first is the default
    run: Callable[[RunContext, Any, Reporter], Any]
    parallel: bool = False  # has parts a Ray backend spreads over a cluster (the others run where they start)

    @property
    def default_preset(self) -> str:
        return next(iter(self.presets))


JOBS: dict[str, JobKind] = {
    "train": JobKind("Train one DPO LoRA adapter per source of a run (resumes: trained sources are kept).",
                     TrainConfig, TRAIN_PRESETS, run_train, parallel=True),
    "rewards": JobKind("Train (or load) a run's reward models and print each held-out accuracy with its 95% interval.",
                       RewardJobConfig, REWARD_PRESETS, run_rewards),
    "evaluate": JobKind("Sample every coalition model on held-out prompts, score them with reward models, write utilities.",
                        EvaluationConfig, EVALUATE_PRESETS, run_evaluate, parallel=True),
    "validate": JobKind("Check the arithmetic on a run: sequential and pooled DPO, epochs, preference accuracy, "
                        "Monte Carlo error at n = 8.", ValidationConfig, VALIDATE_PRESETS, run_validate),
    "audit": JobKind("Score each pair of a source by the other sources' adapters; flag and export the ones they label "
                     "the other way.", AuditConfig, AUDIT_PRESETS, run_audit),
}


def job_config(job: str, preset: str | None = None, **overrides: Any) -> Any:
    """A job's config: its preset (the default one if None) with `overrides`, checked."""
    kind = JOBS[job]
    return preset_config(kind.config, kind.presets, preset or kind.default_preset, overrides)


def run_job(run: Run, job: str, config: Any, backend: BackendConfig | None = None) -> Any:
    """Run `job` from here, holding the run's lock, and record how it ended (done, failed, cancelled)."""
    recorded = run.load_config()  # a clear error for a missing or broken run, before its lock and job files exist
    with job_session(run, job) as reporter:
        return run_in_session(run, job, config, reporter, backend, recorded)


def run_in_session(run: Run, job: str, config: Any, reporter: Reporter, backend: BackendConfig | None = None,
                   recorded: RunConfig | None = None) -> Any:
    """The job's work, inside a `job_session` the caller holds (a bad config is recorded as its error);
    `recorded`: the run's config when the caller has read it."""
    config.validate()
    context = RunContext.open(run, backend, recorded)
    context.backend.validate()
    quiet_libraries()
    reporter.event("start", job=job, settings=to_dict(config), backend=to_dict(context.backend))
    if context.backend.backend != "local" and not JOBS[job].parallel:
        reporter.log(f"{job} has no part to spread over a cluster: it runs here, whatever the backend")
    return JOBS[job].run(context, config, reporter)


def command(run: Run, job: str, config: Any, backend: BackendConfig | None = None,
            recorded: RunConfig | None = None) -> list[str]:
    """The arguments of `python -m valuation` that run `job` with `config`: the preset it is closest
    to, then a flag for each field that differs from it, then the backend's flags where it differs
    from the run's (`recorded`: the run's config when the caller has read it); the run's path
    relative to the project when inside it."""
    kind = JOBS[job]
    preset = min(kind.presets, key=lambda name: len(flags_of(config, kind.presets[name])))
    chosen = [] if preset == kind.default_preset else ["--preset", preset]
    where = flags_of(backend, (recorded or run.load_config()).backend) if backend is not None else []
    return [job, "--run", shown_path(run.path), *chosen, *flags_of(config, kind.presets[preset]), *where]


def shown_path(path: Path) -> str:
    path = path.absolute()
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def launch(run: Run, job: str, config: Any, backend: BackendConfig | None = None) -> Job:
    """Check the config and the run now (mistakes show at once), then run `job` in the background."""
    config.validate()
    run.load_config()
    if backend is not None:
        backend.validate()
    return launch_job(run, job, command(run, job, config, backend))
