"""Transfer wire format: exact round trips, authentication, strict validation, fuzzing."""

from __future__ import annotations

import hashlib
import hmac
import pickle
import random

import msgpack
import pytest
import torch

from sglang_droidspeak.transfer import (
    DTYPES, FetchDone, FetchError, FetchRequest, LayerChunk, Unauthenticated, WireError, WireLimits, decode, encode)

SECRET = b"0123456789abcdef-test-secret"
REQ = FetchRequest("r1", "llama-a", "llama-b", "fp:abc", (1, 17, 4095), (0, 2, 3), (1,), 250)
KV = torch.tensor([[[1.5, -2.0]], [[0.25, 65504.0]]], dtype=torch.float16)  # [2 tok, 1 head, 2]
CHUNK = LayerChunk.from_tensor("r1", "k", 3, 8, KV)
MESSAGES = [REQ, CHUNK, FetchDone("r1", 7), FetchError("r1", "evicted", "prefix gone")]


def _header(frames: list[bytes]) -> dict:
    return msgpack.unpackb(frames[0], raw=False)


def _signed(header: dict, payload: bytes | None = None, secret: bytes = SECRET) -> list[bytes]:
    """Re-sign an arbitrary header the way a peer holding the secret would."""
    body = {k: v for k, v in header.items() if k != "mac"}
    mac = hmac.new(secret, msgpack.packb(body, use_bin_type=True) + (payload or b""),
                   hashlib.sha256).digest()
    frame = msgpack.packb({**body, "mac": mac}, use_bin_type=True)
    return [frame] if payload is None else [frame, payload]


def _resigned(msg, payload: bytes | None = None, **changes) -> list[bytes]:
    frames = encode(msg, SECRET)
    header = {**_header(frames), **changes}
    payload = frames[1] if payload is None and len(frames) == 2 else payload
    return _signed(header, payload)


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: m.kind)
def test_round_trip_every_kind(msg):
    frames = encode(msg, SECRET)
    assert len(frames) == (2 if msg.kind == "layer_chunk" else 1)
    assert decode(frames, SECRET) == msg
    assert decode([bytearray(f) for f in frames], SECRET) == msg  # zmq may hand buffers
    assert decode(tuple(memoryview(f) for f in frames), SECRET) == msg


def test_header_layout():
    header = _header(encode(CHUNK, SECRET))
    assert list(header) == ["v", "kind", "ts", "nonce", "request_id", "what", "layer", "token_start", "dtype",
                            "shape", "payload_len", "mac"]
    assert type(header["ts"]) is int and type(header["nonce"]) is bytes and len(header["nonce"]) == 16
    assert header["v"] == 1 and header["kind"] == "layer_chunk" and header["shape"] == [2, 1, 2]
    assert header["payload_len"] == 8 and len(header["mac"]) == 32
    assert CHUNK.data[:4] == b"\x00\x3e\x00\xc0"  # float16 1.5, -2.0 little-endian


@pytest.mark.parametrize("dtype_name", sorted(DTYPES))
def test_tensor_round_trip_bit_exact(dtype_name):
    dtype = DTYPES[dtype_name]
    values = torch.tensor([[1.5, -2.0, 0.0], [3.25, -0.125, 448.0]]).to(dtype)  # [2, 3]
    chunk = decode(encode(LayerChunk.from_tensor("q", "e", 5, 0, values), SECRET), SECRET)
    out = chunk.to_tensor()
    assert chunk.dtype == dtype_name and out.dtype == dtype and out.shape == (2, 3)
    assert torch.equal(out.view(torch.uint8), values.view(torch.uint8))
    assert out.float().tolist() == [[1.5, -2.0, 0.0], [3.25, -0.125, 448.0]]


def test_bfloat16_bits_and_noncontiguous_and_empty():
    bf = torch.tensor([1.0, -3.0, 2.0 ** -10], dtype=torch.bfloat16)
    assert LayerChunk.from_tensor("q", "v", 0, 0, bf).data == b"\x80\x3f\x40\xc0\x80\x3a"
    strided = torch.arange(12, dtype=torch.float32).reshape(3, 4)[:, ::2]  # [3, 2], strided
    out = decode(encode(LayerChunk.from_tensor("q", "k", 0, 0, strided), SECRET), SECRET)
    assert out.to_tensor().tolist() == [[0.0, 2.0], [4.0, 6.0], [8.0, 10.0]]
    empty = LayerChunk.from_tensor("q", "k", 0, 4, torch.empty(0, 2, 3, dtype=torch.bfloat16))
    assert decode(encode(empty, SECRET), SECRET).to_tensor().shape == (0, 2, 3)


def test_wrong_secret_and_short_secret():
    with pytest.raises(WireError, match="authentication"):
        decode(encode(REQ, SECRET), b"another-secret-of-16+")
    with pytest.raises(WireError, match="secret"):
        encode(REQ, b"short")


def test_flipped_bits_in_header_and_payload():
    frames = encode(CHUNK, SECRET)
    for i in range(len(frames[0])):
        bad = bytearray(frames[0])
        bad[i] ^= 1 << (i % 8)
        with pytest.raises(WireError):
            decode([bytes(bad), frames[1]], SECRET)
    bad_payload = bytearray(frames[1])
    bad_payload[5] ^= 0x10
    with pytest.raises(WireError, match="authentication"):
        decode([frames[0], bytes(bad_payload)], SECRET)


def test_truncation_and_payload_length():
    frames = encode(CHUNK, SECRET)
    with pytest.raises(WireError, match="authentication"):
        decode([frames[0], frames[1][:-2]], SECRET)
    with pytest.raises(Unauthenticated, match="does not end with its mac"):  # checked before parsing
        decode([frames[0][:-3], frames[1]], SECRET)
    with pytest.raises(WireError, match="payload_len"):  # signed, but declares the old length
        decode(_resigned(CHUNK, payload=frames[1][:-2]), SECRET)
    with pytest.raises(WireError, match="payload_len"):
        decode(_resigned(CHUNK, payload_len=1 << 40), SECRET)
    with pytest.raises(WireError, match=r"payload is 6 bytes, shape \(2, 1, 2\) of float16 needs 8"):
        decode(_resigned(CHUNK, payload=frames[1][:-2], payload_len=6), SECRET)
    with pytest.raises(WireError, match="needs 12"):  # shape/payload mismatch
        decode(_resigned(CHUNK, shape=[3, 1, 2]), SECRET)


def test_size_limits():
    frames = encode(CHUNK, SECRET)
    with pytest.raises(WireError, match="max_frame_bytes"):
        decode(frames, SECRET, WireLimits(max_frame_bytes=len(frames[0]) + 7))
    assert decode(frames, SECRET, WireLimits(max_frame_bytes=len(frames[0]) + 8)) == CHUNK
    with pytest.raises(WireError, match="header frame"):
        decode(frames, SECRET, WireLimits(max_header_bytes=16))
    with pytest.raises(WireError, match="max_tokens"):
        decode(encode(REQ, SECRET), SECRET, WireLimits(max_tokens=2))
    with pytest.raises(WireError, match=r"tokens \[8, 10\) out of range"):
        decode(frames, SECRET, WireLimits(max_tokens=9))
    with pytest.raises(WireError, match="exceeds rank 2"):
        decode(frames, SECRET, WireLimits(max_rank=2))
    with pytest.raises(WireError, match="or dim 1"):
        decode(frames, SECRET, WireLimits(max_dim=1))
    with pytest.raises(WireError, match="max_layers"):
        decode(encode(REQ, SECRET), SECRET, WireLimits(max_layers=3))
    with pytest.raises(WireError, match="exceeds rank"):  # no prod() over a huge signed shape
        decode(_resigned(CHUNK, shape=[1 << 62] * 1000), SECRET)


@pytest.mark.parametrize("changes,match", [
    ({"extra": 1}, r"extra \['extra'\], missing \[\]"),
    ({"layer": "3"}, "LayerChunk.layer must be int"),
    ({"layer": -1}, "LayerChunk.layer must be int in"),
    ({"layer": True}, "LayerChunk.layer must be int"),
    ({"shape": [2, 1.0, 2]}, "LayerChunk.shape must be tuple of ints"),
    ({"what": "q"}, "LayerChunk.what must be one of"),
    ({"dtype": "int64"}, "not in whitelist"),
    ({"kind": "fetch_everything"}, "unknown message kind 'fetch_everything'"),
    ({"kind": "fetch_done"}, "fetch_done needs 1 frames, got 2"),
    ({"v": 2}, "unsupported version 2"),
    ({"v": "1"}, "unsupported version '1'"),
])
def test_signed_but_invalid_headers(changes, match):
    with pytest.raises(WireError, match=match):
        decode(_resigned(CHUNK, **changes), SECRET)


def test_missing_field_frames_and_constructor_rules():
    header = _header(encode(REQ, SECRET))
    del header["deadline_ms"]
    with pytest.raises(WireError, match=r"missing \['deadline_ms'\]"):
        decode(_signed(header), SECRET)
    with pytest.raises(WireError, match="layer_chunk needs 2 frames"):
        decode(_signed(_header(encode(CHUNK, SECRET))), SECRET)
    for frames in ([], [b"a", b"b", b"c"], "abc", [b"a", 3]):
        with pytest.raises(WireError, match="frame"):
            decode(frames, SECRET)
    with pytest.raises(WireError, match="strictly ascending"):
        FetchRequest("r", "a", "b", "f", (1,), (2, 2), (), 0)
    with pytest.raises(WireError, match="FetchError.code"):
        FetchError("r", "oops", "m")
    with pytest.raises(WireError, match="'int64' not in whitelist"):
        LayerChunk.from_tensor("r", "k", 0, 0, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(WireError, match="not a transfer message"):
        encode("hello", SECRET)


def _mutate(rng: random.Random, frames: list[bytes]) -> list:
    op = rng.randrange(6)
    i = rng.randrange(len(frames))
    frame = bytearray(frames[i])
    if op == 0 and frame:  # bit flip
        pos = rng.randrange(len(frame))
        frame[pos] ^= 1 << rng.randrange(8)
    elif op == 1:  # truncation
        frame = frame[: rng.randrange(len(frame) + 1)]
    elif op == 2:  # random bytes
        frame = bytearray(rng.randbytes(rng.randrange(64)))
    elif op == 3:  # insertion
        pos = rng.randrange(len(frame) + 1)
        frame[pos:pos] = rng.randbytes(rng.randrange(1, 5))
    elif op == 4:  # drop or duplicate a frame
        return frames[:-1] if rng.random() < 0.5 else frames + [frames[-1]]
    else:  # swap frames
        return list(reversed(frames))
    return frames[:i] + [bytes(frame)] + frames[i + 1:]


def _random_value(rng: random.Random):
    return rng.choice([None, -1, 1 << 64 - 1, 2.5, "", "x" * 50, b"\x00", [], [1, "a"],
                       [[1]], {"a": 1}, True, [1 << 63], [-5], list(range(6))])


def test_fuzz_only_wire_error_escapes():
    rng = random.Random(1234)
    rejected = 0
    for _ in range(2000):
        msg = rng.choice(MESSAGES)
        frames = encode(msg, SECRET)
        signed = rng.random() < 0.5
        if not signed:
            mutated = _mutate(rng, frames)
        else:  # signed by a peer with the secret but carrying garbage fields
            header = _header(frames)
            header[rng.choice(list(header)[:-1])] = _random_value(rng)
            mutated = _signed(header, frames[1] if len(frames) == 2 else None)
        try:
            out = decode(mutated, SECRET)
        except WireError:
            rejected += 1
            continue
        if signed:  # a garbage value that happens to be valid (e.g. message="") must round-trip
            assert decode(encode(out, SECRET), SECRET) == out
        else:  # an unsigned mutation can only decode if it changed nothing
            assert out == msg
    assert rejected >= 1800  # measured 1824 with seed 1234


def test_never_pickles(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")
    for name in ("dumps", "loads", "dump", "load", "Pickler", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    for msg in MESSAGES:
        assert decode(encode(msg, SECRET), SECRET) == msg
    assert torch.equal(decode(encode(CHUNK, SECRET), SECRET).to_tensor(), KV)


def test_announce_token_count_is_bounded_by_the_decoder():
    from sglang_droidspeak.transfer.frames import PrefixAnnounce

    msg = PrefixAnnounce("a", "fp", "", tuple(range(10)), "tcp://h:1", 1)
    frames = encode(msg, SECRET)
    assert decode(frames, SECRET, WireLimits(max_tokens=10)) == msg
    with pytest.raises(WireError, match="max_tokens"):
        decode(frames, SECRET, WireLimits(max_tokens=9))


def test_fetch_request_link_gbps_round_trips_as_a_float():
    paced = FetchRequest("r1", "a", "b", "fp", (1, 2), (0,), (), 0, link_gbps=12.5)
    frames = encode(paced, SECRET)
    assert _header(frames)["link_gbps"] == 12.5 and decode(frames, SECRET) == paced
    assert decode(encode(REQ, SECRET), SECRET).link_gbps == 0.0  # the default: no request pacing
    assert list(_header(encode(REQ, SECRET)))[-3:] == ["link_gbps", "payload_len", "mac"]


@pytest.mark.parametrize("bad, match", [
    (25, "link_gbps must be float, got int"), (True, "link_gbps must be float, got bool"),
    ("10", "link_gbps must be float, got str"), (None, "link_gbps must be float, got NoneType"),
    (float("nan"), "link_gbps must be a finite float >= 0, got nan"),
    (float("inf"), "link_gbps must be a finite float >= 0, got inf"),
    (-1.0, "link_gbps must be a finite float >= 0, got -1.0"),
])
def test_bad_link_gbps_is_rejected_on_decode_and_construction(bad, match):
    with pytest.raises(WireError, match=match):
        decode(_resigned(REQ, link_gbps=bad), SECRET)
    with pytest.raises(WireError, match=match):
        FetchRequest("r1", "a", "b", "fp", (1,), (0,), (), 0, link_gbps=bad)
