"""ReferenceModel: prefill / build_receiver_cache / extend / generate on tiny random models."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from sglang_droidspeak.plan.layer_plan import LayerPlan, PlanError
from sglang_droidspeak.reference import ReferenceEngineError, ReferenceModel
from sglang_droidspeak.reference.tiny import ARCHITECTURES, perturbed_copy, tiny_model

torch.set_num_threads(1)  # tiny models: threads only add contention on a shared CPU

NUM_LAYERS = 4
CONTEXT_LEN = 24
SUFFIX_LEN = 4
ATOL = 1e-5


def build(arch: str, seed: int = 0):
    window = 8 if arch == "mistral" else None  # Mistral exercises the sliding window (8 < 24 tokens)
    return tiny_model(arch, seed=seed, num_layers=NUM_LAYERS, sliding_window=window)


def token_ids(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 128, (CONTEXT_LEN + SUFFIX_LEN,), generator=torch.Generator().manual_seed(seed))
    return ids[:CONTEXT_LEN], ids[CONTEXT_LEN:]


def all_plans(num_layers: int) -> list[LayerPlan]:
    spans = [(s, e) for s in range(num_layers) for e in range(s + 1, num_layers + 1)]
    plans = [LayerPlan.full_reuse(num_layers)] + [LayerPlan.contiguous(num_layers, s, e) for s, e in spans]
    plans += [LayerPlan(num_layers, (a, b)) for a, b in itertools.combinations(spans, 2) if a[1] <= b[0]]
    return plans


def greedy_from_scratch(model, ids: torch.Tensor, num_tokens: int) -> list[int]:
    """Greedy decoding that re-runs the whole sequence every step (no cache at all)."""
    tokens = []
    with torch.no_grad():
        for _ in range(num_tokens):
            logits = model(torch.cat([ids, torch.tensor(tokens, dtype=torch.long)])[None]).logits[0, -1]
            tokens.append(int(logits.argmax()))
    return tokens


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_prefill_then_extend_matches_one_hf_forward(arch):
    model = build(arch)
    context, suffix = token_ids()
    ref = ReferenceModel(model)
    result = ref.extend(ref.prefill(context).kv, suffix)
    with torch.no_grad():
        expected = model(torch.cat([context, suffix])[None]).logits[0, CONTEXT_LEN:]
    assert result.logits.dtype == torch.float32 and result.logits.shape == (SUFFIX_LEN, 128)
    torch.testing.assert_close(result.logits, expected, atol=ATOL, rtol=0)
    assert result.kv.seq_len == CONTEXT_LEN + SUFFIX_LEN


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_generate_matches_cache_free_greedy(arch):
    model = build(arch)
    context, suffix = token_ids()
    ref = ReferenceModel(model)
    tokens = ref.generate(ref.prefill(context).kv, suffix, max_new_tokens=6)
    assert tokens == greedy_from_scratch(model, torch.cat([context, suffix]), 6)
    assert len(set(tokens)) > 1  # the model is not degenerate, so the comparison means something


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_same_weights_every_plan_reproduces_full_prefill(arch):
    receiver = ReferenceModel(build(arch))
    sender = ReferenceModel(copy.deepcopy(receiver.model))
    context, suffix = token_ids()
    sender_cache = sender.prefill(context, e_layers=range(NUM_LAYERS))
    own = receiver.prefill(context).kv
    expected_logits = receiver.extend(own, suffix).logits
    expected_tokens = receiver.generate(own, suffix, max_new_tokens=5)
    plans = all_plans(NUM_LAYERS)
    assert len(plans) == 1 + 10 + 15
    for plan in plans:
        kv = receiver.build_receiver_cache(sender_cache, plan, context)
        actual = receiver.extend(kv, suffix).logits
        torch.testing.assert_close(actual, expected_logits, atol=ATOL, rtol=0, msg=str(plan))
        assert receiver.generate(kv, suffix, max_new_tokens=5) == expected_tokens, plan


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_different_weights_full_reuse_differs_and_full_prefill_plan_matches(arch):
    receiver = ReferenceModel(build(arch))
    sender = ReferenceModel(perturbed_copy(receiver.model, relative_noise=0.3))
    context, suffix = token_ids()
    sender_cache = sender.prefill(context)
    own = receiver.prefill(context).kv
    expected = receiver.extend(own, suffix).logits
    reuse = receiver.build_receiver_cache(sender_cache, LayerPlan.full_reuse(NUM_LAYERS), context)
    assert (receiver.extend(reuse, suffix).logits - expected).abs().max() > 0.05
    full = receiver.build_receiver_cache(sender_cache, LayerPlan.full_prefill(NUM_LAYERS), context)
    for layer in range(NUM_LAYERS):
        assert torch.equal(full.k[layer], own.k[layer]) and torch.equal(full.v[layer], own.v[layer])
    torch.testing.assert_close(receiver.extend(full, suffix).logits, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_group_recomputes_from_sender_e_and_reuses_the_rest(arch):
    receiver = ReferenceModel(build(arch))
    sender = ReferenceModel(perturbed_copy(receiver.model, relative_noise=0.3))
    context, _ = token_ids()
    sender_cache = sender.prefill(context, e_layers=[2])
    kv = receiver.build_receiver_cache(sender_cache, LayerPlan.contiguous(NUM_LAYERS, 2, 4), context)
    expected = receiver.run_layers(sender_cache.e[2], 2, 4)
    for layer in (0, 1):
        assert kv.k[layer] is sender_cache.kv.k[layer] and kv.v[layer] is sender_cache.kv.v[layer]
    for layer in (2, 3):
        assert torch.equal(kv.k[layer], expected.k[layer]) and torch.equal(kv.v[layer], expected.v[layer])
        assert (kv.k[layer] - sender_cache.kv.k[layer]).abs().max() > 1e-3  # really recomputed


def test_generate_stops_at_stop_token_and_respects_zero_budget():
    ref = ReferenceModel(build("llama"))
    context, suffix = token_ids()
    prefix = ref.prefill(context).kv
    free = ref.generate(prefix, suffix, max_new_tokens=6)
    assert ref.generate(prefix, suffix, max_new_tokens=6, stop_token_ids=[free[1]]) == free[: free.index(free[1]) + 1]
    assert ref.generate(prefix, suffix, max_new_tokens=0) == []


def test_inputs_are_not_modified():
    ref = ReferenceModel(build("qwen2"))
    context, suffix = token_ids()
    prefix = ref.prefill(context).kv
    before = [k.clone() for k in prefix.k]
    ref.generate(prefix, suffix, max_new_tokens=3)
    assert prefix.seq_len == CONTEXT_LEN and all(torch.equal(a, b) for a, b in zip(before, prefix.k))


def test_clear_errors():
    receiver = ReferenceModel(build("llama"))
    context, suffix = token_ids()
    sender_cache = receiver.prefill(context, e_layers=[1])
    with pytest.raises(PlanError, match="4"):
        receiver.build_receiver_cache(sender_cache, LayerPlan.contiguous(6, 1, 2), context)
    with pytest.raises(ReferenceEngineError, match=r"E at layers \[2\].*only for \[1\]"):
        receiver.build_receiver_cache(sender_cache, LayerPlan.contiguous(NUM_LAYERS, 2, 3), context)
    with pytest.raises(ReferenceEngineError, match="input_ids"):
        receiver.build_receiver_cache(sender_cache, LayerPlan.contiguous(NUM_LAYERS, 1, 3), context[:-1])
    for empty in (torch.tensor([], dtype=torch.long), []):
        with pytest.raises(ReferenceEngineError, match="suffix_ids is empty"):
            receiver.extend(sender_cache.kv, empty)
        with pytest.raises(ReferenceEngineError, match="suffix_ids is empty"):
            receiver.generate(sender_cache.kv, empty, max_new_tokens=3)
    with pytest.raises(ReferenceEngineError, match="outside"):
        receiver.prefill(context, e_layers=[NUM_LAYERS])
    other = ReferenceModel(tiny_model("llama", num_layers=NUM_LAYERS + 1))
    with pytest.raises(ReferenceEngineError, match="layers, kv_heads, head_dim"):
        other.extend(sender_cache.kv, suffix)
