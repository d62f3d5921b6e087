"""The router's limits and timeouts (``RouterSettings``), shared by the CLI and the cluster YAML.

Defaults follow SGLang Model Gateway where it has the knob: a request may run for 30
minutes in all (the gateway's ``--request-timeout-secs 1800``), since long generations are
legitimate; a non-streaming answer's first byte is its whole generation, so the first-byte
timeout is as long. Between two chunks of a stream 5 minutes may pass. Connecting takes at
most 10 s. Every replica's ``/health`` is probed every 5 s (5 s timeout). Request bodies
above 64 MiB are refused with 413 before they are parsed, and JSON nested deeper than 64
levels with 400. The total timeout also bounds the wait for the first byte. Imports nothing
beyond the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

MIB = 1 << 20


@dataclass(frozen=True)
class RouterSettings:
    connect_timeout_s: float = 10.0
    first_byte_timeout_s: float = 1800.0
    idle_timeout_s: float = 300.0
    total_timeout_s: float = 1800.0
    health_check_interval_s: float = 5.0
    health_check_timeout_s: float = 5.0
    status_timeout_s: float = 2.0
    max_body_bytes: int = 64 * MIB
    max_json_depth: int = 64

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            integral = f.type in ("int", int)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (integral and not isinstance(value, int)):
                raise ValueError(f"RouterSettings.{f.name} must be {'an integer' if integral else 'a number'}, "
                                 f"got {value!r}")
            if not value > 0 or value == float("inf"):
                raise ValueError(f"RouterSettings.{f.name} must be > 0 and finite, got {value!r}")


def settings_fields() -> tuple[str, ...]:
    """The field names, in order (the cluster YAML's ``router:`` keys that tune our router)."""
    return tuple(f.name for f in fields(RouterSettings))
