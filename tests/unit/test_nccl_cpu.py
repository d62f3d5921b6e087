"""The nccl data plane between two runtimes on the CPU: real SGLang pools, allocators and
radix trees, real ZMQ (tests/unit/two_servers.py), and a real pair channel over a real
TCPStore, but with gloo standing in for NCCL (``GlooPairBackend``): NCCL needs two GPUs.
tests/gpu/test_nccl_gpu.py opens the real PyNcclCommunicator pair.

The receiver must end with the same KV as on the ZMQ plane, with no E or K/V crossing the
socket; every failure must fall back (ZMQ for that peer, or a normal prefill) with the
slots freed, the pool accounting unchanged and a broken channel torn down.
"""

from __future__ import annotations

import time

import pytest
import torch

from cpu_sglang import require_cpu_sglang

require_cpu_sglang()

from sglang_droidspeak.transfer.planes.nccl.channel import GlooPairBackend, GlooPairChannel, PairChannel  # noqa: E402
from test_ipc_cpu import CONTEXT, OTHER, fallback_case, import_and_check, record_sent  # noqa: E402
from two_servers import NUM_LAYERS, announce_and_wait, leak_free, tiny_llama, two_servers  # noqa: E402

SEND_START, DONE = ("nccl_send_start", ""), ("fetch_done", "")


@pytest.fixture
def nccl_pair(request):
    """Both sides on the nccl plane over gloo; ``request.param``: the sender's (GPU UUID, plane)."""
    gpu, sender_plane = getattr(request, "param", ("GPU-sender", "nccl"))
    backends = (GlooPairBackend(gpu, timeout_s=2.0), GlooPairBackend("GPU-receiver", timeout_s=2.0))
    with two_servers(tiny_llama(), tiny_llama(), data_planes=(sender_plane, "nccl"),
                     backends=backends) as (a, b):
        a.sent = record_sent(a)
        yield a, b


def endpoint(a):
    return a.runtime.export_server.endpoint


@pytest.mark.parametrize("plan", ["reuse", "2:3", "0:1,3:4", "0:4"])
def test_the_receiver_gets_the_reference_kv_over_the_channel(nccl_pair, plan):
    a, b = nccl_pair
    import_and_check(a, b, CONTEXT, plan)
    assert a.sent == [SEND_START, DONE]  # E and K/V went over the (gloo stand-in) channel
    import_and_check(a, b, OTHER, plan)
    assert a.sent == [SEND_START, DONE] * 2
    backend_b, backend_a = b.runtime.planes.receiver.backend, a.runtime.planes.senders["nccl"].backend
    assert (backend_b.num_hosted, backend_a.num_joined) == (1, 1)  # one channel, reused
    assert b.runtime.planes.receiver.channels[endpoint(a)].is_open
    assert a.metrics.bytes["out"] == b.metrics.bytes["in"]  # both ends count the channel's bytes
    assert (b.metrics.bytes["in"] > 0) == (plan != "0:4")  # 0:4 recomputes every layer from E_0: no transfer


@pytest.mark.parametrize("nccl_pair", [("GPU-receiver", "nccl"), ("GPU-sender", "zmq")], indirect=True)
def test_a_same_gpu_or_zmq_sender_refuses_and_that_peer_uses_zmq(nccl_pair):
    a, b = nccl_pair
    import_and_check(a, b, CONTEXT, "reuse")
    assert ("layer_chunk", "k") in a.sent and SEND_START not in a.sent
    assert b.runtime.planes.receiver.zmq_peers == {endpoint(a)} and not b.runtime.planes.receiver.channels
    import_and_check(a, b, OTHER, "reuse")
    assert b.runtime.planes.receiver.backend.num_hosted == 1  # never offered again


def test_a_sender_that_forgot_the_channel_gets_a_new_offer(nccl_pair):
    a, b = nccl_pair
    import_and_check(a, b, CONTEXT, "reuse")
    a.runtime.planes.senders["nccl"].close()  # e.g. the sender restarted
    import_and_check(a, b, OTHER, "reuse")
    assert a.sent == [SEND_START, DONE, ("fetch_error", ""), SEND_START, DONE]
    assert b.runtime.planes.receiver.backend.num_hosted == 2


def test_a_sender_that_dies_mid_transfer_falls_back_and_the_channel_goes(nccl_pair):
    a, b = nccl_pair
    import_and_check(a, b, CONTEXT, "reuse")
    exporter = a.runtime.planes.senders["nccl"]

    def dies(request, slots, e):  # after NcclSendStart: its end closes, it never answers in time
        exporter._drop(request.session)
        time.sleep(1.2)
        return None

    exporter.send = dies
    announce_and_wait(a, b, OTHER)
    reason = "nccl_error" if _peer_reset_is_seen() else "timeout"
    fallback_case(a, b, reason, tokens=OTHER)
    assert endpoint(a) not in b.runtime.planes.receiver.channels  # torn down
    time.sleep(0.3)  # the dead sender's stale answer drains on a closed socket
    del exporter.send
    b.runtime._backoff_until.clear()
    b.metrics.fallbacks.clear()
    import_and_check(a, b, OTHER[:20] + [9, 9, 9, 9], "reuse")  # re-offered: works again
    assert b.runtime.planes.receiver.backend.num_hosted == 2


def _peer_reset_is_seen() -> bool:
    """Whether a gloo recv fails at once when its peer aborts (else it times out)."""
    import threading

    from sglang_droidspeak.transfer.planes.nccl.channel import ChannelError, GlooPairChannel, wait_all

    ends = [GlooPairChannel("probe", 0, 1.0)]
    ends.append(GlooPairChannel("probe", 1, 1.0, "127.0.0.1", ends[0].store_port))
    for end in ends:
        end.begin_open()
    for end in ends:
        end.wait_open(time.monotonic() + 5)
    op = ends[0].recv(torch.empty(4))
    threading.Thread(target=ends[1].close).start()
    try:
        wait_all([op], time.monotonic() + 0.8)
    except ChannelError as exc:
        return "deadline" not in str(exc)
    finally:
        ends[0].close()
    return False


class NeverJoins(PairChannel):
    def begin_open(self):
        pass  # accepted, but never reaches the store


def test_a_sender_that_never_joins_costs_a_zmq_fetch_then_a_torn_down_channel(nccl_pair):
    a, b = nccl_pair
    a.runtime.planes.senders["nccl"].backend.join = lambda channel_id, *args: NeverJoins(channel_id, 1, 1.0)
    b.runtime.planes.receiver.backend.timeout_s = 1.0  # the receiver's store wait
    import_and_check(a, b, CONTEXT, "reuse")  # over ZMQ while the channel is not open
    assert ("layer_chunk", "k") in a.sent and SEND_START not in a.sent
    time.sleep(1.2)  # the receiver's end gives up on the store wait
    import_and_check(a, b, OTHER, "reuse")
    assert not b.runtime.planes.receiver.channels and b.runtime.planes.receiver.backend.num_hosted == 1  # no re-offer yet


def test_a_silent_sender_times_out_the_slots_are_freed_and_the_channel_goes(nccl_pair):
    a, b = nccl_pair
    import_and_check(a, b, CONTEXT, "reuse")
    announce_and_wait(a, b, OTHER)
    a.runtime.export_server.poll = lambda *args, **kwargs: 0
    fallback_case(a, b, "timeout", tokens=OTHER)
    assert endpoint(a) not in b.runtime.planes.receiver.channels


def test_an_evicted_prefix_falls_back_and_keeps_the_channel(nccl_pair):
    a, b = nccl_pair
    from sglang.srt.mem_cache.base_prefix_cache import EvictParams

    import_and_check(a, b, OTHER, "reuse")
    announce_and_wait(a, b, CONTEXT)
    a.runtime.withdraw = lambda tokens, base: None
    a.tree.evict(EvictParams(num_tokens=10_000))
    fallback_case(a, b, "evicted")
    assert b.runtime.planes.receiver.channels[endpoint(a)].is_open
    assert leak_free(a) and leak_free(b) and NUM_LAYERS == 4


def test_pipelined_groups_start_as_their_e_lands_on_the_channel(nccl_pair, monkeypatch):
    """Plan 0:1,3:4 over the channel: group 0 before anything arrives, group 3 right after
    E_3 (it waits for E_3's copy only), then the reused layers' K/V; the KV stays exact."""
    from sglang_droidspeak.sglang import import_receiver
    from test_pipelined_import_cpu import wait_logged
    a, b = nccl_pair
    log, real_take, engine = [], import_receiver._Receiver.put, b.runtime.parts.engine
    real_run, real_send = engine.run, GlooPairChannel.send

    def put(self, what, layer, tensor):
        log.append((what, layer))
        return real_take(self, what, layer, tensor)

    def run(segments, rows, start, end, capture=()):
        log.append(("group", start))
        return real_run(segments, rows, start, end, capture)

    sends = []

    def send(self, tensor):  # the sender's channel: E_3 first, then the reused K/V (tensor_order)
        wait_logged(log, ("group", 3 if sends else 0))  # gate: the order is deterministic
        sends.append(tensor.shape)
        return real_send(self, tensor)

    monkeypatch.setattr(import_receiver._Receiver, "put", put)
    monkeypatch.setattr(engine, "run", run)
    monkeypatch.setattr(GlooPairChannel, "send", send)
    import_and_check(a, b, CONTEXT, "0:1,3:4")
    assert a.sent == [SEND_START, DONE]
    assert log == [("group", 0), ("e", 3), ("group", 3), ("k", 1), ("v", 1), ("k", 2), ("v", 2)]
