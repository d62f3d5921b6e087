"""What an import's time was spent on, and how its recompute overlaps its transfer.

Pipelined (setting ``pipelined: true``, the default), in the order things happen:

    event                       scheduler thread (ticks)     worker thread       compute stream
    job created                 slots, row, fence event      -                   (earlier batches)
    next tick                   launch group [0, e) chunks   wait the fence      recompute [0, e)
    E_s chunks arrive           -                            pin, copy (side     -
                                                             stream), mark(e, s)
    next tick after E_s landed  launch group [s, e) chunks   -                   wait (e, s);
                                                                                 recompute [s, e)
    K/V chunks of reused layers -                            copy + scatter into  -
                                                             the slots (side)
    FetchDone                   -                            sync copies; done   -
    every launch finished       insert; unpark the request   -                   the request's own
                                                                                 extend (later)

Not pipelined ("load everything, then compute"): every group waits for the fetch.

A group reads only E_s and the K/V it writes itself, so no group waits on a reused
layer: the copies fence only the end of the import (the worker synchronizes them before
it reports the fetch done). SGLang's HiCache layer counters (``LayerDoneCounter``) are
not used: the request stays parked until the whole import is in the pool, so its own
forward never reads a layer still in flight. Imports no SGLang.
"""

from __future__ import annotations

from typing import NamedTuple


class ImportTimings(NamedTuple):
    """Milliseconds of one import (pipelined: recompute overlaps fetch and drain)."""

    fetch_ms: float  # worker: fence waited + request sent -> FetchDone, copies synced
    recompute_ms: float  # the engine forwards on the GPU (CUDA events; CPU: wall time)
    drain_ms: float  # total - fetch: the rest (parked ticks, recompute not hidden by the fetch)
    total_ms: float  # job created -> inserted
    pipelined: bool

    def log_text(self) -> str:
        mode = "pipelined" if self.pipelined else "serial"
        return (f"{self.total_ms:.1f} ms: fetch {self.fetch_ms:.1f}, recompute {self.recompute_ms:.1f}, "
                f"drain {self.drain_ms:.1f}, {mode}")
