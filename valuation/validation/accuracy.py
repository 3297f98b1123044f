"""A cheap exact utility for all 2^n coalitions: held-out preference accuracy, teacher-forced.

For a held-out pair (x, y+, y-) a model M has the implicit reward margin

    m_M = [log M(y+|x) - log pi_0(y+|x)] - [log M(y-|x) - log pi_0(y-|x)]

(reported times beta) and preference accuracy 1[m_M > 0], ties (the base against itself) counting
1/2. The scorer reads every coalition off n + 1 forward passes per response.

    <run>/validation/accuracy_utilities.csv     coalition, prompt, preference_accuracy, reward_margin
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..adapters import load_adapters, read_record, trained_sources
from ..coalitions import all_coalitions, coalition_name, parse_coalition
from ..runs import Run
from ..scoring import score_coalitions
from ..storage import atomic_write_text
from ..values import utilities_path
from .inputs import HeldOut, Inputs, responses_of
from .settings import ValidationError, accuracy_path

if TYPE_CHECKING:
    from ..progress import Progress, Reporter


def preference_utilities(log_likelihoods: pd.DataFrame, beta: float, base: str = "base") -> pd.DataFrame:
    """Per (model, prompt): preference accuracy and implicit reward margin relative to the base.

    `log_likelihoods` has columns model, prompt, chosen, rejected, with the base under model `base`.
    m = [log M(y+) - log pi_0(y+)] - [log M(y-) - log pi_0(y-)]; accuracy 1[m > 0] + 1/2 1[m = 0].
    """
    base_rows = log_likelihoods[log_likelihoods.model == base].set_index("prompt")
    table = log_likelihoods.join(base_rows[["chosen", "rejected"]], on="prompt", rsuffix="_base")
    margin = (table.chosen - table.chosen_base) - (table.rejected - table.rejected_base)
    return pd.DataFrame({"model": table.model, "prompt": table.prompt,
                         "preference_accuracy": np.where(margin > 0, 1.0, np.where(margin == 0, 0.5, 0.0)),
                         "reward_margin": beta * margin})


def coalition_accuracy(model: Any, tokenizer: Any, heldout: list[HeldOut], sources: list[str], beta: float,
                       progress: Progress | None = None) -> pd.DataFrame:
    """Per (coalition, prompt): preference accuracy and reward margin of all 2^n coalitions of the
    model's adapters `sources`; the empty coalition (coalition '') is the base."""
    scored = score_coalitions(model, tokenizer, responses_of(heldout), all_coalitions(sources), progress=progress)
    rows = [{"model": coalition_name(coalition), "prompt": pair.prompt_id, "chosen": values[2 * k],
             "rejected": values[2 * k + 1]}  # responses_of: chosen then rejected
            for coalition, values in scored.items() for k, pair in enumerate(heldout)]
    return preference_utilities(pd.DataFrame(rows), beta, base="").rename(columns={"model": "coalition"})


def run_accuracy(inputs: Inputs, reporter: Reporter) -> Path:
    """Preference accuracy of every coalition of the run's own adapters, on the held-out pairs.

    Written to <run>/validation/accuracy_utilities.csv; when the evaluation's utilities exist, the
    column preference_accuracy is also added to them for the (coalition, prompt) rows they hold
    (the held-out pairs are those behind the evaluation prompts), so the Shapley page offers it.
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
        table = coalition_accuracy(model, base.tokenizer, inputs.evaluation, sources, beta, reporter.stage("accuracy"))
        atomic_write_text(path, table.to_csv(index=False, float_format="%.6g"))
    merge_accuracy(run, read_utilities(path), reporter)
    return path


def read_utilities(path: Path) -> pd.DataFrame:
    """A utilities CSV with its coalition and prompt columns as text ('' for the empty coalition)."""
    return pd.read_csv(path, dtype={"coalition": str, "prompt": str}).fillna({"coalition": ""})


def merge_accuracy(run: Run, accuracy: pd.DataFrame, reporter: Reporter) -> bool:
    """Add preference_accuracy to the evaluation's utilities when every row of theirs has a value."""
    target = utilities_path(run)
    if not target.exists():
        return False
    utilities = read_utilities(target)
    canonical = utilities.coalition.map(lambda c: coalition_name(parse_coalition(c)))
    keyed = accuracy.set_index(["coalition", "prompt"]).preference_accuracy
    values = pd.Series([keyed.get((c, p), np.nan) for c, p in zip(canonical, utilities.prompt)], index=utilities.index)
    if values.isna().any():
        reporter.log("evaluation utilities hold prompts or coalitions without a held-out pair: not merged")
        return False
    utilities["preference_accuracy"] = values
    atomic_write_text(target, utilities.to_csv(index=False))
    reporter.log(f"preference_accuracy added to {target}")
    return True
