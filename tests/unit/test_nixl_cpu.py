"""The nixl data plane between two runtimes on the CPU: real SGLang pools, allocators and
radix trees, real ZMQ (two_servers.py) and real NIXL agents writing over UCX's TCP
transport on loopback (``UCX_TLS=tcp``): nothing of NIXL is stood in for.

The receiver must end with the same KV as on the ZMQ plane with no E or K/V on the socket;
a zmq-only sender, a dead sender, a failed write and a missing notification each fall
back (zmq for that peer, or a normal prefill with a named reason), the slots freed.
NIXL is an optional extra; CI installs it (scripts/install_cpu.sh). A machine without
it on purpose sets DROIDSPEAK_SKIP_NIXL_TESTS=1.
"""

from __future__ import annotations

import os
import time

import pytest

from cpu_sglang import require_cpu_sglang

require_cpu_sglang()
os.environ.setdefault("UCX_TLS", "tcp")  # before the first agent: loopback TCP, as across hosts
if os.environ.get("DROIDSPEAK_SKIP_NIXL_TESTS") == "1":
    pytest.skip("DROIDSPEAK_SKIP_NIXL_TESTS=1", allow_module_level=True)

from sglang_droidspeak.transfer.planes.nixl.agent import _nixl  # noqa: E402
from test_ipc_cpu import CONTEXT, OTHER, fallback_case, import_and_check, record_sent, settle_early_offer  # noqa: E402
from two_servers import announce_and_wait, tiny_llama, two_servers  # noqa: E402

_nixl()  # NIXL missing fails these tests (PlaneUnavailable names the install)
DONE = ("fetch_done", "")


@pytest.fixture
def nixl_pair(request):
    """``request.param``: the sender's data plane (the receiver is on nixl)."""
    with two_servers(tiny_llama(), tiny_llama(), data_planes=(getattr(request, "param", "nixl"), "nixl")) as (a, b):
        settle_early_offer(a, "nixl")
        a.sent = record_sent(a)
        yield a, b


@pytest.mark.parametrize("plan", ["reuse", "2:3", "0:1,3:4"])
def test_the_receiver_gets_the_reference_kv_and_e_through_nixl(nixl_pair, plan):
    a, b = nixl_pair
    import_and_check(a, b, CONTEXT, plan)
    import_and_check(a, b, OTHER, plan)
    assert a.sent == [DONE, DONE]  # no LayerChunk: E and K/V were NIXL writes
    fetcher, exporter = b.runtime.planes.receiver, a.runtime.planes.senders["nixl"]
    assert fetcher.num_revoked == 0 and list(exporter.offers) == [fetcher.offer.session]  # registered once
    assert a.metrics.bytes["out"] == b.metrics.bytes["in"] > 0


@pytest.mark.parametrize("nixl_pair", ["zmq"], indirect=True)
def test_a_zmq_sender_refuses_and_that_peer_uses_zmq(nixl_pair):
    a, b = nixl_pair
    import_and_check(a, b, CONTEXT, "2:3")
    assert a.sent[0] == ("fetch_error", "") and ("layer_chunk", "k") in a.sent and a.sent[-1] == DONE
    assert b.runtime.planes.receiver.zmq_peers == {a.runtime.export_server.endpoint}
    assert a.metrics.drops == ["unexpected"]  # its offer: no nixl sender there


def test_a_dead_sender_times_out_the_registration_is_revoked_and_it_works_again(nixl_pair):
    a, b = nixl_pair
    import_and_check(a, b, CONTEXT, "reuse")
    announce_and_wait(a, b, OTHER)
    poll = a.runtime.export_server.poll
    a.runtime.export_server.poll = lambda handler, max_requests=16, on_control=None: 0
    fallback_case(a, b, "timeout", tokens=OTHER)
    fetcher = b.runtime.planes.receiver
    assert fetcher.num_revoked == 1 and fetcher.offer.session not in a.runtime.planes.senders["nixl"].offers
    a.runtime.export_server.poll = poll  # it comes back and answers the abandoned request late:
    deadline = time.monotonic() + 10
    while a.sent[-1:] != [("fetch_error", "")] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert a.sent[-1:] == [("fetch_error", "")]  # its late write cannot land: the agent is gone
    b.runtime._backoff_until.clear()
    b.metrics.fallbacks.clear()
    import_and_check(a, b, OTHER[:20] + [9, 9, 9, 9], "reuse")  # the new agent, offered again


def test_a_failed_write_falls_back_with_nixl_error(nixl_pair, monkeypatch):
    a, b = nixl_pair
    announce_and_wait(a, b, CONTEXT)
    exporter = a.runtime.planes.senders["nixl"]

    def fails(*args):
        raise RuntimeError("stand-in for a dead link")

    monkeypatch.setattr(exporter, "_post_kv", fails)
    fallback_case(a, b, "nixl_error")
    assert b.runtime.planes.receiver.num_revoked == 1 and not exporter.offers


def test_a_missing_notification_is_a_protocol_fallback(nixl_pair, monkeypatch):
    a, b = nixl_pair
    announce_and_wait(a, b, CONTEXT)
    exporter = a.runtime.planes.senders["nixl"]
    real = exporter._post_kv

    def skips_a_layer(request, offer, slots, handles):  # the stream claims done, one layer never came
        import dataclasses

        return real(dataclasses.replace(request, reused_layers=request.reused_layers[1:]), offer, slots, handles)

    monkeypatch.setattr(exporter, "_post_kv", skips_a_layer)
    fallback_case(a, b, "protocol")
    assert b.runtime.planes.receiver.num_revoked == 1
