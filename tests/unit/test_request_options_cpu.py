"""Per-request ``droidspeak_pipelined`` / ``droidspeak_link_gbps`` between two runtimes on the
CPU (tests/unit/two_servers.py: real SGLang pools and trees, real ZMQ; CUDA IPC replaced by
cpu_ipc.CpuIpc): the import follows the request's pipelining, the sender sees the request's
rate on DroidSpeak and CacheBlend imports over both planes and paces with it only when
allowed, and malformed values change nothing but a warning.
"""

from __future__ import annotations

import logging
from array import array

import pytest
import torch

from cpu_sglang import require_cpu_sglang

require_cpu_sglang()


from cpu_ipc import CpuIpc  # noqa: E402
from test_pipelined_import_cpu import PIPELINED, SERIAL, gate_export, spy_order  # noqa: E402
from two_servers import (  # noqa: E402
    import_and_match, NUM_LAYERS, PLAN_GROUPS, announce_and_wait, leak_free, request, tiny_llama, two_servers)

CONTEXT = list(range(20, 52))  # 32 tokens
SUFFIX = [3, 4, 5]
PLANS = [{"sender": "coder-a", "receiver": "coder-b", "num_layers": NUM_LAYERS, "groups": PLAN_GROUPS}]


class RecordingPacer:
    def __init__(self, gbps):
        self.gbps, self.sizes = gbps, []

    def consume(self, num_bytes):
        self.sizes.append(num_bytes)
        return 0.0


def record_requests(side) -> list:
    """Every FetchRequest the sender's export handler gets."""
    seen, export = [], side.runtime._export

    def recording(req):
        seen.append(req)
        yield from export(req)

    side.runtime._export = recording
    return seen


def servers(plane="zmq", receiver_settings=None):
    backends = (CpuIpc(registry := {}), CpuIpc(registry)) if plane == "cuda_ipc" else (None, None)
    return two_servers(tiny_llama(), tiny_llama(), receiver_settings, data_planes=(plane, plane),
                       backends=backends)


def ask(a, b, plan, **options):
    """Announce CONTEXT on ``a``, then match it on ``b`` with ``plan`` and ``options``."""
    announce_and_wait(a, b, CONTEXT)
    req = request(CONTEXT + SUFFIX, plan)
    req.sampling_params.custom_params.update(options)
    return import_and_match(b, req)


@pytest.mark.parametrize("setting, value, pipelined", [
    (True, "off", False), (False, "on", True), (True, False, False), (False, True, True), (False, None, False)])
def test_the_request_chooses_pipelining(setting, value, pipelined, monkeypatch):
    with servers(receiver_settings={"plans": PLANS, "pipelined": setting}) as (a, b):
        log = spy_order(monkeypatch, b)
        if pipelined:
            gate_export(a, log)
        options = {} if value is None else {"droidspeak_pipelined": value}
        assert len(ask(a, b, "0:1,3:4", **options).device_indices) == len(CONTEXT)
        assert log == (PIPELINED if pipelined else SERIAL)
        assert b.metrics.fallbacks == [] and leak_free(b)


@pytest.mark.parametrize("plane, pacers", [("zmq", 1), ("cuda_ipc", 2)])
@pytest.mark.parametrize("plan", ["0:1,3:4", "blend:0.25"])
def test_an_allowing_sender_paces_at_the_request_rate(plane, pacers, plan):
    with servers(plane) as (a, b):
        policy, made = a.runtime.export_server.pacing, []
        assert "cuda_ipc" not in a.runtime.planes.senders or a.runtime.planes.senders["cuda_ipc"].pacing is policy  # one policy per server
        policy.allow_request_throttle = True
        policy.make_pacer = lambda gbps: made.append(RecordingPacer(gbps)) or made[-1]
        seen = record_requests(a)
        assert len(ask(a, b, plan, droidspeak_link_gbps=25).device_indices) == len(CONTEXT)
        assert b.metrics.fallbacks == [] and [r.link_gbps for r in seen] == [25.0]
        assert [p.gbps for p in made] == [25.0] * pacers  # cuda_ipc: the E stream and the K/V copy
        kv_bytes = 2 * len(seen[0].reused_layers) * len(CONTEXT) * b.pool.get_key_buffer(0)[0].numel() * 4
        assert sum(sum(p.sizes) for p in made) >= kv_bytes
        assert leak_free(a) and leak_free(b)


def test_a_sender_that_does_not_allow_it_ignores_the_rate(caplog):
    with servers() as (a, b):
        a.runtime.export_server.pacing.make_pacer = lambda gbps: pytest.fail("paced without permission")
        seen = record_requests(a)
        with caplog.at_level(logging.WARNING, logger="sglang_droidspeak.transfer.pacing"):
            assert len(ask(a, b, "reuse", droidspeak_link_gbps=10).device_indices) == len(CONTEXT)
        assert b.metrics.fallbacks == [] and [r.link_gbps for r in seen] == [10.0]
        assert ["allow_request_throttle: false" in r.getMessage() for r in caplog.records] == [True]


def test_malformed_options_keep_the_settings_and_the_answer(caplog):
    with servers() as (a, b):
        seen = record_requests(a)
        with caplog.at_level(logging.WARNING, logger="sglang_droidspeak.sglang.request_options"):
            found = ask(a, b, "reuse", droidspeak_pipelined="sometimes", droidspeak_link_gbps=-1)
        assert len(found.device_indices) == len(CONTEXT) and b.metrics.fallbacks == []
        assert [r.link_gbps for r in seen] == [0.0]
        messages = " ".join(r.getMessage() for r in caplog.records)
        assert "droidspeak_pipelined='sometimes'" in messages and "droidspeak_link_gbps=-1" in messages
        sender_slots = a.tree.match_for_export(array("q", CONTEXT), "coder-b").match.device_indices
        for layer in range(NUM_LAYERS):  # full reuse, same weights: the sender's K/V exactly
            assert torch.equal(b.pool.get_key_buffer(layer)[found.device_indices],
                               a.pool.get_key_buffer(layer)[sender_slots])
