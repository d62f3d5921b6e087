"""CacheBlend-style baseline and the layer-token cost accounting."""

from __future__ import annotations

import pytest
import torch

from sglang_droidspeak.plan.layer_plan import LayerPlan
from sglang_droidspeak.reference import (
    ReferenceEngineError,
    ReferenceModel,
    cacheblend_cost,
    cacheblend_receiver_cache,
    cacheblend_tokens_for_cost,
    droidspeak_cost,
    kv_projection_fraction,
)
from sglang_droidspeak.reference.cacheblend import select_tokens
from sglang_droidspeak.reference.manual import manual_layers
from sglang_droidspeak.reference.tiny import ARCHITECTURES, perturbed_copy, tiny_config, tiny_model

torch.set_num_threads(1)  # tiny models: threads only add contention on a shared CPU

NUM_LAYERS = 4
CONTEXT_LEN = 20
SUFFIX_LEN = 3
ATOL = 1e-5


def pair(arch: str, relative_noise: float = 0.3):
    window = 6 if arch == "mistral" else None
    receiver = ReferenceModel(tiny_model(arch, seed=0, num_layers=NUM_LAYERS, sliding_window=window))
    sender = ReferenceModel(perturbed_copy(receiver.model, relative_noise) if relative_noise else receiver.model)
    ids = torch.randint(0, 128, (CONTEXT_LEN + SUFFIX_LEN,), generator=torch.Generator().manual_seed(9))
    return receiver, sender, ids[:CONTEXT_LEN], ids[CONTEXT_LEN:]


def logits(receiver, kv, suffix):
    return receiver.extend(kv, suffix).logits


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_all_tokens_equals_full_prefill_and_zero_equals_full_reuse(arch):
    receiver, sender, context, suffix = pair(arch)
    sender_cache = sender.prefill(context)
    own = logits(receiver, receiver.prefill(context).kv, suffix)
    everything = cacheblend_receiver_cache(receiver, sender_cache, context, CONTEXT_LEN)
    torch.testing.assert_close(logits(receiver, everything, suffix), own, atol=ATOL, rtol=0)
    assert cacheblend_receiver_cache(receiver, sender_cache, context, 0) is sender_cache.kv
    assert (logits(receiver, sender_cache.kv, suffix) - own).abs().max() > 0.05


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("budget", [1, 4, 13])
def test_same_weights_any_budget_equals_full_prefill(arch, budget):
    receiver, sender, context, suffix = pair(arch, relative_noise=0.0)
    kv = cacheblend_receiver_cache(receiver, sender.prefill(context), context, budget, select_layer=2)
    expected = logits(receiver, receiver.prefill(context).kv, suffix)
    torch.testing.assert_close(logits(receiver, kv, suffix), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_partial_budget_recomputes_exactly_the_selected_rows(arch):
    receiver, sender, context, _ = pair(arch)
    sender_cache = sender.prefill(context)
    selected = select_tokens(receiver, sender_cache, context, 5, select_layer=1).positions
    kv = cacheblend_receiver_cache(receiver, sender_cache, context, 5, select_layer=1)
    assert selected.numel() == 5 and int(selected[0]) == 0
    others = torch.ones(CONTEXT_LEN, dtype=torch.bool)
    others[selected] = False
    for layer in range(NUM_LAYERS):
        assert torch.equal(kv.k[layer][:, others], sender_cache.kv.k[layer][:, others])
        assert torch.equal(kv.v[layer][:, others], sender_cache.kv.v[layer][:, others])
        assert (kv.v[layer][:, selected] - sender_cache.kv.v[layer][:, selected]).abs().amax(dim=(0, 2)).min() > 1e-4


def test_selection_takes_token_zero_and_the_largest_v_deviations():
    receiver, sender, context, _ = pair("qwen2")
    sender_cache = sender.prefill(context)
    own_v = manual_layers(receiver.parts, receiver.embed(context), 0, 3).v[2]
    deviation = (own_v - sender_cache.kv.v[2]).pow(2).sum(dim=(0, 2))  # [n]
    expected = sorted([0] + (deviation[1:].topk(5).indices + 1).tolist())
    assert select_tokens(receiver, sender_cache, context, 6, select_layer=2).positions.tolist() == expected


def test_keep_selection_kv_keeps_receivers_first_layers():
    receiver, sender, context, suffix = pair("llama")
    sender_cache = sender.prefill(context)
    own = receiver.prefill(context).kv
    kv = cacheblend_receiver_cache(receiver, sender_cache, context, 0, select_layer=1, keep_selection_kv=True)
    for layer in (0, 1):
        torch.testing.assert_close(kv.k[layer], own.k[layer], atol=ATOL, rtol=0)
    assert torch.equal(kv.k[3], sender_cache.kv.k[3])
    everything = cacheblend_receiver_cache(receiver, sender_cache, context, CONTEXT_LEN, keep_selection_kv=True)
    torch.testing.assert_close(logits(receiver, everything, suffix), logits(receiver, own, suffix), atol=ATOL, rtol=0)


def test_cacheblend_errors():
    receiver, sender, context, _ = pair("llama")
    sender_cache = sender.prefill(context)
    with pytest.raises(ReferenceEngineError, match="num_recompute_tokens"):
        cacheblend_receiver_cache(receiver, sender_cache, context, CONTEXT_LEN + 1)
    with pytest.raises(ReferenceEngineError, match="select_layer"):
        cacheblend_receiver_cache(receiver, sender_cache, context, 3, select_layer=NUM_LAYERS)
    with pytest.raises(ReferenceEngineError, match="input_ids"):
        cacheblend_receiver_cache(receiver, sender_cache, context[:-2], 3)


def test_layer_token_accounting():
    n, L = 800, 12
    ds = droidspeak_cost(LayerPlan.contiguous(L, 0, 4), n)
    assert ds.layer_tokens == 3200 and ds.token_equivalent == pytest.approx(3200 / 12)
    assert ds.prefill_fraction == pytest.approx(1 / 3)
    assert cacheblend_cost(L, n, n).layer_tokens == L * n
    assert cacheblend_cost(L, n, 0).layer_tokens == 0
    assert cacheblend_cost(L, n, 100, select_layer=1, kv_fraction=0.25).layer_tokens == 800 + 200 + 1200
    assert cacheblend_cost(L, n, 100, select_layer=1, keep_selection_kv=True, kv_fraction=0.25).layer_tokens == (
        800 + 200 + 75 + 10 * 100
    )
    assert cacheblend_tokens_for_cost(3200, L, n, select_layer=1, kv_fraction=0.25) == 183  # 1000 + 12k <= 3200
    assert cacheblend_tokens_for_cost(500, L, n, select_layer=1) == 0
    assert cacheblend_tokens_for_cost(L * n, L, n) == n


def test_kv_projection_fraction_by_hand():
    config = tiny_config("llama", hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=128)
    kv = 2 * 64 * 32  # K and V: hidden -> 2 heads * 16
    total = 64 * 64 + kv + 64 * 64 + 3 * 64 * 128
    assert kv_projection_fraction(config) == pytest.approx(kv / total)
