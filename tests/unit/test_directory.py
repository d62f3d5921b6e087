"""Prefix directory: PrefixAnnounce on the wire, and Announcer -> DirectoryListener over
real ZMQ sockets on 127.0.0.1 (inproc only for the send-queue-full case)."""

from __future__ import annotations

import random
import threading
import time

import pytest
import zmq

from sglang_droidspeak.transfer import wire
from sglang_droidspeak.transfer.directory import POLL_MS, Announcer, DirectoryListener
from sglang_droidspeak.transfer.frames import FetchDone, PrefixAnnounce
from sglang_droidspeak.transfer.schema import WireError
from sglang_droidspeak.transfer.wire import WireLimits

SECRET = b"0123456789abcdef-dir-secret"
OTHER_SECRET = b"fedcba9876543210-dir-secret"
LOCAL = "tcp://127.0.0.1:*"


def _announce(*token_ids: int, stored: int = 1, base: str = "") -> PrefixAnnounce:
    return PrefixAnnounce("llama-a", "fp:abc", base, token_ids, "tcp://10.0.0.7:5601", stored)


def _wait(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()


def _connect(send, got: list, timeout: float = 5.0) -> None:
    """Publish until the subscription is live, then send a fence and wait for it: from then
    on this publisher's messages arrive complete and in order. Empties ``got``."""
    deadline = time.monotonic() + timeout
    while not got:
        assert time.monotonic() < deadline, "subscription never became live"
        send(_announce(999_000))
        _wait(lambda: bool(got), timeout=0.02)
    fence = _announce(999_001)
    send(fence)
    assert _wait(lambda: fence in got)
    got.clear()


@pytest.fixture
def collected():
    """(announces received, listener factory); every listener is closed afterwards."""
    got: list[PrefixAnnounce] = []
    listeners: list[DirectoryListener] = []

    def make(endpoints, on_announce=got.append, **kwargs):
        listeners.append(DirectoryListener(endpoints, SECRET, on_announce, **kwargs))
        return listeners[-1]

    yield got, make
    for listener in listeners:
        listener.close()


def test_prefix_announce_round_trip_and_validation():
    msg = _announce(1, 17, 4095, stored=0, base="lora-x")
    frames = wire.encode(msg, SECRET)
    assert len(frames) == 1 and wire.decode(frames, SECRET) == msg
    assert msg.kind == "prefix_announce"
    with pytest.raises(WireError, match="PrefixAnnounce.stored must be 0 or 1, got 2"):
        _announce(1, stored=2)
    with pytest.raises(WireError, match="PrefixAnnounce.token_ids must be non-empty"):
        _announce()
    with pytest.raises(WireError, match="PrefixAnnounce.sender_model must be non-empty"):
        PrefixAnnounce("", "fp", "", (1,), "", 1)
    with pytest.raises(WireError, match="PrefixAnnounce.token_ids must be tuple of ints"):
        PrefixAnnounce("a", "fp", "", (1, -1), "", 1)
    with pytest.raises(WireError, match="PrefixAnnounce.base must be str"):
        PrefixAnnounce("a", "fp", None, (1,), "", 1)


def test_valid_announce_arrives_with_exact_fields(collected):
    got, make = collected
    with Announcer(LOCAL, SECRET) as announcer:
        assert announcer.endpoint.startswith("tcp://127.0.0.1:")
        listener = make([announcer.endpoint])
        _connect(announcer.publish, got)
        sent = _announce(5, 6, 7, stored=0, base="ns")
        assert announcer.publish(sent) is True
        assert _wait(lambda: len(got) == 1)
        (out,) = got
        assert (out.sender_model, out.fingerprint, out.base, out.token_ids,
                out.fetch_endpoint, out.stored) == (
                    "llama-a", "fp:abc", "ns", (5, 6, 7), "tcp://10.0.0.7:5601", 0)
        assert listener.num_dropped == 0 and listener.num_callback_errors == 0
    assert announcer.publish(sent) is False  # closed: refused, never raises
    with pytest.raises(TypeError, match="PrefixAnnounce"):
        announcer.publish(FetchDone("r", 1))


def test_other_secret_dropped_and_listener_keeps_working(collected):
    got, make = collected
    with Announcer(LOCAL, SECRET) as good, Announcer(LOCAL, OTHER_SECRET) as bad:
        listener = make([good.endpoint, bad.endpoint])
        assert _wait(lambda: bad.publish(_announce(1)) and listener.num_dropped >= 1)
        assert got == []  # nothing signed with the other secret got through
        _connect(good.publish, got)
        assert good.publish(_announce(2, 3)) is True
        assert _wait(lambda: got == [_announce(2, 3)])
        assert listener.num_received >= 3  # sync + fence + this one


def test_garbage_and_foreign_frames_dropped_with_exact_counts(collected):
    got, make = collected
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(LOCAL)
    try:
        listener = make([pub.getsockopt(zmq.LAST_ENDPOINT).decode()],
                        limits=WireLimits(max_tokens=2))
        _connect(lambda m: pub.send_multipart(wire.encode(m, SECRET)), got)
        base_received, base_dropped = listener.num_received, listener.num_dropped
        good = wire.encode(_announce(4, 5), SECRET)[0]
        garbage = [
            [random.Random(7).randbytes(40)],  # random bytes, one frame
            [good, b"x", b"y"],  # too many frames
            [good, b""],  # a payload frame for a payload-less kind
            wire.encode(_announce(4, 5), OTHER_SECRET),  # wrong secret
            wire.encode(FetchDone("r1", 3), SECRET),  # valid, but another kind
            wire.encode(_announce(1, 2, 3), SECRET),  # 3 token ids > max_tokens 2
        ]
        for frames in garbage:
            pub.send_multipart(frames)
        pub.send_multipart([good])
        assert _wait(lambda: got == [_announce(4, 5)])
        assert listener.num_dropped - base_dropped == 6
        assert listener.num_received - base_received == 1
    finally:
        pub.close(linger=0)


def test_on_announce_raising_does_not_kill_the_thread(collected):
    got, make = collected

    def on_announce(msg: PrefixAnnounce) -> None:
        if msg.token_ids == (666,):
            raise RuntimeError("callback bug")
        got.append(msg)

    with Announcer(LOCAL, SECRET) as announcer:
        listener = make([announcer.endpoint], on_announce=on_announce)
        _connect(announcer.publish, got)
        announcer.publish(_announce(666))
        announcer.publish(_announce(8))
        assert _wait(lambda: got == [_announce(8)])
        assert listener.num_callback_errors == 1 and listener.num_dropped == 0


def test_close_returns_promptly_and_is_idempotent():
    with Announcer(LOCAL, SECRET) as announcer:
        listener = DirectoryListener([announcer.endpoint], SECRET, lambda m: None)
        time.sleep(0.05)
        start = time.monotonic()
        listener.close()
        elapsed = time.monotonic() - start
        assert elapsed < 0.2 and elapsed < 3 * POLL_MS / 1000 + 0.05
        assert not listener._thread.is_alive()
        listener.close()
    assert not any(t.name == "droidspeak-directory" and t.is_alive()
                   for t in threading.enumerate())


def test_publish_returns_false_when_queue_full_without_blocking():
    context = zmq.Context()
    try:
        announcer = Announcer("inproc://dir-hwm", SECRET, context=context, send_hwm=2)
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 2)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect("inproc://dir-hwm")  # never reads
        start, results = time.monotonic(), []
        while time.monotonic() - start < 5.0 and False not in results:
            results.append(announcer.publish(_announce(len(results) + 1)))
        assert results[-1] is False and time.monotonic() - start < 5.0
        queued = []  # inproc queue = send_hwm + RCVHWM = 4 messages, consecutive, in order
        while sub.poll(100):
            queued.append(wire.decode(sub.recv_multipart(), SECRET).token_ids[0])
        assert queued == list(range(len(results) - 4, len(results)))
        assert announcer.publish(_announce(77)) is True  # drained: accepted again
        sub.close(linger=0)
        announcer.close()
    finally:
        context.term()


def test_bad_arguments():
    with pytest.raises(WireError, match="secret"):
        Announcer(LOCAL, b"short")
    with pytest.raises(WireError, match="secret"):
        DirectoryListener([], b"short", lambda m: None)
    with pytest.raises(TypeError, match="sequence of endpoint strings"):
        DirectoryListener("tcp://127.0.0.1:1", SECRET, lambda m: None)
    with pytest.raises(zmq.ZMQError):
        DirectoryListener(["nonsense://x"], SECRET, lambda m: None)


def test_a_listener_without_a_thread_takes_announcements_only_when_polled(collected):
    """threaded=False (the runtime's listeners, read in the scheduler tick): nothing is taken
    between polls, everything that arrived is taken by one poll, in order; after close a
    poll does nothing."""
    got, make = collected
    announcer = Announcer(LOCAL, SECRET)
    listener = make([announcer.endpoint], threaded=False)
    try:
        def send_and_poll(msg):
            announcer.publish(msg)
            time.sleep(0.005)
            listener.poll()

        _connect(send_and_poll, got)
        msgs = [_announce(i) for i in range(1, 6)]
        for msg in msgs:
            announcer.publish(msg)
        time.sleep(0.2)  # delivered to the socket, not taken: no thread reads it
        assert got == []
        assert _wait(lambda: listener.poll() or got == msgs)
        listener.close()
        listener.close()  # idempotent
        announcer.publish(_announce(7))
        listener.poll()
        assert got == msgs and listener.num_received >= 5
    finally:
        announcer.close()


def test_a_threaded_listener_refuses_a_poll_from_outside(collected):
    _, make = collected
    with Announcer(LOCAL, SECRET) as announcer:
        with pytest.raises(RuntimeError, match="own thread"):
            make([announcer.endpoint]).poll()
