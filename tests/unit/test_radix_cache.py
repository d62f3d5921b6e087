"""DroidSpeakRadixCache against SGLang 0.5.17's real RadixCache, KV pool, req pool and
allocator, on the CPU.

SGLang must import (``cpu_sglang.require_cpu_sglang``: a failure, unless
DROIDSPEAK_SKIP_SGLANG_TESTS is set). On a CPU machine SGLang comes from the folder that
``sglang_droidspeak.sglang.cpu_import`` puts on sys.path (install command in
docs/SGLANG_INTEGRATION.md); that must happen before transformers is imported.
Requests go through SGLang's own code paths
(match_prefix, inc_lock_ref, cache_finished_req, evict); after every step the tree's
evictable/protected counters must equal a fresh walk of the tree, and
available + evictable + protected + held-by-running-requests must equal the pool size:
SGLang's idle leak check.
"""

from __future__ import annotations

from array import array
from types import SimpleNamespace

import pytest
import torch

from cpu_sglang import require_cpu_sglang

require_cpu_sglang()

from sglang.srt.mem_cache.allocator import (  # noqa: E402
    PagedTokenToKVPoolAllocator,
    TokenToKVPoolAllocator,
)
from sglang.srt.mem_cache.base_prefix_cache import EvictParams, MatchPrefixParams  # noqa: E402
from sglang.srt.mem_cache.cache_init_params import CacheInitParams  # noqa: E402
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool  # noqa: E402
from sglang.srt.mem_cache.radix_cache import RadixKey  # noqa: E402

from sglang_droidspeak.plan import LayerPlan  # noqa: E402
from sglang_droidspeak.radix import KVOrigin, ModelTag  # noqa: E402
from sglang_droidspeak.sglang.radix_cache import DroidSpeakRadixCache  # noqa: E402

POOL_SIZE = 64
PLAN = LayerPlan.contiguous(4, 0, 2)
PLANS = {("coder-a", "coder-b"): PLAN}
CONTEXT = list(range(100, 116))  # 16 shared context tokens


class Env(SimpleNamespace):
    cache: DroidSpeakRadixCache
    allocator: TokenToKVPoolAllocator
    req_pool: ReqToTokenPool
    held: int  # slots held by running requests and not (yet) owned by the tree


def make_env(page_size: int = 1, **cache_kwargs) -> Env:
    kv_pool = MHATokenToKVPool(
        size=POOL_SIZE, page_size=page_size, dtype=torch.float32, head_num=2, head_dim=4,
        layer_num=4, device="cpu", enable_memory_saver=False,
    )
    if page_size == 1:
        allocator = TokenToKVPoolAllocator(POOL_SIZE, torch.float32, "cpu", kv_pool, need_sort=False)
    else:
        allocator = PagedTokenToKVPoolAllocator(
            POOL_SIZE, page_size, torch.float32, "cpu", kv_pool, need_sort=False
        )
    req_pool = ReqToTokenPool(size=4, max_context_len=64, device="cpu", enable_memory_saver=False)
    params = CacheInitParams(False, req_pool, allocator, page_size)
    lookup = lambda sender, receiver: PLANS.get((sender, receiver))  # noqa: E731
    cache = DroidSpeakRadixCache(params, model="coder-b", plan_lookup=lookup, **cache_kwargs)
    return Env(cache=cache, allocator=allocator, req_pool=req_pool, held=0)


def start_request(env: Env, tokens: list[int], extra_key=None) -> SimpleNamespace:
    """What the scheduler does: match, lock the matched node, allocate the rest."""
    req = SimpleNamespace(
        origin_input_ids=array("q", tokens), output_ids=array("q"), extra_key=extra_key,
        req_pool_idx=None, inflight_middle_chunks=0, kv_committed_len=0, priority=0,
    )
    key = RadixKey(req.origin_input_ids, extra_key)
    match = env.cache.match_prefix(MatchPrefixParams(key=key, req=req))
    env.cache.inc_lock_ref(match.last_device_node)
    req.last_node, req.prefix_indices = match.last_device_node, match.device_indices
    req.cache_protected_len = len(match.device_indices)
    env.req_pool.alloc([req])
    new_slots = env.allocator.alloc(len(tokens) - len(match.device_indices))
    env.held += len(new_slots)
    row = torch.cat([match.device_indices, new_slots]).to(torch.int32)
    env.req_pool.write((req.req_pool_idx, slice(0, len(tokens))), row)
    return req


def finish_request(env: Env, req: SimpleNamespace) -> None:
    env.held -= len(req.origin_input_ids) - req.cache_protected_len
    env.cache.cache_finished_req(req, kv_len_to_handle=len(req.origin_input_ids))
    env.req_pool.free(req)


def assert_accounting(env: Env) -> None:
    evictable = protected = 0
    stack = list(env.cache.root_node.children.values())
    while stack:
        node = stack.pop()
        stack.extend(node.children.values())
        if node.lock_ref > 0:
            protected += len(node.key)
        else:
            evictable += len(node.key)
    assert (env.cache.evictable_size(), env.cache.protected_size()) == (evictable, protected)
    assert env.allocator.available_size() + evictable + protected + env.held == POOL_SIZE


def match(env: Env, tokens: list[int], extra_key=None):
    return env.cache.match_prefix_split(MatchPrefixParams(key=RadixKey(array("q", tokens), extra_key)))


def test_native_prefix_matches_like_sglang():
    env = make_env()
    finish_request(env, start_request(env, CONTEXT[:6]))
    assert_accounting(env)
    native, foreign = match(env, CONTEXT[:4] + [7, 7])
    assert native.device_indices.tolist() == [1, 2, 3, 4]
    assert foreign is None
    assert env.cache.tag_of(native.last_device_node) == ModelTag.native("coder-b")


def test_remote_hit_is_reported_apart_and_takes_no_slots():
    env = make_env()
    finish_request(env, start_request(env, CONTEXT[:3]))
    sizes = lambda: (  # noqa: E731
        env.allocator.available_size(), env.cache.evictable_size(), env.cache.protected_size()
    )
    before = sizes()
    env.cache.advertise_remote("coder-a", CONTEXT, peer="tcp://a:5000")
    assert sizes() == before
    req = start_request(env, CONTEXT + [1, 2])
    hit = req.droidspeak_foreign_hit
    assert req.prefix_indices.tolist() == [1, 2, 3]
    assert (hit.tag, hit.prefix_len, hit.native_len) == (ModelTag.remote("coder-a"), 16, 3)
    assert (hit.plan, hit.peer, hit.device_indices) == (PLAN, "tcp://a:5000", None)
    assert_accounting(env)
    finish_request(env, req)
    assert_accounting(env)


def test_sglang_req_receives_the_hit_in_init_next_round_input():
    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.sampling.sampling_params import SamplingParams

    env = make_env()
    finish_request(env, start_request(env, CONTEXT[:5]))
    env.cache.advertise_remote("coder-a", CONTEXT)
    req = Req("r1", "", array("q", CONTEXT + [3]), SamplingParams(max_new_tokens=2))
    req.init_next_round_input(env.cache)
    assert req.prefix_indices.tolist() == [1, 2, 3, 4, 5]
    hit = req.droidspeak_foreign_hit
    assert (hit.sender, hit.native_len, hit.prefix_len) == ("coder-a", 5, 16)


def test_remote_hit_needs_a_plan_for_the_pair():
    env = make_env()
    env.cache.advertise_remote("coder-z", CONTEXT)
    assert match(env, CONTEXT).foreign is None
    with pytest.raises(ValueError):
        env.cache.advertise_remote("coder-b", CONTEXT)  # our own model is not remote


def test_senders_without_a_plan_do_not_hide_shorter_planned_ones():
    env = make_env()
    env.cache.advertise_remote("coder-z", CONTEXT)
    env.cache.advertise_remote("coder-a", CONTEXT[:10])
    hit = match(env, CONTEXT).foreign
    assert (hit.sender, hit.prefix_len) == ("coder-a", 10)


def test_eviction_frees_only_local_slots_and_keeps_remote_entries():
    env = make_env()
    finish_request(env, start_request(env, CONTEXT[:5]))
    env.cache.advertise_remote("coder-a", CONTEXT)
    evicted = env.cache.evict(EvictParams(num_tokens=POOL_SIZE))
    assert evicted.num_tokens_evicted == 5
    assert env.allocator.available_size() == POOL_SIZE
    assert_accounting(env)
    assert match(env, CONTEXT).foreign.prefix_len == 16


def run_derived_request(env: Env, tokens: list[int]) -> str:
    """A receiver request that adopted coder-a's prefix: everything it caches is derived."""
    namespace = env.cache.derived_namespace("coder-a", PLAN)
    req = start_request(env, tokens, extra_key=namespace)
    finish_request(env, req)
    return namespace


def test_derived_prefix_is_a_foreign_hit_with_local_slots():
    env = make_env()
    finish_request(env, start_request(env, CONTEXT[:2]))
    namespace = run_derived_request(env, CONTEXT[:12])
    assert_accounting(env)
    native, hit = match(env, CONTEXT + [5])
    assert native.device_indices.tolist() == [1, 2]
    assert hit.tag == ModelTag.derived("coder-b", "coder-a", str(PLAN))
    assert (hit.prefix_len, hit.native_len, hit.namespace, hit.plan) == (12, 2, namespace, PLAN)
    assert hit.device_indices.tolist() == list(range(3, 15))
    assert env.cache.tag_of(hit.last_node).origin is KVOrigin.DERIVED


def test_locking_a_derived_hit_moves_it_between_evictable_and_protected():
    env = make_env()
    run_derived_request(env, CONTEXT[:12])
    hit = match(env, CONTEXT).foreign
    evictable = env.cache.evictable_size()
    env.cache.inc_lock_ref(hit.last_node)
    assert (env.cache.evictable_size(), env.cache.protected_size()) == (evictable - 12, 12)
    assert env.cache.evict(EvictParams(num_tokens=POOL_SIZE)).num_tokens_evicted == 0
    assert_accounting(env)
    env.cache.dec_lock_ref(hit.last_node)
    assert (env.cache.evictable_size(), env.cache.protected_size()) == (evictable, 0)
    env.cache.evict(EvictParams(num_tokens=POOL_SIZE))
    assert env.allocator.available_size() == POOL_SIZE
    assert_accounting(env)


def test_request_adopting_a_derived_hit_reuses_its_slots():
    env = make_env()
    namespace = run_derived_request(env, CONTEXT[:12])
    slots = match(env, CONTEXT).foreign.device_indices.tolist()
    req = start_request(env, CONTEXT + [9], extra_key=namespace)
    assert req.prefix_indices.tolist() == slots
    assert req.droidspeak_foreign_hit is None  # already in a derived namespace
    assert env.cache.protected_size() == 12
    finish_request(env, req)
    assert_accounting(env)
    env.cache.evict(EvictParams(num_tokens=POOL_SIZE))
    assert env.allocator.available_size() == POOL_SIZE


def test_longest_foreign_prefix_wins_and_ties_go_to_local_derived_kv():
    env = make_env()
    run_derived_request(env, CONTEXT[:10])
    env.cache.advertise_remote("coder-a", CONTEXT[:10])
    assert match(env, CONTEXT).foreign.tag.origin is KVOrigin.DERIVED
    env.cache.advertise_remote("coder-a", CONTEXT[:14])
    assert match(env, CONTEXT).foreign.tag.origin is KVOrigin.REMOTE


def test_foreign_probe_does_not_split_the_losing_subtree():
    env = make_env()
    run_derived_request(env, CONTEXT[:10])
    query = CONTEXT[:6] + [1] * 10  # leaves the derived node after 6 of its 10 tokens
    env.cache.advertise_remote("coder-a", query)
    derived_node = next(iter(env.cache.root_node.children.values()))
    assert match(env, query).foreign.tag.origin is KVOrigin.REMOTE
    assert len(derived_node.key) == 10 and derived_node.parent is env.cache.root_node


def test_min_foreign_tokens_filters_small_gains():
    env = make_env(min_foreign_tokens=8)
    finish_request(env, start_request(env, CONTEXT[:10]))
    env.cache.advertise_remote("coder-a", CONTEXT[:17])
    assert match(env, CONTEXT + [0]).foreign is None
    env.cache.advertise_remote("coder-a", CONTEXT + [0, 1])
    assert match(env, CONTEXT + [0, 1, 2]).foreign.prefix_len == 18


def test_match_limit_caps_the_foreign_prefix():
    env = make_env()
    env.cache.advertise_remote("coder-a", CONTEXT)
    key = RadixKey(array("q", CONTEXT), None, limit=15)
    assert env.cache.match_prefix_split(MatchPrefixParams(key=key)).foreign.prefix_len == 15


def test_paged_pool_floors_remote_hits_to_pages():
    env = make_env(page_size=4)
    finish_request(env, start_request(env, CONTEXT[:4]))
    env.cache.advertise_remote("coder-a", CONTEXT[:11])
    native, hit = match(env, CONTEXT)
    assert (len(native.device_indices), hit.prefix_len) == (4, 8)
    env.cache.evict(EvictParams(num_tokens=POOL_SIZE))
    assert env.allocator.available_size() == POOL_SIZE


def test_export_sends_native_kv_only_by_default():
    env = make_env()
    finish_request(env, start_request(env, CONTEXT[:4]))
    run_derived_request(env, CONTEXT[:12])
    exported = env.cache.match_for_export(array("q", CONTEXT), "coder-c")
    assert (exported.tag.origin, len(exported.match.device_indices)) == (KVOrigin.NATIVE, 4)
    assert env.cache.match_for_export(array("q", CONTEXT), "coder-b") is None


def test_export_of_derived_kv_when_allowed_but_never_back_to_its_sender():
    env = make_env(allow_derived_export=True)
    finish_request(env, start_request(env, CONTEXT[:4]))
    run_derived_request(env, CONTEXT[:12])
    to_c = env.cache.match_for_export(array("q", CONTEXT), "coder-c")
    to_a = env.cache.match_for_export(array("q", CONTEXT), "coder-a")
    assert (to_c.tag.origin, len(to_c.match.device_indices)) == (KVOrigin.DERIVED, 12)
    assert (to_a.tag.origin, len(to_a.match.device_indices)) == (KVOrigin.NATIVE, 4)


def test_mixed_workload_leaves_no_leak():
    env = make_env()
    env.cache.advertise_remote("coder-a", CONTEXT + [1, 2, 3])
    running = [start_request(env, CONTEXT[:8]), start_request(env, CONTEXT[:3] + [5, 5])]
    assert_accounting(env)
    namespace = env.cache.derived_namespace("coder-a", PLAN)
    running.append(start_request(env, CONTEXT[:12], extra_key=namespace))
    assert_accounting(env)
    for req in running:
        finish_request(env, req)
        assert_accounting(env)
    follow_up = start_request(env, CONTEXT + [4])
    assert follow_up.droidspeak_foreign_hit.tag.origin is KVOrigin.REMOTE
    finish_request(env, follow_up)
    assert_accounting(env)
    assert env.cache.protected_size() == 0
    env.cache.evict(EvictParams(num_tokens=POOL_SIZE))
    assert (env.allocator.available_size(), env.cache.evictable_size(), env.held) == (POOL_SIZE, 0, 0)
    env.cache.reset()
    assert match(env, CONTEXT).foreign.tag.origin is KVOrigin.REMOTE  # remote index survives
