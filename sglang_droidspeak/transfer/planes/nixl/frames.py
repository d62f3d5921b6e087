"""``NixlPoolOffer``: a receiver offers its KV pool (and an E staging area) to a sender's
NIXL agent. Sent once per peer on the fetch socket (no reply), HMAC-signed like every
frame; a FetchRequest(plane="nixl", session=the offer's agent name, dst_slots) then asks
the sender to WRITE into it.

    field           type               meaning
    session         str                the receiver's NIXL agent name (new per registration)
    receiver_model  str                the offering server's model
    metadata        bytes              the agent's NIXL metadata (UCX worker address, rkeys)
    mem_type        str                "DRAM" | "VRAM"
    device_id       int                the GPU index of the pool (0 for DRAM)
    dtype, e_dtype  str (DTYPES)       the KV pool's element type; E's
    num_layers      int                >= 1
    num_rows        int                rows (slots) of every K and V buffer
    row_bytes       int                bytes of one K or V row (kv_heads * head_dim * itemsize)
    k_addrs, v_addrs tuple[int, ...]   each layer's K / V buffer address (num_layers each)
    e_addr, e_bytes int                the registered E staging area and its capacity
    hidden_bytes    int                bytes of one E row

A sender writes only inside these regions: dst slot < num_rows, E within e_bytes (and the
receiver's NIXL agent refuses anything outside its registered memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sglang_droidspeak.transfer.schema import OversizedFrame, WireError, _Message

MAX_METADATA_BYTES = 1 << 16
MEM_TYPES = ("DRAM", "VRAM")


@dataclass(frozen=True)
class NixlPoolOffer(_Message):
    KIND: ClassVar[str] = "nixl_pool_offer"
    MAX_BIN_BYTES: ClassVar[int] = MAX_METADATA_BYTES
    session: str
    receiver_model: str
    metadata: bytes
    mem_type: str
    device_id: int
    dtype: str
    e_dtype: str
    num_layers: int
    num_rows: int
    row_bytes: int
    k_addrs: tuple[int, ...]
    v_addrs: tuple[int, ...]
    e_addr: int
    e_bytes: int
    hidden_bytes: int

    def _check(self) -> None:
        self._nonempty("session", "receiver_model", "metadata")
        if self.mem_type not in MEM_TYPES:
            raise WireError(f"NixlPoolOffer.mem_type must be one of {MEM_TYPES}, got {self.mem_type!r}")
        self._dtypes("dtype", "e_dtype")
        if min(self.num_layers, self.num_rows, self.row_bytes, self.hidden_bytes) == 0:
            raise WireError("NixlPoolOffer.num_layers, num_rows, row_bytes and hidden_bytes must be > 0")
        for name in ("k_addrs", "v_addrs"):
            if len(getattr(self, name)) != self.num_layers:
                raise WireError(f"NixlPoolOffer.{name} needs {self.num_layers} entries, got {len(getattr(self, name))}")

    def check_limits(self, limits) -> None:
        if self.num_layers > limits.max_layers or self.num_rows > limits.max_dim * 64:
            raise OversizedFrame(f"NixlPoolOffer num_layers {self.num_layers} / num_rows {self.num_rows} exceed limits")


MESSAGES: tuple[type, ...] = (NixlPoolOffer,)
ERROR_CODES = ("nixl_unavailable", "no_nixl_offer", "nixl_error")
