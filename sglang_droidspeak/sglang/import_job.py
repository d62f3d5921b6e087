"""One asynchronous import: a REMOTE prefix becoming this model's DERIVED KV, step by step.

The scheduler thread owns the job and advances it a little on every loop tick
(import_queue.py); the fetch runs on the fetch worker's thread (fetch_worker.py):

    step       thread      what                                       done when
    created    scheduler   slots + a request-pool row held; a fence   -
                           event on the compute stream (everything
                           queued before, e.g. the last user of the
                           slots, runs first)
    fetch      worker      waits the fence, then E_s and the reused   ``fetched`` set (copies
                           layers' K/V land in the slots/E buffers    synced on the worker)
    recompute  scheduler   each group [s, e) in chunks of at most     every chunk launched
                           ``chunk_tokens`` (the tick's budget), as   and its end event done
                           engine forwards on the compute stream;
                           pipelined: s = 0 at once, s > 0 once E_s
                           landed; serial: after the fetch
    blend      scheduler   BlendPlan (BLEND_STEPS): select a at once  recompute launched
                           (pipelined), select b after the fetch,     and its end event
                           recompute once b's positions reached the   done
                           host (blend_import.py)
    finished   scheduler   ``succeeded()``: insert under the derived namespace (import_queue)
    failed     scheduler   ``fail(reason)``; slots and row are freed only once ``drained()``
                           (worker returned, compute events done)

Chunk c of group [s, e) covers tokens [a, b): it attends over the K/V of layers [s, e)
that chunks before it wrote at slots [0, a), so chunks of one group run in order.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from sglang_droidspeak.plan.blend_plan import BlendPlan
from sglang_droidspeak.plan.layer_plan import LayerGroup
from sglang_droidspeak.radix.hits import ForeignHit
from sglang_droidspeak.sglang.engine_forward import EngineSegment
from sglang_droidspeak.sglang.import_pipeline import ImportTimings
from sglang_droidspeak.sglang.import_receiver import ImportFailed, _Receiver
from sglang_droidspeak.sglang.import_streams import ImportStreams


PEER_REASONS = ("timeout", "protocol", "internal", "deadline", "nccl_error", "nixl_error")  # back the peer off
BLEND_STEPS = ("select", "choose", "blend")  # a BlendPlan job's steps; blend_steps counts those launched


class PoolRow:
    """A holder for one request-pool row (``ReqToTokenPool.alloc`` takes request-like objects)."""

    req_pool_idx: Optional[int] = None
    inflight_middle_chunks = 0
    kv_committed_len = 0


@dataclass
class WorkItem:
    """One chunk of one group of one job: tokens [begin, end) through layers [group.start, group.end)."""

    job: "ImportJob"
    group: LayerGroup
    begin: int
    end: int

    def segment(self) -> EngineSegment:
        job, start = self.job, self.group.start
        e_start = None if start == 0 else job.receiver.e[start][self.begin:self.end]
        return EngineSegment(job.ids[self.begin:self.end], job.slots[:self.end], self.begin, e_start)


@dataclass
class ImportJob:
    rid: str
    req: Any
    hit: ForeignHit
    plan: Any  # LayerPlan | BlendPlan
    namespace: str
    token_ids: list
    slots: torch.Tensor  # [n] int64
    row: PoolRow
    ids: torch.Tensor  # [n] int64 on the device
    receiver: _Receiver
    streams: ImportStreams
    pipelined: bool
    deadline: float  # time.monotonic()
    blend: Any = None  # blend_import.Blend for a BlendPlan
    began: float = field(default_factory=time.perf_counter)
    fetched: threading.Event = field(default_factory=threading.Event)
    fetch_error: Optional[BaseException] = None
    fetch_s: float = 0.0
    exchange: Any = None  # the fetch's fetch_client.ExchangeTimes (for the slow-fetch log)
    e_landed: deque = field(default_factory=deque)  # E layers complete on the copy stream (worker)
    cancelled: bool = False  # read by the receiver on the worker: stop taking chunks
    failure: Optional[tuple[str, str]] = None
    next_token: dict = field(default_factory=dict)  # group start -> first token not yet launched
    e_ready: set = field(default_factory=set)
    last_event: Any = None  # compute-stream event after our latest launch
    blend_steps: int = 0  # how many of BLEND_STEPS were launched (3: done)
    yields: bool = True  # import mode async: small chunks while the server decodes (import_queue.py)
    overlap: bool = False  # import mode overlap: launched on the queue's overlap stream
    fence: Any = None  # event on the forward stream at allocation: the slots' last user is done
    fenced: bool = False  # our launches' stream has waited for ``fence``
    fetch_was_done: bool = False  # at ``fail``: the fetch had finished cleanly

    def __post_init__(self) -> None:
        if not isinstance(self.plan, BlendPlan):
            self.next_token = {group.start: 0 for group in self.plan.groups}

    @property
    def num_tokens(self) -> int:
        return int(self.slots.shape[0])

    # ---- the scheduler's view ----

    def ready_items(self, budget: int, chunk_tokens: int) -> list[WorkItem]:
        """Chunks that may launch now, at most ``budget`` tokens in all (one per group)."""
        if self.failure is not None or isinstance(self.plan, BlendPlan):
            return []
        while self.e_landed:
            self.e_ready.add(self.e_landed.popleft())
        fetched = self.fetched.is_set() and self.fetch_error is None
        items = []
        for group in self.plan.groups:
            begin = self.next_token[group.start]
            launchable = fetched or (self.pipelined and (group.start == 0 or group.start in self.e_ready))
            if begin >= self.num_tokens or not launchable or budget <= 0:
                continue
            end = min(self.num_tokens, begin + min(chunk_tokens, budget))
            items.append(WorkItem(self, group, begin, end))
            budget -= end - begin
        return items

    def await_fence(self) -> None:
        """The current stream waits for ``fence`` once (a no-op on the stream that recorded it,
        and without CUDA)."""
        if self.fence is not None and not self.fenced:
            torch.cuda.current_stream().wait_event(self.fence)
        self.fenced = True

    def launched(self, item: WorkItem, event: Any) -> None:
        self.next_token[item.group.start] = item.end
        self.last_event = event

    def blend_step(self) -> Optional[str]:
        """The blend work to launch now: 'select' (pipelined, at once), 'choose' (after the
        fetch), 'blend' (once the chosen positions are on the host)."""
        if self.failure is not None or self.blend is None:
            return None
        if self.blend_steps == 0 and self.pipelined:
            return "select"
        if self.blend_steps < 2 and self.fetched.is_set() and self.fetch_error is None:
            return "choose"
        if self.blend_steps == 2 and self.blend.chosen_ready():
            return "blend"
        return None

    def succeeded(self) -> bool:
        """Every byte arrived and checked, every chunk launched and finished on the GPU."""
        if self.failure is not None or not self.fetched.is_set() or self.fetch_error is not None:
            return False
        if isinstance(self.plan, BlendPlan):
            done = self.blend is None or self.blend_steps == len(BLEND_STEPS)
        else:
            done = all(begin >= self.num_tokens for begin in self.next_token.values())
        return done and _event_done(self.last_event)

    def fail(self, reason: str, message: str) -> None:
        if self.failure is None:
            self.failure = (reason, message)
            self.cancelled = True
            self.fetch_was_done = self.fetched.is_set() and self.fetch_error is None

    def peer_to_blame(self) -> bool:
        """Whether the failure says the sender is unwell (back it off): not a deadline that
        passed after the fetch had finished (the time went to this server's recompute, e.g.
        a kernel compiling)."""
        reason = self.failure[0] if self.failure else ""
        return reason in PEER_REASONS and not (reason == "deadline" and self.fetch_was_done)

    def drained(self) -> bool:
        """Nothing may still write the slots: the worker returned and our launches finished."""
        return self.fetched.is_set() and _event_done(self.last_event)

    def timings(self) -> ImportTimings:
        total_ms = 1e3 * (time.perf_counter() - self.began)
        recompute_ms = self.streams.recompute_ms()
        return ImportTimings(1e3 * self.fetch_s, recompute_ms, max(0.0, total_ms - 1e3 * self.fetch_s), total_ms,
                             self.pipelined)


class CancellableReceiver(_Receiver):
    """The fetch's chunk sink; refuses further chunks once its job is cancelled or failed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.job: Optional[ImportJob] = None

    def __call__(self, chunk) -> None:
        if self.job is not None and self.job.cancelled:
            raise ImportFailed("cancelled", "the import was cancelled")
        super().__call__(chunk)


def _event_done(event: Any) -> bool:
    return event is None or event.query()


def record_event(stream: Any) -> Any:
    """A CUDA event recorded now on ``stream``; None without CUDA."""
    if stream is None:
        return None
    event = torch.cuda.Event()
    event.record(stream)
    return event


class Lane:
    """A stream the queue launches imports on, with its launches not yet finished."""

    def __init__(self, stream: Any = None):
        self.stream, self.inflight = stream, []

    def settle(self) -> None:
        self.inflight = [event for event in self.inflight if not event.query()]

    def record(self) -> Any:
        """An event after everything launched so far on this lane (None without CUDA)."""
        event = record_event(self.stream)
        if event is not None:
            self.inflight.append(event)
        return event

    def active(self):
        """Context: this lane's stream is the current one (a no-op without CUDA)."""
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
