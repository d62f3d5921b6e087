"""Receiver side of the cuda_ipc plane: offer our KV pool once per peer, ask for a GPU copy.

    IpcFetcher.fetch(endpoint, request, receiver, timeout_s, idle)
    1 share the pool and an E staging area        cannot (no CUDA, odd allocator): ZMQ for
      (once; again, twice as large, when a        every peer, one warning
      request's E outgrows the area)
    2 send the IpcPoolOffer to a new peer         (no reply; it precedes the request)
    3 the request + session (the offer id) +      K/V are in our pool when FetchDone
      dst_slots (the receiver's slots) +          comes; E in the staging area (FetchDone
      deadline_ms (now + timeout, CLOCK_MONOTONIC) with 0 chunks: copied out to the
                                                  import's E buffers, which starts their
                                                  groups) or, from a sender that does not
                                                  stage it, as chunks on the fetch socket
    4 FetchError no_offer (the sender restarted   re-offer, ask once more (same deadline)
      or forgot us)
      FetchError ipc_unavailable (other GPU,      ZMQ for this peer from now on; this
      sender on the zmq plane, open failed)       request goes over ZMQ right away
      anything else (timeout, deadline, ...)      FetchFailed: the importer frees the slots
                                                  and the request prefills normally

The deadline is the whole safety contract: we wait for the answer until ``deadline_ms``
and free the slots only after that; the sender never starts a copy within its margin of
the deadline (sender.py). The staging area is one per receiver: the fetch thread runs one
fetch at a time and synchronizes the copies out of it before the next one. Refusals
(no_offer, ipc_unavailable) come before any chunk, so a retry never sees a half-received
stream. Imports no SGLang.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
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

    def __init__(self, backend: Any, client: FetchClient, model: str, kv_pool: Any, num_layers: int,
                 hidden_size: int = 0, e_dtype: Any = None):
        self.backend, self.client, self.model = backend, client, model
        self.kv_pool, self.num_layers = kv_pool, num_layers
        self.hidden_size, self.e_dtype = hidden_size, e_dtype  # 0: no E staging area (E as chunks)
        self.e_stage: Any = None  # [rows, hidden] on the pool's device, shared in the offer
        self.pool_id = uuid.uuid4().hex  # the same in each offer we make: a new one replaces the old
        self.offer: Optional[IpcPoolOffer] = None
        self.unavailable = False  # our pool cannot be shared: ZMQ for everyone
        self.offered: set[str] = set()  # endpoints that got the current offer
        self.zmq_peers: set[str] = set()  # endpoints that cannot take it (other GPU, ...)

    def fetch(self, endpoint: str, request: FetchRequest, receiver: Any, timeout_s: float,
              idle: Optional[Callable[[], None]] = None) -> FetchDone:
        e_rows = len(request.token_ids) * len(request.e_layers)
        offer = None if endpoint in self.zmq_peers else self._offer(e_rows)
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
            if request.e_layers and done.num_chunks == 0:  # E came into the staging area
                self._take_e(request, receiver, offer)
            return done
        raise FetchFailed("no_offer", f"{endpoint} did not take our IPC offer")

    def _take_e(self, request: FetchRequest, receiver: Any, offer: IpcPoolOffer) -> None:
        """Copy E layer i out of staging rows [i*n, (i+1)*n) into the import's E buffer."""
        n = len(request.token_ids)
        if offer.e_rows < n * len(request.e_layers):
            raise FetchFailed("protocol", f"no E chunks, and our staging area holds {offer.e_rows} rows "
                              f"of the {n * len(request.e_layers)} needed")
        for i, layer in enumerate(request.e_layers):
            receiver.put("e", layer, self.e_stage[i * n:(i + 1) * n])  # [n, hidden]

    def _startup_offer(self) -> Optional[IpcPoolOffer]:
        """What ``prepare`` sends: the sender maps our pool on receipt (sender.py), so the first
        import does not pay the IPC handles' opening (51 ms at 8B shapes on an H100). A sender
        not up yet gets the queued offer on connect; one that restarts later answers the first
        fetch no_offer, and ``fetch`` offers again."""
        return self._offer(E_ROWS)

    def _offer(self, e_rows: int = 0) -> Optional[IpcPoolOffer]:
        """The current offer, made again with a staging area of at least ``e_rows`` rows
        (twice the old one's) when the current one is smaller."""
        if self.unavailable or (self.offer is not None and self.offer.e_rows >= min(e_rows, self._max_e_rows())):
            return self.offer
        rows = max(e_rows, 2 * (self.offer.e_rows if self.offer is not None else 0), E_ROWS)
        try:
            self.e_stage = self._new_stage(rows)
            self.offer = self.backend.share_pool(self.model, self.kv_pool, self.num_layers, self.e_stage,
                                                 self.pool_id)
            self.offered.clear()  # every peer needs the new offer
        except IpcUnavailable as exc:
            self.unavailable = True
            logger.warning("droidspeak: data_plane cuda_ipc unavailable, using ZMQ: %s", exc)
        return self.offer

    def _max_e_rows(self) -> int:
        """0 where there is no staging area at all (no hidden size given): E as chunks."""
        return MAX_E_ROWS if self.hidden_size else 0

    def _new_stage(self, rows: int) -> Any:
        if not self.hidden_size:
            return None
        import torch

        device = self.kv_pool.get_key_buffer(0).device
        return torch.empty(min(rows, MAX_E_ROWS), self.hidden_size, dtype=self.e_dtype, device=device)


SLOW_HOST_COPY_MS = 100
E_ROWS = 8192  # the staging area's first size in rows of hidden_size (8B shapes: 64 MiB); it doubles on demand
MAX_E_ROWS = 1 << 18  # beyond this (2 GiB at hidden 4096) E goes as chunks


def _left_s(deadline_ms: int) -> float:
    """Seconds until ``deadline_ms``, never past it (a floor of 1 ms keeps the wait finite)."""
    return max(deadline_ms - now_ms(), 1) / 1000
