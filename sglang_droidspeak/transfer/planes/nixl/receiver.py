"""Receiver side of the nixl plane: register our KV pool once, offer it, let the sender WRITE.

    NixlFetcher.fetch(endpoint, request, sink, timeout_s, idle)
    1 our agent: the pool's K/V buffers and an    NIXL missing or unusable: zmq for every
      E staging area registered (once; again      peer, one warning
      only when E outgrows the area)
    2 the NixlPoolOffer to a new peer (no reply)
    3 the request (plane nixl, session = our      each WRITE's notification (polled while
      agent, dst_slots = the import's slots,      we wait) marks its tensor landed: E_s
      deadline_ms = the fetch budget in ms)       copied out of the staging area (group s
                                                  starts), K/V of a layer already in place
    4 FetchError no_nixl_offer                    re-offer, ask once more
      FetchError nixl_unavailable                 zmq for this peer from now on
      a refusal before any write                  FetchFailed (the request prefills normally)
      anything else (timeout, nixl_error, a       revoke: our registrations and agent go (a
      notification missing after FetchDone)      late WRITE cannot land in freed slots) and
                                                  a new one registers; FetchFailed

Imports no SGLang; NIXL only through agent.py.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from typing import Any, Callable, Optional

import torch

from sglang_droidspeak.transfer.errors import FetchFailed, ImportFailed
from sglang_droidspeak.transfer.frames import FetchDone, FetchRequest
from sglang_droidspeak.transfer.planes.base import KvSink, OfferingReceiver, PlaneUnavailable
from sglang_droidspeak.transfer.planes.nixl.agent import Agent, mem_of
from sglang_droidspeak.transfer.planes.nixl.frames import NixlPoolOffer

REFUSALS = ("evicted", "fingerprint_mismatch", "bad_request", "busy")  # answered before any write
E_ROWS = 4096  # the E staging area's first size, in rows of hidden_size (it grows on demand)
logger = logging.getLogger(__name__)


class NixlFetcher(OfferingReceiver):
    def __init__(self, client: Any, model: str, kv_pool: Any, num_layers: int, hidden_size: int,
                 e_dtype: torch.dtype, agent_factory: Callable[[str], Any] = Agent):
        self.client, self.model, self.kv_pool, self.num_layers = client, model, kv_pool, num_layers
        self.hidden_size, self.e_dtype, self.agent_factory = hidden_size, e_dtype, agent_factory
        self.agent: Any = None
        self.offer: Optional[NixlPoolOffer] = None
        self.e_stage: Optional[torch.Tensor] = None  # [rows, hidden], registered
        self.offered: set[str] = set()
        self.zmq_peers: set[str] = set()
        self.unavailable = False
        self.num_revoked = 0
        self._offer(E_ROWS)  # at start-up: an agent's start must not spend a fetch's budget

    def fetch(self, endpoint: str, request: FetchRequest, sink: KvSink, timeout_s: float,
              idle: Optional[Callable[[], None]] = None) -> FetchDone:
        deadline = time.monotonic() + timeout_s
        offer = None if endpoint in self.zmq_peers else self._offer(len(request.token_ids) * len(request.e_layers))
        if offer is None:
            return self.client.fetch(endpoint, request, sink, timeout_s, idle)
        for attempt in range(2):
            self._send_offer(endpoint, offer)
            try:
                return self._fetch_on(offer, endpoint, request, sink, deadline, idle)
            except FetchFailed as exc:
                if exc.code == "no_nixl_offer" and attempt == 0:
                    self.offered.discard(endpoint)
                    continue
                if exc.code == "nixl_unavailable":
                    logger.warning("droidspeak: %s cannot take our NIXL offer (%s); using zmq for it", endpoint, exc)
                    self.zmq_peers.add(endpoint)
                    return self.client.fetch(endpoint, request, sink, _left_s(deadline), idle)
                if exc.code not in REFUSALS:
                    self._revoke(renew=True)
                raise
            except BaseException:
                self._revoke(renew=True)
                raise
        raise FetchFailed("no_nixl_offer", f"{endpoint} did not take our NIXL offer")

    def _fetch_on(self, offer: NixlPoolOffer, endpoint: str, request: FetchRequest, sink: KvSink,
                  deadline: float, idle) -> FetchDone:
        n, rid = len(request.token_ids), request.request_id
        waiting = {f"{rid}:e:{layer}".encode(): ("e", layer, i) for i, layer in enumerate(request.e_layers)}
        waiting.update({f"{rid}:kv:{layer}".encode(): ("kv", layer, 0) for layer in request.reused_layers})
        slots = tuple(int(s) for s in sink.slots.tolist())  # [n] our KV slots, one per token
        nixl_request = dataclasses.replace(request, plane="nixl", session=offer.session, dst_slots=slots,
                                           deadline_ms=max(1, int(_left_s(deadline) * 1000)))

        def poll() -> None:
            self._land(waiting, sink, n)
            if idle is not None:
                idle()

        done = self.client.fetch(endpoint, nixl_request, _no_chunks, _left_s(deadline), poll)
        while waiting and time.monotonic() < deadline:  # FetchDone: every write is DONE at the sender
            self._land(waiting, sink, n)
        if waiting:
            raise FetchFailed("protocol", f"{len(waiting)} NIXL notifications missing after FetchDone")
        return done

    def _land(self, waiting: dict, sink: KvSink, n: int) -> None:
        for messages in self.agent.notifs().values():
            for message in messages:
                what, layer, i = waiting.pop(bytes(message), (None, 0, 0))
                if what == "e":
                    sink.put("e", layer, self.e_stage[i * n:(i + 1) * n])  # [n, hidden]
                elif what == "kv":
                    sink.landed("k", layer)
                    sink.landed("v", layer)
                # anything else: a late notification of an abandoned fetch

    def _startup_offer(self) -> Optional[NixlPoolOffer]:
        """What ``prepare`` sends: the sender adds our agent on receipt, before any import (in
        the first fetch that metadata exchange took 1.3 s on an H100, docs/BENCHMARKS.md)."""
        return self._offer(E_ROWS)

    def _offer(self, e_rows: int) -> Optional[NixlPoolOffer]:
        if self.unavailable:
            return None
        if self.offer is not None and self.e_stage.shape[0] >= e_rows:
            return self.offer
        rows = max(e_rows, 2 * (0 if self.e_stage is None else self.e_stage.shape[0]), 1)
        self._revoke()
        try:
            self.offer = self._register(rows)
        except PlaneUnavailable as exc:
            self.unavailable = True
            logger.warning("droidspeak: data_plane nixl unavailable, using zmq: %s", exc)
        return self.offer

    def _register(self, e_rows: int) -> NixlPoolOffer:
        pool, layers = self.kv_pool, range(self.num_layers)
        k, v = [pool.get_key_buffer(l) for l in layers], [pool.get_value_buffer(l) for l in layers]
        if not all(t.is_contiguous() for t in k + v):
            raise PlaneUnavailable("the KV pool's buffers are not contiguous")
        agent = self.agent_factory(f"ds-recv-{self.model}-{uuid.uuid4().hex[:12]}")
        self.e_stage = torch.empty(e_rows, self.hidden_size, dtype=self.e_dtype, device=k[0].device)
        agent.register(k + v + [self.e_stage])
        self.agent = agent
        mem_type, device_id = mem_of(k[0])
        name = lambda dtype: str(dtype).removeprefix("torch.")  # noqa: E731
        return NixlPoolOffer(
            agent.name, self.model, agent.metadata(), mem_type, device_id, name(k[0].dtype), name(self.e_dtype),
            self.num_layers, k[0].shape[0], k[0][0].numel() * k[0].element_size(),
            tuple(t.data_ptr() for t in k), tuple(t.data_ptr() for t in v), self.e_stage.data_ptr(),
            self.e_stage.numel() * self.e_stage.element_size(), self.hidden_size * self.e_stage.element_size())

    def _revoke(self, renew: bool = False) -> None:
        """Deregister and drop our agent: no write of an abandoned fetch can land any more;
        ``renew``: register a new one at once (the next fetch then finds it ready)."""
        rows = E_ROWS if self.e_stage is None else self.e_stage.shape[0]
        if self.agent is not None:
            self.agent.close()
            self.num_revoked += 1
        self.agent, self.offer = None, None
        self.offered.clear()
        if renew:
            self._offer(rows)

    def close(self) -> None:
        self._revoke()


def _no_chunks(chunk) -> None:
    raise ImportFailed("protocol", f"a {chunk.what} chunk over ZMQ on the nixl plane")


def _left_s(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.001)
