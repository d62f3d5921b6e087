"""The asynchronous import queue on the CPU: the server keeps scheduling while a request's
import runs; deadlines, aborts, batching, chunking and the blocking mode.

Same two servers as test_cross_model_cpu.py (tests/unit/two_servers.py: real SGLang pools,
trees, Req objects, model classes and hooks; the receiver's scheduler loop is a stand-in).
A ``Gate`` holds the sender's stream until the test opens it, so an import stays in flight
for as long as a check needs.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch
import zmq

from cpu_sglang import require_cpu_sglang

require_cpu_sglang()

from sglang_droidspeak.plan.layer_plan import LayerPlan  # noqa: E402
from sglang_droidspeak.reference import ReferenceModel  # noqa: E402
from sglang_droidspeak.sglang.import_queue import JOB_ATTR  # noqa: E402
from sglang_droidspeak.sglang.radix_cache import FELL_BACK_ATTR  # noqa: E402
from two_servers import (  # noqa: E402
    NUM_LAYERS, PLAN_GROUPS, announce_and_wait, assert_pool_holds, import_and_match, leak_free, remote_len, request,
    sender_prefill, tiny_pair_models, two_servers)

CONTEXT, OTHER = list(range(20, 52)), list(range(60, 92))  # 32 tokens each
SUFFIX = [3, 4, 5]
PLANS = [{"sender": "coder-a", "receiver": "coder-b", "num_layers": NUM_LAYERS, "groups": PLAN_GROUPS}]


class Gate:
    """Holds every export of ``sender`` until ``open()`` (or 10 s)."""

    def __init__(self, sender):
        self.event, real = threading.Event(), sender.runtime._export

        def gated(req):
            self.event.wait(10)
            yield from real(req)

        sender.runtime._export = gated

    def open(self):
        self.event.set()


def servers(**settings):
    return two_servers(*tiny_pair_models(), {"plans": PLANS, **settings})


def loop_until(scheduler, predicate, timeout=5.0):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        scheduler.loop_once()
        time.sleep(0.001)


def test_the_scheduler_keeps_serving_while_an_import_is_in_flight():
    with servers() as (a, b):
        announce_and_wait(a, b, CONTEXT)
        gate = Gate(a)
        sched, importing, plain = b.scheduler, request(CONTEXT + SUFFIX), request([7, 8, 9, 10])
        sched.waiting_queue += [importing, plain]
        for _ in range(5):
            sched.loop_once()
        assert sched.scheduled == [plain] and sched.waiting_queue == [importing]  # parked, not lost
        assert b.runtime.imports.is_parked(importing) and not sched.is_fully_idle()
        gate.open()
        loop_until(sched, lambda: importing in sched.scheduled)
        assert len(importing.prefix_indices) == len(CONTEXT) and importing.extra_key is not None
        assert b.metrics.fallbacks == [] and sched.is_fully_idle() and leak_free(b)


def test_a_parked_request_past_its_deadline_prefills_normally_and_the_slots_come_back():
    with servers(import_deadline_s=0.2) as (a, b):
        announce_and_wait(a, b, CONTEXT)
        gate = Gate(a)
        available = b.allocator.available_size()
        req = request(CONTEXT + SUFFIX)
        began = time.time()
        b.scheduler.waiting_queue.append(req)
        loop_until(b.scheduler, lambda: b.metrics.fallbacks == ["deadline"])
        assert 0.2 <= time.time() - began < 2.0
        gate.open()  # the fetch ends; the failed job drains and frees its slots
        loop_until(b.scheduler, lambda: req in b.scheduler.scheduled and not b.runtime.imports.busy())
        assert len(req.prefix_indices) == 0 and getattr(req, FELL_BACK_ATTR) is True
        assert b.allocator.available_size() == available and leak_free(b)
        assert b.req_pool.available_size() == 8
        assert b.runtime.backed_off_peers()  # the sender never answered in time: skip it a while


def test_a_deadline_passed_in_our_own_recompute_does_not_back_the_sender_off(monkeypatch):
    """The fetch finished; the time went to this server (a kernel compiling in the first blend
    took 14 s on a fresh H200, 2026-12-06): the request prefills normally, the next import
    from the same sender is still tried."""
    with servers(import_deadline_s=0.2) as (a, b):
        announce_and_wait(a, b, CONTEXT)
        monkeypatch.setattr(b.runtime.imports, "_launch_ready", lambda *args, **kwargs: None)  # never launches
        req = request(CONTEXT + SUFFIX)
        b.scheduler.waiting_queue.append(req)
        loop_until(b.scheduler, lambda: req in b.scheduler.scheduled)
        assert b.metrics.fallbacks == ["deadline"] and getattr(req, FELL_BACK_ATTR) is True
        assert b.runtime.backed_off_peers() == () and leak_free(b)


def test_an_aborted_parked_request_releases_its_import():
    with servers() as (a, b):
        announce_and_wait(a, b, CONTEXT)
        gate = Gate(a)
        available = b.allocator.available_size()
        req = request(CONTEXT + SUFFIX)
        b.scheduler.waiting_queue.append(req)
        b.scheduler.loop_once()
        assert b.runtime.imports.is_parked(req)
        b.scheduler.waiting_queue.remove(req)  # SGLang's abort_request takes it out of the queue
        gate.open()
        loop_until(b.scheduler, lambda: not b.runtime.imports.busy())
        assert b.metrics.fallbacks == ["aborted"] and b.metrics.hits == []
        assert b.allocator.available_size() == available and leak_free(b) and b.tree.evictable_size() == 0


def test_imports_ready_together_run_as_one_forward_and_stay_exact(monkeypatch):
    with servers() as (a, b):
        caches = [announce_and_wait(a, b, tokens) for tokens in (CONTEXT, OTHER)]
        engine, batches = b.runtime.parts.engine, []
        real = engine.run
        monkeypatch.setattr(engine, "run", lambda segs, rows, s, e, capture=(): batches.append(
            (len(segs), s, e)) or real(segs, rows, s, e, capture))
        gate = Gate(a)  # both jobs start before any E arrives: their E_1 lands, then one forward
        reqs = [request(tokens + SUFFIX, "1:3") for tokens in (CONTEXT, OTHER)]
        b.scheduler.waiting_queue += reqs
        b.scheduler.loop_once()
        jobs = [getattr(req, JOB_ATTR) for req in reqs]
        gate.open()
        while not all(job.fetched.is_set() for job in jobs):
            time.sleep(0.005)
        loop_until(b.scheduler, lambda: all(req in b.scheduler.scheduled for req in reqs))
        assert batches == [(2, 1, 3)]
        plan = LayerPlan(NUM_LAYERS, ((1, 3),))
        for req, cache, tokens in zip(reqs, caches, (CONTEXT, OTHER)):
            expected = ReferenceModel(b.model).build_receiver_cache(cache, plan, torch.tensor(tokens))
            assert_pool_holds(b, req.prefix_indices, expected)
        assert leak_free(b)


def test_a_long_prefix_is_recomputed_in_chunks_one_budget_per_tick(monkeypatch):
    with servers(import_chunk_tokens=12) as (a, b):
        cache = announce_and_wait(a, b, CONTEXT)
        engine, chunks = b.runtime.parts.engine, []
        real = engine.run
        monkeypatch.setattr(engine, "run", lambda segs, rows, s, e, capture=(): chunks.append(
            [(seg.prefix_len, len(seg.token_ids)) for seg in segs]) or real(segs, rows, s, e, capture))
        match = import_and_match(b, request(CONTEXT + SUFFIX, "0:4"))
        assert chunks == [[(0, 12)], [(12, 12)], [(24, 8)]]
        expected = ReferenceModel(b.model).build_receiver_cache(cache, LayerPlan(NUM_LAYERS, ((0, 4),)),
                                                                torch.tensor(CONTEXT))
        assert_pool_holds(b, match.device_indices, expected)


@pytest.mark.parametrize("mode, chunks", [("async", [[(0, 20)], [(20, 12)]]), ("eager", [[(0, 32)]]),
                                         ("overlap", [[(0, 32)]])])
def test_while_the_server_decodes_an_async_import_yields_in_small_chunks(monkeypatch, mode, chunks):
    # 80 token-layers per tick over a 4-layer plan: 20-token chunks (eager: the whole 32-token chunk)
    with servers(import_chunk_tokens=32, import_busy_token_layers=80) as (a, b):
        cache = announce_and_wait(a, b, CONTEXT)
        b.scheduler.running_batch.reqs.append(request([7, 8, 9]))  # a decode batch is running
        engine, launched = b.runtime.parts.engine, []
        real = engine.run
        monkeypatch.setattr(engine, "run", lambda segs, rows, s, e, capture=(): launched.append(
            [(seg.prefix_len, len(seg.token_ids)) for seg in segs]) or real(segs, rows, s, e, capture))
        req = request(CONTEXT + SUFFIX, "0:4", droidspeak_import_mode=mode)
        match = import_and_match(b, req)
        assert launched == chunks and req.droidspeak_import.overlap == (mode == "overlap")
        expected = ReferenceModel(b.model).build_receiver_cache(cache, LayerPlan(NUM_LAYERS, ((0, 4),)),
                                                                torch.tensor(CONTEXT))
        assert_pool_holds(b, match.device_indices, expected)
        assert leak_free(b)


def test_an_export_waiting_for_its_e_parks_and_the_sender_stays_busy_until_it_is_sent(monkeypatch):
    with servers() as (a, b):
        cache = announce_and_wait(a, b, CONTEXT)
        gate, real = threading.Event(), a.runtime.launch_e

        def gated(ids, layers):  # E "still on the GPU" until the gate opens
            pending = real(ids, layers)
            ready = pending.ready
            pending.ready = lambda: gate.is_set() and ready()
            return pending

        monkeypatch.setattr(a.runtime, "launch_e", gated)
        req = request(CONTEXT + SUFFIX, "1:3")  # a group at 1 needs E_1 from the sender
        b.scheduler.waiting_queue.append(req)
        loop_until(b.scheduler, lambda: a.runtime.export_server.num_parked == 1)
        assert not a.scheduler.is_fully_idle() and not leak_free(a)  # its scratch is held
        gate.set()
        loop_until(b.scheduler, lambda: req in b.scheduler.scheduled)
        expected = ReferenceModel(b.model).build_receiver_cache(cache, LayerPlan(NUM_LAYERS, ((1, 3),)),
                                                                torch.tensor(CONTEXT))
        assert_pool_holds(b, req.prefix_indices, expected)
        assert a.runtime.export_server.num_parked == 0 and a.scheduler.is_fully_idle() and leak_free(a)


@pytest.mark.parametrize("where", ["setting", "request"])
def test_a_blocking_import_finishes_inside_the_tick_that_starts_it(where):
    settings = {"import_mode": "blocking"} if where == "setting" else {}
    with servers(**settings) as (a, b):
        announce_and_wait(a, b, CONTEXT)
        options = {"droidspeak_import_mode": "blocking"} if where == "request" else {}
        req = request(CONTEXT + SUFFIX, **options)
        b.scheduler.waiting_queue.append(req)
        b.scheduler.loop_once()  # one loop: the import ran to its end, then the prefill took it
        assert req in b.scheduler.scheduled and len(req.prefix_indices) == len(CONTEXT)
        assert b.metrics.hits == [("remote", len(CONTEXT), 2)] and leak_free(b)


def test_a_bug_in_a_launch_falls_back_instead_of_killing_the_scheduler(monkeypatch):
    with servers() as (a, b):
        announce_and_wait(a, b, CONTEXT)

        def broken(*args, **kwargs):
            raise RuntimeError("kernel fault")

        monkeypatch.setattr(b.runtime.parts.engine, "run", broken)
        match = import_and_match(b, request(CONTEXT + SUFFIX))
        assert len(match.device_indices) == 0 and b.metrics.fallbacks == ["internal"] and leak_free(b)


def test_the_tick_reads_announcements_and_the_idle_sleeper_wakes_on_them():
    """The receiver's listeners have no thread: its scheduler tick drains them, and SGLang's
    IdleSleeper (a zmq.Poller over the scheduler's sockets) gets their sockets at the first
    tick, so a sleeping idle server wakes for an announcement (as for a fetch)."""
    with servers() as (a, b):
        sched = b.scheduler
        sched.idle_sleeper = type("IdleSleeper", (), {"poller": zmq.Poller()})()
        sched.loop_once()
        registered = {socket for socket, _ in sched.idle_sleeper.poller.sockets}
        assert {listener.socket for listener in b.runtime.listeners} <= registered
        assert all(listener._thread is None for listener in b.runtime.listeners)
        announce_and_wait(a, b, CONTEXT)  # the harness's stand-in ticks take it (two_servers.py)
        b.runtime.listeners[0].close()
        tokens = [t + 1 for t in CONTEXT]
        sender_prefill(a, tokens)
        for _ in range(20):
            a.runtime.announce(tokens, None)
            sched.loop_once()
            time.sleep(0.01)
        assert remote_len(b, tokens) == 0  # a closed listener takes nothing, and nothing raises
