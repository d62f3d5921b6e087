"""Sender side of the nccl plane: join receivers' pair channels, send E and K/V on them.

    step (scheduler thread)             on failure
    accept(NcclPairOffer)               FetchError nccl_unavailable (same GPU: use cuda_ipc;
      -> NcclPairAccept, join begins      K/V row, dtype or hidden size differ; cannot join)
         in a background thread
    refusal(FetchRequest)               FetchError no_channel (unknown / failed / not open
      (before anything is sent)           within timeout_s: the receiver re-offers)
    send(request, slots, e)             FetchError timeout: the channel is torn down (the
      E of each e_layer, then K and V     receiver's next fetch re-offers)
      of each reused layer, each
      gathered into a contiguous
      [num_tokens, ...] buffer

``send`` runs on the scheduler thread, so the prefix's slots cannot be evicted while they
are gathered; it keeps at most ``window`` sends in flight and returns once all are done,
or at ``timeout_s`` (the scheduler never waits longer). Channels are kept by id, at most
``max_channels``, least recently used closed first. Imports no SGLang (the backend does).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from typing import Any, Iterator, Optional

import torch

from sglang_droidspeak.transfer.frames import FetchDone, FetchError, FetchRequest, Message
from sglang_droidspeak.transfer.planes.base import PlaneSender
from sglang_droidspeak.transfer.planes.nccl.channel import ChannelError, PairChannel, wait_all
from sglang_droidspeak.transfer.planes.nccl.frames import NcclPairAccept, NcclPairOffer, NcclSendStart, tensor_order
from sglang_droidspeak.transfer.schema import DTYPES

MAX_CHANNELS = 16
WINDOW = 4  # sends in flight (each holds one gathered [num_tokens, ...] buffer)
logger = logging.getLogger(__name__)


class NcclExporter(PlaneSender):
    """Answers the nccl part of offers and FetchRequests for this server's ``kv_pool``.

    ``backend`` has ``device_uuid(device)`` and ``join(channel_id, host, port, rank,
    device)`` (nccl_channel.NcclPairBackend on a GPU; pair_channel.GlooPairBackend on the CPU).
    """

    def __init__(self, backend: Any, kv_pool: Any, model: str, hidden_size: int, timeout_s: float,
                 window: int = WINDOW, max_channels: int = MAX_CHANNELS):
        self.backend, self.kv_pool, self.model = backend, kv_pool, model
        self.hidden_size, self.timeout_s, self.window, self.max_channels = hidden_size, timeout_s, window, max_channels
        self.channels: OrderedDict[str, PairChannel] = OrderedDict()  # channel id -> our end, LRU first
        self.e_dtypes: dict[str, str] = {}  # channel id -> the receiver's E dtype
        self._uuid: Optional[str] = None
        self.num_bytes_out = 0  # E and K/V bytes sent over pair channels (bytes_moved{out})

    controls = (NcclPairOffer,)

    def accept(self, offer: NcclPairOffer):
        """NcclPairAccept once joining has begun, else FetchError(nccl_unavailable)."""
        why = self._misfit(offer)
        if why is None and offer.channel_id in self.channels:
            why = "channel id already in use"
        if why is not None:
            return FetchError(offer.channel_id, "nccl_unavailable", why[:200])
        try:
            channel = self.backend.join(offer.channel_id, offer.store_host, offer.store_port, offer.sender_rank,
                                        self.kv_pool.device)
        except Exception as exc:  # noqa: BLE001 - any backend failure is a refusal
            return FetchError(offer.channel_id, "nccl_unavailable", f"cannot join: {exc}"[:200])
        channel.begin_open()
        self.channels[offer.channel_id], self.e_dtypes[offer.channel_id] = channel, offer.e_dtype
        while len(self.channels) > self.max_channels:
            self._drop(next(iter(self.channels)))
        return NcclPairAccept(offer.channel_id, self.model, self._device_uuid())

    def _device_uuid(self) -> str:
        if self._uuid is None:
            self._uuid = self.backend.device_uuid(self.kv_pool.device)
        return self._uuid

    def _misfit(self, offer: NcclPairOffer) -> Optional[str]:
        k_cache = self.kv_pool.get_key_buffer(0)  # [slots, kv_heads, head_dim]
        if offer.device_uuid and offer.device_uuid == self._device_uuid():
            return f"same GPU {offer.device_uuid[:40]}: use data_plane cuda_ipc"
        if offer.kv_row != tuple(k_cache.shape[1:]) or DTYPES[offer.dtype] != k_cache.dtype:
            return f"K/V rows {offer.kv_row} {offer.dtype} != ours {tuple(k_cache.shape[1:])} {k_cache.dtype}"
        if offer.hidden_size != self.hidden_size:
            return f"hidden size {offer.hidden_size} != ours {self.hidden_size}"
        return None

    def refusal(self, request: FetchRequest) -> Optional[FetchError]:
        """Why ``request`` cannot be sent on its channel now (checked before anything is sent)."""
        channel = self.channels.get(request.session)
        if channel is not None and not channel.is_open:
            try:
                channel.wait_open(time.monotonic() + self.timeout_s)  # the receiver's end is open
            except ChannelError:
                self._drop(request.session)
                channel = None
        if channel is None:
            return FetchError(request.request_id, "no_channel", f"no open channel {request.session[:12]}")
        self.channels.move_to_end(request.session)
        return None

    def export(self, request: FetchRequest, slots: torch.Tensor, e: dict) -> Iterator[Message]:
        """NcclSendStart, the sends, then FetchDone(0) or the send's FetchError."""
        yield NcclSendStart(request.request_id, request.session, len(tensor_order(request)))
        yield self.send(request, slots, e) or FetchDone(request.request_id, 0)

    def send(self, request: FetchRequest, slots: torch.Tensor, e: dict) -> Optional[FetchError]:
        """Send E (``e``: layer -> [num_tokens, hidden]) then K/V at ``slots`` [num_tokens]."""
        channel, e_dtype = self.channels[request.session], self.e_dtypes[request.session]
        deadline = time.monotonic() + self.timeout_s
        src = slots.to(device=self.kv_pool.device, dtype=torch.int64)  # [num_tokens]
        in_flight: deque = deque()
        try:
            for what, layer in tensor_order(request):
                tensor = self._gather(what, layer, src, e, e_dtype)
                in_flight.append(channel.send(tensor))
                self.num_bytes_out += tensor.numel() * tensor.element_size()
                if len(in_flight) > self.window:
                    wait_all([in_flight.popleft()], deadline)
            wait_all(in_flight, deadline)
        except ChannelError as exc:
            logger.warning("droidspeak: NCCL send to %s failed, closing the channel: %s", request.receiver_model, exc)
            self._drop(request.session)
            return FetchError(request.request_id, "timeout", str(exc)[:200])
        return None

    def _gather(self, what: str, layer: int, src: torch.Tensor, e: dict, e_dtype: str) -> torch.Tensor:
        if what == "e":
            return e[layer].to(DTYPES[e_dtype]).contiguous()  # [num_tokens, hidden]
        cache = self.kv_pool.get_key_buffer(layer) if what == "k" else self.kv_pool.get_value_buffer(layer)
        return cache[src].contiguous()  # [num_tokens, kv_heads, head_dim]

    def _drop(self, channel_id: str) -> None:
        channel = self.channels.pop(channel_id, None)
        self.e_dtypes.pop(channel_id, None)
        if channel is not None:
            channel.close()

    def close(self) -> None:
        for channel_id in list(self.channels):
            self._drop(channel_id)
