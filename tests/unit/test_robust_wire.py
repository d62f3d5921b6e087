"""Regressions for the wire: replayed, stale and oversized frames, against real ZMQ sockets."""

from __future__ import annotations

import time

import msgpack
import pytest
import zmq

from sglang_droidspeak.transfer import (
    FetchDone, FetchRequest, ReplayedMessage, ReplayGuard, StaleMessage, Unauthenticated, WireLimits, decode, encode)
from sglang_droidspeak.transfer import wire
from sglang_droidspeak.transfer.directory import Announcer, DirectoryListener
from sglang_droidspeak.transfer.fetch import FetchServer
from sglang_droidspeak.transfer.fetch_client import FetchClient

SECRET = b"robust-wire-secret-16+"
LOCAL = "tcp://127.0.0.1:*"
REQUEST = FetchRequest("r1", "a", "b", "fp", (1, 2, 3), (0,), (), 0)


def _dealer(endpoint):
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(endpoint)
    return socket


def _poll_until(server, handler, condition, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        server.poll(handler)
        time.sleep(0.005)
    return condition()


def test_a_replayed_fetch_request_is_served_once_and_counted():
    reasons = []
    server = FetchServer(LOCAL, SECRET, on_drop=reasons.append)
    served = []
    dealer = _dealer(server.endpoint)
    try:
        frames = encode(REQUEST, SECRET)
        dealer.send_multipart(frames)
        dealer.send_multipart(frames)  # a captured frame sent again
        handler = lambda request: (served.append(request), iter([FetchDone(request.request_id, 0)]))[1]  # noqa: E731
        assert _poll_until(server, handler, lambda: server.num_dropped == 1)
        assert served == [REQUEST] and server.num_served == 1
        assert dict(server.drops.counts) == {"replayed": 1} and reasons == ["replayed"]
    finally:
        dealer.close(0)
        server.close()


def test_stale_and_future_timestamps_are_refused():
    now = [10_000_000]
    guard = ReplayGuard(window_s=30, clock_ms=lambda: now[0])
    frames = encode(FetchDone("r1", 0), SECRET)
    now[0] = msgpack.unpackb(frames[0], raw=False)["ts"] + 31_000
    with pytest.raises(StaleMessage, match=r"timestamp -31.0 s from now is outside the 30 s window"):
        decode(frames, SECRET, replay=guard)
    now[0] -= 62_000
    with pytest.raises(StaleMessage, match=r"timestamp \+31.0 s from now"):
        decode(frames, SECRET, replay=guard)
    now[0] += 31_000
    assert decode(frames, SECRET, replay=guard) == FetchDone("r1", 0)
    with pytest.raises(ReplayedMessage, match="nonce already seen"):
        decode(frames, SECRET, replay=guard)


def test_the_replay_cache_fails_closed_when_full():
    guard = ReplayGuard(window_s=30, max_entries=2, clock_ms=lambda: 0)
    guard.check(0, b"a" * 16)
    guard.check(0, b"b" * 16)
    with pytest.raises(ReplayedMessage, match=r"replay cache full \(2 messages in 30 s\)"):
        guard.check(0, b"c" * 16)
    assert len(guard) == 2


def test_an_unauthenticated_header_is_refused_before_it_is_parsed(monkeypatch):
    frames = encode(REQUEST, b"another-secret-of-16+")
    monkeypatch.setattr(wire.msgpack, "unpackb", lambda *a, **k: pytest.fail("parsed before the MAC"))
    with pytest.raises(Unauthenticated, match="MAC mismatch"):
        decode(frames, SECRET)


def test_every_network_socket_sets_maxmsgsize():
    limits = WireLimits(max_frame_bytes=4096, max_header_bytes=1024)
    server, client = FetchServer(LOCAL, SECRET, limits=limits), FetchClient(SECRET, limits=limits)
    announcer = Announcer(LOCAL, SECRET)
    listener = DirectoryListener([announcer.endpoint], SECRET, lambda m: None, limits=limits)
    try:
        assert server.socket.getsockopt(zmq.MAXMSGSIZE) == 1024
        assert client._socket(server.endpoint).getsockopt(zmq.MAXMSGSIZE) == 4096
        assert announcer._socket.getsockopt(zmq.MAXMSGSIZE) == 256
        assert listener._socket.getsockopt(zmq.MAXMSGSIZE) == 1024
    finally:
        listener.close()
        announcer.close()
        client.close()
        server.close()


def test_an_oversized_frame_never_reaches_the_server_and_it_keeps_serving():
    server = FetchServer(LOCAL, SECRET, limits=WireLimits(max_header_bytes=1024))
    big, good = _dealer(server.endpoint), _dealer(server.endpoint)
    served = []
    try:
        big.send(b"x" * 4096)  # ZMQ disconnects this peer: nothing is buffered or delivered
        time.sleep(0.2)
        assert server.poll(lambda r: iter(())) == 0 and server.num_dropped == 0
        good.send_multipart(encode(REQUEST, SECRET))
        assert _poll_until(server, lambda r: (served.append(r), iter([FetchDone(r.request_id, 0)]))[1],
                           lambda: served == [REQUEST])
    finally:
        big.close(0)
        good.close(0)
        server.close()
