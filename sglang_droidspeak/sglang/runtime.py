"""Per-scheduler-process DroidSpeak state: sockets, metrics, fetch, export and E on demand.

One ``DroidSpeakRuntime`` lives next to the tree cache in each scheduler process:

    role       socket (settings field)       runs on
    sender     FetchServer   (export_bind)   scheduler thread, from the loop hook
    sender     Announcer     (announce_bind) scheduler thread, on native inserts
    receiver   FetchClient   (peers[].fetch) scheduler thread, inside match_prefix
    receiver   DirectoryListener (peers[].announce)  its own thread -> RemotePrefixIndex

With ``data_plane: cuda_ipc`` the sender also keeps receivers' pool offers and copies K/V
into them on the GPU (ipc_export.IpcExporter), and the receiver offers its pool and asks
for that copy (ipc_import.IpcFetcher), falling back to ZMQ per peer where it cannot. With
``data_plane: nccl`` each receiver opens a pair channel to each sender (nccl_import /
nccl_export; planes.py builds them) and E and K/V move on it GPU to GPU.

Every receiver-side failure is a fallback: the request prefills normally, a warning is
logged and ``fallbacks_total{reason}`` counts it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from typing import Any, Optional

import torch

from sglang_droidspeak.plan.layer_plan import LayerPlan
from sglang_droidspeak.radix.hits import ForeignHit
from sglang_droidspeak.sglang.exporter import export_messages
from sglang_droidspeak.sglang.importer import DEBUG_ENV, ImportFailed, ModelParts, import_prefix
from sglang_droidspeak.sglang.plan_choice import PlanChooser
from sglang_droidspeak.sglang.planes import build_planes
from sglang_droidspeak.sglang.recompute import prefix_inputs, recompute_group
from sglang_droidspeak.sglang.request_options import RequestOptions
from sglang_droidspeak.sglang.runtime_directory import DirectoryRole
from sglang_droidspeak.sglang.settings import DroidSpeakSettings
from sglang_droidspeak.transfer.directory import Announcer, DirectoryListener
from sglang_droidspeak.transfer.fetch import FetchClient, FetchFailed, FetchServer
from sglang_droidspeak.transfer.frames import FetchDone, FetchError
from sglang_droidspeak.transfer.pacing import LinkPacer, PacerPolicy

logger = logging.getLogger(__name__)
PEER_BACKOFF_S = 10.0  # after a timeout or protocol error, skip that peer for this long
BACKOFF_REASONS = ("timeout", "protocol", "internal", "deadline", "nccl_error")


class DroidSpeakRuntime(DirectoryRole):
    def __init__(self, settings: DroidSpeakSettings, model: str, fingerprint: str, parts: ModelParts,
                 num_layers: int, metrics: Any, secret: Optional[bytes], ipc_backend: Any = None,
                 nccl_backend: Any = None):
        """``ipc_backend`` / ``nccl_backend``: the cuda_ipc / nccl plane's backend (default
        the GPU one; tests pass CPU stand-ins, see planes.py)."""
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
        self.export_server = FetchServer(settings.export_bind, secret, pacing=pacing) if settings.export_bind else None
        self.announcer = Announcer(settings.announce_bind, secret) if settings.announce_bind else None
        self.client = FetchClient(secret) if self.peers else None
        planes = build_planes(settings, model, parts, num_layers, secret, self.export_server, self.client,
                              ipc_backend, nccl_backend, pacing)
        self.ipc_export, self.ipc_fetch = planes.ipc_export, planes.ipc_fetch
        self.nccl_export, self.nccl_fetch = planes.nccl_export, planes.nccl_fetch
        self.tree: Any = None
        self.scheduler: Any = None
        self._warned: set[str] = set()
        self._backoff_until: dict[str, float] = {}  # peer fetch endpoint -> monotonic time
        self.chooser = PlanChooser(settings, model, num_layers, metrics)
        # one listener per peer: an announcement is credited to the replica it came from
        self.listeners = [DirectoryListener([peer.announce], secret, functools.partial(self._on_announce, peer=peer))
                          for peer in self.peers]

    def attach(self, tree: Any) -> None:
        self.tree = tree

    # ---- scheduler loop ----

    def on_scheduler_tick(self, scheduler: Any) -> None:
        """Called after every ``Scheduler.process_input_requests``: answer queued fetches."""
        if self.scheduler is None:
            self.scheduler = scheduler
            sleeper = getattr(scheduler, "idle_sleeper", None)
            if sleeper is not None and self.export_server is not None:
                import zmq

                sleeper.poller.register(self.export_server.socket, zmq.POLLIN)  # wake on fetches
        self.poll_exports()

    def poll_exports(self) -> None:
        if self.export_server is not None and self.tree is not None:
            offers = {}  # only the plane's own offer handler
            if self.ipc_export is not None:
                offers["on_offer"] = self.ipc_export.accept_offer
            if self.nccl_export is not None:
                offers["on_nccl_offer"] = self.nccl_export.accept_offer
            self.export_server.poll(self._export, **offers)

    def _export(self, request):
        self.metrics.record_export()
        planes_before = self._plane_bytes_out()
        for msg in export_messages(request, model=self.model, fingerprint=self.fingerprint, tree=self.tree,
                                   kv_pool=self.parts.kv_pool, compute_e=self.compute_e,
                                   num_layers=self.num_layers, ipc=self.ipc_export, nccl=self.nccl_export):
            if isinstance(msg, (FetchDone, FetchError)):  # the last message: IPC copies, NCCL sends are done
                self.metrics.record_bytes("out", self._plane_bytes_out() - planes_before)
            self.metrics.record_bytes("out", len(getattr(msg, "data", b"")))
            yield msg

    def _plane_bytes_out(self) -> int:
        return sum(plane.num_bytes_out for plane in (self.ipc_export, self.nccl_export) if plane is not None)

    def compute_e(self, token_ids: list, layers: tuple) -> dict:
        """E entering each of ``layers`` for the prefix, by this model's own layers (no KV writes)."""
        ids, positions = prefix_inputs(token_ids, self.parts.device)
        trace: dict = {}
        last = max(layers)
        with torch.no_grad():
            e_last = recompute_group(self.parts.layers, 0, last, self.parts.embed(ids), positions, None, None, trace)
        trace[last] = e_last
        return {layer: trace[layer] for layer in layers}

    # ---- receiver ----

    def backed_off_peers(self) -> tuple[str, ...]:
        """Fetch endpoints that failed within PEER_BACKOFF_S: the tree prefers other replicas."""
        now = time.monotonic()
        return tuple(peer for peer, until in self._backoff_until.items() if until > now)

    def materialize(self, tree: Any, hit: ForeignHit, token_ids, base: Optional[str], rid: str,
                    forced: bool = False, options: RequestOptions = RequestOptions()) -> Optional[str]:
        """Import a REMOTE hit as derived KV; the namespace to adopt, or None (fallback).

        ``forced``: the request named its plan; otherwise the online policy may pick another
        (``plan_choice``), or decide that a normal prefill is better. ``options``: the
        request's own ``pipelined`` (None: the setting) and ``link_gbps`` (asked of the sender).
        """
        # SGLang matches a request while it still sits in waiting_queue: the others waiting
        queue_len = max(0, len(getattr(self.scheduler, "waiting_queue", ()) or ()) - 1)
        choice = self.chooser.choose(hit.sender, hit.plan, forced, hit.prefix_len,
                                     len(token_ids) - hit.prefix_len, queue_len, options.pipelined)
        if choice.plan is None:
            return self._fallback("policy", rid, choice.reason)
        plan: LayerPlan = choice.plan
        if plan.num_layers != self.num_layers:
            return self._fallback("bad_plan", rid, f"plan for {plan.num_layers} layers, model has {self.num_layers}")
        if self.client is None or hit.peer not in self._peer_fetches:
            return self._fallback("no_peer", rid, f"no configured peer serves {hit.sender!r} at {hit.peer!r}")
        if time.monotonic() < self._backoff_until.get(hit.peer, 0.0):
            return self._fallback("peer_backoff", rid, f"{hit.sender!r} at {hit.peer} failed recently")
        namespace = tree.derived_namespace(hit.sender, plan, base)
        self._order_after_forward()
        start = time.perf_counter()
        try:
            result = import_prefix(
                self.parts, tree, self._fetcher(hit.peer, options.link_gbps), sender=hit.sender,
                receiver=self.model, fingerprint=self.fingerprint, token_ids=list(token_ids[:hit.prefix_len]),
                plan=plan, namespace=namespace, pipelined=options.pipelined_or(self.settings.pipelined))
        except (ImportFailed, FetchFailed) as exc:
            reason = getattr(exc, "reason", getattr(exc, "code", "internal"))
            if reason in BACKOFF_REASONS:
                self._backoff_until[hit.peer] = time.monotonic() + PEER_BACKOFF_S
            return self._fallback(reason, rid, str(exc))
        except Exception as exc:  # noqa: BLE001 - never lose the request over our bug
            logger.exception("droidspeak: import failed")
            return self._fallback("internal", rid, repr(exc))
        self._order_after_forward()  # our writes are complete before anything reads them
        self.metrics.observe_fetch_seconds(time.perf_counter() - start)
        self.metrics.record_hit("remote", result.num_tokens, result.num_recomputed_layers)
        self.metrics.record_bytes("in", result.num_bytes_in)
        self._observe_stages(result.timings)
        logger.info("droidspeak: rid=%s reused %d tokens from %s with plan %s (%.1f ms; import %s)", rid,
                    result.num_tokens, hit.sender, plan, 1e3 * (time.perf_counter() - start),
                    result.timings.log_text())
        return namespace

    def _observe_stages(self, timings) -> None:
        for stage in ("fetch", "recompute", "drain", "total"):
            self.metrics.observe_import_stage(stage, getattr(timings, f"{stage}_ms") / 1e3)

    def _fetcher(self, endpoint: str, link_gbps: float = 0.0):
        """``fetch(request, receiver)`` from ``endpoint``; ``link_gbps`` > 0 goes into every
        FetchRequest (DroidSpeak and CacheBlend imports alike), asking the sender to pace."""
        timeout, plane = self.settings.fetch_timeout_s, self.ipc_fetch or self.nccl_fetch
        if plane is None or os.environ.get(DEBUG_ENV) == "1":  # debug keeps sender K/V aside
            plane = self.client  # the same fetch(endpoint, request, on_chunk, timeout, idle)

        def fetch(request, receiver):
            if link_gbps > 0:
                request = dataclasses.replace(request, link_gbps=float(link_gbps))
            return plane.fetch(endpoint, request, receiver, timeout, idle=self.poll_exports)

        return fetch

    def _order_after_forward(self) -> None:
        """Overlap scheduler: let every forward in flight finish before we write slots.

        A whole-device sync, deliberately coarse for now: it costs one wait per foreign
        hit and rules out any ordering hazard with freed-and-reused slots.
        """
        if torch.cuda.is_available():
            torch.cuda.synchronize()

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
        for part in (self.nccl_fetch, self.nccl_export, self.export_server, self.announcer, self.client,
                     *self.listeners):
            if part is not None:
                part.close()
