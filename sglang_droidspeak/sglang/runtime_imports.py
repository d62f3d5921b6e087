"""The receiver's imports (part of DroidSpeakRuntime): start, finish and abandon a job.

    call                        when                          effect
    start_import(tree, req, h)  a waiting request's REMOTE    plan chosen (online policy or the
                                hit (import_queue.scan)       pair's plan), checks, slots and a
                                                              request-pool row held (a blend: its
                                                              scratch slots too), fetch queued
                                                              on the worker; None = prefill
                                                              normally (reason logged + counted)
                                                              the choice or fallback also goes on
                                                              the request (response_info.py)
    finish_import(job)          the job succeeded             insert under the derived namespace
                                                              (duplicates freed), metrics, log
    abandon_import(job)         the job failed and drained    slots and row (and scratch) freed,
                                                              the request marked to prefill
                                                              normally

``ImportRole`` is a mixin: it uses the runtime's ``parts``, ``settings``, ``client``,
``chooser``, ``metrics``, ``worker``, ``model``, ``fingerprint``, ``num_layers`` and
``_fallback``. Imports SGLang only inside calls (the tree's types).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from array import array
from typing import Any, Optional

import torch

from sglang_droidspeak.plan.blend_plan import BlendPlan
from sglang_droidspeak.plan.layer_plan import LayerPlan
from sglang_droidspeak.radix.hits import ForeignHit
from sglang_droidspeak.sglang.blend import blend_unsupported
from sglang_droidspeak.sglang.blend_import import Blend
from sglang_droidspeak.sglang.import_job import CancellableReceiver, ImportJob, PoolRow, record_event
from sglang_droidspeak.sglang.import_streams import ImportStreams
from sglang_droidspeak.sglang.importer import allocate, fetch_request
from sglang_droidspeak.sglang.quality_guard import GUARD_FALLBACK, GUARD_REASON
from sglang_droidspeak.sglang.request_options import request_options
from sglang_droidspeak.sglang.response_info import record_choice, record_fallback
from sglang_droidspeak.transfer.errors import FetchFailed, ImportFailed

logger = logging.getLogger(__name__)
PEER_BACKOFF_S = 10.0  # after a timeout or protocol error, skip that peer for this long


class ImportRole:
    def start_import(self, tree: Any, req: Any, hit: ForeignHit) -> Optional[ImportJob]:
        """A parked import for ``req``'s REMOTE ``hit``, or None (the request prefills normally)."""
        from sglang_droidspeak.sglang.radix_cache import FELL_BACK_ATTR, PLAN_FORCED_ATTR

        rid, options = getattr(req, "rid", "?"), request_options(req)
        queue_len = max(0, len(getattr(self.scheduler, "waiting_queue", ()) or ()) - 1)
        token_ids = list(req.origin_input_ids[:hit.prefix_len])
        suffix_len = len(req.origin_input_ids) - hit.prefix_len
        choice = self.chooser.choose(hit.sender, hit.plan, getattr(req, PLAN_FORCED_ATTR, False), hit.prefix_len,
                                     suffix_len, queue_len, options.pipelined)
        reason = self._refusal(hit, choice)
        if reason is not None:
            setattr(req, FELL_BACK_ATTR, True)
            record_fallback(req, choice.reason if reason[0] == "policy" else reason[0])
            return self._fallback(reason[0], rid, reason[1])
        try:
            job = self._new_job(tree, req, hit, choice.plan, token_ids, options)
        except ImportFailed as exc:
            setattr(req, FELL_BACK_ATTR, True)
            record_fallback(req, exc.reason)
            return self._fallback(exc.reason, rid, str(exc))
        record_choice(req, choice.plan, choice.reason)
        job.fence = record_event(self.imports.compute_stream)
        self.worker.submit(job, self._fetch_from(hit.peer, options.link_gbps), self._request_of(job), job.fence)
        return job

    def _refusal(self, hit: ForeignHit, choice: Any) -> Optional[tuple[str, str]]:
        if choice.plan is None:
            return (GUARD_FALLBACK if choice.reason == GUARD_REASON else "policy"), choice.reason
        if choice.plan.num_layers != self.num_layers:
            return "bad_plan", f"plan for {choice.plan.num_layers} layers, model has {self.num_layers}"
        if isinstance(choice.plan, BlendPlan) and (why := blend_unsupported(self.parts.engine)) is not None:
            return "blend_unsupported", why
        if self.client is None or hit.peer not in self._peer_fetches:
            return "no_peer", f"no configured peer serves {hit.sender!r} at {hit.peer!r}"
        if time.monotonic() < self._backoff_until.get(hit.peer, 0.0):
            return "peer_backoff", f"{hit.sender!r} at {hit.peer} failed recently"
        return None

    def _new_job(self, tree: Any, req: Any, hit: ForeignHit, plan: Any, token_ids: list, options) -> ImportJob:
        parts = self.parts
        base = _base_of(req, tree)
        slots = allocate(parts, tree, len(token_ids))
        row = PoolRow()
        if parts.req_to_token_pool.alloc([row]) is None:
            parts.allocator.free(slots)
            raise ImportFailed("no_memory", "no free request-pool row for the import")
        ids = torch.tensor(token_ids, dtype=torch.int64, device=parts.device)  # [n]
        try:
            blend = Blend(parts, plan, ids, slots, row, tree) if isinstance(plan, BlendPlan) else None
        except ImportFailed:  # no scratch slots for its selection pass
            parts.req_to_token_pool.free(row)
            parts.allocator.free(slots)
            raise
        pipelined = options.pipelined_or(self.settings.pipelined)
        streams = ImportStreams(parts.device, pipelined)
        layer_plan = LayerPlan.full_reuse(plan.num_layers) if isinstance(plan, BlendPlan) else plan
        receiver = CancellableReceiver(parts, layer_plan, slots, layer_plan.e_layers(), streams)
        job = ImportJob(getattr(req, "rid", "?"), req, hit, plan, tree.derived_namespace(hit.sender, plan, base),
                        token_ids, slots, row, ids, receiver, streams, pipelined,
                        time.monotonic() + self.settings.import_deadline_s, blend)
        receiver.job, receiver.on_e_ready = job, job.e_landed.append
        return job

    def _request_of(self, job: ImportJob):
        plan = job.plan
        kv_layers = tuple(range(plan.num_layers)) if isinstance(plan, BlendPlan) else plan.reused_layers()
        e_layers = () if isinstance(plan, BlendPlan) else plan.e_layers()
        return fetch_request(job.hit.sender, self.model, self.fingerprint, job.token_ids, kv_layers, e_layers)

    def _fetch_from(self, endpoint: str, link_gbps: float = 0.0):
        """``fetch(request, receiver)`` from ``endpoint`` on the worker thread, on the data
        plane's receiver; ``link_gbps`` > 0 goes into the FetchRequest (the sender paces it
        when it allows that)."""
        timeout, plane = self.settings.fetch_timeout_s, self.planes.receiver

        def fetch(request, receiver):
            if link_gbps > 0:
                request = dataclasses.replace(request, link_gbps=float(link_gbps))
            try:
                return plane.fetch(endpoint, request, receiver, timeout, idle=None)
            finally:
                if getattr(receiver, "job", None) is not None:  # where a slow fetch's time went
                    receiver.job.exchange = self.client.last_exchange

        return fetch

    def failure_of(self, exc: BaseException) -> tuple[str, str]:
        """(reason, message) of a fetch-side exception."""
        if isinstance(exc, (ImportFailed, FetchFailed)):
            return getattr(exc, "reason", getattr(exc, "code", "internal")), str(exc)
        logger.error("droidspeak: import fetch failed", exc_info=exc)
        return "internal", repr(exc)

    def finish_import(self, job: ImportJob) -> None:
        from sglang.srt.mem_cache.base_prefix_cache import InsertParams
        from sglang.srt.mem_cache.radix_cache import RadixKey

        parts = self.parts
        result = self.tree.insert(InsertParams(key=RadixKey(array("q", job.token_ids), job.namespace),
                                               value=job.slots.to(torch.int64, copy=True)))
        parts.req_to_token_pool.free(job.row)
        if job.blend is not None:
            job.blend.release()
        if result.prefix_len > 0:
            parts.allocator.free(job.slots[: result.prefix_len])  # already in the tree
        timings = job.timings()
        self.metrics.observe_fetch_seconds(timings.total_ms / 1e3)
        self.metrics.record_hit("remote", job.num_tokens, job.plan.num_recomputed_layers)
        self.metrics.record_bytes("in", job.receiver.num_bytes)
        for stage in ("fetch", "recompute", "drain", "total"):
            self.metrics.observe_import_stage(stage, getattr(timings, f"{stage}_ms") / 1e3)
        logger.info("droidspeak: rid=%s reused %d tokens from %s with plan %s (import %s)", job.rid,
                    job.num_tokens, job.hit.sender, job.plan, timings.log_text())

    def abandon_import(self, job: ImportJob) -> None:
        from sglang_droidspeak.sglang.radix_cache import FELL_BACK_ATTR

        self.parts.req_to_token_pool.free(job.row)
        self.parts.allocator.free(job.slots)
        if job.blend is not None:
            job.blend.release()
        setattr(job.req, FELL_BACK_ATTR, True)
        reason, message = job.failure
        record_fallback(job.req, reason)
        if job.peer_to_blame():
            self._backoff_until[job.hit.peer] = time.monotonic() + PEER_BACKOFF_S
        self._fallback(reason, job.rid, message)


def _base_of(req: Any, tree: Any) -> Optional[str]:
    from sglang_droidspeak.radix.namespace import decode_namespace

    return decode_namespace(getattr(req, "extra_key", None), tree.model).base
