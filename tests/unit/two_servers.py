"""Test helper: a sender and a receiver DroidSpeakRuntime on the CPU, for several test files.

What runs for real: two DroidSpeakRadixCache trees over SGLang's MHATokenToKVPool,
TokenToKVPoolAllocator and ReqToTokenPool, two DroidSpeakRuntimes with their FetchServer /
FetchClient / Announcer / DirectoryListener on 127.0.0.1, the fetch worker thread, the
import queue, the exporter, SGLang's own model classes (the HF tiny models' weights loaded
into them) and its torch_native attention backend driven by EngineForward
(sglang_cpu_model.py), SGLang's ``Req`` objects and the plugin's scheduler hooks.

What stands in (SGLang's Scheduler and its GPU forward cannot run here): the sender's
prefill is the reference engine's, written into the pool as SGLang's forward would; a
thread polls the sender's fetch socket as the scheduler-loop hook does; ``SchedulerStandIn``
is the receiver's scheduler loop reduced to what the hooks touch (its waiting queue, its
tree, the hook call order) and a prefill that schedules every request it is given.
Import it only after ``prepare_cpu_sglang()``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from array import array
from types import SimpleNamespace

import torch
from sglang.srt.mem_cache.base_prefix_cache import InsertParams
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.radix_cache import RadixKey

from sglang.srt.managers.schedule_batch import Req
from sglang.srt.sampling.sampling_params import SamplingParams

from sglang_cpu_model import cpu_engine
from sglang_droidspeak.reference import ReferenceModel
from sglang_droidspeak.reference.tiny import perturbed_copy, tiny_model
from sglang_droidspeak.sglang.importer import ModelParts
from sglang_droidspeak.sglang import plugin
from sglang_droidspeak.sglang.metrics import CHOSEN_SYSTEMS, NullMetrics
from sglang_droidspeak.sglang.radix_cache import DroidSpeakRadixCache
from sglang_droidspeak.sglang.runtime import DroidSpeakRuntime
from sglang_droidspeak.sglang.settings import parse_settings

POOL_SIZE, NUM_LAYERS, HIDDEN = 384, 4, 64
SECRET = b"k" * 32
PLAN_GROUPS = [[1, 3]]  # the receiver's inline plan for coder-a -> coder-b


class CountingMetrics(NullMetrics):
    def __init__(self):
        self.fallbacks, self.hits, self.decisions, self.drops, self.systems = [], [], [], [], []
        self.bytes = {"in": 0, "out": 0}

    def record_bytes(self, direction, num_bytes):
        self.bytes[direction] += num_bytes

    def record_fallback(self, reason):
        self.fallbacks.append(reason)

    def record_hit(self, origin, num_tokens, num_recomputed_layers):
        self.hits.append((origin, num_tokens, num_recomputed_layers))

    def record_decision(self, reason):
        self.decisions.append(reason)

    def record_system(self, system):
        assert system in CHOSEN_SYSTEMS, system  # the real counter refuses other labels
        self.systems.append(system)

    def record_drop(self, reason):
        self.drops.append(reason)


def make_side(name, model, settings, fingerprint="fp", plane_backend=None):
    engine = cpu_engine(model, pool_size=POOL_SIZE, max_context_len=128, num_rows=8)
    kv_pool, allocator = engine.kv_pool, engine.allocator
    parts = ModelParts(kv_pool, allocator, HIDDEN, torch.float32,
                       torch.device("cpu"), engine.engine, engine.req_pool)
    metrics = CountingMetrics()
    settings = parse_settings({"model": name, **settings})
    runtime = DroidSpeakRuntime(settings, name, fingerprint, parts, NUM_LAYERS, metrics, SECRET, plane_backend)
    tree = DroidSpeakRadixCache(CacheInitParams(False, engine.req_pool, allocator, 1), model=name,
                                plan_lookup=settings.plan_lookup(), min_foreign_tokens=8,
                                num_layers=NUM_LAYERS, runtime=runtime)
    side = SimpleNamespace(name=name, model=model, pool=kv_pool, allocator=allocator, tree=tree,
                           runtime=runtime, metrics=metrics, req_pool=engine.req_pool)
    side.scheduler = SchedulerStandIn(tree)
    if runtime.listeners:  # they have no thread of their own: stand in for the ticks that read them
        poller, close = Polling(side, step=runtime.poll_directory), runtime.close
        runtime.close = lambda: (poller.close(), close())
    return side


class SchedulerStandIn:
    """The receiver's scheduler loop, reduced to what the plugin's hooks touch (see the module
    docstring): ``loop_once`` calls the tick hook (after process_input_requests), then the
    prefill hook around a prefill that matches and schedules every request it is given."""

    def __init__(self, tree):
        from sglang.srt.managers.schedule_batch import ScheduleBatch

        self.tree_cache, self.waiting_queue, self.forward_stream = tree, [], None
        self.running_batch = ScheduleBatch(reqs=[], batch_is_full=False)  # decoding: put a Req in it
        self.scheduled: list = []

    def loop_once(self) -> None:
        plugin.scheduler_tick_hook(None, self)
        plugin.new_batch_prefill_hook(type(self)._prefill, self)

    def _prefill(self) -> None:
        for req in self.waiting_queue:
            req.init_next_round_input(self.tree_cache)  # SGLang's own match (our match_prefix)
            self.scheduled.append(req)
        self.waiting_queue = []

    def is_fully_idle(self) -> bool:
        return plugin.fully_idle_hook(lambda _self: not self.waiting_queue, self)


def import_and_match(side, req, timeout=10.0):
    """Queue ``req`` on ``side``'s scheduler and run its loop until the request is scheduled
    (its import finished or fell back); returns SGLang's match as the request holds it."""
    scheduler = side.scheduler
    scheduler.waiting_queue.append(req)
    deadline = time.time() + timeout
    while req not in scheduler.scheduled:
        if time.time() > deadline:
            raise AssertionError(f"request {req.rid} was not scheduled within {timeout} s")
        scheduler.loop_once()
        time.sleep(0.001)
    return SimpleNamespace(device_indices=req.prefix_indices, last_device_node=req.last_node)


def sender_prefill(side, tokens):
    """K/V in fresh slots, then a native insert (which announces); duplicates are freed."""
    cache = ReferenceModel(side.model).prefill(torch.tensor(tokens), e_layers=range(NUM_LAYERS))
    slots = side.allocator.alloc(len(tokens))
    for layer in range(NUM_LAYERS):
        side.pool.get_key_buffer(layer)[slots] = cache.kv.k[layer].transpose(0, 1)
        side.pool.get_value_buffer(layer)[slots] = cache.kv.v[layer].transpose(0, 1)
    result = side.tree.insert(InsertParams(key=RadixKey(array("q", tokens)), value=slots))
    side.allocator.free(slots[: result.prefix_len])
    time.sleep(0.002)  # distinct access times: LRU order = prefill order
    return cache


def wait_for(predicate, what, timeout=5.0, poke=None):
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        if poke:
            poke()
        time.sleep(0.02)


class Polling:
    """A scheduler loop reduced to one part of its tick, every 2 ms: by default the sender's
    fetch answering; ``step`` another (a receiver's ``poll_directory``: make_side)."""

    def __init__(self, side, step=None):
        self.stop, self.side = threading.Event(), side
        self.step = step if step is not None else lambda: side.runtime.answer_fetches()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            self.step()
            self.stop.wait(0.002)

    def close(self):
        self.stop.set()
        self.thread.join()


_RIDS = iter(range(1 << 30))


def request(tokens, plan=None, **custom):
    """An SGLang ``Req`` for ``tokens`` (custom_params: its plan and any other option)."""
    params = {**custom, **({} if plan is None else {"droidspeak_plan": plan})}
    return Req(f"req-{next(_RIDS)}", "", array("q", tokens), SamplingParams(max_new_tokens=4, custom_params=params))


def assert_pool_holds(side, indices, expected, values=True):
    """``side``'s pool at ``indices`` holds ``expected``'s K (and V) in every layer
    (expected: [heads, T, dim] per layer, the reference engine's layout)."""
    for layer in range(NUM_LAYERS):
        torch.testing.assert_close(side.pool.get_key_buffer(layer)[indices],  # [T, heads, dim]
                                   expected.k[layer].transpose(0, 1), atol=1e-5, rtol=1e-5)
        if values:
            torch.testing.assert_close(side.pool.get_value_buffer(layer)[indices],
                                       expected.v[layer].transpose(0, 1), atol=1e-5, rtol=1e-5)


def leak_free(side, held=0):
    """SGLang's idle check: free + evictable + protected (+ held by running requests) == pool."""
    return side.allocator.available_size() + side.tree.evictable_size() + side.tree.protected_size() + held == POOL_SIZE


def remote_len(side, tokens):
    found = side.tree.remote_index.longest_match(tokens)
    return 0 if found is None else found.prefix_len


def announce_and_wait(a, b, tokens):
    """Prefill on the sender and wait until the receiver's index holds all of ``tokens``."""
    cache = sender_prefill(a, tokens)
    wait_for(lambda: remote_len(b, tokens) == len(tokens), "the announcement",
             poke=lambda: a.runtime.announce(tokens, None))  # the slow joiner misses the first
    return cache


def tiny_llama():
    return tiny_model("llama", seed=7, num_layers=NUM_LAYERS, hidden_size=HIDDEN, num_heads=4,
                      num_kv_heads=2, vocab_size=128)


def tiny_pair_models(same: bool = False):
    """(sender, receiver) tiny Llamas, seeded: the same weights, or the receiver perturbed
    (noise 0.2, seed 1), the pair most CPU tests run."""
    torch.manual_seed(0)
    sender = tiny_llama()
    return sender, sender if same else perturbed_copy(sender, 0.2, seed=1)


@contextlib.contextmanager
def two_servers(sender_model, receiver_model, receiver_settings=None, data_planes=("zmq", "zmq"),
                backends=(None, None)):
    """(a, b): coder-a exports and announces, coder-b fetches from it with PLAN_GROUPS
    (``receiver_settings`` replaces the inline plan with other settings). ``data_planes`` and
    ``backends``: each side's setting and plane backend (cuda_ipc: cpu_ipc.CpuIpc on the CPU;
    nccl: planes/nccl/channel.GlooPairBackend; None: the plane's own)."""
    a = make_side("coder-a", sender_model, {"export_bind": "tcp://127.0.0.1:*", "announce_bind": "tcp://127.0.0.1:*",
                                            "data_plane": data_planes[0]}, plane_backend=backends[0])
    fetch, announce = a.runtime.export_server.endpoint, a.runtime.announcer.endpoint
    plans = [{"sender": "coder-a", "receiver": "coder-b", "num_layers": NUM_LAYERS, "groups": PLAN_GROUPS}]
    b = make_side("coder-b", receiver_model, {
        "peers": [{"model": "coder-a", "fetch": fetch, "announce": announce}], "fetch_timeout_s": 1.0,
        "data_plane": data_planes[1], **(receiver_settings if receiver_settings is not None else {"plans": plans})},
        plane_backend=backends[1])
    polling = Polling(a)
    try:
        yield a, b
    finally:
        polling.close()
        for side in (a, b):
            side.runtime.close()
