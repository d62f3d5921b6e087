"""FetchServer / FetchClient over real ZMQ sockets on 127.0.0.1."""

from __future__ import annotations

import threading
import time

import pytest
import torch
import zmq

from fetch_serving import Serving
from sglang_droidspeak.transfer import wire
from sglang_droidspeak.transfer.errors import FetchFailed
from sglang_droidspeak.transfer.fetch import PENDING, FetchServer
from sglang_droidspeak.transfer.fetch_client import FetchClient
from sglang_droidspeak.transfer.frames import FetchDone, FetchError, FetchRequest, LayerChunk

SECRET = b"s" * 32


def request(rid="r1", tokens=(1, 2, 3)):
    return FetchRequest(rid, "a", "b", "fp", tuple(tokens), (1, 2), (1,), 0)


def chunks_for(req):
    e = torch.arange(6, dtype=torch.float32).view(3, 2)
    yield LayerChunk.from_tensor(req.request_id, "e", 1, 0, e)
    yield LayerChunk.from_tensor(req.request_id, "k", 1, 0, e + 1)
    yield FetchDone(req.request_id, 2)


def fetch_failure(client, handler) -> FetchFailed:
    """The FetchFailed a fetch from a server answering with ``handler`` raises."""
    serving = Serving(handler, SECRET)
    try:
        with pytest.raises(FetchFailed) as info:
            client.fetch(serving.server.endpoint, request(), lambda c: None, timeout_s=5)
        return info.value
    finally:
        serving.close()


def eventually(condition, timeout_s: float = 5.0) -> bool:
    """The server thread counts a request as served after its last frame is sent, so the
    client can hold the answer a moment before the count moves (seen as a flaky failure)."""
    deadline = time.time() + timeout_s
    while not condition() and time.time() < deadline:
        time.sleep(0.005)
    return condition()


@pytest.fixture
def client():
    c = FetchClient(SECRET)
    yield c
    c.close()


def test_roundtrip_delivers_chunks_in_order(client):
    serving = Serving(chunks_for, SECRET)
    try:
        got = []
        done = client.fetch(serving.server.endpoint, request(), got.append, timeout_s=5)
        assert done == FetchDone("r1", 2)
        assert [(c.what, c.layer) for c in got] == [("e", 1), ("k", 1)]
        assert got[1].to_tensor().tolist() == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
        assert eventually(lambda: serving.server.num_served == 1)
        times = client.last_exchange  # the exchange's timeline, for the slow-fetch log
        assert times.num_chunks == 2 and 0 <= times.first_ms <= times.done_ms
        assert abs(times.sent_ms - 1e3 * time.monotonic()) < 5000 and times.chunk_ms >= 0
    finally:
        serving.close()


def test_a_pending_answer_is_parked_and_resumed_while_other_requests_are_served(client):
    """A handler waiting for the GPU yields PENDING: the server goes on polling (answering
    another client meanwhile) and sends the parked answer once it is ready."""
    ready = threading.Event()

    def handler(req):
        if req.request_id == "slow":
            while not ready.is_set():
                yield PENDING
        yield from chunks_for(req)

    serving, other = Serving(handler, SECRET), FetchClient(SECRET)
    try:
        got, result = [], {}
        slow = threading.Thread(target=lambda: result.setdefault("done", client.fetch(
            serving.server.endpoint, request("slow"), got.append, timeout_s=5)))
        slow.start()
        assert eventually(lambda: serving.server.num_parked == 1)
        fast = []
        other.fetch(serving.server.endpoint, request("fast"), fast.append, timeout_s=5)  # served while parked
        assert len(fast) == 2 and got == [] and serving.server.num_parked == 1
        ready.set()
        slow.join(5)
        assert result["done"] == FetchDone("slow", 2) and [c.what for c in got] == ["e", "k"]
        assert serving.server.num_parked == 0
    finally:
        other.close()
        serving.close()


def test_closing_the_server_closes_parked_answers():
    closed = []

    def handler(req):
        try:
            while True:
                yield PENDING
        finally:
            closed.append(req.request_id)

    server, client = FetchServer("tcp://127.0.0.1:*", SECRET), FetchClient(SECRET)
    try:
        sock = client._socket(server.endpoint)
        sock.send_multipart(wire.encode(request("r9"), SECRET))
        assert eventually(lambda: server.poll(handler) >= 0 and server.num_parked == 1)
    finally:
        server.close()
        client.close()
    assert closed == ["r9"]


def test_sender_error_is_raised_with_its_code(client):
    assert fetch_failure(client, lambda req: [FetchError(req.request_id, "evicted", "gone")]).code == "evicted"


def test_handler_exception_becomes_internal_error(client):
    def broken(req):
        yield LayerChunk.from_tensor(req.request_id, "e", 1, 0, torch.zeros(3, 2))
        raise RuntimeError("boom")

    failure = fetch_failure(client, broken)
    assert failure.code == "internal" and "boom" in str(failure)


def test_chunk_count_mismatch_is_a_protocol_error(client):
    assert fetch_failure(client, lambda req: [FetchDone(req.request_id, 3)]).code == "protocol"


def test_silent_peer_times_out_and_idle_runs(client):
    server = FetchServer("tcp://127.0.0.1:*", SECRET)  # never polled
    ticks = []
    try:
        with pytest.raises(FetchFailed) as info:
            client.fetch(server.endpoint, request(), lambda c: None, timeout_s=0.2, idle=lambda: ticks.append(1))
        assert info.value.code == "timeout"
        assert len(ticks) >= 5  # idle ran while waiting
        assert client.last_exchange[1:4] == (-1.0, -1.0, 0)  # no answer, no end, no chunk
    finally:
        server.close()


def test_unauthenticated_request_gets_nothing_and_server_survives(client):
    serving = Serving(chunks_for, SECRET)
    try:
        intruder = FetchClient(b"x" * 32)
        with pytest.raises(FetchFailed) as info:
            intruder.fetch(serving.server.endpoint, request("evil"), lambda c: None, timeout_s=0.3)
        assert info.value.code == "timeout"
        intruder.close()
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.connect(serving.server.endpoint)
        raw.send_multipart([b"\x00garbage", b"more"])
        deadline = time.time() + 5
        while serving.server.num_dropped < 2 and time.time() < deadline:
            time.sleep(0.01)
        raw.close(0)
        done = client.fetch(serving.server.endpoint, request("ok"), lambda c: None, timeout_s=5)
        assert done.request_id == "ok"
        assert eventually(lambda: serving.server.num_served == 1) and serving.server.num_dropped == 2
    finally:
        serving.close()


def test_late_answer_to_an_abandoned_request_is_ignored(client):
    serving = Serving(chunks_for, SECRET)
    try:
        socket = client._socket(serving.server.endpoint)
        socket.send_multipart(wire.encode(request("old"), SECRET))  # answer arrives unread
        got = []
        done = client.fetch(serving.server.endpoint, request("new"), got.append, timeout_s=5)
        assert done.request_id == "new" and {c.request_id for c in got} == {"new"}
    finally:
        serving.close()
