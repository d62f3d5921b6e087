"""Hybrid recompute (a DroidSpeak group, then token recompute after it): caches, costs, systems."""

from __future__ import annotations

import pytest
import torch

from sglang_droidspeak.plan.layer_plan import LayerPlan
from sglang_droidspeak.profiler.evaluate import cacheblend_tokens, hybrid_tokens, system_prefix_kv
from sglang_droidspeak.profiler.systems import cacheblend_system, hybrid_system, plan_system
from sglang_droidspeak.reference import (
    ReferenceEngineError, ReferenceModel, cacheblend_cost, cacheblend_receiver_cache, cacheblend_tokens_for_cost,
    hybrid_cost, hybrid_receiver_cache, hybrid_tokens_for_cost, kv_projection_fraction,
)
from sglang_droidspeak.reference.tiny import perturbed_copy, tiny_model

torch.set_num_threads(1)

L, N = 4, 20


@pytest.fixture(scope="module")
def models():
    receiver = ReferenceModel(tiny_model("llama", seed=0, num_layers=L))
    sender = ReferenceModel(perturbed_copy(receiver.model, 0.3))
    ids = torch.randint(0, 128, (N,), generator=torch.Generator().manual_seed(9))
    return sender, receiver, ids


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.k + a.v, b.k + b.v))


def test_no_tokens_is_the_plan_and_group_0_1_is_cacheblend(models):
    sender, receiver, ids = models
    cache = sender.prefill(ids, e_layers=range(L))
    for start, end in ((0, 2), (1, 3), (2, 4)):
        plan = receiver.build_receiver_cache(cache, LayerPlan.contiguous(L, start, end), ids)
        assert same(hybrid_receiver_cache(receiver, cache, ids, start, end, 0), plan)
    for t in (1, 5, N):
        blend = cacheblend_receiver_cache(receiver, cache, ids, t, select_layer=1, keep_selection_kv=True)
        assert same(hybrid_receiver_cache(receiver, cache, ids, 0, 1, t), blend), t


def test_tokens_after_the_group_replace_only_the_selected_rows(models):
    sender, receiver, ids = models
    cache = sender.prefill(ids, e_layers=[1])
    plan = receiver.build_receiver_cache(cache, LayerPlan.contiguous(L, 1, 2), ids)
    hybrid = hybrid_receiver_cache(receiver, cache, ids, 1, 2, 5)
    assert all(torch.equal(hybrid.k[l], plan.k[l]) for l in (0, 1))
    assert not torch.allclose(hybrid.v[2], cache.kv.v[2])  # layer 2: the selection's own V, every token
    changed = (hybrid.k[3] != cache.kv.k[3]).any(dim=(0, 2))  # [n]: rows recomputed in layer 3
    assert changed.sum().item() == 5 and changed[0].item()


def test_same_model_gives_the_receivers_own_kv(models):
    _, receiver, ids = models
    cache = receiver.prefill(ids, e_layers=[1])
    hybrid = hybrid_receiver_cache(receiver, cache, ids, 1, 2, 7)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(hybrid.k + hybrid.v, cache.kv.k + cache.kv.v))
    with pytest.raises(ReferenceEngineError, match="the sender cache has no E_3"):
        hybrid_receiver_cache(receiver, cache, ids, 3, 4, 1)


def test_costs_add_up():
    kvf = 0.25
    assert hybrid_cost(30, 768, 4, 8, 0, kvf).layer_tokens == 4 * 768
    assert hybrid_cost(30, 768, 4, 8, 10, kvf).layer_tokens == 4 * 768 + 0.25 * 768 + 0.75 * 10 + 21 * 10
    assert hybrid_cost(30, 768, 4, 30, 10, kvf).layer_tokens == 26 * 768  # nothing after the group
    # extra(t) = 25 + 0.75 t + 1 * t <= 100  ->  t = 42
    assert hybrid_tokens_for_cost(100, 4, 100, 2, kvf) == 42
    assert hybrid_tokens_for_cost(0, 4, 100, 2, kvf) == 0
    assert hybrid_tokens_for_cost(24, 4, 100, 2, kvf) == 0  # the selection projection alone does not fit
    assert hybrid_tokens_for_cost(1000, 4, 100, 4, kvf) == 0  # no layer after the group
    for k in range(2, 12):  # cacheblend:k (vLLM mode, select layer 1) is hybrid:0-1+(k-1)
        t = cacheblend_tokens_for_cost(k * 768, 30, 768, keep_selection_kv=True, kv_fraction=kvf)
        assert hybrid_tokens_for_cost((k - 1) * 768, 30, 768, 1, kvf) == t
        assert hybrid_cost(30, 768, 0, 1, t, kvf) == cacheblend_cost(30, 768, t, 1, True, kvf)


def test_hybrid_system_key_fraction_layers_and_prefix(models):
    sender, receiver, ids = models
    system = hybrid_system(30, 4, 8, 6)
    assert (system.key, system.recompute_fraction(30)) == ("hybrid:4-8+6", 10 / 30)
    assert system.num_fetched_layers(30) == 25 and hybrid_system(30, 4, 8, 0).num_fetched_layers(30) == 26
    assert cacheblend_system(6).num_fetched_layers(30) == 28
    assert plan_system(LayerPlan.contiguous(30, 4, 8)).num_fetched_layers(30) == 26
    with pytest.raises(ValueError, match=r"group \[28, 30\) ends at the last layer"):
        hybrid_system(30, 28, 30, 2)
    cache = sender.prefill(ids, e_layers=[1])
    kvf = kv_projection_fraction(receiver.config)
    assert hybrid_tokens(receiver, hybrid_system(L, 1, 2, 1), N) == hybrid_tokens_for_cost(N, L, N, 2, kvf) > 0
    assert hybrid_tokens(receiver, hybrid_system(L, 0, 1, 1), N) == cacheblend_tokens(receiver, 2, N)
    got = system_prefix_kv(receiver, hybrid_system(L, 1, 2, 1), ids, cache)
    want = hybrid_receiver_cache(receiver, cache, ids, 1, 2, hybrid_tokens(receiver, hybrid_system(L, 1, 2, 1), N))
    assert same(got, want)
    assert same(system_prefix_kv(receiver, hybrid_system(L, 1, 2, 0), ids, cache),
                receiver.build_receiver_cache(cache, LayerPlan.contiguous(L, 1, 2), ids))
