"""Where a server's time goes when an import or an export stalls: two cheap watches, each
logging at most once per ``quiet_s``.

    watch          fires when                                  logs
    StackWatch     a fetch has run ``after_s`` and is still    every thread's stack (where
                   running (a timer per fetch, cancelled at    the worker waits: fence, plane,
                   its end)                                    copy sync; what the scheduler
                                                               thread does meanwhile)
    TickGapWatch   two scheduler ticks of a sender lie         the gap (a long batch, or the
                   ``gap_s`` apart (the hook's own calls)      scheduler thread held elsewhere:
                                                               no fetch is answered meanwhile)
    GilLagProbe    a thread that sleeps 2 ms at a time wakes     the lag and the scheduler
                   ``lag_s`` late (the GIL or the interpreter    thread's stack at that moment
                   held elsewhere; only with                     (what held it)
                   DROIDSPEAK_TRACE_FETCHES=1)

All exist for the 1.5-8 s fetches of every layer's K/V seen on 2026-12-06 (H100, cuda_ipc,
docs/BENCHMARKS.md runs 10 and 11); the first two cost a timer per fetch and a clock read per tick.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from typing import Callable, Optional

logger = logging.getLogger(__name__)
TRACE_FETCHES = os.environ.get("DROIDSPEAK_TRACE_FETCHES", "") == "1"  # every fetch/export logs its timeline


def thread_stacks(limit: int = 12) -> str:
    """Every thread's innermost ``limit`` frames, named."""
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        stack = "".join(traceback.format_stack(frame, limit=limit))
        parts.append(f"--- thread {names.get(ident, ident)}\n{stack}")
    return "\n".join(parts)


class _RateLimit:
    def __init__(self, quiet_s: float, clock: Callable[[], float]):
        self.quiet_s, self.clock, self.last = quiet_s, clock, None

    def ready(self) -> bool:
        now = self.clock()
        if self.last is not None and now - self.last < self.quiet_s:
            return False
        self.last = now
        return True


class StackWatch:
    """``start(label)`` before a fetch, ``stop(timer)`` after it."""

    def __init__(self, after_s: float = 1.0, quiet_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.after_s, self.limit = after_s, _RateLimit(quiet_s, clock)

    def start(self, label: str) -> threading.Timer:
        timer = threading.Timer(self.after_s, self._fire, (label,))
        timer.daemon = True
        timer.start()
        return timer

    @staticmethod
    def stop(timer: Optional[threading.Timer]) -> None:
        if timer is not None:
            timer.cancel()

    def _fire(self, label: str) -> None:
        if self.limit.ready():
            logger.warning("droidspeak: %s still running after %.1f s; thread stacks:\n%s", label, self.after_s,
                           thread_stacks())


class TickGapWatch:
    """``tick()`` from every scheduler tick; logs a gap of at least ``gap_s``."""

    def __init__(self, gap_s: float = 1.0, quiet_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.gap_s, self.clock = gap_s, clock
        self.limit = _RateLimit(quiet_s, clock)
        self.last: Optional[float] = None

    def tick(self) -> Optional[float]:
        """The gap since the last tick when it was logged, else None."""
        now, last = self.clock(), self.last
        self.last = now
        if last is None or now - last < self.gap_s or not self.limit.ready():
            return None
        logger.warning("droidspeak: %.0f ms between two scheduler ticks (a long batch, or the scheduler held "
                       "elsewhere): fetches to this sender waited as long", 1e3 * (now - last))
        return now - last


class GilLagProbe:
    """A daemon thread measuring how late its 2 ms sleeps wake; ``start()`` once."""

    def __init__(self, lag_s: float = 0.05, quiet_s: float = 1.0, clock: Callable[[], float] = time.perf_counter):
        self.lag_s, self.clock, self.limit = lag_s, clock, _RateLimit(quiet_s, time.monotonic)
        self.max_lag_s = 0.0

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="droidspeak-gil-probe", daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        while True:
            self.check(0.002)

    def check(self, sleep_s: float) -> float:
        """Sleep ``sleep_s``; the lag beyond it (logged when at least ``lag_s``)."""
        began = self.clock()
        time.sleep(sleep_s)
        lag = self.clock() - began - sleep_s
        self.max_lag_s = max(self.max_lag_s, lag)
        if lag >= self.lag_s and self.limit.ready():
            main = sys._current_frames().get(threading.main_thread().ident)
            where = "".join(traceback.format_stack(main, limit=8)) if main is not None else "?"
            logger.warning("droidspeak: a %.0f ms sleep woke %.1f ms late (the GIL held elsewhere); main thread:\n%s",
                           1e3 * sleep_s, 1e3 * lag, where)
        return lag
