"""The pipelined import on the CPU (streams and events are no-ops; the order is real).

Same two servers as test_cross_model_cpu.py (tests/unit/two_servers.py), with the
receiver's ``pipelined`` setting on and off: exact K/V for every plan shape, the order of
group launches against chunk arrivals (the sender's stream is gated on the receiver's
launches, so the order is deterministic across the three threads), a failure in the
middle of a pipelined import, and which chunks a job offers under a token budget.
"""

from __future__ import annotations

import pytest
import torch

from cpu_sglang import require_cpu_sglang

require_cpu_sglang()

import time  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from sglang_droidspeak.plan.layer_plan import LayerPlan  # noqa: E402
from sglang_droidspeak.reference import ReferenceModel  # noqa: E402
from sglang_droidspeak.sglang import import_receiver, importer  # noqa: E402
from sglang_droidspeak.sglang.import_job import ImportJob  # noqa: E402
from sglang_droidspeak.sglang.request_plan import parse_plan_choice  # noqa: E402
from two_servers import (  # noqa: E402
    import_and_match, NUM_LAYERS, PLAN_GROUPS, announce_and_wait, leak_free, request, tiny_llama, tiny_pair_models, two_servers)

CONTEXT = list(range(20, 52))  # 32 tokens: one block per (what, layer)
SUFFIX = [3, 4, 5]


def settings(pipelined: bool) -> dict:
    plans = [{"sender": "coder-a", "receiver": "coder-b", "num_layers": NUM_LAYERS, "groups": PLAN_GROUPS}]
    return {"plans": plans, "pipelined": pipelined}


@pytest.fixture
def pair(request):
    same, pipelined = request.param
    with two_servers(*tiny_pair_models(same), settings(pipelined)) as sides:
        yield sides


def match(side, tokens, plan):
    req = request(tokens, plan)
    return import_and_match(side, req)


@pytest.mark.parametrize("pair", [(False, True), (False, False), (True, True)], indirect=True)
@pytest.mark.parametrize("plan", [None, "0:4", "2:3", "reuse", "0:1,3:4", "0:2"])
def test_every_plan_is_exact(pair, plan):
    a, b = pair
    cache = announce_and_wait(a, b, CONTEXT)
    found = match(b, CONTEXT + SUFFIX, plan)
    assert len(found.device_indices) == len(CONTEXT) and b.metrics.fallbacks == []
    layer_plan = LayerPlan(NUM_LAYERS, ((1, 3),)) if plan is None else parse_plan_choice(plan, NUM_LAYERS)
    expected = ReferenceModel(b.model).build_receiver_cache(cache, layer_plan, torch.tensor(CONTEXT))
    for layer in range(NUM_LAYERS):
        torch.testing.assert_close(b.pool.get_key_buffer(layer)[found.device_indices],
                                   expected.k[layer].transpose(0, 1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b.pool.get_value_buffer(layer)[found.device_indices],
                                   expected.v[layer].transpose(0, 1), atol=1e-5, rtol=1e-5)
    assert b.metrics.hits == [("remote", len(CONTEXT), layer_plan.num_recomputed_layers)]
    assert leak_free(b) and leak_free(a)


def spy_order(monkeypatch, receiver) -> list:
    """Log ("chunk", what, layer) per arriving chunk (the fetch worker) and ("group", start)
    per engine forward of ``receiver``'s imports (its scheduler thread)."""
    log = []
    real_call, engine = import_receiver._Receiver.__call__, receiver.runtime.parts.engine
    real_run = engine.run

    def on_chunk(self, chunk):
        log.append(("chunk", chunk.what, chunk.layer))
        return real_call(self, chunk)

    def run(segments, rows, start, end, capture=()):
        log.append(("group", start))
        return real_run(segments, rows, start, end, capture)

    monkeypatch.setattr(import_receiver._Receiver, "__call__", on_chunk)
    monkeypatch.setattr(engine, "run", run)
    return log


def wait_logged(log, entry, timeout=5.0):
    deadline = time.time() + timeout
    while entry not in log:
        assert time.time() < deadline, f"{entry} was never logged: {log}"
        time.sleep(0.001)


def gate_export(sender, log, die_at_first_k=False):
    """The sender's stream waits for group 0 before its first frame and for group 3 right
    after E_3 (pipelined imports launch them meanwhile); optionally dies at the first K."""
    real = sender.runtime._export

    def gated(request):
        wait_logged(log, ("group", 0))
        for msg in real(request):
            if die_at_first_k and getattr(msg, "what", None) == "k":
                raise RuntimeError("sender died mid-stream")
            yield msg
            if (getattr(msg, "what", None), getattr(msg, "layer", None)) == ("e", 3):
                wait_logged(log, ("group", 3))

    sender.runtime._export = gated


ARRIVALS = [("chunk", "e", 3), ("chunk", "k", 1), ("chunk", "v", 1), ("chunk", "k", 2), ("chunk", "v", 2)]
PIPELINED = [("group", 0), ARRIVALS[0], ("group", 3), *ARRIVALS[1:]]
SERIAL = [*ARRIVALS, ("group", 0), ("group", 3)]


@pytest.mark.parametrize("pair", [(False, True), (False, False)], indirect=True)
def test_groups_start_as_soon_as_their_input_lands(pair, monkeypatch):
    """Plan 0:1,3:4: group 0 before any chunk, group 3 right after E_3 (pipelined)."""
    a, b = pair
    announce_and_wait(a, b, CONTEXT)
    log = spy_order(monkeypatch, b)
    if b.runtime.settings.pipelined:
        gate_export(a, log)
    assert len(match(b, CONTEXT + SUFFIX, "0:1,3:4").device_indices) == len(CONTEXT)
    assert log == (PIPELINED if b.runtime.settings.pipelined else SERIAL)


@pytest.mark.parametrize("pair", [(False, True)], indirect=True)
def test_failure_mid_pipelined_import_frees_everything(pair, monkeypatch):
    """The sender fails after E_3, when both groups already wrote K/V into the slots."""
    a, b = pair
    announce_and_wait(a, b, CONTEXT)
    log = spy_order(monkeypatch, b)
    gate_export(a, log, die_at_first_k=True)
    available = b.allocator.available_size()
    found = match(b, CONTEXT + SUFFIX, "0:1,3:4")
    assert log == [("group", 0), ARRIVALS[0], ("group", 3)]
    assert len(found.device_indices) == 0 and b.metrics.fallbacks == ["internal"] and b.metrics.hits == []
    assert b.allocator.available_size() == available and leak_free(b)
    assert b.tree.evictable_size() == 0  # nothing inserted


def job_of(plan, num_tokens, pipelined):
    """An ImportJob with only what ``ready_items`` reads (its fetch and E arrivals set by hand)."""
    return ImportJob("r", None, None, plan, "ns", [], torch.arange(num_tokens), None, None, None,
                     SimpleNamespace(), pipelined, deadline=0.0)


def test_ready_items_follow_their_inputs_the_budget_and_the_chunk_order():
    plan = LayerPlan(8, ((0, 2), (3, 4), (6, 8)))
    job = job_of(plan, 20, pipelined=True)
    first = job.ready_items(budget=100, chunk_tokens=8)
    assert [(i.group.start, i.begin, i.end) for i in first] == [(0, 0, 8)]  # only s = 0 needs nothing
    job.e_landed.append(6)
    job.launched(first[0], None)
    assert [(i.group.start, i.begin, i.end) for i in job.ready_items(100, 8)] == [(0, 8, 16), (6, 0, 8)]
    assert [(i.group.start, i.begin, i.end) for i in job.ready_items(10, 8)] == [(0, 8, 16), (6, 0, 2)]
    job.fetched.set()  # the fetch is done: every group may run
    assert [i.group.start for i in job.ready_items(100, 8)] == [0, 3, 6]
    serial = job_of(plan, 20, pipelined=False)
    serial.e_landed.append(6)
    assert serial.ready_items(100, 8) == []  # serial: nothing before the fetch ends
    serial.fail("timeout", "no answer")
    serial.fetched.set()
    assert serial.ready_items(100, 8) == [] and serial.drained() and not serial.succeeded()


def test_out_of_order_chunk_is_a_protocol_error():
    from two_servers import make_side  # noqa: E402 - needs the CPU SGLang on the path
    from sglang_droidspeak.transfer.frames import LayerChunk

    side = make_side("coder-b", tiny_llama(), {})
    try:
        slots = side.allocator.alloc(8)
        state = import_receiver._Receiver(side.runtime.parts, LayerPlan(NUM_LAYERS, ((0, 1),)), slots, ())
        chunk = LayerChunk.from_tensor("r", "k", 1, 4, torch.zeros(4, 2, 16))  # rows [4, 8) first
        with pytest.raises(importer.ImportFailed, match="out of order"):
            state(chunk)
        state(LayerChunk.from_tensor("r", "k", 1, 0, torch.ones(4, 2, 16)))
        state(chunk)
        assert state.rows[("k", 1)] == 8
        with pytest.raises(importer.ImportFailed, match="beyond 8"):
            state(LayerChunk.from_tensor("r", "k", 1, 8, torch.ones(1, 2, 16)))
    finally:
        side.runtime.close()
