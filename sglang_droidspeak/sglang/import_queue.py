"""The receiver's imports, driven by SGLang's scheduler loop the way HiCache drives prefetches.

HiCache's storage tier parks a request while its KV loads (``_prefetch_kvcache`` starts
it, ``get_new_batch_prefill`` skips the request until ``check_prefetch_progress``). An
import is the same shape of work, attached through plugin hooks (plugin.py):

    hook (Scheduler.)                 ImportQueue call      effect
    process_input_requests (AFTER)    tick(scheduler)       scan new requests: a REMOTE hit
                                                            with a plan starts a job and
                                                            parks the request; advance jobs
    get_new_batch_prefill (AROUND)    tick, then hidden()   parked requests are left out of
                                                            this batch, put back after it
    is_fully_idle (AROUND)            busy()                not idle while a job runs (no
                                                            idle sleep, no leak check mid-job)

Advancing, per tick: a job whose request left the waiting queue (abort) or was flagged
``to_abort``, whose deadline passed or whose fetch failed is failed; ready chunks are
launched as batched engine forwards (one per layer slice) on the compute stream, at most
``chunk_tokens`` tokens and ``MAX_INFLIGHT`` unfinished launches at a time; a finished job
is inserted (its request then adopts the DERIVED prefix in ``match_prefix``); a failed job
frees its slots once drained and its request prefills normally (``FELL_BACK_ATTR``).

Launches share the forward stream with the server's own batches, so a decode step waits
behind whatever a tick queued. The import mode (setting ``import_mode``, or a request's
``droidspeak_import_mode``) says how much:

    mode      while a decode batch runs                 otherwise
    async     one job's chunk of at most                chunk_tokens per tick,
              busy_token_layers tokens x layers,        MAX_INFLIGHT launches
              one launch in flight (decodes wait
              a slice, not a whole chunk)
    eager     as otherwise                              "
    overlap   whole chunks on a second stream (the overlap lane), which first waits
              for the job's fence; the GPU runs them beside the decode steps instead
              of between them (not yet measured on a GPU: docs/GPU_PLAN.md)
    blocking  the job runs to its end inside the tick that starts it (the old
              synchronous behaviour, kept for comparison)
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any, Optional

import torch

from sglang_droidspeak.radix.tags import KVOrigin
from sglang_droidspeak.sglang.blend import exact_engine
from sglang_droidspeak.sglang.import_job import BLEND_STEPS, ImportJob, Lane, WorkItem
from sglang_droidspeak.sglang.import_streams import timed_recompute
from sglang_droidspeak.sglang.request_options import request_options

logger = logging.getLogger(__name__)
JOB_ATTR = "droidspeak_import"  # on a request: its ImportJob, or None once examined
MAX_INFLIGHT = 2  # launches not yet finished on the GPU (bounds what a decode batch waits behind)
MIN_BUSY_CHUNK = 16  # tokens: the smallest chunk a yielding job launches


class ImportQueue:
    def __init__(self, runtime: Any, chunk_tokens: int, mode: str = "async", busy_token_layers: int = 2048):
        self.runtime, self.chunk_tokens, self.mode = runtime, chunk_tokens, mode
        self.busy_token_layers = busy_token_layers
        self.decoding = False  # a decode batch was running at this tick
        self.jobs: list[ImportJob] = []
        self.forward = Lane()  # the scheduler's forward stream (None: the current stream, CPU)
        self.overlap = Lane()  # a stream of our own, for mode overlap
        self._overlap_engine: Any = None  # its engine (own attention backend), made at first use
        self._blend_engines: dict[bool, Any] = {}  # per lane (overlap?): an engine exact for blends

    @property
    def compute_stream(self) -> Any:
        return self.forward.stream

    # ---- hooks ----

    def bind(self, scheduler: Any) -> None:
        """Launch on the scheduler's forward stream (ordered with its own batches); mode
        overlap on a stream of our own."""
        if self.forward.stream is None and torch.cuda.is_available():
            self.forward.stream = getattr(scheduler, "forward_stream", None) or torch.cuda.current_stream()
            self.overlap.stream = torch.cuda.Stream()

    def tick(self, scheduler: Any) -> None:
        self.bind(scheduler)
        self.decoding = _decoding(scheduler)
        self.scan(scheduler)
        if self.jobs:
            self.advance(scheduler.waiting_queue)

    def is_parked(self, req: Any) -> bool:
        job = getattr(req, JOB_ATTR, None)
        return job is not None and job in self.jobs

    def busy(self) -> bool:
        return bool(self.jobs)

    # ---- scan: new requests ----

    def scan(self, scheduler: Any) -> None:
        """Examine each request once; only a receiver (it has peers) ever imports."""
        if getattr(self.runtime, "client", None) is None:
            return
        for req in list(scheduler.waiting_queue):
            if not hasattr(req, JOB_ATTR):
                setattr(req, JOB_ATTR, None)
                self._examine(req, scheduler.tree_cache)

    def _examine(self, req: Any, tree: Any) -> None:
        from sglang_droidspeak.sglang.radix_cache import FELL_BACK_ATTR, FOREIGN_HIT_ATTR

        req.init_next_round_input(tree)  # our match_prefix reports the foreign hit on the request
        hit = getattr(req, FOREIGN_HIT_ATTR, None)
        if hit is None or hit.tag.origin is not KVOrigin.REMOTE:
            return
        try:
            job = self.runtime.start_import(tree, req, hit)
        except Exception:  # noqa: BLE001 - our bug must never lose the request
            logger.exception("droidspeak: starting an import failed")
            setattr(req, FELL_BACK_ATTR, True)
            self.runtime.metrics.record_fallback("internal")
            return
        if job is None:
            return
        setattr(req, JOB_ATTR, job)
        self.jobs.append(job)
        mode = request_options(req).import_mode or self.mode
        job.yields, job.overlap = mode == "async", mode == "overlap"
        if mode == "blocking":  # the old behaviour: this tick waits for it
            while job in self.jobs:
                self.advance([req], only=job)
                time.sleep(0)

    # ---- advance ----

    def advance(self, waiting: list, only: Optional[ImportJob] = None) -> None:
        """Check, launch and finish jobs (``only``: that job, launching without the in-flight
        bound: a blocking import)."""
        jobs = self.jobs if only is None else [only]
        waiting_ids = {id(req) for req in waiting}
        now = time.monotonic()
        for job in jobs:
            self._check(job, waiting_ids, now)
        self.forward.settle()
        self.overlap.settle()
        ours = [job for job in jobs if not job.overlap]
        yielding = only is None and self.decoding and any(job.yields for job in ours)
        if ours and (only is not None or len(self.forward.inflight) < (1 if yielding else MAX_INFLIGHT)):
            self._launch_ready(ours, self.forward, yielding)
        beside = [job for job in jobs if job.overlap]
        if beside and len(self.overlap.inflight) < MAX_INFLIGHT:
            self._launch_ready(beside, self.overlap)
        for job in list(jobs):
            if job.failure is None and job.succeeded():
                self.jobs.remove(job)
                if self._guarded([job], self.runtime.finish_import, job):
                    continue
                self.jobs.append(job)  # the insert failed: abandon it once drained
            if job.failure is not None and job.drained():
                self.jobs.remove(job)
                self.runtime.abandon_import(job)

    def _check(self, job: ImportJob, waiting_ids: set, now: float) -> None:
        if job.failure is not None:
            return
        if id(job.req) not in waiting_ids or getattr(job.req, "to_abort", False):
            job.fail("aborted", "the request left the waiting queue")
        elif now > job.deadline:
            job.fail("deadline", f"the import did not finish within its deadline ({job.rid})")
        elif job.fetched.is_set() and job.fetch_error is not None:
            job.fail(*self.runtime.failure_of(job.fetch_error))
        elif job.fetched.is_set() and not job.succeeded():
            self._check_complete(job)

    def _check_complete(self, job: ImportJob) -> None:
        from sglang_droidspeak.sglang.import_receiver import ImportFailed

        try:
            job.receiver.check_complete()
        except ImportFailed as exc:
            job.fail(exc.reason, str(exc))

    # ---- launch ----

    def _launch_ready(self, jobs: list[ImportJob], lane: Lane, yielding: bool = False) -> None:
        """Launch on ``lane``; ``yielding``: decodes are running, and a yielding job launches
        one small chunk, alone."""
        budget = self.chunk_tokens
        by_slice: dict[tuple[int, int], list[WorkItem]] = defaultdict(list)
        blends = []
        for job in jobs:
            if budget <= 0:
                break
            step = job.blend_step()
            if step is not None:
                blends.append((job, step))
                budget -= job.num_tokens
            chunk = self._busy_chunk(job) if yielding and job.yields else self.chunk_tokens
            items = job.ready_items(min(budget, chunk), chunk)
            for item in items:
                by_slice[(item.group.start, item.group.end)].append(item)
                budget -= item.end - item.begin
            if items and yielding and job.yields:
                break
        with lane.active():
            for (start, end), items in by_slice.items():
                self._guarded([item.job for item in items], self._launch_slice, start, end, items, lane)
            for job, step in blends:
                self._guarded([job], self._launch_blend, job, step, lane)

    def _guarded(self, jobs: list[ImportJob], call, *args) -> bool:
        """``call(*args)``; an exception fails ``jobs`` (never the scheduler): False."""
        try:
            call(*args)
            return True
        except Exception as exc:  # noqa: BLE001 - our bug must never lose a request
            logger.exception("droidspeak: an import step failed")
            for job in jobs:
                job.fail("internal", repr(exc))
            return False

    def _launch_slice(self, start: int, end: int, items: list[WorkItem], lane: Lane) -> None:
        jobs = [item.job for item in items]
        for job in jobs:
            job.await_fence()
            job.streams.wait(("e", start))  # E_s landed on the copy stream (a no-op for s = 0)
        with timed_recompute([job.streams for job in jobs]):
            self._engine(lane).run([item.segment() for item in items], [job.row.req_pool_idx for job in jobs],
                                   start, end)
        event = lane.record()
        for item in items:
            item.job.launched(item, event)

    def _launch_blend(self, job: ImportJob, step: str, lane: Lane) -> None:
        job.await_fence()
        with timed_recompute([job.streams]):
            job.blend.launch(step, self._blend_engine(lane), job.streams)
        job.blend_steps = BLEND_STEPS.index(step) + 1
        job.last_event = lane.record()

    def _blend_engine(self, lane: Lane) -> Any:
        """The lane's engine, or its paged-only twin (blend.py ``exact_engine``), made once."""
        key = lane is self.overlap
        if key not in self._blend_engines:
            self._blend_engines[key] = exact_engine(self._engine(lane))
        return self._blend_engines[key]

    def _engine(self, lane: Lane) -> Any:
        engine = self.runtime.parts.engine
        if lane is not self.overlap:
            return engine
        if self._overlap_engine is None:
            self._overlap_engine = engine.twin()
        return self._overlap_engine

    def _busy_chunk(self, job: ImportJob) -> int:
        """Tokens per group such that one tick's slice is about ``busy_token_layers``."""
        return max(MIN_BUSY_CHUNK, self.busy_token_layers // max(1, job.plan.num_recomputed_layers))

    def close(self) -> None:
        for job in self.jobs:
            job.fail("shutdown", "the server is shutting down")


def _decoding(scheduler: Any) -> bool:
    """Whether the scheduler holds a running (decode) batch: SGLang's ``running_batch``."""
    running = getattr(scheduler, "running_batch", None)
    return running is not None and not running.is_empty()
