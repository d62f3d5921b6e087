"""Fuzz the wire decoder and the replay guard: only WireError escapes, and only fresh,
unseen, authentic messages get through.

- arbitrary frames (0-3 byte strings) raise WireError;
- any change to a valid message's bytes (a flipped, cut or added byte) is refused;
- a peer holding the secret that signs a header with arbitrary field values gets a message
  that validated itself, or WireError;
- the guard accepts a (ts, nonce) once and only inside its window, whatever the order.
"""

from __future__ import annotations

import hashlib
import hmac

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from sglang_droidspeak.transfer import FetchDone, FetchRequest, LayerChunk, PrefixAnnounce, WireError, decode, encode
from sglang_droidspeak.transfer.replay import ReplayGuard

from fuzzing import FUZZ

SECRET = b"fuzz-secret-of-16+bytes"
MESSAGES = [FetchRequest("r1", "a", "b", "fp", (1, 2, 3), (0, 1), (2,), 0),
            LayerChunk("r1", "k", 0, 0, "float16", (2, 1, 2), b"\x00" * 8), FetchDone("r1", 2),
            PrefixAnnounce("a", "fp", "", (5, 6), "tcp://127.0.0.1:1", 1)]
messages = st.sampled_from(MESSAGES)
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**64 + 1, 2**64 - 1) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8), lambda inner: st.lists(inner, max_size=4), max_leaves=10)


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=3))
def test_arbitrary_frames_raise_wire_error(frames):
    try:
        decode(frames, SECRET)
    except WireError:
        return
    raise AssertionError("random bytes decoded")  # pragma: no cover - a 2**-256 chance


@FUZZ
@given(messages, st.data())
def test_any_change_to_a_signed_message_is_refused(msg, data):
    frames = [bytearray(f) for f in encode(msg, SECRET)]
    i = data.draw(st.integers(0, len(frames) - 1))
    frame = frames[i]
    change = data.draw(st.sampled_from(("flip", "cut", "add")))
    if change == "flip" and frame:
        at = data.draw(st.integers(0, len(frame) - 1))
        frame[at] ^= data.draw(st.integers(1, 255))
    elif change == "cut" and frame:
        del frame[data.draw(st.integers(0, len(frame) - 1))]
    else:
        frame.insert(data.draw(st.integers(0, len(frame))), data.draw(st.integers(0, 255)))
    try:
        decode(frames, SECRET)
    except WireError:
        return
    raise AssertionError(f"a {change} in frame {i} was accepted")


@FUZZ
@given(messages, st.data())
def test_signed_headers_with_arbitrary_values_validate_or_raise_wire_error(msg, data):
    frames = encode(msg, SECRET)
    header = msgpack.unpackb(frames[0], raw=False)
    key = data.draw(st.sampled_from([k for k in header if k != "mac"]))
    header[key] = data.draw(msgpack_values)
    body = {k: v for k, v in header.items() if k != "mac"}
    payload = frames[1] if len(frames) == 2 else b""
    mac = hmac.new(SECRET, msgpack.packb(body, use_bin_type=True) + payload, hashlib.sha256).digest()
    resigned = [msgpack.packb({**body, "mac": mac}, use_bin_type=True), *frames[1:]]
    try:
        decoded = decode(resigned, SECRET)
    except WireError:
        return
    assert type(decoded) is type(msg)  # constructed, so its own checks passed


@FUZZ
@given(st.lists(st.tuples(st.integers(-40_000, 40_000), st.sampled_from([b"a" * 16, b"b" * 16, b"c" * 16]),
                          st.integers(0, 20_000)), max_size=30))
def test_the_guard_accepts_each_nonce_once_inside_its_window(events):
    now = [1_000_000]
    guard = ReplayGuard(window_s=30, max_entries=2, clock_ms=lambda: now[0])
    accepted: dict[bytes, int] = {}
    for offset, nonce, advance in events:
        now[0] += advance
        try:
            guard.check(now[0] + offset, nonce)
        except WireError as exc:
            assert exc.reason in ("stale", "replayed")
            continue
        assert abs(offset) <= 30_000
        assert nonce not in accepted or accepted[nonce] < now[0] - 30_000  # seen before only outside the window
        accepted[nonce] = now[0] + offset
