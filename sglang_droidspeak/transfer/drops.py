"""Frames a receiver drops: counted by reason, logged without flooding, reported to metrics.

``DropLog.drop(reason, detail)`` for every frame a FetchServer or DirectoryListener does
not take. ``reason`` is ``WireError.reason`` (malformed, oversized, unauthenticated,
stale, replayed) or "unexpected" (a valid message the socket does not take). The log
line names the reason; each reason logs at most once per ``WARN_INTERVAL_S`` and then
says how many were suppressed. ``on_drop(reason)`` (e.g. a Prometheus counter for
/metrics) is called for every one.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Callable, Optional

logger = logging.getLogger("sglang_droidspeak.transfer")
WARN_INTERVAL_S = 10.0
DROP_REASONS = ("malformed", "oversized", "unauthenticated", "stale", "replayed", "unexpected")


class RateLimitedWarning:
    """At most one warning per ``interval`` seconds; reports how many were suppressed."""

    def __init__(self, interval: float = WARN_INTERVAL_S, log: logging.Logger = logger) -> None:
        self._interval, self._log = interval, log
        self._last = -float("inf")
        self._suppressed = 0

    def __call__(self, text: str, exc_info: bool = False) -> None:
        now = time.monotonic()
        if now - self._last < self._interval:
            self._suppressed += 1
            return
        suffix = f" ({self._suppressed} similar warnings suppressed)" if self._suppressed else ""
        self._log.warning("%s%s", text, suffix, exc_info=exc_info)
        self._last, self._suppressed = now, 0


class DropLog:
    """Counts (``counts[reason]``, ``total``), logs and reports the frames one receiver drops."""

    def __init__(self, what: str, on_drop: Optional[Callable[[str], None]] = None,
                 interval: float = WARN_INTERVAL_S, log: logging.Logger = logger) -> None:
        self.counts: Counter[str] = Counter()
        self._what, self._on_drop, self._log = what, on_drop, log
        self._warnings = {reason: RateLimitedWarning(interval, log) for reason in DROP_REASONS}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def drop(self, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        warn = self._warnings.setdefault(reason, RateLimitedWarning(log=self._log))
        warn(f"droidspeak: dropped {self._what} ({reason}): {detail[:300]}")
        if self._on_drop is not None:
            try:
                self._on_drop(reason)
            except Exception:  # a metrics bug must not stop the receiver
                self._log.exception("droidspeak: on_drop callback failed")
