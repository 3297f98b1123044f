"""Quiet third-party libraries inside a job, so that its log holds its own lines."""

from __future__ import annotations


def quiet_libraries() -> None:
    """Keep a job's log to its own lines: no per-map progress bars, no weight-loading bars, no
    deprecation notice PEFT triggers in transformers on every adapter load."""
    import warnings

    import datasets
    import transformers

    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
