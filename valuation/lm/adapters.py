"""Trained adapters: one LoRA adapter per source, saved in the run, loaded together on one base.

    <run>/adapters/<source>/
        adapter_config.json          PEFT's config (it records an absolute base path: never trusted)
        adapter_model.safetensors    the LoRA weights (safetensors only, never pickles)
        training.json                how it was trained: settings, beta, base model, LoRA, seed,
                                     pairs used and dropped, final metrics, curve, wall time

A source trained under more than one seed has one adapter per seed: its own name for the first,
`<source>@seed2`, `<source>@seed3`, ... for the others (`seed_adapter`).

An adapter directory is written whole or not at all (`storage.atomic_dir`), so a directory that
exists with these three files is a finished adapter; temporary ones start with a dot.

Coalition arithmetic (sum of adapters' log-probs + (1 - |S|) times the base's) is only meaningful
for adapters trained with the same beta on the same base, so loading refuses any other mix.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..games.coalitions import BASE
from ..errors import UserError
from ..runs import Run
from ..storage import atomic_dir, atomic_write_json

RECORD_FILE = "training.json"
WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"


class AdapterError(UserError):
    """Adapters that are missing or cannot be combined; the message says why."""


def adapters_dir(run: Run | Path) -> Path:
    """A run's adapters; a plain folder is a folder of adapters in the same layout (validation's own)."""
    return run if isinstance(run, Path) else run.path / "adapters"


def adapter_dir(run: Run | Path, source: str) -> Path:
    return adapters_dir(run) / source


def check_adapter_name(source: str) -> str:
    """PEFT keeps adapters in module dicts: a '.' in a name breaks them, and one name is reserved;
    '@seed' marks a source's adapters under further seeds."""
    if not source or "." in source or source == BASE or SEED_MARK in source:
        raise AdapterError(f"Source name {source!r} cannot name an adapter: it must be non-empty, without '.' or "
                           f"{SEED_MARK!r}, and not {BASE!r}. Rename the source in the data.")
    return source


SEED_MARK = "@seed"


def seed_adapter(source: str, replica: int) -> str:
    """The adapter of `source` under its training seed number `replica` (0 is the source's own adapter)."""
    return source if replica == 0 else f"{source}{SEED_MARK}{replica + 1}"


def source_and_replica(adapter: str) -> tuple[str, int]:
    """The source an adapter was trained on and its seed number: seed_adapter's inverse."""
    source, mark, number = adapter.partition(SEED_MARK)
    return source, int(number) - 1 if mark else 0


def checked_adapter(adapter: str) -> str:
    """An adapter name whose source can name an adapter (`check_adapter_name`)."""
    check_adapter_name(source_and_replica(adapter)[0])
    return adapter


def is_complete(folder: Path) -> bool:
    return not folder.name.startswith(".") and all((folder / f).is_file() for f in (CONFIG_FILE, WEIGHTS_FILE, RECORD_FILE))


def trained_adapters(run: Run | Path) -> list[str]:
    """Every finished adapter in the run, sorted: each source's, and those under further seeds."""
    folder = adapters_dir(run)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and is_complete(p))


def trained_sources(run: Run | Path) -> list[str]:
    """Sources with a finished adapter in the run, sorted."""
    return [name for name in trained_adapters(run) if SEED_MARK not in name]


def trained_seeds(run: Run | Path, sources: list[str]) -> int:
    """How many training seeds every one of `sources` has an adapter for (seed numbers 0, 1, ...; 0 when one lacks any)."""
    trained, seeds = set(trained_adapters(run)), 0
    while sources and all(seed_adapter(source, seeds) in trained for source in sources):
        seeds += 1
    return seeds


def read_record(run: Run, source: str) -> dict[str, Any]:
    """The training record saved beside a source's adapter."""
    path = adapter_dir(run, source) / RECORD_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterError(f"Source {source!r} has no trained adapter in run {run.name!r}: train it first.") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AdapterError(f"{path} is corrupt: retrain source {source!r} (train --retrain --sources {source}).") from None


def save_adapter(model: Any, run: Run | Path, source: str, record: dict[str, Any]) -> Path:
    """Write a PEFT model's active adapter and its record; the directory appears only when complete."""
    target = adapter_dir(run, checked_adapter(source))
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        # PEFT records the base model's path on this machine; a run names its base by id instead.
        config = json.loads((tmp / CONFIG_FILE).read_text(encoding="utf-8"))
        atomic_write_json(tmp / CONFIG_FILE, {**config, "base_model_name_or_path": record.get("base_model")})
        atomic_write_json(tmp / RECORD_FILE, record)
    return target


def install_adapter(run: Run | Path, source: str, files: dict[str, bytes]) -> Path:
    """Write an adapter's files (as `save_adapter` made them elsewhere, say on a Ray worker) into the
    run; the directory appears only when complete."""
    target = adapter_dir(run, checked_adapter(source))
    with atomic_dir(target) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
    return target


def remove_partial_adapters(run: Run) -> None:
    """Delete temporary directories a killed job left behind (call only while holding the run's lock)."""
    import shutil

    folder = adapters_dir(run)
    for leftover in folder.glob(".*.tmp-*") if folder.is_dir() else []:
        shutil.rmtree(leftover, ignore_errors=True)


def check_attached(model: Any, names: Iterable[str]) -> None:
    """Every name is an adapter attached to `model`, or the base model (`BASE`): the one check before
    any coalition or variant is sampled or scored; it names what is missing and what is there."""
    attached = set(getattr(model, "peft_config", {}))
    unknown = sorted(set(names) - attached - {BASE})
    if unknown:
        known = ", ".join(sorted(attached)) or "none (train adapters first)"
        raise AdapterError(f"no adapter named {', '.join(unknown)} on the model; adapters: {known}.")


def check_compatible(records: dict[str, dict[str, Any]], base_model: str | None = None) -> None:
    """Refuse adapters that cannot be combined: different beta, or a base other than `base_model`."""
    betas = {source: r.get("beta") for source, r in records.items()}
    if len(set(betas.values())) > 1:
        raise AdapterError(
            f"These adapters were trained with different beta values {betas}: the coalition arithmetic needs one "
            "beta for all. Retrain the odd ones with the same settings."
        )
    bases = {source: r.get("base_model") for source, r in records.items()}
    expected = {base_model} if base_model is not None else set(bases.values())
    if len(set(bases.values()) | expected) > 1:
        loaded = f" onto base model {base_model!r}" if base_model is not None else ""
        raise AdapterError(
            f"Cannot load adapters trained on different base models {bases}{loaded}: every adapter must share "
            "the base it is combined with. Use the run's model or retrain the adapters."
        )


def load_adapters(loaded: Any, run: Run | Path, sources: list[str] | None = None,
                  records: dict[str, dict[str, Any]] | None = None) -> Any:
    """One PeftModel on `loaded.model` with one adapter per source, named by the source, in eval mode.

    `loaded` is a `models.LoadedModel`; its model is wrapped in place (one base in memory) and
    `loaded.model` becomes the wrapper. `records`: the adapters' training records when the caller
    has read them already (they are read here otherwise).
    """
    from peft import PeftModel

    trained = trained_adapters(run)
    sources = list(sources) if sources is not None else trained_sources(run)
    if not sources:
        raise AdapterError(f"{adapters_dir(run)} holds no trained adapters yet: train the sources first.")
    missing = [s for s in sources if s not in trained]
    if missing:
        raise AdapterError(f"No trained adapter for {missing} in {adapters_dir(run)} (trained: {trained or 'none'}).")
    check_compatible({s: (records or {}).get(s) or read_record(run, s) for s in sources}, loaded.name)
    first, *rest = sources
    # The saved config names the base by an absolute path; the base given here is used instead.
    model = PeftModel.from_pretrained(loaded.model, adapter_dir(run, first), adapter_name=first, is_trainable=False)
    for source in rest:
        model.load_adapter(adapter_dir(run, source), adapter_name=source, is_trainable=False)
    # The LoRA layers now live inside the base's modules: whoever holds `loaded` (a reward model's
    # feature extractor, say) must see the wrapper, which can switch the adapters off.
    loaded.model = model.eval()
    return loaded.model
