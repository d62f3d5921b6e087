"""cuda_ipc plane frames: IpcPoolOffer and the FetchRequest fields, exact round trips and
strict rejection of malformed, oversized and out-of-range input."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac

import msgpack
import pytest
import torch

from sglang_droidspeak.transfer import FetchRequest, WireError, WireLimits, decode, encode, wire
from sglang_droidspeak.transfer.planes.cuda_ipc.frames import MAX_HANDLE_BYTES, view_extent
from cpu_ipc import offer_for

SECRET = b"0123456789abcdef-test-secret"
BUFFER = torch.zeros(9, 2, 4, dtype=torch.float16)  # [slots + page, heads, dim]: 144 bytes
OFFER = offer_for("offer-1", "llama-b", "GPU-1234", BUFFER, num_layers=2)
IPC_REQ = FetchRequest("r1", "llama-a", "llama-b", "fp", (5, 6, 7), (0, 1), (), 123_456,
                       plane="cuda_ipc", session="offer-1", dst_slots=(8, 1, 3))


def _resign(msg, **changes) -> list[bytes]:
    header = {**msgpack.unpackb(encode(msg, SECRET)[0], raw=False), **changes}
    body = {k: v for k, v in header.items() if k != "mac"}
    mac = hmac.new(SECRET, msgpack.packb(body, use_bin_type=True), hashlib.sha256).digest()
    return [msgpack.packb({**body, "mac": mac}, use_bin_type=True)]


@pytest.mark.parametrize("msg", [OFFER, IPC_REQ], ids=lambda m: m.kind)
def test_round_trip(msg):
    assert decode(encode(msg, SECRET), SECRET) == msg


def test_offer_fields_in_order():
    header = msgpack.unpackb(encode(OFFER, SECRET)[0], raw=False)
    assert list(header)[:2] == ["v", "kind"] and list(header)[2:4] == ["ts", "nonce"]
    assert list(header)[4:10] == ["offer_id", "receiver_model", "device_uuid", "dtype", "num_layers", "k_shape"]
    assert header["handles"] == [b"h0", b"h1", b"h2", b"h3"] and header["storage_sizes"] == [144] * 4
    assert header["k_stride"] == [8, 4, 1] and header["event_handles"] == [b"\0" * 64] * 4


def test_plain_request_keeps_the_zmq_plane_defaults():
    req = decode(encode(FetchRequest("r", "a", "b", "fp", (1, 2), (0,), (), 0), SECRET), SECRET)
    assert (req.plane, req.session, req.dst_slots, req.deadline_ms) == ("zmq", "", (), 0)


@pytest.mark.parametrize("changes, message", [
    (dict(dst_slots=(1, 2)), r"2 dst_slots for 3 tokens"),
    (dict(session=""), r"session must be empty on the zmq plane and set on any other"),
    (dict(plane="zmq"), r"session must be empty on the zmq plane and set on any other"),
    (dict(plane="carrier-pigeon"), r"plane must be one of \('zmq', 'cuda_ipc', 'nccl'"),
    (dict(dst_slots=(1, -2, 3)), r"dst_slots must be tuple of ints"),
    (dict(dst_slots=(1, 2, 1 << 63)), r"dst_slots must be tuple of ints"),
])
def test_bad_ipc_requests(changes, message):
    with pytest.raises(WireError, match=message):
        dataclasses.replace(IPC_REQ, **changes)
    with pytest.raises(WireError, match=message):  # the same from a peer holding the secret
        decode(_resign(IPC_REQ, **{k: list(v) if type(v) is tuple else v for k, v in changes.items()}), SECRET)


@pytest.mark.parametrize("changes, message", [
    (dict(offer_id=""), "offer_id must be non-empty"),
    (dict(device_uuid=""), "device_uuid must be non-empty"),
    (dict(dtype="int64"), "not in whitelist"),
    (dict(num_layers=0), "num_layers must be >= 1"),
    (dict(num_layers=3), r"handles needs 6 entries"),
    (dict(k_shape=(9, 8)), "k_shape must have rank 3"),
    (dict(v_stride=(8, 4, 1, 1)), "v_stride must have rank 3"),
    (dict(handles=(b"h0", b"", b"h2", b"h3")), r"handles entries must be 1\.\.1024 bytes"),
    (dict(ref_counter_handles=(b"x" * (MAX_HANDLE_BYTES + 1),) * 4), "ref_counter_handles entries"),
    (dict(event_handles=(b"\0" * 65,) * 4), "event_handles entries must be 64 bytes"),
    (dict(event_handles=(b"\0" * 63,) * 4, event_sync_required=(1, 0, 0, 0)), "event_handles entries must be 64"),
    (dict(event_sync_required=(0, 2, 0, 0)), "must be 0 or 1"),
    (dict(storage_sizes=(144, 143, 144, 144)), r"buffer 1: view ends at byte 144, past its 143-byte"),
    (dict(tensor_offsets=(0, 0, 1, 0)), r"buffer 2: view ends at byte 146"),
    (dict(k_shape=(10, 2, 4)), r"buffer 0: view ends at byte 160"),
    (dict(v_stride=(9, 4, 1)), r"buffer 1: view ends at byte 160"),
    (dict(handles=("h0", "h1", "h2", "h3")), "handles must be tuple"),
    (dict(storage_offsets=(0, 0, 0, -1)), "storage_offsets must be tuple of ints"),
])
def test_bad_offers(changes, message):
    with pytest.raises(WireError, match=message):
        dataclasses.replace(OFFER, **changes)


def test_view_extent():
    assert view_extent((9, 2, 4), (8, 4, 1)) == 72
    assert view_extent((0, 2, 4), (8, 4, 1)) == 0
    assert view_extent((3, 2), (1, 100)) == 103  # non-contiguous: spans the gaps


def test_oversized_offers_are_rejected_by_the_decoder():
    too_long = _resign(OFFER, handles=[b"x" * (MAX_HANDLE_BYTES + 1)] * 4)
    with pytest.raises(WireError, match=r"handles entries must be 1\.\.1024 bytes"):  # the offer's own bound
        decode(too_long, SECRET)
    far_too_long = _resign(OFFER, handles=[b"x" * (wire.MAX_BIN_BYTES + 1)] * 4)  # the largest any kind takes
    with pytest.raises(WireError, match="not well-formed msgpack"):  # msgpack's bin limit, before the MAC
        decode(far_too_long, SECRET)
    with pytest.raises(WireError, match="num_layers 2 or shape exceeds limits"):
        decode(encode(OFFER, SECRET), SECRET, WireLimits(max_layers=1))
    with pytest.raises(WireError, match="num_layers 2 or shape exceeds limits"):
        decode(encode(OFFER, SECRET), SECRET, WireLimits(max_dim=8))


def test_a_forged_or_altered_offer_fails_authentication():
    frames = encode(OFFER, SECRET)
    with pytest.raises(WireError, match="authentication failed"):
        decode(frames, b"another-secret-of-16+")
    header = msgpack.unpackb(frames[0], raw=False)
    header["handles"][0] = b"h9"  # a man in the middle redirects a buffer
    with pytest.raises(WireError, match="MAC mismatch"):
        decode([msgpack.packb(header, use_bin_type=True)], SECRET)


def test_mac_must_still_be_32_bytes():
    header = msgpack.unpackb(encode(OFFER, SECRET)[0], raw=False)
    header["mac"] = header["mac"] + b"\0" * 32
    with pytest.raises(WireError, match="authentication failed: the header does not end with its mac"):
        decode([msgpack.packb(header, use_bin_type=True)], SECRET)
