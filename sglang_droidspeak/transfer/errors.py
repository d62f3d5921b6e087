"""Plane-neutral failures of a fetch or an import (every data plane raises these).

    error          raised by                         ``reason`` / ``code``
    FetchFailed    a fetch (any plane's receiver)    a FetchError code, or timeout / protocol /
                                                     a plane's own (nccl_error, nixl_error)
    ImportFailed   the receiver's sink, allocation   protocol, cancelled, no_memory, ...

Both end one import: the request falls back to a normal prefill with that reason
(docs/ROBUSTNESS.md). This module imports nothing of the project, so every plane and the
import modules can share it without an import cycle.
"""

from __future__ import annotations


class FetchFailed(RuntimeError):
    """The fetch ended without FetchDone; ``code`` is a FetchError code or 'timeout'/'protocol'."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


class ImportFailed(RuntimeError):
    """An import cannot complete; ``reason`` names the fallback (metrics, log)."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
