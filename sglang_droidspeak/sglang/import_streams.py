"""The two GPU streams of a pipelined import, with per-key CUDA events; no-ops on the CPU.

    stream    what runs on it                                   who waits on it
    compute   the scheduler's forward stream: the import's      -
              engine forwards (import_queue.py)
    copy      a side ``torch.cuda.Stream``: host -> device      compute, per key: a group on its
              copies of arriving chunks (pinned staging) and    E_s event; the import's end on
              their writes into E buffers and the KV pool       every event (``wait_all``)

A *key* is ``(what, layer)`` of the stream (``("e", 3)``, ``("k", 7)``); ``mark(key)``
records an event on the copy stream once the key's last chunk has been written there.

Without CUDA, or with ``pipelined=False`` ("load everything, then compute"), there is
no side stream: chunks are copied synchronously on the current stream and every event
call does nothing, so the CPU tests run the pipelined import's code path in the same
order, only without the overlap.

Pinned staging: each chunk's bytes are copied once into a pinned block from PyTorch's
caching host allocator and sent with ``non_blocking=True``; that allocator records an
event for the copy and does not hand the block out again before the copy is done, so
dropping our reference right after the launch is safe. Imports no SGLang.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Optional

import numpy as np
import torch

from sglang_droidspeak.transfer.frames import LayerChunk
from sglang_droidspeak.transfer.schema import DTYPES

Key = tuple[str, int]


class ImportStreams:
    def __init__(self, device: Any, pipelined: bool):
        device = torch.device(device)
        self.cuda = device.type == "cuda" and torch.cuda.is_available()
        self.device, self.pipelined = device, pipelined
        self.side: Optional[Any] = torch.cuda.Stream(device) if self.cuda and pipelined else None
        self.events: dict[Key, Any] = {}
        self.timers: list[tuple[Any, Any]] = []  # (start, end) CUDA events per recompute group
        self.cpu_recompute_s = 0.0  # without CUDA: wall time of the recompute calls
        self.staging_s = [0.0, 0.0, 0.0]  # to_device's pinned allocation, host fill, launch (wall)

    def copying(self):
        """Context for work on the copy stream (a no-op without one)."""
        return torch.cuda.stream(self.side) if self.side is not None else contextlib.nullcontext()

    def to_device(self, chunk: LayerChunk) -> torch.Tensor:
        """The chunk as a device tensor of its shape; asynchronous on the copy stream."""
        if self.side is None:
            return chunk.to_tensor(self.device)
        began = time.perf_counter()
        host = torch.empty(len(chunk.data), dtype=torch.uint8, pin_memory=True)  # [nbytes]
        pinned = time.perf_counter()
        host.numpy()[:] = np.frombuffer(chunk.data, dtype=np.uint8)
        filled = time.perf_counter()
        with self.copying():
            raw = host.to(self.device, non_blocking=True)  # [nbytes]
        for i, (a, b) in enumerate(((began, pinned), (pinned, filled), (filled, time.perf_counter()))):
            self.staging_s[i] += b - a
        return raw.view(DTYPES[chunk.dtype]).reshape(chunk.shape)

    def mark(self, key: Key) -> None:
        """Record that every write of ``key`` has been queued on the copy stream."""
        if self.side is not None:
            self.events[key] = self.side.record_event()

    def wait(self, key: Key) -> None:
        """The compute stream waits for ``key`` (and nothing else) to land."""
        event = self.events.get(key)
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)

    def wait_all(self) -> None:
        """The compute stream waits for every copy queued so far (before the insert)."""
        if self.side is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.side)

    def recompute_ms(self) -> float:
        """Summed recompute time; call once every timed launch has finished."""
        if self.cuda:
            return float(sum(start.elapsed_time(end) for start, end in self.timers))
        return 1e3 * self.cpu_recompute_s


@contextlib.contextmanager
def timed_recompute(streams: list[ImportStreams]):
    """Time one launch on the current stream and count it in each of ``streams`` (every
    import it served): CUDA events where there is CUDA, else wall time."""
    if not streams[0].cuda:
        began = time.perf_counter()
        yield
        for s in streams:
            s.cpu_recompute_s += time.perf_counter() - began
        return
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    yield
    end.record()
    for s in streams:
        s.timers.append((start, end))
