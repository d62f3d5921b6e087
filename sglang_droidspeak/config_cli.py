"""Build argparse options from a frozen config dataclass, so CLI defaults and rules come from it.

Each field's rule lives next to the field, in its metadata, and holds both on the command
line (argparse: one line, the usage, exit status 2) and on construction (``check_fields``
in the dataclass's ``__post_init__``):

    context_len: int = field(default=1024, metadata=at_least(1))
    granularity: int = field(default=1, metadata=one_of(1, 2))

Without metadata, int and float fields must be >= 0; floats must also be finite (argparse's
``float`` alone takes "nan" and "inf").
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from types import MappingProxyType
from typing import Any, Callable, Mapping, TypeVar, get_type_hints

from sglang_droidspeak.addresses import host_problem, port_problem
from sglang_droidspeak.cli_errors import UsageError

T = TypeVar("T")


def at_least(low: float) -> dict[str, Any]:
    return {"min": low}


def one_of(*choices: Any) -> dict[str, Any]:
    return {"choices": choices}


def value_problem(kind: type, rule: Mapping[str, Any], value: Any) -> str:
    """Why ``value`` breaks ``rule`` (a field's metadata), or ""."""
    if "choices" in rule:
        return "" if value in rule["choices"] else f"must be one of {', '.join(map(str, rule['choices']))}"
    if kind not in (int, float) or value is None:
        return ""
    if kind is float and not math.isfinite(value):
        return "must be a finite number"
    low = rule.get("min", 0)
    return "" if value >= low else f"must be >= {low:g}"


def check_fields(obj: Any) -> None:
    """ValueError naming the first field of dataclass ``obj`` whose value breaks its rule."""
    hints = get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        problem = value_problem(hints[f.name], f.metadata, getattr(obj, f.name))
        if problem:
            raise ValueError(f"{f.name}: {problem}, got {getattr(obj, f.name)!r}")


def number_type(kind: type, rule: Mapping[str, Any] = MappingProxyType({})) -> Callable[[str], Any]:
    """An argparse ``type``: converts to ``kind`` (int or float), then applies ``rule``."""
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text[:40]!r}") from None
        problem = value_problem(kind, rule, value)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text[:40]}")
        return value
    convert.__name__ = kind.__name__
    return convert


def checked_type(f: dataclasses.Field, kind: type) -> Callable[[str], Any]:
    """The argparse ``type`` of dataclass field ``f``."""
    return number_type(kind, f.metadata)


def port_number(text: str) -> int:
    """An argparse ``type`` for a TCP port (addresses.port_problem)."""
    port = number_type(int)(text)
    if port_problem(port):
        raise argparse.ArgumentTypeError(f"{port_problem(port)}, got {text[:40]}")
    return port


def check_listen_address(parser: argparse.ArgumentParser, host: str, port: int) -> None:
    """``parser.error`` (usage, exit status 2) for a --host or --port that cannot be valid."""
    if host_problem(host):
        parser.error(f"argument --host: {host_problem(host)}, got {host[:60]!r}")
    if port_problem(port):
        parser.error(f"argument --port: {port_problem(port)}, got {port}")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, help: dict[str, str] | None = None) -> None:
    """One ``--field-name`` option per field of ``cls``; ``bool`` fields get --x/--no-x."""
    hints, help = get_type_hints(cls), help or {}
    for f in dataclasses.fields(cls):
        flag, kind = "--" + f.name.replace("_", "-"), hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else None
        text = help.get(f.name, "") + (f" (default: {default})" if default is not None else "")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif kind in (int, float):
            parser.add_argument(flag, type=checked_type(f, kind), default=default, help=text,
                                required=default is None)
        elif kind is str:
            parser.add_argument(flag, default=default, help=text, required=default is None,
                                choices=f.metadata.get("choices"))
        else:  # Optional[...] fields: parsed as str, converted by the dataclass user
            parser.add_argument(flag, default=default, help=text)


def dataclass_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """``cls`` from parsed arguments; a value its ``__post_init__`` refuses is a UsageError."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    try:
        return cls(**{**values, **overrides})
    except ValueError as exc:
        raise UsageError(str(exc)) from None
