"""Receiver side of the cuda_ipc plane: offer our KV pool once per peer, ask for a GPU copy.

    IpcFetcher.fetch(endpoint, request, receiver, timeout_s, idle)
    1 share the pool (once per process)           cannot (no CUDA, odd allocator): ZMQ for
                                                  every peer, one warning
    2 send the IpcPoolOffer to a new peer         (no reply; it precedes the request)
    3 the request + session (the offer id) +      E chunks arrive as on the ZMQ plane; K/V
      dst_slots (the receiver's slots) +          are in our pool when FetchDone comes
      deadline_ms (now + timeout, CLOCK_MONOTONIC)
    4 FetchError no_offer (the sender restarted   re-offer, ask once more (same deadline)
      or forgot us)
      FetchError ipc_unavailable (other GPU,      ZMQ for this peer from now on; this
      sender on the zmq plane, open failed)       request goes over ZMQ right away
      anything else (timeout, deadline, ...)      FetchFailed: the importer frees the slots
                                                  and the request prefills normally

The deadline is the whole safety contract: we wait for the answer until ``deadline_ms``
and free the slots only after that; the sender never starts a copy within its margin of
the deadline (sender.py). Refusals (no_offer, ipc_unavailable) come before any chunk,
so a retry never sees a half-received stream. Imports no SGLang.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Optional

from sglang_droidspeak.transfer.planes.cuda_ipc.backend import IpcUnavailable, now_ms
from sglang_droidspeak.transfer.errors import FetchFailed
from sglang_droidspeak.transfer.fetch_client import FetchClient
from sglang_droidspeak.transfer.frames import FetchDone, FetchRequest
from sglang_droidspeak.transfer.planes.base import OfferingReceiver
from sglang_droidspeak.transfer.planes.cuda_ipc.frames import IpcPoolOffer

logger = logging.getLogger(__name__)


class IpcFetcher(OfferingReceiver):
    """Fetches over the cuda_ipc plane where it can, over ZMQ where it cannot.

    ``backend.share_pool(model, kv_pool, num_layers)`` makes the offer (cuda_ipc.CudaIpc on
    a GPU; a CPU stand-in in tests). ``receiver`` is the import's KvSink: its ``slots``
    are the destination, ``landed`` records what the sender copied there.
    """

    def __init__(self, backend: Any, client: FetchClient, model: str, kv_pool: Any, num_layers: int):
        self.backend, self.client, self.model = backend, client, model
        self.kv_pool, self.num_layers = kv_pool, num_layers
        self.offer: Optional[IpcPoolOffer] = None
        self.unavailable = False  # our pool cannot be shared: ZMQ for everyone
        self.offered: set[str] = set()  # endpoints that got the current offer
        self.zmq_peers: set[str] = set()  # endpoints that cannot take it (other GPU, ...)

    def fetch(self, endpoint: str, request: FetchRequest, receiver: Any, timeout_s: float,
              idle: Optional[Callable[[], None]] = None) -> FetchDone:
        offer = None if endpoint in self.zmq_peers else self._offer()
        if offer is None:
            return self.client.fetch(endpoint, request, receiver, timeout_s, idle)
        began_ms = now_ms()
        deadline_ms = began_ms + int(timeout_s * 1000)
        slots = tuple(receiver.slots.tolist())  # [n] our KV slots, one per token (ints already)
        waited_ms = now_ms() - began_ms
        if waited_ms > SLOW_HOST_COPY_MS:  # .tolist() waits for the device
            logger.warning("droidspeak: cuda_ipc fetch waited %d ms for its slot list", waited_ms)
        ipc_request = dataclasses.replace(request, plane="cuda_ipc", session=offer.offer_id, dst_slots=slots,
                                          deadline_ms=deadline_ms)
        for attempt in range(2):
            self._send_offer(endpoint, offer)
            try:
                done = self.client.fetch(endpoint, ipc_request, receiver, _left_s(deadline_ms), idle)
            except FetchFailed as exc:
                if exc.code == "no_offer" and attempt == 0:
                    self.offered.discard(endpoint)
                    continue
                if exc.code != "ipc_unavailable":
                    raise
                logger.warning("droidspeak: %s cannot take our KV pool over CUDA IPC (%s); using ZMQ "
                               "for it", endpoint, exc)
                self.zmq_peers.add(endpoint)
                return self.client.fetch(endpoint, request, receiver, _left_s(deadline_ms), idle)
            for layer in request.reused_layers:  # the sender wrote them into our slots
                receiver.landed("k", layer)
                receiver.landed("v", layer)
            return done
        raise FetchFailed("no_offer", f"{endpoint} did not take our IPC offer")

    def _startup_offer(self) -> Optional[IpcPoolOffer]:
        """What ``prepare`` sends: the sender maps our pool on receipt (sender.py), so the first
        import does not pay the IPC handles' opening (51 ms at 8B shapes on an H100). A sender
        not up yet gets the queued offer on connect; one that restarts later answers the first
        fetch no_offer, and ``fetch`` offers again."""
        return self._offer()

    def _offer(self) -> Optional[IpcPoolOffer]:
        if self.offer is None and not self.unavailable:
            try:
                self.offer = self.backend.share_pool(self.model, self.kv_pool, self.num_layers)
            except IpcUnavailable as exc:
                self.unavailable = True
                logger.warning("droidspeak: data_plane cuda_ipc unavailable, using ZMQ: %s", exc)
        return self.offer


SLOW_HOST_COPY_MS = 100


def _left_s(deadline_ms: int) -> float:
    """Seconds until ``deadline_ms``, never past it (a floor of 1 ms keeps the wait finite)."""
    return max(deadline_ms - now_ms(), 1) / 1000
