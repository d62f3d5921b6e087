"""Sender -> receiver on the CPU: real SGLang pools, allocators and radix trees, real ZMQ.

The two servers and what stands in for SGLang's scheduler and GPU forward:
tests/unit/two_servers.py.
"""

from __future__ import annotations

import time
from array import array

import pytest
import torch

from cpu_sglang import require_cpu_sglang

require_cpu_sglang()

from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams  # noqa: E402
from sglang.srt.mem_cache.radix_cache import RadixKey  # noqa: E402

from sglang_droidspeak.plan.layer_plan import LayerPlan  # noqa: E402
from sglang_droidspeak.reference import ReferenceModel  # noqa: E402
from sglang_droidspeak.sglang.radix_cache import FELL_BACK_ATTR  # noqa: E402
from sglang_droidspeak.sglang.request_plan import parse_plan_choice  # noqa: E402
from two_servers import (  # noqa: E402
    assert_pool_holds, import_and_match, NUM_LAYERS, POOL_SIZE, announce_and_wait, leak_free, request, sender_prefill, tiny_pair_models, two_servers,
    wait_for)

CONTEXT = list(range(20, 52))  # 32 tokens
SUFFIX = [3, 4, 5]


@pytest.fixture
def pair(request):
    with two_servers(*tiny_pair_models(request.param == "same")) as sides:
        yield sides


@pytest.mark.parametrize("pair", ["same", "different"], indirect=True)
@pytest.mark.parametrize("plan", [None, "0:4", "2:3", "reuse", "0:1,3:4"])
def test_receiver_kv_is_reused_and_recomputed_per_plan(pair, plan):
    a, b = pair
    cache = announce_and_wait(a, b, CONTEXT)
    req = request(CONTEXT + SUFFIX, plan)
    match = import_and_match(b, req)
    assert len(match.device_indices) == len(CONTEXT) and b.metrics.fallbacks == []
    layer_plan = LayerPlan(NUM_LAYERS, ((1, 3),)) if plan is None else None
    if layer_plan is None:
        from sglang_droidspeak.sglang.request_plan import parse_plan_choice
        layer_plan = parse_plan_choice(plan, NUM_LAYERS)
    assert b.tree.tag_of(match.last_device_node).plan == str(layer_plan) and req.extra_key is not None
    expected = ReferenceModel(b.model).build_receiver_cache(cache, layer_plan, torch.tensor(CONTEXT))
    for layer in range(NUM_LAYERS):
        got = b.pool.get_key_buffer(layer)[match.device_indices]  # [T, Hkv, D]
        torch.testing.assert_close(got, expected.k[layer].transpose(0, 1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b.pool.get_value_buffer(layer)[match.device_indices],
                                   expected.v[layer].transpose(0, 1), atol=1e-5, rtol=1e-5)
    assert b.metrics.hits == [("remote", len(CONTEXT), layer_plan.num_recomputed_layers)]
    assert leak_free(b) and leak_free(a)
    # a second request adopts the derived prefix without another fetch
    req2 = request(CONTEXT + [9], plan)
    again = import_and_match(b, req2)
    assert again.device_indices.tolist() == match.device_indices.tolist()
    assert [h[0] for h in b.metrics.hits] == ["remote", "derived"]


@pytest.mark.parametrize("pair", ["same"], indirect=True)
def test_same_weights_full_recompute_equals_own_prefill(pair):
    a, b = pair
    announce_and_wait(a, b, CONTEXT)
    req = request(CONTEXT + SUFFIX, "0:4")
    match = import_and_match(b, req)
    own = ReferenceModel(b.model).prefill(torch.tensor(CONTEXT)).kv
    for layer in range(NUM_LAYERS):
        torch.testing.assert_close(b.pool.get_key_buffer(layer)[match.device_indices],
                                   own.k[layer].transpose(0, 1), atol=1e-5, rtol=1e-5)


def fallback_case(a, b, reason, tokens=CONTEXT, held=0):
    req = request(tokens + SUFFIX)
    available = b.allocator.available_size()
    match = import_and_match(b, req)
    assert len(match.device_indices) == 0 and req.extra_key is None
    assert getattr(req, FELL_BACK_ATTR) is True and b.metrics.fallbacks[-1] == reason
    assert b.allocator.available_size() == available and leak_free(b, held)
    # a request is examined once: queued again (a retraction), it prefills without a second attempt
    n = len(b.metrics.fallbacks)
    b.scheduler.scheduled.remove(req)
    again = import_and_match(b, req)
    assert len(again.device_indices) == 0 and len(b.metrics.fallbacks) == n


@pytest.mark.parametrize("pair", ["same"], indirect=True)
def test_fingerprint_mismatch_at_the_sender_falls_back(pair):
    a, b = pair
    announce_and_wait(a, b, CONTEXT)
    a.runtime.fingerprint = "other"  # the exporter checks the requester's claim against its own
    fallback_case(a, b, "fingerprint_mismatch")


@pytest.mark.parametrize("pair", ["same"], indirect=True)
def test_incompatible_announcements_are_ignored(pair):
    a, b = pair
    a.runtime.fingerprint = "other"
    sender_prefill(a, CONTEXT)
    wait_for(lambda: "incompatible" in b.metrics.fallbacks, "the rejected announcement",
             poke=lambda: a.runtime.announce(CONTEXT, None))
    assert b.tree.remote_index.longest_match(CONTEXT) is None


@pytest.mark.parametrize("pair", ["same"], indirect=True)
def test_evicted_prefix_falls_back(pair):
    a, b = pair
    announce_and_wait(a, b, CONTEXT)
    from sglang.srt.mem_cache.base_prefix_cache import EvictParams
    a.runtime.withdraw = lambda tokens, base: None  # the withdrawal is late: b still sees the hit
    a.tree.evict(EvictParams(num_tokens=POOL_SIZE))
    fallback_case(a, b, "evicted")


@pytest.mark.parametrize("pair", ["same"], indirect=True)
def test_silent_sender_times_out_then_backs_off(pair):
    a, b = pair
    announce_and_wait(a, b, CONTEXT)
    a.runtime.export_server.poll = lambda handler, max_requests=16, on_control=None: 0  # alive, answers nothing
    start = time.time()
    fallback_case(a, b, "timeout")
    assert 0.9 < time.time() - start < 3.0
    fallback_case(a, b, "peer_backoff")  # no second 1 s stall for the next request


@pytest.mark.parametrize("pair", ["same"], indirect=True)
def test_receiver_without_free_slots_falls_back(pair):
    a, b = pair
    announce_and_wait(a, b, CONTEXT)
    held = b.allocator.alloc(POOL_SIZE - 8)  # running requests hold the pool
    fallback_case(a, b, "no_memory", held=len(held))
    b.allocator.free(held)


@pytest.mark.parametrize("pair", ["same"], indirect=True)
def test_off_and_malformed_plans_never_fetch(pair):
    a, b = pair
    announce_and_wait(a, b, CONTEXT)
    for plan in ("off", "9:12"):
        req = request(CONTEXT + SUFFIX, plan)
        match = import_and_match(b, req)
        assert len(match.device_indices) == 0 and req.extra_key is None
    assert b.metrics.hits == [] and a.runtime.export_server.num_served == 0


@pytest.mark.parametrize("pair", ["same", "different"], indirect=True)
def test_second_context_in_the_same_derived_namespace(pair):
    """Two contexts sharing a 10-token head, imported one after the other under one plan."""
    a, b = pair
    other = CONTEXT[:10] + [t + 40 for t in CONTEXT[10:]]
    for tokens in (CONTEXT, other):
        cache = announce_and_wait(a, b, tokens)
        req = request(tokens + SUFFIX, "0:4")
        match = import_and_match(b, req)
        assert len(match.device_indices) == len(tokens)
        expected = ReferenceModel(b.model).build_receiver_cache(cache, LayerPlan(NUM_LAYERS, ((0, 4),)),
                                                                 torch.tensor(tokens))
        assert_pool_holds(b, match.device_indices, expected)
        assert leak_free(b)


def run_request(side, tokens, plan, req_pool, num_out=2):
    """SGLang's request lifecycle on the tree: match (+import), lock, allocate the rest,
    write req_to_token, 'decode' num_out tokens, then cache_finished_req."""
    req = request(tokens, plan)
    match = import_and_match(side, req)
    req.req_pool_idx, req.output_ids, req.priority = None, array("q"), 0
    req.inflight_middle_chunks, req.kv_committed_len = 0, 0
    side.tree.inc_lock_ref(match.last_device_node)
    req.last_node, req.prefix_indices, req.cache_protected_len = (
        match.last_device_node, match.device_indices, len(match.device_indices))
    req_pool.alloc([req])
    total = len(tokens) + num_out
    if side.allocator.available_size() < total:
        from sglang.srt.mem_cache.base_prefix_cache import EvictParams
        side.tree.evict(EvictParams(num_tokens=total))  # what the scheduler does first
    new_slots = side.allocator.alloc(total - len(match.device_indices))
    req_pool.write((req.req_pool_idx, slice(0, total)), torch.cat([match.device_indices, new_slots]).to(torch.int32))
    req.output_ids = array("q", [1] * num_out)
    side.tree.cache_finished_req(req, kv_len_to_handle=total - 1)
    side.allocator.free(new_slots[-1:])  # the last token's KV is never computed
    req_pool.free(req)
    return match


@pytest.mark.parametrize("pair", ["same"], indirect=True)
def test_gpu_check_sequence_keeps_every_derived_prefix_exact(pair):
    """The order scripts/gpu/integration.py uses: per context, every plan, then a native run."""
    a, b = pair
    req_pool = b.tree.req_to_token_pool
    heads = [CONTEXT, [t + 40 for t in CONTEXT], CONTEXT[:5] + [t + 60 for t in CONTEXT[5:]]]
    for tokens in heads:
        cache = announce_and_wait(a, b, tokens)
        for plan in ("0:4", "0:2", "2:3", "reuse", "0:1,3:4"):
            match = run_request(b, tokens + SUFFIX, plan, req_pool)
            layer_plan = parse_plan_choice(plan, NUM_LAYERS)
            expected = ReferenceModel(b.model).build_receiver_cache(cache, layer_plan, torch.tensor(tokens))
            assert len(match.device_indices) == len(tokens), plan
            assert_pool_holds(b, match.device_indices, expected)
        run_request(b, tokens + SUFFIX, "off", req_pool)
    assert leak_free(b)


@pytest.mark.parametrize("pair", ["same"], indirect=True)
def test_a_forged_or_replayed_fetch_is_dropped_and_counted_on_the_senders_metrics(pair):
    import zmq

    from sglang_droidspeak.transfer import wire
    from sglang_droidspeak.transfer.frames import FetchRequest

    a, b = pair
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(a.runtime.export_server.endpoint)
    try:
        request = FetchRequest("r1", "coder-a", "coder-b", "fp", tuple(CONTEXT), (0,), (), 0)
        dealer.send_multipart(wire.encode(request, b"w" * 32))  # signed with the wrong secret
        frames = wire.encode(request, b"k" * 32)
        dealer.send_multipart(frames)
        dealer.send_multipart(frames)  # the same signed frame again: a replay
        wait_for(lambda: len(a.metrics.drops) == 2, "two drops")
        assert sorted(a.metrics.drops) == ["replayed", "unauthenticated"]
    finally:
        dealer.close(0)
