"""Stale directory entries: a sender's eviction withdraws what peers advertise.

Three levels: RemotePrefixIndex.withdraw_prefix alone; DroidSpeakRadixCache over
SGLang's real pools with a runtime that records what it would publish; and two real
DroidSpeakRuntimes over ZMQ on 127.0.0.1 (setup copied from test_cross_model_cpu.py).
"""

from __future__ import annotations

import time
from array import array

import pytest
import torch

from sglang_droidspeak.radix.remote_index import RemotePrefixIndex
from cpu_sglang import require_cpu_sglang

require_cpu_sglang()

from sglang.srt.mem_cache.allocator import PagedTokenToKVPoolAllocator, TokenToKVPoolAllocator  # noqa: E402
from sglang.srt.mem_cache.base_prefix_cache import EvictParams, InsertParams, MatchPrefixParams  # noqa: E402
from sglang.srt.mem_cache.cache_init_params import CacheInitParams  # noqa: E402
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool  # noqa: E402
from sglang.srt.mem_cache.radix_cache import RadixKey  # noqa: E402

from sglang_droidspeak.plan.layer_plan import LayerPlan  # noqa: E402
from sglang_droidspeak.sglang.radix_cache import FELL_BACK_ATTR, FOREIGN_HIT_ATTR, DroidSpeakRadixCache  # noqa: E402

from two_servers import (  # noqa: E402
    import_and_match, POOL_SIZE, announce_and_wait, leak_free, remote_len, request, tiny_llama, two_servers, wait_for)

CONTEXT = list(range(20, 52))  # 32 tokens
OTHER = CONTEXT[:16] + [t + 40 for t in CONTEXT[16:]]  # shares CONTEXT's first 16 tokens
SUFFIX = [3, 4, 5]


# ---- RemotePrefixIndex.withdraw_prefix ----

def docstring_index(peer: str = "") -> RemotePrefixIndex:
    index = RemotePrefixIndex()
    for tokens in ([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6], [1, 2, 3, 7, 8], [1, 2, 9]):
        index.advertise("a", tokens, peer=peer)
    return index


def match_len(index, tokens, base=None):
    found = index.longest_match(tokens, base=base)
    return 0 if found is None else found.prefix_len


def test_withdraw_prefix_follows_the_docstring_example():
    index = docstring_index()
    assert index.withdraw_prefix("a", [1, 2, 3, 4]) == 2
    assert [match_len(index, t) for t in ([1, 2, 3, 4, 5, 6], [1, 2, 3, 7, 8, 0], [1, 2, 9])] == [3, 5, 3]
    # the cut sequences now end at [1, 2, 3]: two exact withdrawals remove them
    assert index.withdraw("a", [1, 2, 3]) and index.withdraw("a", [1, 2, 3])
    assert not index.withdraw("a", [1, 2, 3])
    assert match_len(index, [1, 2, 3, 7]) == 4


def test_replicas_of_one_sender_withdraw_only_their_own():
    index = docstring_index(peer="tcp://a0")
    index.advertise("a", [1, 2, 3, 4, 5], peer="tcp://a1")  # a second replica of "a"
    assert index.withdraw_prefix("a", [1, 2, 3, 4], peer="tcp://a0") == 2
    assert index.longest_match([1, 2, 3, 4, 5, 6]) == ("a", "tcp://a1", 5)
    assert index.longest_match([1, 2, 3, 4, 5, 6], exclude_peers=("tcp://a1",)) == ("a", "tcp://a0", 3)
    assert index.withdraw_prefix("a", [1, 2, 3, 4]) == 0  # no such holder without a peer
    assert index.senders() == ("a",)


def test_withdraw_prefix_cuts_inside_an_edge():
    index = docstring_index()
    assert index.withdraw_prefix("a", [1, 2, 3, 4, 5]) == 2  # the edge 4 5 6 becomes 4
    assert match_len(index, [1, 2, 3, 4, 5, 6]) == 4
    assert index.withdraw("a", [1, 2, 3, 4]) and index.withdraw("a", [1, 2, 3, 4])
    assert match_len(index, [1, 2, 3, 4, 5, 6]) == 3  # only 1 2 3 (7 8) is left on that path


def test_withdraw_prefix_misses_change_nothing():
    index = docstring_index()
    assert index.withdraw_prefix("a", [1, 2, 3, 9]) == 0  # diverges inside a node
    assert index.withdraw_prefix("a", [1, 2, 3, 4, 5, 6, 7]) == 0  # longer than any
    assert index.withdraw_prefix("a", [5]) == 0
    assert index.withdraw_prefix("b", [1]) == 0 and index.withdraw_prefix("a", [1], base="x") == 0
    assert index.withdraw_prefix("a", []) == 0
    assert [match_len(index, t) for t in ([1, 2, 3, 4, 5, 6], [1, 2, 3, 7, 8], [1, 2, 9])] == [6, 5, 3]


def test_withdraw_prefix_of_one_token_forgets_the_subtree_only():
    index = docstring_index()
    index.advertise("a", [7, 7])
    index.advertise("a", [1, 2], base="x")
    index.advertise("b", [1, 2, 3])
    assert index.withdraw_prefix("a", [1]) == 4
    assert match_len(index, [7, 7]) == 2 and match_len(index, [1, 2], base="x") == 2
    assert index.longest_match([1, 2, 3, 4]) == ("b", "", 3)
    assert index.withdraw_prefix("a", [7]) == 1 and index.withdraw_prefix("a", [1], base="x") == 1
    assert index.senders() == ("b",)


# ---- the tree: what a sender withdraws when SGLang evicts ----

class RecordingRuntime:
    """Stands in for DroidSpeakRuntime: records announce / withdraw calls."""

    def __init__(self):
        self.announced, self.withdrawn = [], []

    def attach(self, tree):
        self.tree = tree

    def announce(self, token_ids, base):
        self.announced.append((list(token_ids), base))

    def withdraw(self, token_ids, base):
        self.withdrawn.append((list(token_ids), base))


def recording_tree(page_size=1):
    kv_pool = MHATokenToKVPool(size=64, page_size=page_size, dtype=torch.float32, head_num=1, head_dim=2,
                               layer_num=1, device="cpu", enable_memory_saver=False)
    if page_size == 1:
        allocator = TokenToKVPoolAllocator(64, torch.float32, "cpu", kv_pool, need_sort=False)
    else:
        allocator = PagedTokenToKVPoolAllocator(64, page_size, torch.float32, "cpu", kv_pool, need_sort=False)
    req_pool = ReqToTokenPool(size=2, max_context_len=64, device="cpu", enable_memory_saver=False)
    runtime = RecordingRuntime()
    tree = DroidSpeakRadixCache(CacheInitParams(False, req_pool, allocator, page_size), model="coder-a",
                                runtime=runtime)
    return tree, allocator, runtime


def insert(tree, allocator, tokens, extra_key=None):
    slots = allocator.alloc(len(tokens))
    result = tree.insert(InsertParams(key=RadixKey(array("q", tokens), extra_key), value=slots))
    allocator.free(slots[: result.prefix_len])  # what SGLang does with slots the tree had already
    time.sleep(0.002)  # distinct access times: LRU order = insert order


def test_partial_eviction_withdraws_the_evicted_leaf_only():
    tree, allocator, runtime = recording_tree()
    insert(tree, allocator, [1, 2, 3, 4, 5, 6])
    insert(tree, allocator, [1, 2, 3, 7, 8])  # splits: [1 2 3] -> [4 5 6], [7 8]
    assert tree.evict(EvictParams(num_tokens=1)).num_tokens_evicted == 3  # the LRU leaf 4 5 6
    assert runtime.withdrawn == [([1, 2, 3, 4], None)]
    assert tree.evict(EvictParams(num_tokens=1)).num_tokens_evicted == 2
    assert runtime.withdrawn[1:] == [([1, 2, 3, 7], None)]


def test_one_withdrawal_per_evicted_subtree():
    tree, allocator, runtime = recording_tree()
    insert(tree, allocator, [1, 2, 3, 4, 5, 6])
    insert(tree, allocator, [1, 2, 3, 7, 8])
    insert(tree, allocator, [9, 9], extra_key="salt")
    tree.evict(EvictParams(num_tokens=64))
    assert sorted(runtime.withdrawn, key=str) == [([1], None), ([9], "salt")]
    assert allocator.available_size() == 64


def test_derived_nodes_are_never_withdrawn():
    tree, allocator, runtime = recording_tree()
    namespace = tree.derived_namespace("coder-z", LayerPlan(4, ((0, 2),)))
    insert(tree, allocator, [1, 2, 3], extra_key=namespace)
    assert runtime.announced == []
    tree.evict(EvictParams(num_tokens=64))
    assert runtime.withdrawn == [] and allocator.available_size() == 64


def test_reset_withdraws_every_native_subtree():
    tree, allocator, runtime = recording_tree()
    insert(tree, allocator, [1, 2, 3])
    insert(tree, allocator, [1, 5])
    insert(tree, allocator, [4, 4])
    tree.reset()
    assert sorted(runtime.withdrawn) == [([1], None), ([4], None)]


def test_paged_tree_withdraws_from_the_evicted_page():
    tree, allocator, runtime = recording_tree(page_size=2)
    insert(tree, allocator, [1, 2, 3, 4, 5, 6])
    insert(tree, allocator, [1, 2, 7, 8])
    tree.evict(EvictParams(num_tokens=1))
    assert runtime.withdrawn == [([1, 2, 3], None)]


# ---- two runtimes over real pools and ZMQ (tests/unit/two_servers.py) ----

@pytest.fixture
def pair():
    torch.manual_seed(0)
    model = tiny_llama()
    with two_servers(model, model) as sides:
        yield sides


def match_on(side, tokens):
    req = request(tokens)
    return req, import_and_match(side, req)


def test_full_eviction_empties_the_receivers_index(pair):
    a, b = pair
    announce_and_wait(a, b, CONTEXT)
    a.tree.evict(EvictParams(num_tokens=POOL_SIZE))
    wait_for(lambda: remote_len(b, CONTEXT) == 0, "the withdrawal")
    assert b.tree.remote_index.senders() == ()
    req, match = match_on(b, CONTEXT + SUFFIX)
    assert len(match.device_indices) == 0 and req.extra_key is None
    assert getattr(req, FOREIGN_HIT_ATTR) is None and not getattr(req, FELL_BACK_ATTR, False)
    assert (b.metrics.fallbacks, b.metrics.hits, a.runtime.export_server.num_served) == ([], [], 0)
    assert leak_free(a) and leak_free(b) and a.allocator.available_size() == POOL_SIZE


def test_partial_eviction_keeps_the_held_prefix_advertised(pair):
    a, b = pair
    announce_and_wait(a, b, CONTEXT)
    announce_and_wait(a, b, OTHER)  # a's tree: CONTEXT[:16] -> CONTEXT[16:], OTHER[16:]
    assert a.tree.evict(EvictParams(num_tokens=1)).num_tokens_evicted == 16  # LRU leaf CONTEXT[16:]
    wait_for(lambda: remote_len(b, CONTEXT) == 16, "the withdrawal")
    assert remote_len(b, OTHER) == 32
    req, match = match_on(b, CONTEXT + SUFFIX)
    assert len(match.device_indices) == 16 and req.extra_key is not None
    assert b.metrics.hits == [("remote", 16, 2)] and b.metrics.fallbacks == []
    assert leak_free(a) and leak_free(b)


def test_eviction_between_match_and_fetch_falls_back_without_leaks(pair):
    a, b = pair
    announce_and_wait(a, b, CONTEXT)
    start_import = b.runtime.start_import

    def evict_then_start(*args, **kwargs):  # the withdrawal is still on its way
        a.tree.evict(EvictParams(num_tokens=POOL_SIZE))
        return start_import(*args, **kwargs)

    b.runtime.start_import = evict_then_start
    available = b.allocator.available_size()
    req, match = match_on(b, CONTEXT + SUFFIX)
    assert len(match.device_indices) == 0 and req.extra_key is None
    assert getattr(req, FELL_BACK_ATTR) is True and b.metrics.fallbacks == ["evicted"]
    assert b.allocator.available_size() == available and leak_free(b)
    assert a.allocator.available_size() == POOL_SIZE and leak_free(a)
    wait_for(lambda: remote_len(b, CONTEXT) == 0, "the withdrawal")
