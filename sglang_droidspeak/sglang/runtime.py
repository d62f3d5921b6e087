"""Per-scheduler-process DroidSpeak state: sockets, metrics, fetch, export and E on demand.

One ``DroidSpeakRuntime`` lives next to the tree cache in each scheduler process:

    role       socket (settings field)       runs on
    sender     FetchServer   (export_bind)   scheduler thread, from the loop hook
    sender     Announcer     (announce_bind) scheduler thread, on native inserts
    receiver   FetchClient   (peers[].fetch) the fetch worker's thread (fetch_worker.py)
    receiver   DirectoryListener (peers[].announce)  scheduler thread, from the loop hook (no
                                                 thread of its own: one would wait for the GIL)

A receiver's imports are asynchronous jobs (import_queue.py, runtime_imports.py): a request
with a REMOTE hit is parked while its fetch runs on the worker and its recompute runs as
engine forwards (engine_forward.py) between the scheduler's own batches.

E and K/V move on the configured data plane (``data_plane``: zmq, cuda_ipc, nccl, ...;
transfer/planes/, built by planes.py): its sender answers the plane's control frames and
requests, its receiver fetches on the worker, falling back to zmq per peer where it cannot.

Every receiver-side failure is a fallback: the request prefills normally, a warning is
logged and ``fallbacks_total{reason}`` counts it.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any, Optional

from sglang_droidspeak.sglang.exporter import export_messages
from sglang_droidspeak.sglang.fetch_worker import FetchWorker
from sglang_droidspeak.sglang.import_queue import ImportQueue
from sglang_droidspeak.sglang.importer import ModelParts
from sglang_droidspeak.sglang.plan_choice import PlanChooser
from sglang_droidspeak.sglang.planes import build_planes
from sglang_droidspeak.transfer.planes.base import PlaneContext
from sglang_droidspeak.sglang.runtime_directory import DirectoryRole
from sglang_droidspeak.sglang.runtime_e import PendingE, compute_e, launch_e
from sglang_droidspeak.sglang.runtime_imports import PEER_BACKOFF_S, ImportRole  # noqa: F401
from sglang_droidspeak.sglang.settings import DroidSpeakSettings
from sglang_droidspeak.sglang.stall_watch import TRACE_FETCHES, GilLagProbe, TickGapWatch
from sglang_droidspeak.transfer.directory import Announcer, DirectoryListener
from sglang_droidspeak.transfer.fetch import PENDING, FetchServer
from sglang_droidspeak.transfer.fetch_client import FetchClient
from sglang_droidspeak.transfer.frames import FetchDone, FetchError
from sglang_droidspeak.transfer.pacing import LinkPacer, PacerPolicy

logger = logging.getLogger(__name__)


SLOW_EXPORT_MS = 250.0  # an export slower than this is logged with its shape (the H100 run of 2026-12-06
# saw 1-5 s fetches on cuda_ipc for every plan but 0:10 while a training job shared the GPU)


def _log_slow_export(request: Any, end: Any, elapsed_ms: float, parked_ticks: int, received_ms: float) -> None:
    if elapsed_ms < SLOW_EXPORT_MS and not TRACE_FETCHES:
        return
    outcome = "done" if isinstance(end, FetchDone) else f"error {end.code}"
    logger.warning("droidspeak: %s export to %s over %s: %.1f ms (%s) for %d tokens, %d K/V layers, E at %s, "
                   "%d ticks parked on E; received at %.1f (monotonic)", "slow" if elapsed_ms >= SLOW_EXPORT_MS
                   else "traced", request.receiver_model, request.plane, elapsed_ms, outcome, len(request.token_ids),
                   len(request.reused_layers), list(request.e_layers), parked_ticks, received_ms)


class DroidSpeakRuntime(ImportRole, DirectoryRole):
    def __init__(self, settings: DroidSpeakSettings, model: str, fingerprint: str, parts: ModelParts,
                 num_layers: int, metrics: Any, secret: Optional[bytes], plane_backend: Any = None):
        """``plane_backend``: the data plane's backend (default the plane's own; tests pass
        CPU stand-ins, see planes.py)."""
        self.settings, self.model, self.fingerprint = settings, model, fingerprint
        self.parts, self.num_layers, self.metrics = parts, num_layers, metrics
        self.peers = settings.peers  # several replicas of one model are several peers
        self._peer_fetches = {peer.fetch for peer in self.peers}
        needs_secret = bool(settings.export_bind or settings.announce_bind or self.peers)
        if needs_secret and secret is None:
            raise ValueError(f"droidspeak: export_bind/announce_bind/peers need a shared secret in "
                             f"${settings.secret_env}")
        pacing = PacerPolicy(LinkPacer(settings.throttle_gbps) if settings.throttle_gbps else None,
                             settings.allow_request_throttle)
        self.export_server = (FetchServer(settings.export_bind, secret, pacing=pacing, on_drop=metrics.record_drop)
                              if settings.export_bind else None)
        self.announcer = Announcer(settings.announce_bind, secret) if settings.announce_bind else None
        self.client = FetchClient(secret) if self.peers else None
        context = PlaneContext(model, parts.kv_pool, num_layers, parts.hidden_size, parts.dtype,
                               settings.fetch_timeout_s, secret, self.client, pacing, settings.nccl_host,
                               plane_backend)
        self.planes = build_planes(settings, context, self.export_server, self.client)
        self.tree: Any = None
        self.scheduler: Any = None
        self.tick_gap = TickGapWatch()  # a sender whose ticks stall logs the gap (stall_watch.py)
        if TRACE_FETCHES:
            GilLagProbe().start()
        self._warned: set[str] = set()
        self._backoff_until: dict[str, float] = {}  # peer fetch endpoint -> monotonic time
        self.chooser = PlanChooser(settings, model, num_layers, metrics)
        self.guard: Any = None  # QualityGuard (set_guard); None: no live quality guard
        # one listener per peer: an announcement is credited to the replica it came from
        self.listeners = [DirectoryListener([peer.announce], secret, functools.partial(self._on_announce, peer=peer),
                                            on_drop=metrics.record_drop, threaded=False)  # read in the tick
                          for peer in self.peers]
        self.imports = ImportQueue(self, settings.import_chunk_tokens, settings.import_mode,
                                   settings.import_busy_token_layers)
        self.worker = FetchWorker() if self.client is not None else None
        if self.worker is not None and self.planes.receiver is not None:
            for endpoint in sorted(self._peer_fetches):  # e.g. offer our KV pool (cuda_ipc) before any import
                self.worker.call(functools.partial(self.planes.receiver.prepare, endpoint))

    def attach(self, tree: Any) -> None:
        self.tree = tree

    def set_guard(self, guard: Any) -> None:
        """The live quality guard (quality_guard.py): fed by the tree's cache_finished_req, it
        blocks tripped senders in the tree's lookups and in the plan choice."""
        self.guard = self.chooser.guard = guard

    def on_request_finished(self, req: Any) -> None:
        """A request left the tree (``cache_finished_req``): maybe shadow-check it (never raises)."""
        if self.guard is not None:
            self.guard.on_finished(req)

    def guard_blocks(self, sender: str) -> bool:
        return self.guard is not None and self.guard.blocks(sender)

    # ---- scheduler loop ----

    def on_scheduler_tick(self, scheduler: Any) -> None:
        """Called after every ``Scheduler.process_input_requests``: answer queued fetches,
        take the peers' announcements, start and advance imports."""
        if self.scheduler is None:
            self.scheduler = scheduler
            self.imports.bind(scheduler)  # before the first export: E runs on the forward stream
            sleeper = getattr(scheduler, "idle_sleeper", None)
            if sleeper is not None:
                import zmq

                sockets = [listener.socket for listener in self.listeners]  # wake on announcements
                for socket in sockets + ([self.export_server.socket] if self.export_server else []):
                    sleeper.poller.register(socket, zmq.POLLIN)  # and on fetches
        if self.export_server is not None:
            self.tick_gap.tick()
        self.answer_fetches()
        self.poll_directory()
        self.imports.tick(scheduler)
        if self.worker is not None:
            self.worker.yield_gil()  # the fetch thread gets the GIL at least once per tick

    def poll_directory(self) -> None:
        """Take the peers' announcements that have arrived (never blocks)."""
        for listener in self.listeners:
            listener.poll()

    def busy(self) -> bool:
        """Work in flight that holds slots: an import, or an export parked on its E."""
        parked = self.export_server is not None and self.export_server.num_parked > 0
        return parked or self.imports.busy()

    def answer_fetches(self) -> None:
        """Answer queued FetchRequests and the data plane's control frames (never blocks)."""
        if self.export_server is not None and self.tree is not None:
            self.export_server.poll(self._export, on_control=self.planes.on_control)

    def _export(self, request):
        self.metrics.record_export()
        planes_before, began, parked = self.planes.bytes_out(), time.perf_counter(), 0
        received_ms = 1e3 * time.monotonic()
        for msg in export_messages(request, model=self.model, fingerprint=self.fingerprint, tree=self.tree,
                                   compute_e=self.launch_e, num_layers=self.num_layers,
                                   senders=self.planes.senders):
            if isinstance(msg, (FetchDone, FetchError)):  # the last message: the plane's moves are done
                self.metrics.record_bytes("out", self.planes.bytes_out() - planes_before)
                _log_slow_export(request, msg, 1e3 * (time.perf_counter() - began), parked, received_ms)
            parked += msg is PENDING
            self.metrics.record_bytes("out", len(getattr(msg, "data", b"")))
            yield msg

    def compute_e(self, token_ids: list, layers: tuple) -> dict:
        """E entering each of ``layers`` for the prefix, by this model's own layers (runtime_e.py)."""
        return compute_e(self.parts, self.tree, token_ids, layers, self.imports.compute_stream)

    def launch_e(self, token_ids: list, layers: tuple) -> PendingE:
        """The same, launched: the export parks until it has run."""
        return launch_e(self.parts, self.tree, token_ids, layers, self.imports.compute_stream)

    # ---- receiver ----

    def backed_off_peers(self) -> tuple[str, ...]:
        """Fetch endpoints that failed within PEER_BACKOFF_S: the tree prefers other replicas."""
        now = time.monotonic()
        return tuple(peer for peer, until in self._backoff_until.items() if until > now)

    def note_no_plan(self, sender: str) -> None:
        """A peer holds the prefix but no plan/profile covers (sender -> us): once per sender."""
        if f"no_plan:{sender}" not in self._warned:
            self.metrics.record_fallback("no_plan")
        self._warn_once(f"no_plan:{sender}", "droidspeak: no plan or profile for %r -> %r; its prefixes "
                        "are prefilled normally", sender, self.model)

    def _fallback(self, reason: str, rid: str, message: str) -> None:
        self.metrics.record_fallback(reason)
        logger.warning("droidspeak: rid=%s falls back to normal prefill (%s): %s", rid, reason, message)
        return None

    def _warn_once(self, key: str, fmt: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(fmt, *args)

    def close(self) -> None:
        if self.guard is not None:
            self.guard.close()
        self.imports.close()
        if self.worker is not None:
            self.worker.close()
        self.planes.close()
        for part in (self.export_server, self.announcer, self.client, *self.listeners):
            if part is not None:
                part.close()
