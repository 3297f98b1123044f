"""Command-line flags from a config dataclass, and back: one flag per field, with its help text.

    add_flags(parser, TrainConfig)      --max-pairs, --epochs, --lora-targets a b, --precompute-ref/--no-...
    flags_of(config, TrainConfig())      the flags that turn the second config into the first

Every flag defaults to None ("keep the preset's value"), so a command line only says what differs.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any


def flag(name: str) -> str:
    """A field's flag: max_pairs -> --max-pairs."""
    return "--" + name.replace("_", "-")


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind, help = hints[field.name], field.metadata.get("help", "").replace("%", "%%")  # argparse formats help
        if kind is bool:
            parser.add_argument(flag(field.name), action=argparse.BooleanOptionalAction, default=None, help=help)
        elif typing.get_origin(kind) is list:
            parser.add_argument(flag(field.name), nargs="*", type=typing.get_args(kind)[0], default=None, help=help)
        else:
            parser.add_argument(flag(field.name), type=kind, default=None, help=help)


def overrides_from(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields given on the command line (the others stay None: the preset's)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name) is not None}


def flags_of(config: Any, reference: Any) -> list[str]:
    """Flags that, applied to `reference`, give `config`: only the fields that differ."""
    argv: list[str] = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value == getattr(reference, field.name):
            continue
        if isinstance(value, bool):
            argv.append(flag(field.name) if value else "--no-" + field.name.replace("_", "-"))
        elif isinstance(value, list):
            argv += [flag(field.name), *map(str, value)]
        else:
            argv += [flag(field.name), repr(value) if isinstance(value, float) else str(value)]
    return argv
