"""Typed transfer messages: what one server sends another to move a cached prefix's KV / E.

A receiver asks with ``FetchRequest``; the sender answers with ``LayerChunk``s (one tensor
slice each: K or V of a reused layer, or E entering a recomputed group) and then exactly one
``FetchDone`` or ``FetchError``. Every message validates itself on construction, so a
message that exists is well-formed; anything else raises ``WireError`` (schema.py: the
``_Message`` base, the WireError family, DTYPES). A FetchRequest names its data plane
(transfer/planes/); a plane's own control frames (a pool offer, a channel offer) live in
its folder's frames.py.

    kind            fields (all ints are in [0, 2**63))
    fetch_request   request_id, sender_model, receiver_model, fingerprint: str,
                    token_ids, reused_layers, e_layers: tuple[int, ...] (layers strictly
                    ascending), deadline_ms: int (0 = none; its clock is the plane's),
                    plane: str (the data plane, registry.py; "zmq" = LayerChunks only),
                    session: str (the plane's offer / channel / agent; "" on zmq),
                    dst_slots: tuple[int, ...] (one receiver KV slot per token, for a
                    plane that writes them itself; else ()), link_gbps: float (finite, >= 0; > 0: the receiver asks the sender to
                    pace this fetch to that link rate, honoured only where the sender
                    allows it, transfer/pacing.py; 0 = no request pacing)
    layer_chunk     request_id: str, what: "k"|"v"|"e", layer, token_start: int,
                    dtype: str (DTYPES), shape: tuple[int, ...] (shape[0] = tokens),
                    data: bytes (raw little-endian elements, len = prod(shape) * itemsize)
    fetch_done      request_id: str, num_chunks: int
    fetch_error     request_id: str, code: str (ERROR_CODES), message: str
    prefix_announce sender_model, fingerprint, base: str ("" = no extra_key namespace),
                    token_ids: tuple[int, ...] (non-empty), fetch_endpoint: str,
                    stored: int (1 = sender now holds the prefix, 0 = it evicted it)

``PrefixAnnounce`` is not part of a fetch: a server publishes it (directory.py) so peers
can index which prefixes it holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Union

import torch

from sglang_droidspeak.transfer.schema import DTYPES, WireError, _check_ascending, _Message

CHUNK_WHATS = ("k", "v", "e")
ERROR_CODES = ("evicted", "fingerprint_mismatch", "busy", "bad_request", "timeout", "internal",
               "plane_unavailable")  # and each plane's own (its frames.ERROR_CODES)


@dataclass(frozen=True)
class FetchRequest(_Message):
    """Receiver -> sender: stream the KV of ``reused_layers`` and E of ``e_layers`` for
    the prefix ``token_ids``, computed by ``sender_model`` (identity ``fingerprint``).

    ``plane`` other than "zmq" moves E and/or K/V on that data plane instead of as
    chunks, using the plane's ``session`` (an offered pool, an open channel) and, for a
    plane that writes them itself, ``dst_slots`` (transfer/planes/).
    ``link_gbps`` > 0 asks the sender to pace this request's stream (ZMQ frames or the
    IPC copy) to that rate; a sender without ``allow_request_throttle`` ignores it.
    """

    KIND: ClassVar[str] = "fetch_request"
    VERSION: ClassVar[int] = 2  # 2: plane + session replaced offer_id / channel_id
    request_id: str
    sender_model: str
    receiver_model: str
    fingerprint: str
    token_ids: tuple[int, ...]
    reused_layers: tuple[int, ...]
    e_layers: tuple[int, ...]
    deadline_ms: int
    plane: str = "zmq"
    session: str = ""
    dst_slots: tuple[int, ...] = ()
    link_gbps: float = 0.0

    def _check(self) -> None:
        if not math.isfinite(self.link_gbps) or self.link_gbps < 0:
            raise WireError(f"FetchRequest.link_gbps must be a finite float >= 0, got {self.link_gbps!r}")
        from sglang_droidspeak.transfer.planes import registry

        if self.plane not in registry.names():
            raise WireError(f"FetchRequest.plane must be one of {registry.names()}, got {self.plane!r}")
        if (self.plane == "zmq") != (not self.session):
            raise WireError("FetchRequest.session must be empty on the zmq plane and set on any other")
        _check_ascending("FetchRequest", "reused_layers", self.reused_layers)
        _check_ascending("FetchRequest", "e_layers", self.e_layers)
        if self.dst_slots and len(self.dst_slots) != len(self.token_ids):
            raise WireError(f"FetchRequest has {len(self.dst_slots)} dst_slots for "
                            f"{len(self.token_ids)} tokens")


@dataclass(frozen=True)
class LayerChunk(_Message):
    """Sender -> receiver: one tensor slice, tokens [token_start, token_start + shape[0]).

    K/V chunks are ``[num_tokens, num_kv_heads, head_dim]``, E chunks ``[num_tokens,
    hidden_size]``; ``data`` holds the raw little-endian elements (never pickled).
    """

    KIND: ClassVar[str] = "layer_chunk"
    HAS_PAYLOAD: ClassVar[bool] = True
    request_id: str
    what: str
    layer: int
    token_start: int
    dtype: str
    shape: tuple[int, ...]
    data: bytes = field(repr=False)

    def _check(self) -> None:
        if self.what not in CHUNK_WHATS:
            raise WireError(f"LayerChunk.what must be one of {CHUNK_WHATS}, got {self.what!r}")
        if self.dtype not in DTYPES:
            raise WireError(f"LayerChunk.dtype {self.dtype!r} not in whitelist {tuple(DTYPES)}")
        if len(self.shape) == 0:
            raise WireError("LayerChunk.shape must have rank >= 1 (shape[0] = tokens)")
        expected_len = math.prod(self.shape) * DTYPES[self.dtype].itemsize
        if len(self.data) != expected_len:
            raise WireError(f"LayerChunk payload is {len(self.data)} bytes, shape "
                            f"{self.shape} of {self.dtype} needs {expected_len}")

    @classmethod
    def from_tensor(cls, request_id: str, what: str, layer: int, token_start: int,
                    tensor: torch.Tensor) -> "LayerChunk":
        dtype_name = str(tensor.dtype).removeprefix("torch.")
        if dtype_name not in DTYPES:
            raise WireError(f"LayerChunk.dtype {dtype_name!r} not in whitelist {tuple(DTYPES)}")
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)  # [numel]
        data = flat.view(torch.uint8).numpy().tobytes()  # [numel * itemsize]; bf16/fp8 too
        return cls(request_id, what, layer, token_start, dtype_name, tuple(tensor.shape), data)

    def to_tensor(self, device: str | torch.device = "cpu") -> torch.Tensor:
        dtype = DTYPES[self.dtype]
        if not self.data:
            return torch.empty(self.shape, dtype=dtype, device=device)
        raw = torch.frombuffer(bytearray(self.data), dtype=torch.uint8)  # [nbytes], own copy
        return raw.view(dtype).reshape(self.shape).to(device)  # shape


@dataclass(frozen=True)
class FetchDone(_Message):
    """Sender -> receiver: the request finished after ``num_chunks`` LayerChunks."""

    KIND: ClassVar[str] = "fetch_done"
    request_id: str
    num_chunks: int


@dataclass(frozen=True)
class FetchError(_Message):
    """Sender -> receiver: the request failed; ``code`` is one of ERROR_CODES."""

    KIND: ClassVar[str] = "fetch_error"
    request_id: str
    code: str
    message: str

    def _check(self) -> None:
        from sglang_droidspeak.transfer.planes import registry

        codes = ERROR_CODES + registry.error_codes()
        if self.code not in codes:
            raise WireError(f"FetchError.code must be one of {codes}, got {self.code!r}")


@dataclass(frozen=True)
class PrefixAnnounce(_Message):
    """Sender -> every peer: ``sender_model`` (identity ``fingerprint``) now holds
    (``stored=1``) or has evicted (``stored=0``) the KV of ``token_ids`` under extra_key
    ``base`` ("" = none); fetch it with a FetchRequest to ``fetch_endpoint``."""

    KIND: ClassVar[str] = "prefix_announce"
    sender_model: str
    fingerprint: str
    base: str
    token_ids: tuple[int, ...]
    fetch_endpoint: str
    stored: int

    def _check(self) -> None:
        self._nonempty("sender_model", "token_ids")
        if self.stored not in (0, 1):
            raise WireError(f"PrefixAnnounce.stored must be 0 or 1, got {self.stored}")


Message = Union[FetchRequest, LayerChunk, FetchDone, FetchError, PrefixAnnounce]
MESSAGE_TYPES: dict[str, type] = {
    c.KIND: c for c in (FetchRequest, LayerChunk, FetchDone, FetchError, PrefixAnnounce)}
