"""Two replicas of one sender model, one receiver: each replica's announcements are its
own, the receiver fetches from the replica that holds the prefix, and one replica's
eviction leaves the other's entries alone. Real SGLang pools and trees, real ZMQ
(tests/unit/two_servers.py says what stands in for the scheduler and the GPU forward).
"""

from __future__ import annotations

import pytest
import torch

from cpu_sglang import require_cpu_sglang

require_cpu_sglang()

from sglang.srt.mem_cache.base_prefix_cache import EvictParams, MatchPrefixParams  # noqa: E402
from sglang.srt.mem_cache.radix_cache import RadixKey  # noqa: E402

from sglang_droidspeak.reference import ReferenceModel  # noqa: E402
from two_servers import (  # noqa: E402
    import_and_match, NUM_LAYERS, PLAN_GROUPS, Polling, leak_free, make_side, request, sender_prefill, tiny_llama,
    wait_for)

FIRST, SECOND = list(range(20, 52)), list(range(60, 92))  # 32 tokens each


def sender_replica(model):
    binds = {"export_bind": "tcp://127.0.0.1:*", "announce_bind": "tcp://127.0.0.1:*"}
    return make_side("coder-a", model, binds, fingerprint="fp")


@pytest.fixture
def cluster():
    torch.manual_seed(0)
    model = tiny_llama()
    senders = [sender_replica(model) for _ in (0, 1)]
    peers = [{"model": "coder-a", "fetch": s.runtime.export_server.endpoint,
              "announce": s.runtime.announcer.endpoint} for s in senders]
    plans = [{"sender": "coder-a", "receiver": "coder-b", "num_layers": NUM_LAYERS, "groups": PLAN_GROUPS}]
    receiver = make_side("coder-b", model, {"peers": peers, "plans": plans, "fetch_timeout_s": 1.0})
    pollers = [Polling(s) for s in senders]
    try:
        yield senders, receiver
    finally:
        for poller in pollers:
            poller.close()
        for side in (*senders, receiver):
            side.runtime.close()


def announce(sender, receiver, tokens):
    """two_servers.announce_and_wait, but waiting for THIS replica's entry: another replica
    may already have advertised the same tokens."""
    sender_prefill(sender, tokens)
    others = [p.fetch for p in receiver.runtime.peers if p.fetch != sender.runtime.export_server.endpoint]
    held = lambda: receiver.tree.remote_index.longest_match(tokens, exclude_peers=others)  # noqa: E731
    wait_for(lambda: held() is not None and held().prefix_len == len(tokens), "the announcement",
             poke=lambda: sender.runtime.announce(tokens, None))


def test_receiver_fetches_from_the_replica_that_holds_the_prefix(cluster):
    (a0, a1), b = cluster
    announce(a0, b, FIRST)
    announce(a1, b, SECOND)
    found = [b.tree.remote_index.longest_match(t) for t in (FIRST, SECOND)]
    assert [(f.sender, f.peer) for f in found] == [("coder-a", a0.runtime.export_server.endpoint),
                                                   ("coder-a", a1.runtime.export_server.endpoint)]
    for tokens in (SECOND, FIRST):
        req = request(tokens + [3, 4])
        m = import_and_match(b, req)
        assert len(m.device_indices) == len(tokens)
    assert b.metrics.hits == [("remote", 32, 2), ("remote", 32, 2)] and b.metrics.fallbacks == []  # [1, 3)
    assert [a.runtime.export_server.num_served for a in (a0, a1)] == [1, 1]
    reference = ReferenceModel(b.model).prefill(torch.tensor(SECOND)).kv  # same weights: own KV
    req = request(SECOND + [3, 4])
    m = import_and_match(b, req)
    k_cache = b.pool.get_key_buffer(NUM_LAYERS - 1)[m.device_indices]  # [32, kv_heads, head_dim]
    assert torch.allclose(k_cache, reference.k[NUM_LAYERS - 1].transpose(0, 1), atol=1e-5)
    assert leak_free(b)


def test_one_replica_evicting_leaves_the_other_advertised(cluster):
    (a0, a1), b = cluster
    announce(a0, b, FIRST)
    announce(a1, b, FIRST)  # both replicas hold the same context
    assert a0.tree.evict(EvictParams(num_tokens=len(FIRST))).num_tokens_evicted == len(FIRST)
    a1_fetch = a1.runtime.export_server.endpoint
    wait_for(lambda: b.tree.remote_index.longest_match(FIRST).peer == a1_fetch, "a0's withdrawal")
    req = request(FIRST + [3, 4])
    m = import_and_match(b, req)
    assert len(m.device_indices) == len(FIRST) and b.metrics.fallbacks == []
    assert (a0.runtime.export_server.num_served, a1.runtime.export_server.num_served) == (0, 1)


def test_a_frozen_replica_is_skipped_for_another_that_holds_the_prefix(cluster):
    (a0, a1), b = cluster
    announce(a0, b, FIRST)
    announce(a1, b, FIRST)
    frozen = a0.runtime.export_server.endpoint
    b.runtime._backoff_until[frozen] = float("inf")  # as after a timeout on a0 (see test_cross_model_cpu)
    assert b.runtime.backed_off_peers() == (frozen,)
    req = request(FIRST + [3, 4])
    m = import_and_match(b, req)
    assert len(m.device_indices) == len(FIRST) and b.metrics.fallbacks == []
    assert (a0.runtime.export_server.num_served, a1.runtime.export_server.num_served) == (0, 1)
