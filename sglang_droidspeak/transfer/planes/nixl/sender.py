"""Sender side of the nixl plane: keep receivers' pool offers, WRITE E and K/V into them.

    step (scheduler thread)           on failure
    accept(NixlPoolOffer)             rows, dtype or layers differ, or its metadata does not
      add the receiver's agent          load: remembered, its requests get nixl_unavailable
      (our pool registered once)        (the receiver uses zmq for us)
    refusal(FetchRequest)             no_nixl_offer (unknown session: the receiver re-offers);
      (before anything moves)           bad_request (slots, layers or E beyond the offer)
    export(request, slots, e)         FetchError nixl_error: a write failed or did not finish
      E of each e_layer (cast to the    within the fetch budget; the offer is dropped
      offer's E dtype, staged in a
      registered buffer), then K and V of each reused layer: one WRITE per tensor
      group, each with its notification (``<request id>:e:<layer>`` / ``:kv:<layer>``),
      all posted at once; FetchDone(0) once every write is DONE

K/V rows go straight from our slots to the receiver's ``dst_slots``: one descriptor per
run of consecutive slots on both sides. The scheduler waits at most the fetch budget.
Imports no SGLang; NIXL only through agent.py.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from sglang_droidspeak.transfer.frames import FetchDone, FetchError, FetchRequest, Message
from sglang_droidspeak.transfer.planes.base import PlaneSender
from sglang_droidspeak.transfer.planes.nixl.agent import Agent, mem_of
from sglang_droidspeak.transfer.planes.nixl.frames import NixlPoolOffer
from sglang_droidspeak.transfer.schema import DTYPES

MAX_OFFERS = 16
logger = logging.getLogger(__name__)


def runs(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(src starts, dst starts, lengths) of the maximal runs where both slot lists step by 1."""
    breaks = np.nonzero((np.diff(src) != 1) | (np.diff(dst) != 1))[0] + 1
    starts, ends = np.concatenate(([0], breaks)), np.concatenate((breaks, [len(src)]))
    return src[starts], dst[starts], ends - starts


def descs(base: int, starts: np.ndarray, lengths: np.ndarray, row_bytes: int, device_id: int) -> np.ndarray:
    """[k, 3] (address, bytes, device) of row runs in a buffer at ``base``."""
    return np.stack([base + starts * row_bytes, lengths * row_bytes,
                     np.full_like(starts, device_id)], axis=1).astype(np.uint64)


class NixlExporter(PlaneSender):
    controls = (NixlPoolOffer,)

    def __init__(self, kv_pool: Any, model: str, num_layers: int, timeout_s: float,
                 agent_factory: Callable[[str], Any] = Agent, max_offers: int = MAX_OFFERS):
        self.kv_pool, self.model, self.num_layers, self.timeout_s = kv_pool, model, num_layers, timeout_s
        self.agent_factory, self.max_offers = agent_factory, max_offers
        self.agent: Any = None
        self.offers: OrderedDict[str, NixlPoolOffer] = OrderedDict()  # session -> offer, LRU first
        self.refused: OrderedDict[str, str] = OrderedDict()  # session -> why
        self.e_stage: Optional[torch.Tensor] = None  # [rows, hidden] registered staging for E
        k = kv_pool.get_key_buffer(0)  # [slots, kv_heads, head_dim]
        self.row_bytes, self.dtype = k[0].numel() * k.element_size(), k.dtype
        self.mem_type, self.device_id = mem_of(k)

    def _own(self) -> Any:
        if self.agent is None:
            agent = self.agent_factory(f"ds-send-{self.model}-{uuid.uuid4().hex[:12]}")
            pool = self.kv_pool
            agent.register([pool.get_key_buffer(l) for l in range(self.num_layers)]
                           + [pool.get_value_buffer(l) for l in range(self.num_layers)])
            self.agent = agent
        return self.agent

    def accept(self, offer: NixlPoolOffer) -> None:
        why = None
        if offer.row_bytes != self.row_bytes or DTYPES[offer.dtype] != self.dtype:
            why = f"K/V rows of {offer.row_bytes} B {offer.dtype} != ours {self.row_bytes} B {self.dtype}"
        elif offer.num_layers != self.num_layers:
            why = f"{offer.num_layers} layers != our {self.num_layers}"
        else:
            try:
                if self._own().add_peer(offer.metadata) != offer.session:
                    why = "the metadata names another agent than the offer's session"
            except Exception as exc:  # noqa: BLE001 - no NIXL, bad metadata: a refusal
                why = f"cannot add the receiver's agent: {exc}"
        if why is not None:
            logger.warning("droidspeak: NIXL offer from %s refused: %s", offer.receiver_model, why)
            self.refused[offer.session] = why[:200]
            while len(self.refused) > self.max_offers:
                self.refused.popitem(last=False)
            return None
        self.offers[offer.session] = offer
        self.offers.move_to_end(offer.session)
        while len(self.offers) > self.max_offers:
            self._drop(next(iter(self.offers)))
        return None

    def refusal(self, request: FetchRequest) -> Optional[FetchError]:
        rid, offer, n = request.request_id, self.offers.get(request.session), len(request.token_ids)
        if offer is None:
            if request.session in self.refused:
                return FetchError(rid, "nixl_unavailable", self.refused[request.session])
            return FetchError(rid, "no_nixl_offer", f"no NIXL offer {request.session[:40]}")
        if len(request.dst_slots) != n or (n and max(request.dst_slots) >= offer.num_rows):
            return FetchError(rid, "bad_request", f"dst_slots must be {n} slots below {offer.num_rows}")
        if n * len(request.e_layers) * offer.hidden_bytes > offer.e_bytes:
            return FetchError(rid, "bad_request", f"E of {n} tokens x {len(request.e_layers)} layers exceeds "
                              f"the offered {offer.e_bytes} B")
        self.offers.move_to_end(request.session)
        return None

    def export(self, request: FetchRequest, slots: torch.Tensor, e: dict) -> Iterator[Message]:
        offer, rid = self.offers[request.session], request.request_id
        budget_s = request.deadline_ms / 1000 if request.deadline_ms else self.timeout_s
        deadline = time.monotonic() + min(self.timeout_s, budget_s)
        handles: list = []
        try:
            self._post_e(request, offer, e, handles)
            self._post_kv(request, offer, slots, handles)
            self._wait(handles, deadline)
        except Exception as exc:  # noqa: BLE001 - any NIXL failure ends this fetch only
            logger.warning("droidspeak: NIXL write to %s failed, dropping its offer: %s", offer.receiver_model, exc)
            self._drop(request.session)
            yield FetchError(rid, "nixl_error", str(exc)[:200])
            return
        finally:
            for handle in handles:
                if self.agent is not None:
                    self.agent.release(handle)
        yield FetchDone(rid, 0)

    def _post_e(self, request: FetchRequest, offer: NixlPoolOffer, e: dict, handles: list) -> None:
        if not request.e_layers:
            return
        n, agent = len(request.token_ids), self._own()
        stage = self._stage(n * len(request.e_layers), e[request.e_layers[0]].shape[1], DTYPES[offer.e_dtype])
        for i, layer in enumerate(request.e_layers):
            stage[i * n:(i + 1) * n] = e[layer]  # [n, hidden], cast to the receiver's E dtype
        if stage.is_cuda:
            torch.cuda.current_stream(stage.device).synchronize()
        row = offer.hidden_bytes
        for i, layer in enumerate(request.e_layers):
            local = np.array([[stage.data_ptr() + i * n * row, n * row, self.device_id]], dtype=np.uint64)
            remote = np.array([[offer.e_addr + i * n * row, n * row, offer.device_id]], dtype=np.uint64)
            handles.append(agent.write(local, self.mem_type, remote, offer.mem_type, offer.session,
                                       f"{request.request_id}:e:{layer}".encode()))
        self.num_bytes_out += n * len(request.e_layers) * row

    def _post_kv(self, request: FetchRequest, offer: NixlPoolOffer, slots: torch.Tensor, handles: list) -> None:
        src_starts, dst_starts, lengths = runs(slots.cpu().numpy().astype(np.int64),
                                               np.array(request.dst_slots, dtype=np.int64))
        agent, rb, pool = self._own(), self.row_bytes, self.kv_pool
        for layer in request.reused_layers:
            local = np.concatenate([descs(buf.data_ptr(), src_starts, lengths, rb, self.device_id) for buf in
                                    (pool.get_key_buffer(layer), pool.get_value_buffer(layer))])
            remote = np.concatenate([descs(addr, dst_starts, lengths, rb, offer.device_id)
                                     for addr in (offer.k_addrs[layer], offer.v_addrs[layer])])
            handles.append(agent.write(local, self.mem_type, remote, offer.mem_type, offer.session,
                                       f"{request.request_id}:kv:{layer}".encode()))
            self.num_bytes_out += 2 * len(request.token_ids) * rb

    def _stage(self, rows: int, hidden: int, dtype: torch.dtype) -> torch.Tensor:
        """A registered [rows, hidden] E staging view (grown, and registered again, when short)."""
        stage = self.e_stage
        if stage is None or stage.dtype != dtype or stage.shape[1] != hidden or stage.shape[0] < rows:
            stage = torch.empty(max(rows, 2 * (0 if stage is None else stage.shape[0])), hidden, dtype=dtype,
                                device=self.kv_pool.get_key_buffer(0).device)
            self._own().register([stage])
            self.e_stage = stage
        return stage[:rows]

    def _wait(self, handles: list, deadline: float) -> None:
        pending = list(handles)
        while pending:
            states = [self.agent.state(h) for h in pending]
            if "ERR" in states:
                raise RuntimeError("a NIXL write failed")
            pending = [h for h, state in zip(pending, states) if state != "DONE"]
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} NIXL writes unfinished at the fetch deadline")

    def _drop(self, session: str) -> None:
        if self.offers.pop(session, None) is not None and self.agent is not None:
            try:
                self.agent.remove_peer(session)
            except Exception:  # noqa: BLE001 - already gone
                logger.debug("droidspeak: could not remove NIXL peer %s", session)

    def close(self) -> None:
        for session in list(self.offers):
            self._drop(session)
        if self.agent is not None:
            self.agent.close()
            self.agent = None
