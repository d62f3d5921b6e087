"""Strict readers for the cluster YAML: every error names the file and the field path.

A ``Section`` wraps one mapping of the parsed YAML together with where it sits
(``cluster.yaml: models[1].replicas[0]``); its readers raise ``ClusterConfigError``
with messages of the form ``<file>: <path>.<field>: <what is wrong>, got <value>``.
Imports no SGLang.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

_MISSING = object()


class ClusterConfigError(ValueError):
    """A cluster config that cannot be used; the message names the file and the field path."""


class Section:
    """One mapping of the config; rejects unknown keys and missing required ones on creation."""

    def __init__(self, data: Any, where: str, path: str, keys: tuple[str, ...], required: tuple[str, ...] = ()):
        self.where, self.path = where, path
        label = f"{where}: {path}" if path else where
        if not isinstance(data, Mapping):
            raise ClusterConfigError(f"{label}: must be a mapping, got {data!r}")
        unknown = sorted(str(k) for k in set(data) - set(keys))
        if unknown:
            raise ClusterConfigError(f"{label}: unknown field(s) {unknown}")
        for key in required:
            if key not in data:
                raise ClusterConfigError(f"{self.at(key)}: required field is missing")
        self.data = data

    def sub(self, key: str) -> str:
        """The path of a child field, e.g. ``models[0].replicas``."""
        return f"{self.path}.{key}" if self.path else key

    def at(self, key: str) -> str:
        """``<file>: <path>.<key>``, the prefix of every message about ``key``."""
        return f"{self.where}: {self.sub(key)}"

    def get(self, key: str, default: Any = _MISSING) -> Any:
        return self.data[key] if key in self.data or default is _MISSING else default

    def fail(self, key: str, what: str, value: Any = _MISSING) -> None:
        got = "" if value is _MISSING else f", got {value!r}"
        raise ClusterConfigError(f"{self.at(key)}: {what}{got}")

    def string(self, key: str, default: Any = _MISSING) -> Optional[str]:
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

    def number(self, key: str, low: float, high: float = math.inf, *, default: Any = _MISSING,
               low_open: bool = False, high_open: bool = False) -> Optional[float]:
        """A finite number in the given interval (``default`` when absent; a None default allows null)."""
        value = self.get(key, default)
        if value is None and default is None:
            return None
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok:
            ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not ok:
            self.fail(key, f"must be a number in {_interval(low, high, low_open, high_open)}", value)
        return float(value)

    def port(self, key: str, default: Any = _MISSING) -> int:
        value = self.get(key, default)
        if not is_int(value) or not 1 <= value <= 65535:
            self.fail(key, "must be an integer in 1..65535", value)
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.get(key, default)
        if value not in choices:
            self.fail(key, f"must be one of {list(choices)}", value)
        return value

    def items(self, key: str, default: Any = _MISSING, non_empty: bool = True) -> list:
        value = self.get(key, default)
        if not isinstance(value, list) or (non_empty and not value):
            self.fail(key, "must be a non-empty list" if non_empty else "must be a list", value)
        return value


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def env_name(section: Section, key: str, default: str) -> str:
    """An environment variable name: non-empty, no '=' and no NUL."""
    value = section.get(key, default)
    if not isinstance(value, str) or not value or "=" in value or "\0" in value:
        section.fail(key, "must be an environment variable name", value)
    return value


def _interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
    def text(x: float) -> str:
        return "inf" if x == math.inf else f"{x:g}"
    return f"{'(' if low_open else '['}{text(low)}, {text(high)}{')' if high_open or high == math.inf else ']'}"
