"""The receiver's fetch thread: runs each import's fetch off the scheduler thread.

    scheduler thread                    worker thread (this module)
    submit(job, fetch, fence)  ----->   fence.synchronize()   (the slots' last user is done)
                                        fetch(request, receiver)   chunks land in the slots
                                        copies synchronized on this thread
    job.fetched.is_set()       <-----   job.fetch_error / job.fetch_s, then fetched.set()

One thread serves every import in arrival order, so the data planes' sockets and
channels (not thread-safe) are only ever used from here. Exceptions never escape: they
become ``job.fetch_error`` and the scheduler falls the request back to a normal prefill.
Imports no SGLang.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

import torch

from sglang_droidspeak.sglang.stall_watch import TRACE_FETCHES, StackWatch

logger = logging.getLogger(__name__)
_STOP = object()


class FetchWorker:
    def __init__(self, name: str = "droidspeak-fetch"):
        self._jobs: queue.Queue = queue.Queue()
        self.stall = StackWatch()  # a fetch still running after 1 s logs every thread's stack
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def in_flight(self) -> bool:
        """A fetch or call is queued or running (the scheduler then hands it the GIL: ``yield_gil``)."""
        return self._jobs.unfinished_tasks > 0

    def yield_gil(self) -> None:
        """Called by the scheduler thread once per tick: while this thread has work, sleep
        ``GIL_HANDOFF_S`` so it can take the GIL. Without it, a scheduler loop that drops and
        retakes the GIL thousands of times a second (every zmq poll and CUDA call) takes it
        back before this thread runs, and each give-back resets this thread's 5 ms wait for a
        forced switch: fetches that should take 20 ms took 1.5-3 s (H200, 2026-12-06, 50-500
        ms lags of a 2 ms sleep in the same process; docs/BENCHMARKS.md run 11)."""
        if self.in_flight:
            time.sleep(GIL_HANDOFF_S)

    def submit(self, job: Any, fetch: Callable[[Any, Any], Any], request: Any, fence: Any = None) -> None:
        """Run ``fetch(request, job.receiver)`` for ``job`` once ``fence`` (a CUDA event) is done."""
        self._jobs.put((job, fetch, request, fence))

    def call(self, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` on the worker thread, in order with the fetches (the planes' sockets
        are used only from here); an exception is logged, never raised."""
        self._jobs.put((None, fn, None, None))

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is _STOP:
                self._jobs.task_done()  # nothing in flight after close: ``yield_gil`` no longer sleeps
                return
            try:
                self._one(*item)
            finally:
                self._jobs.task_done()

    def _one(self, job: Any, fetch: Callable[[Any, Any], Any], request: Any, fence: Any) -> None:
        if job is None:
            _call_logged(fetch)
            return
        began = fenced = planed = time.perf_counter()
        timer = self.stall.start(f"fetch of import {getattr(job, 'rid', '?')}")
        try:
            if job.cancelled:
                raise RuntimeError("cancelled before the fetch began")
            if fence is not None:
                fence.synchronize()
                fenced = time.perf_counter()
            fetch(request, job.receiver)
            planed = time.perf_counter()
        except BaseException as exc:  # noqa: BLE001 - the scheduler decides; never lose the job
            job.fetch_error = exc
        finally:
            _sync_copies(job)
            StackWatch.stop(timer)
            job.fetch_s = time.perf_counter() - began
            _note_slow_fetch(job, began, fenced, planed)
            job.fetched.set()

    def close(self) -> None:
        self._jobs.put(_STOP)
        self._thread.join(timeout=5)


def _call_logged(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - a set-up step is best effort; the fetch redoes it
        logger.exception("droidspeak: a fetch-worker call failed")


SLOW_FETCH_S = 0.25
GIL_HANDOFF_S = 0.0002


def _note_slow_fetch(job: Any, began: float, fenced: float, planed: float) -> None:
    """Where a slow fetch's time went: the fence (the slots' last user), the plane's fetch
    (request -> FetchDone), the copies' sync (fenced/planed stay at ``began`` when that step
    did not finish)."""
    if job.fetch_s >= SLOW_FETCH_S or TRACE_FETCHES:
        ms = lambda a, b: 1e3 * max(0.0, b - a)  # noqa: E731
        logger.warning("droidspeak: import %s fetch took %.1f ms: fence %.1f, plane %.1f, copies synced %.1f%s%s",
                       getattr(job, "rid", "?"), 1e3 * job.fetch_s, ms(began, fenced), ms(fenced, planed),
                       ms(max(fenced, planed), began + job.fetch_s), "" if job.fetch_error is None else
                       f" (failed: {job.fetch_error!r})", _details(job))


def _details(job: Any) -> str:
    """The exchange's timeline and the chunk staging's split, where the job has them."""
    parts = []
    if getattr(job, "exchange", None) is not None:
        parts.append(f"exchange {job.exchange.log_text()}")
    staging = getattr(getattr(job, "streams", None), "staging_s", None)
    if staging and any(staging):
        parts.append("chunk staging: pin %.1f, fill %.1f, launch %.1f ms" % tuple(1e3 * s for s in staging))
    return "".join(f"; {p}" for p in parts)


def _sync_copies(job: Any) -> None:
    """Every copy this thread queued for ``job`` has landed (side stream, or this thread's own)."""
    try:
        if job.streams.side is not None:
            job.streams.side.synchronize()
        elif job.streams.cuda:
            torch.cuda.current_stream(job.streams.device).synchronize()
    except Exception:  # noqa: BLE001 - a broken device fails the job elsewhere
        logger.exception("droidspeak: could not synchronize an import's copies")
