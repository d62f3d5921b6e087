"""Receiver side of the nccl plane: one pair channel per sender, E and K/V received on it.

    NcclFetcher.fetch(endpoint, request, receiver, timeout_s, idle)
    peer state                           this fetch
    refused (nccl_unavailable)           ZMQ, for good (zmq plane, same GPU, rows differ)
    no channel (or re-offer time came)   host a TCPStore + our end, NcclPairOffer, wait for
                                         the answer; then wait up to OPEN_SHARE of the budget
                                         for the channel to open: open -> the channel,
                                         still opening -> ZMQ (it keeps opening; later
                                         fetches use ZMQ without waiting until it is open),
                                         failed -> torn down, ZMQ, no re-offer for REOFFER_S
    open channel                         FetchRequest(session=channel id); on NcclSendStart post
                                         the recvs (at most ``window`` in flight) into
                                         scratch buffers and scatter each into our slots
                                         (``k_cache[slots] = buf``), until the deadline;
                                         recvs and scatters go on the import's copy stream,
                                         so (pipelined) they never queue behind the
                                         recompute on the compute stream, and a complete
                                         E_s launches group s at once
    FetchError no_channel                tear down, re-offer once (refusals precede any send)
    any channel failure or timeout       tear down; FetchFailed: the importer frees the
                                         slots and the request prefills normally

The fetch deadline bounds every wait (answer, open, each recv); the scheduler never
waits on the channel longer than the fetch timeout. Imports no SGLang (the backend does).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections import deque
from typing import Any, Callable, Optional

import torch

from sglang_droidspeak.transfer.errors import FetchFailed, ImportFailed
from sglang_droidspeak.transfer.fetch_client import FetchClient
from sglang_droidspeak.transfer.frames import FetchDone, FetchError, FetchRequest
from sglang_droidspeak.transfer.planes.base import PlaneReceiver
from sglang_droidspeak.transfer.planes.nccl.channel import ChannelError, PairChannel, wait_all
from sglang_droidspeak.transfer.planes.nccl.frames import NcclPairOffer, NcclSendStart, tensor_order
from sglang_droidspeak.transfer.schema import DTYPES

OPEN_SHARE = 0.5  # of the first fetch's budget spent waiting for the channel to open
REOFFER_S = 30.0
REFUSALS = ("evicted", "fingerprint_mismatch", "bad_request", "busy")  # answered before any send
WINDOW = 4  # recvs in flight (each holds one scratch [num_tokens, ...] buffer)
logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class NcclLayout:
    """What the sender must match, sent in the offer."""

    model: str
    store_host: str
    dtype: str  # the KV pool's
    kv_row: tuple[int, int]  # [kv_heads, head_dim]
    hidden_size: int
    e_dtype: str
    device: Any


class NcclFetcher(PlaneReceiver):
    def __init__(self, backend: Any, client: FetchClient, layout: NcclLayout, window: int = WINDOW):
        self.backend, self.client, self.layout, self.window = backend, client, layout, window
        self.channels: dict[str, PairChannel] = {}  # endpoint -> our end (open or opening)
        self.zmq_peers: set[str] = set()
        self._reoffer_at: dict[str, float] = {}  # endpoint -> monotonic time

    def fetch(self, endpoint: str, request: FetchRequest, receiver: Any, timeout_s: float,
              idle: Optional[Callable[[], None]] = None) -> FetchDone:
        deadline = time.monotonic() + timeout_s
        for attempt in range(2):
            channel = self._channel(endpoint, deadline, timeout_s, idle)
            if channel is None:
                return self.client.fetch(endpoint, request, receiver, _left_s(deadline), idle)
            try:
                return self._fetch_on(channel, endpoint, request, receiver, deadline, idle)
            except FetchFailed as exc:
                if exc.code not in ("no_channel", "nccl_unavailable"):
                    raise
                self._drop(endpoint)
                if exc.code == "nccl_unavailable":
                    self.zmq_peers.add(endpoint)  # the sender left the nccl plane
                if exc.code == "nccl_unavailable" or attempt == 1:
                    return self.client.fetch(endpoint, request, receiver, _left_s(deadline), idle)
        raise AssertionError("unreachable")

    def _fetch_on(self, channel: PairChannel, endpoint: str, request: FetchRequest, receiver: Any,
                  deadline: float, idle) -> FetchDone:
        nccl_request = dataclasses.replace(request, plane="nccl", session=channel.channel_id)

        def on_start(start: NcclSendStart) -> None:
            self._receive(channel, nccl_request, start, receiver, deadline, idle)

        try:
            return self.client.fetch(endpoint, nccl_request, _no_chunks, _left_s(deadline), idle, on_start)
        except ChannelError as exc:
            self._drop(endpoint)
            raise FetchFailed("timeout" if "deadline" in str(exc) else "nccl_error", str(exc)) from exc
        except FetchFailed as exc:
            if exc.code not in REFUSALS:
                self._drop(endpoint)  # the channel may hold unmatched ops
            raise
        except BaseException:
            self._drop(endpoint)
            raise

    def _receive(self, channel: PairChannel, request: FetchRequest, start: NcclSendStart, receiver: Any,
                 deadline: float, idle) -> None:
        order = tensor_order(request)
        if start.channel_id != channel.channel_id or start.num_tensors != len(order):
            raise ImportFailed("protocol", f"sender announces {start.num_tensors} tensors on "
                               f"{start.channel_id[:12]}, we expect {len(order)}")
        in_flight: deque = deque()
        for what, layer in order:
            with receiver.streams.copying():  # the channel stream then waits for it, not the recompute
                buf = self._scratch(what, len(request.token_ids))
                in_flight.append((what, layer, buf, channel.recv(buf)))
            if len(in_flight) > self.window:
                self._finish(in_flight.popleft(), receiver, deadline, idle)
        while in_flight:
            self._finish(in_flight.popleft(), receiver, deadline, idle)

    def _scratch(self, what: str, num_tokens: int) -> torch.Tensor:
        layout = self.layout
        if what == "e":
            return torch.empty(num_tokens, layout.hidden_size, dtype=DTYPES[layout.e_dtype], device=layout.device)
        return torch.empty(num_tokens, *layout.kv_row, dtype=DTYPES[layout.dtype], device=layout.device)

    @staticmethod
    def _finish(item, receiver: Any, deadline: float, idle) -> None:
        what, layer, buf, op = item
        wait_all([op], deadline, idle)
        receiver.put(what, layer, buf)  # [num_tokens, ...] -> our E / our slots

    def _channel(self, endpoint: str, deadline: float, timeout_s: float, idle) -> Optional[PairChannel]:
        """The open channel to ``endpoint``, or None: use ZMQ for this fetch."""
        channel = self.channels.get(endpoint)
        if channel is not None and channel.error is not None:
            logger.warning("droidspeak: NCCL channel to %s failed: %s; ZMQ for %.0f s", endpoint,
                           channel.error, REOFFER_S)
            self._drop(endpoint)
            self._reoffer_at[endpoint] = time.monotonic() + REOFFER_S
            return None
        if channel is not None and not channel.is_open:
            return None  # still opening since an earlier fetch: do not wait again
        if channel is None:
            if endpoint in self.zmq_peers or time.monotonic() < self._reoffer_at.get(endpoint, 0.0):
                return None
            channel = self._offer(endpoint, deadline, idle)
            if channel is None:
                return None
        try:
            channel.wait_open(min(deadline, time.monotonic() + OPEN_SHARE * timeout_s), idle)
        except ChannelError:
            return None  # still opening (or just failed: seen on the next fetch)
        return channel

    def _offer(self, endpoint: str, deadline: float, idle) -> Optional[PairChannel]:
        layout = self.layout
        channel = self.backend.host(uuid.uuid4().hex, layout.store_host, layout.device)
        offer = NcclPairOffer(channel.channel_id, layout.model, layout.store_host, channel.store_port, 2, 0,
                              layout.dtype, layout.kv_row, layout.hidden_size, layout.e_dtype,
                              self.backend.device_uuid(layout.device))
        channel.begin_open()
        answer = self.client.ask(endpoint, offer, _left_s(deadline), idle)
        if answer is None:
            channel.close()
            raise FetchFailed("timeout", f"{endpoint} did not answer our NCCL pair offer")
        if isinstance(answer, FetchError):
            channel.close()
            logger.warning("droidspeak: %s refused an NCCL channel (%s); using ZMQ for it", endpoint, answer.message)
            self.zmq_peers.add(endpoint)
            return None
        self.channels[endpoint] = channel
        return channel

    def _drop(self, endpoint: str) -> None:
        channel = self.channels.pop(endpoint, None)
        if channel is not None:
            channel.close()

    def close(self) -> None:
        for endpoint in list(self.channels):
            self._drop(endpoint)


def _no_chunks(chunk) -> None:
    raise ImportFailed("protocol", f"a {chunk.what} chunk over ZMQ on the nccl plane")


def _left_s(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.001)
