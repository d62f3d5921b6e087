"""Sender side of the cuda_ipc plane: keep receivers' pool offers, copy K/V into their pools.

"Sender push": the receiver allocates slots, names them in its FetchRequest (``dst_slots``)
with a deadline, and waits; the sender, on its scheduler thread (where its own slots cannot
be evicted during the tick), writes K/V straight into the receiver's offered buffers and
answers FetchDone. No cross-process lock: the deadline is the contract. The receiver frees
its slots only once the deadline has passed without a FetchDone, so the sender starts the
copy only while ``now < deadline - margin_s`` (``DEADLINE_MARGIN_S``, the budget for the
copy itself) and reports a copy that ended late. E of the request's E layers goes the same
way into the receiver's E staging area where its offer has one that takes them all (else as
LayerChunks on the fetch socket, before the copy).

    check, before anything is sent          answer when it fails
    dst_slots (one per token), a deadline   bad_request
    an offer of receiver_model == session   FetchError no_offer (the receiver re-offers)
    offer's GPU UUID == this pool's          ipc_unavailable (the receiver uses ZMQ for us)
    the offer's buffers open                 ipc_unavailable
    layers, K/V shapes and dtype fit         bad_request
    every dst slot < the offered rows        bad_request (never a write out of range)
    deadline not past, not absurdly far      deadline | bad_request (clocks not shared)

Offers are kept by offer id (several replicas of one receiver model each have their own),
at most ``max_offers``, least recently used dropped first together with its opened
buffers (a restarted receiver's stale offer ages out this way); a new offer of a pool
(``pool_id``: its E staging area grew) replaces that pool's older ones at once. With ``pacing``
(transfer/pacing.py: the sender's ``throttle_gbps``, or the request's ``link_gbps`` where
``allow_request_throttle`` permits it) each layer's copy waits for its K+V bytes, so the
copy takes as long as on that link (the bandwidth sweep). Imports no SGLang.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Callable, Iterator, Optional

import torch

from sglang_droidspeak.transfer.planes.cuda_ipc.backend import IpcUnavailable, now_ms
from sglang_droidspeak.transfer.frames import FetchDone, FetchError, FetchRequest, Message
from sglang_droidspeak.transfer.pacing import PacerPolicy
from sglang_droidspeak.transfer.planes.base import PlaneSender
from sglang_droidspeak.transfer.planes.chunks import e_chunks
from sglang_droidspeak.transfer.planes.cuda_ipc.frames import IpcPoolOffer
from sglang_droidspeak.transfer.schema import DTYPES

DEADLINE_MARGIN_S = 0.25
MAX_DEADLINE_AHEAD_S = 3600.0
MAX_OFFERS = 16
SLOW_COPY_MS = 100
logger = logging.getLogger(__name__)


class IpcExporter(PlaneSender):
    """Answers the cuda_ipc part of FetchRequests for this server's ``kv_pool``: E as
    LayerChunks, K/V copied into the receiver's pool.

    ``backend`` has ``device_uuid(device)`` and ``open_pool(offer, device)`` (cuda_ipc.CudaIpc
    on a GPU; a CPU stand-in in tests).
    """

    def __init__(self, backend: Any, kv_pool: Any, margin_s: float = DEADLINE_MARGIN_S,
                 clock_ms: Callable[[], int] = now_ms, max_offers: int = MAX_OFFERS,
                 pacing: Optional[PacerPolicy] = None):
        self.backend, self.kv_pool, self.clock_ms = backend, kv_pool, clock_ms
        self.pacing = pacing if pacing is not None else PacerPolicy()
        self.margin_ms = int(margin_s * 1000)
        self.max_offers = max_offers
        self.offers: OrderedDict[str, IpcPoolOffer] = OrderedDict()  # offer id -> offer, LRU first
        self._opened: dict[str, tuple] = {}  # offer id -> (K buffers, V buffers, E staging area or None)
        self._uuid: Optional[str] = None
        self.num_late = 0
        self.num_bytes_out = 0  # K/V bytes copied into receivers' pools (bytes_moved{out})

    controls = (IpcPoolOffer,)

    def accept(self, offer: IpcPoolOffer) -> None:
        known = self.offers.get(offer.offer_id)
        if known is not None and known != offer:
            logger.warning("droidspeak: ignoring a different IPC offer under a known id from %s",
                           offer.receiver_model)
            return
        for older in [o.offer_id for o in self.offers.values() if offer.pool_id and o.pool_id == offer.pool_id
                      and o.offer_id != offer.offer_id]:  # the pool offered again (its E area grew)
            self.offers.pop(older)
            self._opened.pop(older, None)  # unmaps its buffers, so the receiver's old area is freed
        self.offers[offer.offer_id] = offer
        self.offers.move_to_end(offer.offer_id)
        while len(self.offers) > self.max_offers:
            stale, _ = self.offers.popitem(last=False)
            self._opened.pop(stale, None)  # unmaps its buffers
        self._open_early(offer)

    def _open_early(self, offer: IpcPoolOffer) -> None:
        """Map the offered pool now, not in the first fetch's ``refusal``: the receiver offers
        when it starts (receiver.prepare). An offer that cannot be opened here (another GPU)
        is kept; ``refusal`` opens it again and answers ipc_unavailable."""
        if not self._same_gpu(offer):
            return
        try:
            self._buffers(offer)
        except IpcUnavailable as exc:
            logger.info("droidspeak: IPC offer from %s not opened yet: %s", offer.receiver_model, exc)

    def _same_gpu(self, offer: IpcPoolOffer) -> bool:
        """The offered pool is on this sender's GPU (its UUID, read once)."""
        if self._uuid is None:
            self._uuid = self.backend.device_uuid(self.kv_pool.device)
        return bool(self._uuid) and offer.device_uuid == self._uuid

    def refusal(self, request: FetchRequest) -> Optional[FetchError]:
        """Why ``request`` cannot be copied over IPC now (checked before anything is sent)."""
        rid, offer = request.request_id, self.offers.get(request.session)
        if len(request.dst_slots) != len(request.token_ids) or request.deadline_ms == 0:
            return FetchError(rid, "bad_request", "the cuda_ipc plane needs one dst slot per token and a deadline")
        if offer is None or offer.receiver_model != request.receiver_model:
            return FetchError(rid, "no_offer", f"no IPC offer {request.session[:12]} from {request.receiver_model}")
        if not self._same_gpu(offer):
            return FetchError(rid, "ipc_unavailable", f"offer is on GPU {offer.device_uuid[:40]}, "
                              f"this sender on {self._uuid[:40] or self.kv_pool.device}")
        self.offers.move_to_end(offer.offer_id)
        try:
            self._buffers(offer)
        except IpcUnavailable as exc:
            return FetchError(rid, "ipc_unavailable", str(exc)[:200])
        return self._fit(request, offer) or self._deadline(request)

    def _buffers(self, offer: IpcPoolOffer) -> tuple[list, list, Optional[torch.Tensor]]:
        if offer.offer_id not in self._opened:
            self._opened[offer.offer_id] = self.backend.open_pool(offer, self.kv_pool.device)
        return self._opened[offer.offer_id]

    def _fit(self, request: FetchRequest, offer: IpcPoolOffer) -> Optional[FetchError]:
        rid = request.request_id
        if any(layer >= offer.num_layers for layer in request.reused_layers):
            return FetchError(rid, "bad_request", f"layer out of the offer's range [0, {offer.num_layers})")
        src_k, src_v = self.kv_pool.get_key_buffer(0), self.kv_pool.get_value_buffer(0)
        if (tuple(src_k.shape[1:]), tuple(src_v.shape[1:])) != (offer.k_shape[1:], offer.v_shape[1:]) \
                or src_k.dtype != DTYPES[offer.dtype]:
            return FetchError(rid, "bad_request", f"offered K/V {offer.k_shape[1:]}/{offer.v_shape[1:]} "
                              f"{offer.dtype} do not fit {tuple(src_k.shape[1:])} {src_k.dtype}")
        num_rows = min(offer.k_shape[0], offer.v_shape[0])
        if request.dst_slots and max(request.dst_slots) >= num_rows:
            return FetchError(rid, "bad_request", f"dst slot {max(request.dst_slots)} out of range [0, {num_rows})")
        return None

    def _deadline(self, request: FetchRequest) -> Optional[FetchError]:
        left_ms = request.deadline_ms - self.clock_ms()
        if left_ms > MAX_DEADLINE_AHEAD_S * 1000:
            return FetchError(request.request_id, "bad_request", f"deadline {left_ms} ms ahead: clocks not shared")
        if left_ms <= self.margin_ms:
            return FetchError(request.request_id, "deadline", f"{left_ms} ms left, copy needs {self.margin_ms}")
        return None

    def export(self, request: FetchRequest, slots: torch.Tensor, e: dict) -> Iterator[Message]:
        """E into the receiver's staging area where it fits (else as chunks), then the K/V
        copy; FetchDone(number of E chunks: 0 when staged) or the copy's error."""
        staged = self._stage_fits(request, e)
        num_chunks = 0
        for chunk in () if staged else e_chunks(request, e):
            yield chunk
            num_chunks += 1
        yield self.copy(request, slots, e if staged else None) or FetchDone(request.request_id, num_chunks)

    def _stage_fits(self, request: FetchRequest, e: dict) -> bool:
        """The offer's E staging area takes every E layer of ``request`` (rows and width)."""
        stage = self._buffers(self.offers[request.session])[2]
        if not request.e_layers or stage is None:
            return False
        n = len(request.token_ids)
        return stage.shape[0] >= n * len(request.e_layers) and all(
            tuple(e[layer].shape) == (n, stage.shape[1]) for layer in request.e_layers)

    def copy(self, request: FetchRequest, src_slots: torch.Tensor, e: Optional[dict] = None) -> Optional[FetchError]:
        """Write E (``e``, where given: into the staging area, E layer i at rows [i*n, (i+1)*n))
        and K/V of ``reused_layers`` at ``src_slots`` [n] into the receiver's ``dst_slots``.

        Call after ``refusal`` returned None; the deadline is checked again (E may have taken
        a while). Returns a FetchError instead of copying when it has passed.
        """
        error = self._deadline(request)
        if error is not None:
            return error
        began_ms = self.clock_ms()
        k_buffers, v_buffers, stage = self._buffers(self.offers[request.session])
        n = len(request.token_ids)
        for i, layer in enumerate(request.e_layers if e is not None else ()):
            stage[i * n:(i + 1) * n] = e[layer].to(device=stage.device, dtype=stage.dtype)  # [n, hidden]
            self.num_bytes_out += e[layer].numel() * stage.element_size()
        device = self.kv_pool.device
        src = src_slots.to(device=device, dtype=torch.int64)  # [n]
        dst = torch.tensor(request.dst_slots, dtype=torch.int64).to(device)  # [n]
        pacer = self.pacing.for_request(request.link_gbps)
        for layer in request.reused_layers:
            k, v = self.kv_pool.get_key_buffer(layer)[src], self.kv_pool.get_value_buffer(layer)[src]  # [n, heads, dim]
            num_bytes = k.numel() * k.element_size() + v.numel() * v.element_size()
            if pacer is not None:
                pacer.consume(num_bytes)
            k_buffers[layer][dst], v_buffers[layer][dst] = k, v
            self.num_bytes_out += num_bytes
        if torch.device(device).type == "cuda":
            torch.cuda.current_stream(device).synchronize()
        ended_ms = self.clock_ms()
        if ended_ms - began_ms > SLOW_COPY_MS:
            logger.warning("droidspeak: IPC copy of %d layers x %d tokens for %s took %d ms (launch and sync)",
                           len(request.reused_layers), len(src_slots), request.receiver_model, ended_ms - began_ms)
        late_ms = ended_ms - request.deadline_ms
        if late_ms >= 0:
            self.num_late += 1
            logger.error("droidspeak: IPC copy for %s ended %d ms past its deadline (raise the margin)",
                         request.receiver_model, late_ms)
            return FetchError(request.request_id, "deadline", f"copy ended {late_ms} ms late")
        return None
