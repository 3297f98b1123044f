"""The accuracy experiment: held-out preference accuracy and reward margin of all 2^n coalitions of
the run's own adapters (`rewards.heldout`), on the validation's held-out pairs.

    <run>/validation/accuracy_utilities.csv     coalition, prompt, preference_accuracy, reward_margin
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ..lm.adapters import load_adapters, read_record, trained_sources
from ..rewards.heldout import coalition_preferences
from ..storage import atomic_write_text
from .inputs import Inputs
from .settings import ValidationError, accuracy_path

if TYPE_CHECKING:
    from ..progress import Reporter


def run_accuracy(inputs: Inputs, reporter: Reporter) -> Path:
    """Preference accuracy of every coalition of the run's own adapters, on the held-out pairs.

    Written to <run>/validation/accuracy_utilities.csv (the evaluate job writes the same utility
    for the Shapley page: `evaluation.job.evaluate_preferences`).
    """
    run = inputs.context.run
    path = accuracy_path(run)
    if not path.exists():
        sources = trained_sources(run)
        if len(sources) < 2:
            raise ValidationError(f"Run {run.name!r} needs at least two trained adapters: train the sources first.")
        base = inputs.context.base  # the run's own adapters join the shared base, as in the evaluation
        model = load_adapters(base, run, sources)
        beta = read_record(run, sources[0])["beta"]
        reporter.log(f"accuracy: {2 ** len(sources)} coalitions of {', '.join(sources)} on {len(inputs.evaluation)} held-out pairs")
        table = coalition_preferences(model, base.tokenizer, inputs.evaluation, sources, beta, reporter.stage("accuracy"))
        atomic_write_text(path, table.to_csv(index=False, float_format="%.6g"))
    return path


def read_utilities(path: Path) -> pd.DataFrame:
    """A utilities CSV with its coalition and prompt columns as text ('' for the empty coalition)."""
    return pd.read_csv(path, dtype={"coalition": str, "prompt": str}).fillna({"coalition": ""})
