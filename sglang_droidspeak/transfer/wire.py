"""Encode / decode transfer messages as authenticated frames (a ZMQ multipart message).

A message is one or two frames: ``[header]`` or, for LayerChunk, ``[header, payload]``.
The header is a msgpack map (keys in this order; never pickled):

    key           type        meaning
    v             int         message format version (the class's VERSION)
    kind          str         fetch_request | layer_chunk | fetch_done | fetch_error |
                              prefix_announce | a data plane's control frames
                              (transfer/planes/*/frames.py: ipc_pool_offer, ...)
    ts            int         the sender's wall clock, ms since the epoch (replay.py)
    nonce         bin(16)     random, once per message (replay.py)
    <fields>      per kind    the dataclass fields except ``data`` (see frames.py)
    payload_len   int         len(payload frame); 0 and no frame for payload-less kinds
    mac           bin(32)     HMAC-SHA256(secret, msgpack(header without mac) || payload)

``decode`` checks, in order: frame count / types / sizes, the MAC over the raw bytes (both
cheap, before anything is parsed: an unauthenticated peer costs one HMAC pass), msgpack
well-formedness under ``WireLimits``, kind and version, the MAC again on the parsed header
(it must be exactly what was signed), the exact
field set, field types, limits, payload length == prod(shape) * itemsize, and last ``ts``
and ``nonce`` (against the receiver's ``ReplayGuard`` when it passes one). Every failure
raises ``WireError`` (its subclass and ``reason`` say which class: schema.py); nothing else
escapes for malformed input.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, fields
from typing import Any, Optional, Sequence

import msgpack

from sglang_droidspeak.transfer.frames import MESSAGE_TYPES, FetchRequest, LayerChunk, Message, PrefixAnnounce
from sglang_droidspeak.transfer.planes import registry
from sglang_droidspeak.transfer.replay import NONCE_LEN, ReplayGuard, now_ms
from sglang_droidspeak.transfer.schema import INT_LIMIT, OversizedFrame, Unauthenticated, WireError

MAC_LEN = 32
KINDS: dict[str, type] = {**MESSAGE_TYPES, **{cls.KIND: cls for cls in registry.frame_types()}}
MAX_BIN_BYTES = max([MAC_LEN, *(getattr(cls, "MAX_BIN_BYTES", 0) for cls in KINDS.values())])
MIN_SECRET_LEN = 16
ENVELOPE_KEYS = ("v", "kind", "ts", "nonce", "payload_len", "mac")


@dataclass(frozen=True)
class WireLimits:
    """Upper bounds a decoder enforces on untrusted input (sizes in bytes)."""

    max_frame_bytes: int = 512 << 20  # header + payload together
    max_header_bytes: int = 24 << 20  # 1M token ids + 1M dst slots of <= 9 bytes each fit
    max_tokens: int = 1 << 20  # len(token_ids); token_start + shape[0] for chunks
    max_rank: int = 4
    max_dim: int = 1 << 24
    max_layers: int = 4096  # layer indices and lengths of layer lists
    max_str_len: int = 4096


def _check_secret(secret: bytes) -> None:
    if type(secret) is not bytes or len(secret) < MIN_SECRET_LEN:
        raise WireError(f"secret must be bytes of length >= {MIN_SECRET_LEN}")


def _mac(secret: bytes, header_body: bytes, payload: bytes | memoryview) -> bytes:
    mac = hmac.new(secret, header_body, hashlib.sha256)
    mac.update(payload)
    return mac.digest()


def _message_fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls) if f.name != "data")


def encode(msg: Message, secret: bytes) -> list[bytes]:
    """Frames for ``msg``: ``[header]`` or ``[header, payload]`` (LayerChunk)."""
    _check_secret(secret)
    if type(msg) not in KINDS.values():
        raise WireError(f"cannot encode {type(msg).__name__}: not a transfer message")
    payload = msg.data if msg.HAS_PAYLOAD else b""
    header: dict[str, Any] = {"v": msg.VERSION, "kind": msg.KIND, "ts": now_ms(), "nonce": os.urandom(NONCE_LEN)}
    header.update({name: getattr(msg, name) for name in _message_fields(type(msg))})
    header["payload_len"] = len(payload)
    header["mac"] = _mac(secret, msgpack.packb(header, use_bin_type=True), payload)
    header_frame = msgpack.packb(header, use_bin_type=True)
    return [header_frame, payload] if msg.HAS_PAYLOAD else [header_frame]


def _frame_views(frames: Sequence[Any], limits: WireLimits) -> list[memoryview]:
    if not isinstance(frames, (list, tuple)) or not 1 <= len(frames) <= 2:
        raise WireError("expected a list of 1 or 2 frames")
    if not all(isinstance(f, (bytes, bytearray, memoryview)) for f in frames):
        raise WireError("frames must be bytes-like")
    try:
        views = [memoryview(f).cast("B") for f in frames]
    except TypeError as exc:  # a non-contiguous memoryview
        raise WireError(f"frames must be contiguous buffers: {exc}") from None
    if views[0].nbytes > limits.max_header_bytes:
        raise OversizedFrame(f"header frame is {views[0].nbytes} bytes > {limits.max_header_bytes}")
    if sum(v.nbytes for v in views) > limits.max_frame_bytes:
        raise OversizedFrame(f"message exceeds max_frame_bytes {limits.max_frame_bytes}")
    return views


_MAC_TRAILER = b"\xa3mac\xc4\x20"  # the header map's last entry: "mac": bin8(32)


def _map_entries(header: memoryview) -> tuple[int, int]:
    """(entries, bytes of the map's own header) of a msgpack fixmap or map16."""
    first = header[0]
    if 0x80 <= first <= 0x8F:
        return first & 0x0F, 1
    if first == 0xDE and header.nbytes >= 3:
        return int.from_bytes(header[1:3], "big"), 3
    raise Unauthenticated("authentication failed: the header is not a msgpack map")


def _verify_before_parsing(header: memoryview, payload: memoryview, secret: bytes) -> None:
    """Check the MAC on the raw bytes, before anything is unpacked: ``encode`` writes the
    mac as the map's last entry, so the signed body is these bytes without that entry
    under a map header one entry shorter. An unauthenticated frame costs one HMAC pass."""
    tail = len(_MAC_TRAILER) + MAC_LEN
    if header.nbytes <= tail or header[-tail:-MAC_LEN] != _MAC_TRAILER:
        raise Unauthenticated("authentication failed: the header does not end with its mac")
    entries, start = _map_entries(header)
    if entries < 1 or start > header.nbytes - tail:
        raise Unauthenticated("authentication failed: the header is not a msgpack map")
    body_prefix = bytes([0x80 | entries - 1]) if entries - 1 < 16 else b"\xde" + (entries - 1).to_bytes(2, "big")
    mac = hmac.new(secret, body_prefix, hashlib.sha256)
    mac.update(header[start:-tail])
    mac.update(payload)
    if not hmac.compare_digest(mac.digest(), bytes(header[-MAC_LEN:])):
        raise Unauthenticated("authentication failed: MAC mismatch (wrong secret or altered frames)")


def _unpack_header(header_frame: memoryview, limits: WireLimits) -> dict[str, Any]:
    array_len = max(limits.max_tokens, limits.max_layers, limits.max_rank)
    try:
        header = msgpack.unpackb(
            header_frame, raw=False, strict_map_key=True, use_list=True,
            max_str_len=limits.max_str_len, max_bin_len=MAX_BIN_BYTES,
            max_array_len=array_len,
            max_map_len=32, max_ext_len=0)
    except Exception as exc:  # msgpack raises many types for malformed input
        raise WireError(f"header is not well-formed msgpack: {type(exc).__name__}: {exc}") from None
    if type(header) is not dict:
        raise WireError(f"header must be a msgpack map, got {type(header).__name__}")
    missing = [k for k in ENVELOPE_KEYS if k not in header]
    if missing:
        raise WireError(f"header lacks envelope keys {missing}")
    return header


def _authenticate(header: dict[str, Any], payload: memoryview, secret: bytes) -> None:
    body = {k: v for k, v in header.items() if k != "mac"}
    mac = header["mac"]
    if type(mac) is not bytes or len(mac) != MAC_LEN:
        raise Unauthenticated("authentication failed: mac must be 32 bytes")
    try:
        header_body = msgpack.packb(body, use_bin_type=True)
    except Exception as exc:
        raise WireError(f"header cannot be re-encoded: {exc}") from None
    if not hmac.compare_digest(mac, _mac(secret, header_body, payload)):
        raise Unauthenticated("authentication failed: MAC mismatch (wrong secret or altered frames)")


def _check_fresh(header: dict[str, Any], replay: Optional[ReplayGuard]) -> None:
    """``ts`` and ``nonce`` well-typed; with ``replay``: inside its window and not seen."""
    ts, nonce = header["ts"], header["nonce"]
    if type(ts) is not int or not 0 <= ts < INT_LIMIT or type(nonce) is not bytes or len(nonce) != NONCE_LEN:
        raise WireError(f"envelope ts must be an int and nonce {NONCE_LEN} bytes")
    if replay is not None:
        replay.check(ts, nonce)


def _check_shape(shape: object, limits: WireLimits) -> None:
    """Bound rank and dims before LayerChunk computes prod(shape) (no bigint blow-up)."""
    if type(shape) is tuple and (len(shape) > limits.max_rank or any(
            type(d) is int and d > limits.max_dim for d in shape)):
        raise OversizedFrame(f"LayerChunk.shape {shape[:8]} exceeds rank {limits.max_rank} "
                        f"or dim {limits.max_dim}")


def _check_limits(msg: Message, limits: WireLimits) -> None:
    if isinstance(msg, LayerChunk):
        if msg.layer >= limits.max_layers or msg.token_start + msg.shape[0] > limits.max_tokens:
            raise OversizedFrame(f"LayerChunk layer {msg.layer} / tokens [{msg.token_start}, "
                            f"{msg.token_start + msg.shape[0]}) out of range")
    elif isinstance(msg, (FetchRequest, PrefixAnnounce)):
        if len(msg.token_ids) > limits.max_tokens:
            raise OversizedFrame(f"{len(msg.token_ids)} token_ids > max_tokens {limits.max_tokens}")
    msg.check_limits(limits)  # a plane frame's own bounds
    if isinstance(msg, FetchRequest):
        for name in ("reused_layers", "e_layers"):
            layers = getattr(msg, name)
            if len(layers) > limits.max_layers or any(l >= limits.max_layers for l in layers):
                raise OversizedFrame(f"FetchRequest.{name} exceeds max_layers {limits.max_layers}")


def decode(frames: Sequence[Any], secret: bytes, limits: WireLimits = WireLimits(),
           replay: Optional[ReplayGuard] = None) -> Message:
    """The message in ``frames``; raises WireError for anything malformed or unauthentic,
    and, with ``replay``, for a stale or replayed one."""
    _check_secret(secret)
    views = _frame_views(frames, limits)
    payload = views[1] if len(views) == 2 else memoryview(b"")
    _verify_before_parsing(views[0], payload, secret)
    header = _unpack_header(views[0], limits)
    kind, version = header["kind"], header["v"]
    cls = KINDS.get(kind) if type(kind) is str else None
    if cls is None:
        raise WireError(f"unknown message kind {kind!r}")
    if type(version) is not int or version != cls.VERSION:
        raise WireError(f"unsupported version {version!r} for {kind} (expected {cls.VERSION})")
    _authenticate(header, payload, secret)  # the parsed header is exactly what was signed
    if len(views) != (2 if cls.HAS_PAYLOAD else 1):
        raise WireError(f"{kind} needs {2 if cls.HAS_PAYLOAD else 1} frames, got {len(views)}")
    if header["payload_len"] != payload.nbytes or type(header["payload_len"]) is not int:
        raise WireError(f"declared payload_len {header['payload_len']!r} != {payload.nbytes} bytes")
    names = _message_fields(cls)
    extra = [k for k in header if k not in names and k not in ENVELOPE_KEYS]
    missing = [k for k in names if k not in header]
    if extra or missing:
        raise WireError(f"{kind} fields: extra {extra}, missing {missing}")
    values = {k: tuple(header[k]) if type(header[k]) is list else header[k] for k in names}
    _check_shape(values.get("shape"), limits)
    if cls.HAS_PAYLOAD:
        values["data"] = payload.tobytes()
    msg = cls(**values)  # validates types, enums, and payload length == prod(shape) * itemsize
    _check_limits(msg, limits)
    _check_fresh(header, replay)  # last: a message dropped for another reason does not spend its nonce
    return msg
