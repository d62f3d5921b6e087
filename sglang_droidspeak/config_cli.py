"""Build argparse options from a frozen config dataclass, so CLI defaults come from it."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar, get_type_hints

T = TypeVar("T")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, help: dict[str, str] | None = None) -> None:
    """One ``--field-name`` option per field of ``cls``; ``bool`` fields get --x/--no-x."""
    hints, help = get_type_hints(cls), help or {}
    for f in dataclasses.fields(cls):
        flag, kind = "--" + f.name.replace("_", "-"), hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else None
        text = help.get(f.name, "") + (f" (default: {default})" if default is not None else "")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif kind in (int, float, str):
            parser.add_argument(flag, type=kind, default=default, help=text, required=default is None)
        else:  # Optional[...] fields: parsed as str, converted by the dataclass user
            parser.add_argument(flag, default=default, help=text)


def dataclass_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **overrides})
