"""Validation: does the coalition arithmetic hold on this run? The paper's checks as one job.

The method's claim: a coalition built by adding log-probabilities,

    log pi_S = sum_{l in S} log pi_l + (1 - |S|) log pi_0 - log Z,

behaves like a model trained on S's data. DPO's optimum is pi = pi_ref exp(r / beta) / Z, so under
*sequential* DPO (train on a; then on b with the a-model as the reference) the rewards add and the
arithmetic is exact at convergence. Training on the pooled data is what a practitioner would do,
and it is not the same thing: two sources with the same preferences give r pooled but 2r by
arithmetic. The experiments, one module each (inputs.py holds what they share):

    sequential   trained.py    arithmetic vs sequential DPO in both orders: KL per token, utility gaps, order gap
    pooled       trained.py    arithmetic vs one adapter trained on the pooled data; Shapley by each method
    epochs       trained.py    the sequential comparison after 1, 2, 4 (, 8) epochs: error against training
    accuracy     accuracy.py   held-out preference accuracy of all 2^n coalitions of the run's own adapters,
                               from n+1 teacher-forced passes per pair: a cheap, exact utility
    scaling      scaling.py    8 sources: exact Shapley over 256 coalitions vs permutation Monte Carlo

Utilities here are teacher-forced (scoring.py), never sampled. Held-out pairs are those of the
split's eval part, disjoint by prompt from every training pair, responses cut to `response_tokens`.
Results go to <run>/validation/<folder>/ (settings.json records the settings that made them) and
results.py reads them for the page. Every adapter and file is written atomically and skipped when
present, so a killed job resumes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import settings_of
from ..storage import atomic_write_json
from .accuracy import run_accuracy
from .inputs import read_inputs
from .results import accuracy_shapley, comparisons, method_shapley, scaling_summary, summary
from .scaling import run_scaling
from .settings import EXPERIMENTS, PRESETS, ValidationConfig, ValidationError, accuracy_path, results_dir
from .trained import compare_trained

if TYPE_CHECKING:
    from ..context import RunContext
    from ..progress import Reporter

__all__ = ["EXPERIMENTS", "PRESETS", "ValidationConfig", "ValidationError", "accuracy_path", "accuracy_shapley",
           "comparisons", "current_experiment", "method_shapley", "results_dir", "run_validate", "scaling_summary",
           "summary"]


def run_validate(context: RunContext, config: ValidationConfig, reporter: Reporter) -> list[Path]:
    """The validate job: the chosen experiments, cheap ones first so partial results appear early; their files."""
    check_settings(results_dir(context.run, config.folder), config)
    inputs = read_inputs(context, config)
    sources = chosen_sources(config, sorted(inputs.train))
    reporter.log(f"validating on {', '.join(sources)}: {', '.join(config.experiments)}")
    main = config.epochs[0]
    plan = [("accuracy", lambda: run_accuracy(inputs, reporter)),
            ("sequential", lambda: compare_trained(inputs, sources, main, "sequential", reporter)),
            ("pooled", lambda: compare_trained(inputs, sources, main, "pooled", reporter)),
            ("scaling", lambda: run_scaling(inputs, reporter))]
    plan += [("epochs", lambda e=e: compare_trained(inputs, sources, e, "sequential", reporter)) for e in config.epochs[1:]]
    written = []
    for name, step in plan:
        if name in config.experiments:
            reporter.event("experiment_start", experiment=name)
            written.append(step())
            reporter.event("experiment_done", experiment=name, path=str(written[-1]))
    reporter.log(f"summary: {summary(results_dir(context.run, config.folder))}")
    return written


def chosen_sources(config: ValidationConfig, available: list[str]) -> list[str]:
    """The sources of the training experiments, sorted: the named ones, else the first `n_sources`."""
    sources = sorted(config.sources) or available[:config.n_sources]
    unknown = [s for s in sources if s not in available]
    if unknown or len(sources) < 2:
        raise ValidationError(f"Validation sources {sources} must be at least two of the run's sources {available}.")
    return sources


def check_settings(folder: Path, config: ValidationConfig) -> None:
    """Results in a folder are reused only with the settings that made them (what it works on may differ)."""
    recorded = folder / "settings.json"
    wanted = settings_of(config)
    if recorded.exists() and json.loads(recorded.read_text(encoding="utf-8")) != wanted:
        raise ValidationError(f"{folder} holds results made with other settings: delete the folder to redo them, "
                              "or name another --folder.")
    atomic_write_json(recorded, wanted)


def current_experiment(events: list[dict[str, Any]]) -> str | None:
    """The experiment a validate job's events say it is working on (or worked on last)."""
    started = [e["experiment"] for e in events if e.get("event") == "experiment_start"]
    return started[-1] if started else None
