"""Strict readers for the cluster YAML: every error names the file, the line and the field path.

``Section`` is ``validation.Section`` raising ``ClusterConfigError``, plus the readers only
the cluster config needs (hosts, environment variable names). Messages have the form
``<file>[:<line>]: <path>.<field>: <what is wrong>, got <value>``. Imports no SGLang.
"""

from __future__ import annotations

from typing import Optional

from sglang_droidspeak.addresses import host_problem
from sglang_droidspeak.validation import FieldError, is_int  # noqa: F401 - is_int is re-exported
from sglang_droidspeak.validation import Section as _Section


class ClusterConfigError(FieldError):
    """A cluster config that cannot be used; the message names the file and the field path."""


class Section(_Section):
    error = ClusterConfigError

    def host(self, key: str, default: Optional[str] = None, wildcard: bool = False) -> str:
        """An IP address or RFC 1123 host name (``*`` too where ``wildcard``)."""
        value = self.get(key) if default is None else self.get(key, default)
        problem = host_problem(value, wildcard)
        if problem:
            self.fail(key, problem, value)
        return value


def env_name(section: Section, key: str, default: str) -> str:
    """An environment variable name: non-empty, no '=' and no NUL."""
    value = section.get(key, default)
    if not isinstance(value, str) or not value or "=" in value or "\0" in value:
        section.fail(key, "must be an environment variable name", value)
    return value
