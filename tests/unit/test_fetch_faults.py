"""FetchClient under faults: a sender process that dies mid-stream, and raw garbage replies.

The dying sender is a real separate Python process (a script written to tmp_path) running
a FetchServer whose handler sends three LayerChunks and then ``os._exit``s. The garbage
replies come from a raw ZMQ ROUTER that the client's own ``idle`` hook services, so the
order of events is deterministic. After every fault the same FetchClient must complete a
fetch from a healthy sender at the same endpoint.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fetch_serving import Serving
import torch
import zmq

from sglang_droidspeak.transfer import wire
from sglang_droidspeak.transfer.errors import FetchFailed
from sglang_droidspeak.transfer.fetch_client import FetchClient
from sglang_droidspeak.transfer.frames import FetchDone, FetchRequest, LayerChunk
from sglang_droidspeak.transfer.wire import WireLimits

SECRET = b"s" * 32
REPO = Path(__file__).resolve().parents[2]
EXIT_CODE = 17
DYING_SENDER = textwrap.dedent(f"""
    import os, sys, time
    import torch
    from sglang_droidspeak.transfer.fetch import FetchServer
    from sglang_droidspeak.transfer.frames import LayerChunk

    def handler(request):
        for layer in range(3):
            yield LayerChunk.from_tensor(request.request_id, "k", layer, 0, torch.full((2, 2), layer + 1.0))
        time.sleep(0.3)  # ZMQ's I/O thread flushes the three chunks
        os._exit({EXIT_CODE})  # killed mid-stream: no FetchDone, no FetchError

    server = FetchServer("tcp://127.0.0.1:*", {SECRET!r})
    print(server.endpoint, flush=True)
    while True:
        server.poll(handler)
        time.sleep(0.002)
""")


def request(rid="r1"):
    return FetchRequest(rid, "a", "b", "fp", (1, 2, 3), (0, 1, 2), (), 0)


def chunk(rid, layer=0, numel=4):
    return LayerChunk.from_tensor(rid, "k", layer, 0, torch.arange(numel, dtype=torch.float32).view(-1, 2))


def healthy(req):
    yield chunk(req.request_id)
    yield FetchDone(req.request_id, 1)


def read_line(proc, timeout):
    """The subprocess's first stdout line, or fail after ``timeout`` seconds."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the sender process printed no endpoint"
    return proc.stdout.readline().strip()


@pytest.fixture
def client():
    c = FetchClient(SECRET, limits=WireLimits(max_frame_bytes=1024))
    yield c
    c.close()


def test_sender_killed_mid_stream_times_out_then_a_restarted_sender_works(client, tmp_path):
    script = tmp_path / "dying_sender.py"
    script.write_text(DYING_SENDER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        endpoint = read_line(proc, timeout=120)
        got = []
        start = time.monotonic()
        with pytest.raises(FetchFailed) as failed:
            client.fetch(endpoint, request(), got.append, timeout_s=1.0)
        assert failed.value.code == "timeout" and 0.9 < time.monotonic() - start < 2.0
        assert [(c.layer, c.to_tensor()[0, 0].item()) for c in got] == [(0, 1.0), (1, 2.0), (2, 3.0)]
        assert proc.wait(timeout=10) == EXIT_CODE
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    serving = Serving(healthy, SECRET, endpoint)  # the sender comes back on the same port
    try:
        got = []
        done = client.fetch(endpoint, request("r2"), got.append, timeout_s=5.0)
        assert (done.request_id, done.num_chunks, len(got)) == ("r2", 1, 1)
    finally:
        serving.close()


def truncated(rid):
    return [wire.encode(chunk(rid), SECRET)[:1]]  # header frame only


def bit_flipped(rid):
    header, payload = wire.encode(chunk(rid), SECRET)
    flipped = bytearray(payload)
    flipped[5] ^= 0x04
    return [[header, bytes(flipped)]]


def oversized(rid):
    return [wire.encode(chunk(rid, numel=512), SECRET)]  # 2 KiB payload > max_frame_bytes 1 KiB


def not_msgpack(rid):
    return [[b"\xc1garbage"]]


def corrupt_stream(bad):
    """``bad(rid)`` twice (a corrupt stream goes on being corrupt), then a FetchDone."""
    return lambda rid: bad(rid) + bad(rid) + [wire.encode(FetchDone(rid, 0), SECRET)]


def healthy_stream(rid):
    return [wire.encode(chunk(rid), SECRET), wire.encode(FetchDone(rid, 1), SECRET)]


class RawRouter:
    """A raw ROUTER answering each request with the frames ``replies(rid)``; serviced by
    the client's ``idle`` hook, so it answers only while the client waits."""

    def __init__(self, replies):
        self.replies = replies
        self.socket = zmq.Context.instance().socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind("tcp://127.0.0.1:*")
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def serve(self):
        try:
            identity, *frames = self.socket.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        for reply in self.replies(wire.decode(frames, SECRET).request_id):
            self.socket.send_multipart([identity, *reply])


@pytest.mark.parametrize("bad, code", [(truncated, "protocol"), (bit_flipped, "protocol"), (not_msgpack, "protocol"),
                                       (oversized, "timeout")])  # MAXMSGSIZE: ZMQ drops the peer, no frame arrives
def test_malformed_reply_is_a_protocol_error_and_the_client_recovers(client, bad, code):
    router = RawRouter(corrupt_stream(bad))
    try:
        got = []
        start = time.monotonic()
        with pytest.raises(FetchFailed) as failed:
            client.fetch(router.endpoint, request(), got.append, timeout_s=1.0, idle=router.serve)
        assert failed.value.code == code and got == [] and time.monotonic() - start < (0.9 if code == "protocol" else 2)
        time.sleep(0.05)  # the rest of the corrupt stream reaches the client
        router.replies = healthy_stream
        done = client.fetch(router.endpoint, request("r2"), got.append, timeout_s=1.0, idle=router.serve)
        assert (done.request_id, done.num_chunks, len(got)) == ("r2", 1, 1)
    finally:
        router.socket.close(0)
