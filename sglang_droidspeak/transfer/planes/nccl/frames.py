"""Control frames of the nccl data plane: open a per-pair channel, then move K/V / E on it.

    receiver (hosts the TCPStore, rank 0)              sender (rank 1)
    NcclPairOffer          ---- fetch socket ---->     checks it, starts joining
                           <---------------------      NcclPairAccept | FetchError(nccl_unavailable)
    (both ends rendezvous on the store and open the channel in a background thread)
    FetchRequest(plane=nccl, session=channel_id) ------------------->      checks, computes E
                           <---------------------      NcclSendStart(num_tensors)
    recv x num_tensors     <==== the channel =====     send x num_tensors (E, then K, V per layer)
                           <---------------------      FetchDone(0) | FetchError

    kind              fields
    nccl_pair_offer   channel_id: str (a uuid), receiver_model: str, store_host: str,
                      store_port: int (1..65535), world_size: int (2), receiver_rank: int
                      (0 | 1; the sender takes the other), dtype: str (DTYPES, the
                      receiver's KV dtype), kv_row: tuple[int, ...] ([kv_heads, head_dim]
                      of one K or V row), hidden_size: int, e_dtype: str (DTYPES, E's),
                      device_uuid: str (the receiver's GPU, for information and the
                      same-GPU check; "" on the CPU)
    nccl_pair_accept  channel_id: str, sender_model: str, device_uuid: str
    nccl_send_start   request_id: str, channel_id: str, num_tensors: int

The tensors on the channel are not framed: both ends derive them from the FetchRequest
(``tensor_order``), so the sender checks every shape against the offer before it sends
NcclSendStart, and sends nothing after a refusal. No SGLang, no torch.distributed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sglang_droidspeak.transfer.frames import FetchRequest
from sglang_droidspeak.transfer.schema import OversizedFrame, WireError, _Message

PAIR_WORLD_SIZE = 2


@dataclass(frozen=True)
class NcclPairOffer(_Message):
    """Receiver -> sender: join channel ``channel_id`` through my TCPStore."""

    KIND: ClassVar[str] = "nccl_pair_offer"
    REPLY_FIELD: ClassVar[str] = "channel_id"  # its answer (accept or FetchError) names this
    channel_id: str
    receiver_model: str
    store_host: str
    store_port: int
    world_size: int
    receiver_rank: int
    dtype: str
    kv_row: tuple[int, ...]
    hidden_size: int
    e_dtype: str
    device_uuid: str

    def _check(self) -> None:
        self._nonempty("channel_id", "receiver_model", "store_host")
        if not 1 <= self.store_port <= 65535:
            raise WireError(f"NcclPairOffer.store_port must be in 1..65535, got {self.store_port}")
        if self.world_size != PAIR_WORLD_SIZE:
            raise WireError(f"NcclPairOffer.world_size must be {PAIR_WORLD_SIZE}, got {self.world_size}")
        if self.receiver_rank not in (0, 1):
            raise WireError(f"NcclPairOffer.receiver_rank must be 0 or 1, got {self.receiver_rank}")
        self._dtypes("dtype", "e_dtype")
        if len(self.kv_row) != 2 or 0 in self.kv_row:
            raise WireError(f"NcclPairOffer.kv_row must be [kv_heads, head_dim] > 0, got {self.kv_row[:8]}")
        if self.hidden_size == 0:
            raise WireError("NcclPairOffer.hidden_size must be > 0")

    def check_limits(self, limits) -> None:
        if max(*self.kv_row, self.hidden_size) > limits.max_dim:
            raise OversizedFrame(f"NcclPairOffer kv_row {self.kv_row} / hidden_size {self.hidden_size} "
                                 f"exceed {limits.max_dim}")

    @property
    def sender_rank(self) -> int:
        return 1 - self.receiver_rank


@dataclass(frozen=True)
class NcclPairAccept(_Message):
    """Sender -> receiver: I am joining ``channel_id`` (the channel opens on both ends)."""

    KIND: ClassVar[str] = "nccl_pair_accept"
    channel_id: str
    sender_model: str
    device_uuid: str

    def _check(self) -> None:
        self._nonempty("channel_id")


@dataclass(frozen=True)
class NcclSendStart(_Message):
    """Sender -> receiver: ``num_tensors`` sends follow on ``channel_id``; post the recvs."""

    KIND: ClassVar[str] = "nccl_send_start"
    request_id: str
    channel_id: str
    num_tensors: int

    def _check(self) -> None:
        self._nonempty("channel_id")

    def check_limits(self, limits) -> None:
        if self.num_tensors > 3 * limits.max_layers:
            raise OversizedFrame(f"NcclSendStart.num_tensors {self.num_tensors} > {3 * limits.max_layers}")


MESSAGES: tuple[type, ...] = (NcclPairOffer, NcclPairAccept, NcclSendStart)
ERROR_CODES = ("nccl_unavailable", "no_channel")


def tensor_order(request: FetchRequest) -> list[tuple[str, int]]:
    """(what, layer) of every tensor on the channel, in order: E of each e_layer, then K
    and V of each reused layer. E is [num_tokens, hidden_size], K/V [num_tokens, *kv_row]."""
    return [("e", layer) for layer in request.e_layers] + [
        (what, layer) for layer in request.reused_layers for what in ("k", "v")]
