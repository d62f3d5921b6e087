"""nccl plane frames: NcclPairOffer / NcclPairAccept / NcclSendStart and FetchRequest's
channel_id, exact round trips and strict rejection of malformed or oversized input."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re

import msgpack
import pytest

from sglang_droidspeak.transfer import FetchRequest, WireError, WireLimits, decode, encode
from sglang_droidspeak.transfer.planes.nccl.frames import NcclPairAccept, NcclPairOffer, NcclSendStart, tensor_order

SECRET = b"0123456789abcdef-test-secret"
OFFER = NcclPairOffer("chan-1", "llama-b", "10.0.0.2", 41234, 2, 0, "bfloat16", (8, 128), 4096, "bfloat16",
                      "GPU-1234")
ACCEPT = NcclPairAccept("chan-1", "llama-a", "GPU-5678")
START = NcclSendStart("r1", "chan-1", 7)
NCCL_REQ = FetchRequest("r1", "llama-a", "llama-b", "fp", (5, 6, 7), (0, 2, 3), (2,), 0, plane="nccl", session="chan-1")


def _resign(msg, **changes) -> list[bytes]:
    header = {**msgpack.unpackb(encode(msg, SECRET)[0], raw=False), **changes}
    body = {k: v for k, v in header.items() if k != "mac"}
    mac = hmac.new(SECRET, msgpack.packb(body, use_bin_type=True), hashlib.sha256).digest()
    return [msgpack.packb({**body, "mac": mac}, use_bin_type=True)]


@pytest.mark.parametrize("msg", [OFFER, ACCEPT, START, NCCL_REQ], ids=lambda m: m.kind + str(len(repr(m))))
def test_round_trip(msg):
    assert decode(encode(msg, SECRET), SECRET) == msg


def test_offer_header_is_typed_fields_in_order():
    header = msgpack.unpackb(encode(OFFER, SECRET)[0], raw=False)
    assert list(header)[4:] == ["channel_id", "receiver_model", "store_host", "store_port", "world_size",
                                "receiver_rank", "dtype", "kv_row", "hidden_size", "e_dtype", "device_uuid",
                                "payload_len", "mac"]
    assert header["kv_row"] == [8, 128] and OFFER.sender_rank == 1


def test_the_tensor_order_is_e_then_k_and_v_per_layer():
    assert tensor_order(NCCL_REQ) == [("e", 2), ("k", 0), ("v", 0), ("k", 2), ("v", 2), ("k", 3), ("v", 3)]
    assert START.num_tensors == len(tensor_order(NCCL_REQ))


@pytest.mark.parametrize("changes, error", [
    ({"channel_id": ""}, "NcclPairOffer.channel_id must be non-empty"),
    ({"store_host": ""}, "NcclPairOffer.store_host must be non-empty"),
    ({"store_port": 0}, "store_port must be in 1..65535, got 0"),
    ({"store_port": 70000}, "store_port must be in 1..65535, got 70000"),
    ({"world_size": 3}, "world_size must be 2, got 3"),
    ({"receiver_rank": 2}, "receiver_rank must be 0 or 1, got 2"),
    ({"dtype": "int64"}, "NcclPairOffer.dtype 'int64' not in whitelist"),
    ({"e_dtype": "float64"}, "NcclPairOffer.e_dtype 'float64' not in whitelist"),
    ({"kv_row": (8, 128, 1)}, "kv_row must be [kv_heads, head_dim] > 0"),
    ({"kv_row": (0, 128)}, "kv_row must be [kv_heads, head_dim] > 0"),
    ({"hidden_size": 0}, "hidden_size must be > 0"),
    ({"store_port": -1}, "store_port must be int in [0, 2**63)"),
])
def test_a_malformed_offer_is_rejected(changes, error):
    with pytest.raises(WireError, match=re.escape(error)):
        dataclasses.replace(OFFER, **changes)
    wire_changes = {k: list(v) if type(v) is tuple else v for k, v in changes.items()}
    with pytest.raises(WireError):
        decode(_resign(OFFER, **wire_changes), SECRET)


def test_other_malformed_frames_are_rejected():
    with pytest.raises(WireError, match="channel_id must be non-empty"):
        NcclPairAccept("", "llama-a", "")
    with pytest.raises(WireError, match="channel_id must be non-empty"):
        NcclSendStart("r1", "", 1)
    with pytest.raises(WireError, match="session must be empty on the zmq plane"):
        dataclasses.replace(NCCL_REQ, plane="zmq")
    with pytest.raises(WireError, match="fields: extra \\['extra'\\]"):
        decode(_resign(ACCEPT, extra=1), SECRET)
    with pytest.raises(WireError, match="num_tensors 99999 > 12288"):
        decode(_resign(START, num_tensors=99_999), SECRET)


def test_tampering_and_oversized_rows_are_rejected():
    frames = encode(OFFER, SECRET)
    tampered = msgpack.unpackb(frames[0], raw=False)
    tampered["store_host"] = "evil.example"
    with pytest.raises(WireError, match="authentication failed"):
        decode([msgpack.packb(tampered, use_bin_type=True)], SECRET)
    with pytest.raises(WireError, match="exceed 4096"):
        decode(encode(dataclasses.replace(OFFER, hidden_size=8192), SECRET), SECRET, WireLimits(max_dim=4096))
