"""Strict readers for parsed config files: each error names the file, the line and the key path.

A ``Section`` wraps one mapping of a parsed file together with where it sits
(``cluster.yaml``, ``models[1].replicas[0]``). Creating one rejects unknown keys (naming
the closest known one) and missing required keys; its readers check one value each and
raise the section's ``error`` type (a ``FieldError``) with a message of the form

    <file>[:<line>]: <key path>: <what is wrong>, got <a short excerpt of the value>

The line is known when the caller passes the parsed file's ``lines`` (yaml_io.LoadedYaml).
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Iterable, Mapping, Optional

from sglang_droidspeak.text_files import excerpt
from sglang_droidspeak.yaml_io import line_of

MISSING = object()


class FieldError(ValueError):
    """A bad value in a file. ``FieldError(message)`` or ``FieldError.at(source, path, problem)``."""

    def __init__(self, message: str, source: str = "", path: str = "", problem: str = "",
                 line: Optional[int] = None):
        super().__init__(message)
        self.source, self.path, self.problem, self.line = source, path, problem, line

    @classmethod
    def at(cls, source: str, path: str, problem: str, lines: Optional[Mapping[str, int]] = None,
           show_path: bool = True) -> "FieldError":
        """``<source>[:<line of path>]: <path>: <problem>`` (``show_path=False``: the problem
        already names the path)."""
        line = line_of(lines, path) if lines else None
        where = f"{source}:{line}" if line else source
        text = f"{where}: {path}: {problem}" if path and show_path else f"{where}: {problem}"
        return cls(text, source, path, problem, line)


def unknown_keys_problem(unknown: Iterable[Any], known: Iterable[str]) -> str:
    """``unknown field 'x' (did you mean 'y'?)``; several: each with its suggestion."""
    known = list(known)
    parts = []
    for key in sorted(str(k) for k in unknown):
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        parts.append(excerpt(key) + (f" (did you mean {close[0]!r}?)" if close else ""))
    return f"unknown field{'s' if len(parts) > 1 else ''} {', '.join(parts)}; known: {', '.join(known)}"


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or a finite float (never a bool, NaN or an infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Section:
    """One mapping of a parsed file; rejects unknown keys and missing required ones on creation."""

    error: type[FieldError] = FieldError

    def __init__(self, data: Any, where: str, path: str, keys: tuple[str, ...], required: tuple[str, ...] = (),
                 lines: Optional[Mapping[str, int]] = None):
        self.where, self.path, self.keys, self.lines = where, path, keys, lines
        if not isinstance(data, Mapping):
            raise self.error.at(where, path, f"must be a mapping, got {excerpt(data)}", lines)
        unknown = set(data) - set(keys)
        if unknown:
            raise self.error.at(where, path, unknown_keys_problem(unknown, keys), lines)
        for key in required:
            if key not in data:
                self.fail(key, "required field is missing")
        self.data = data

    def sub(self, key: str) -> str:
        """The path of a child field, e.g. ``models[0].replicas``."""
        return f"{self.path}.{key}" if self.path else key

    def child(self, key: str, keys: tuple[str, ...], required: tuple[str, ...] = (), default: Any = MISSING):
        """The mapping under ``key``, as a Section of the same type."""
        return type(self)(self.get(key, default), self.where, self.sub(key), keys, required, self.lines)

    def item(self, key: str, index: int, keys: tuple[str, ...], required: tuple[str, ...] = ()):
        """The mapping ``data[key][index]`` (a list checked by ``items``), as a Section."""
        return type(self)(self.data[key][index], self.where, f"{self.sub(key)}[{index}]", keys, required, self.lines)

    def get(self, key: str, default: Any = MISSING) -> Any:
        return self.data[key] if key in self.data or default is MISSING else default

    def fail(self, key: str, what: str, value: Any = MISSING) -> None:
        got = "" if value is MISSING else f", got {excerpt(value)}"
        raise self.error.at(self.where, self.sub(key), f"{what}{got}", self.lines)

    def string(self, key: str, default: Any = MISSING) -> Optional[str]:
        """A non-empty string (or ``default`` when absent; a None default allows null)."""
        value = self.get(key, default)
        if value is None and default is None:
            return None
        if not isinstance(value, str) or not value:
            self.fail(key, "must be a non-empty string", value)
        return value

    def name(self, key: str) -> str:
        """A name used in file names and settings: non-empty, no '/', no whitespace."""
        value = self.string(key)
        if "/" in value or "\\" in value or value in (".", "..") or any(c.isspace() for c in value):
            self.fail(key, "must be a name without '/', '\\' or whitespace (and not '.' or '..')", value)
        return value

    def number(self, key: str, low: float, high: float = math.inf, *, default: Any = MISSING,
               low_open: bool = False, high_open: bool = False) -> Optional[float]:
        """A finite number in the given interval (``default`` when absent; a None default allows null)."""
        value = self.get(key, default)
        if value is None and default is None:
            return None
        ok = is_number(value) and (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high)
        if not ok:
            self.fail(key, f"must be a number in {interval(low, high, low_open, high_open)}", value)
        return float(value)

    def integer(self, key: str, low: int, high: float = math.inf, default: Any = MISSING) -> int:
        value = self.get(key, default)
        if not is_int(value) or not low <= value <= high:
            self.fail(key, f"must be an integer in {low}..{'' if high == math.inf else int(high)}", value)
        return value

    def port(self, key: str, default: Any = MISSING) -> int:
        return self.integer(key, 1, 65535, default)

    def choice(self, key: str, default: Any, choices: tuple[Any, ...]) -> Any:
        value = self.get(key, default)
        if value not in choices or isinstance(value, bool) != any(isinstance(c, bool) for c in choices):
            self.fail(key, f"must be one of {list(choices)}", value)
        return value

    def items(self, key: str, default: Any = MISSING, non_empty: bool = True) -> list:
        value = self.get(key, default)
        if not isinstance(value, list) or (non_empty and not value):
            self.fail(key, "must be a non-empty list" if non_empty else "must be a list", value)
        return value


def interval(low: float, high: float, low_open: bool = False, high_open: bool = False) -> str:
    def text(x: float) -> str:
        return "inf" if x == math.inf else f"{x:g}"
    return f"{'(' if low_open else '['}{text(low)}, {text(high)}{')' if high_open or high == math.inf else ']'}"
