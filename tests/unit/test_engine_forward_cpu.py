"""EngineForward on the CPU: SGLang's own model classes and torch_native attention
(tests/unit/sglang_cpu_model.py) against the reference engine (HF transformers).

Every check is exact to fp32 noise: K/V of recomputed layers, E captured by the sender's
slice, batched and chunked forwards against one-segment forwards.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cpu_sglang import require_cpu_sglang

require_cpu_sglang("sglang.srt.layers.attention.torch_native_backend")

from sglang_droidspeak.plan.layer_plan import LayerPlan  # noqa: E402
from sglang_droidspeak.reference import ReferenceModel  # noqa: E402
from sglang_droidspeak.reference.tiny import perturbed_copy, tiny_model  # noqa: E402
from sglang_droidspeak.sglang.engine_forward import EngineSegment, engine_unsupported  # noqa: E402
from sglang_cpu_model import cpu_engine  # noqa: E402

NUM_LAYERS = 4
TOKENS = list(range(5, 29))  # 24 tokens
TOL = dict(atol=2e-5, rtol=2e-5)


WINDOW = 8  # gemma2's sliding window: shorter than the 24-token context


def tiny(arch, seed=7):
    window = {"sliding_window": WINDOW} if arch == "gemma2" else {}
    return tiny_model(arch, seed=seed, num_layers=NUM_LAYERS, hidden_size=64, num_heads=4, num_kv_heads=2,
                      vocab_size=128, **window)


def kv_rows(side, layer, slots):
    return side.kv_pool.get_key_buffer(layer)[slots], side.kv_pool.get_value_buffer(layer)[slots]


def segment(tokens, slots, prefix_len=0, e_start=None):
    return EngineSegment(torch.tensor(tokens[prefix_len:]), slots[: len(tokens)], prefix_len, e_start)


def assert_layer_kv(side, layer, slots, ref_kv):
    k, v = kv_rows(side, layer, slots)
    torch.testing.assert_close(k, ref_kv.k[layer].transpose(0, 1), **TOL)
    torch.testing.assert_close(v, ref_kv.v[layer].transpose(0, 1), **TOL)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma2"])
def test_full_slice_and_sender_e_equal_the_reference_prefill(arch):
    hf = tiny(arch)
    side = cpu_engine(hf)
    ref = ReferenceModel(hf).prefill(torch.tensor(TOKENS), e_layers=range(NUM_LAYERS))
    slots = side.allocator.alloc(len(TOKENS))
    e = side.engine.run([segment(TOKENS, slots)], [1], 0, NUM_LAYERS, capture=(1, 2, 3))
    for layer in range(NUM_LAYERS):
        assert_layer_kv(side, layer, slots, ref.kv)
    for layer in (1, 2, 3):
        torch.testing.assert_close(e[layer], ref.e[layer], **TOL)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma2"])
@pytest.mark.parametrize("groups", [((0, 2),), ((1, 3),), ((2, 4),), ((0, 4),)])
def test_group_from_the_senders_e_equals_the_reference_receiver_cache(arch, groups):
    sender = tiny(arch)
    receiver = perturbed_copy(sender, 0.2, seed=1)
    side = cpu_engine(receiver)
    sent = ReferenceModel(sender).prefill(torch.tensor(TOKENS), e_layers=range(NUM_LAYERS))
    plan = LayerPlan(NUM_LAYERS, groups)
    expected = ReferenceModel(receiver).build_receiver_cache(sent, plan, torch.tensor(TOKENS))
    slots = side.allocator.alloc(len(TOKENS))
    (start, end), = groups
    e_start = None if start == 0 else sent.e[start]
    side.engine.run([segment(TOKENS, slots, e_start=e_start)], [1], start, end)
    for layer in range(start, end):
        assert_layer_kv(side, layer, slots, expected)
    untouched = side.kv_pool.get_key_buffer(0 if start > 0 else NUM_LAYERS - 1)[slots]
    assert bool((untouched == 0).all()) == (start > 0 or end < NUM_LAYERS)


def test_gemma2s_window_is_applied():
    windowed, full = tiny("gemma2"), tiny_model("gemma2", seed=7, num_layers=NUM_LAYERS, hidden_size=64,
                                                num_heads=4, num_kv_heads=2, vocab_size=128)
    assert windowed.config.sliding_window == WINDOW < len(TOKENS) and full.config.sliding_window > len(TOKENS)
    got = []
    for hf in (windowed, full):
        side = cpu_engine(hf)
        slots = side.allocator.alloc(len(TOKENS))
        side.engine.run([segment(TOKENS, slots)], [1], 0, 2)
        got.append(side.kv_pool.get_key_buffer(1)[slots])
    assert torch.equal(got[0][:WINDOW], got[1][:WINDOW])  # within the window: the same
    assert (got[0][WINDOW + 1:] - got[1][WINDOW + 1:]).abs().max() > 1e-3  # beyond it: the window acts


def test_batched_segments_equal_one_forward_each():
    hf = tiny("llama")
    one, batched = cpu_engine(hf), cpu_engine(hf)
    prefixes = [TOKENS, [9, 8, 7, 6, 5, 4, 3, 2, 1, 11], TOKENS[:13]]
    slots_one = [one.allocator.alloc(len(t)) for t in prefixes]
    slots_batched = [batched.allocator.alloc(len(t)) for t in prefixes]
    for tokens, slots in zip(prefixes, slots_one):
        one.engine.run([segment(tokens, slots)], [1], 0, 2)
    batched.engine.run([segment(t, s) for t, s in zip(prefixes, slots_batched)], [1, 2, 3], 0, 2)
    for a, b in zip(slots_one, slots_batched):
        for layer in (0, 1):
            for got, want in zip(kv_rows(batched, layer, b), kv_rows(one, layer, a)):
                torch.testing.assert_close(got, want, **TOL)


def test_chunked_slice_from_e_equals_the_whole_prefix_at_once():
    sender = tiny("qwen2")
    receiver = perturbed_copy(sender, 0.2, seed=1)
    sent = ReferenceModel(sender).prefill(torch.tensor(TOKENS), e_layers=(1,))
    whole, chunked = cpu_engine(receiver), cpu_engine(receiver)
    slots_w, slots_c = whole.allocator.alloc(len(TOKENS)), chunked.allocator.alloc(len(TOKENS))
    whole.engine.run([segment(TOKENS, slots_w, e_start=sent.e[1])], [1], 1, 3)
    for begin, stop in ((0, 10), (10, 17), (17, 24)):
        seg = EngineSegment(torch.tensor(TOKENS[begin:stop]), slots_c[:stop], begin, sent.e[1][begin:stop])
        chunked.engine.run([seg], [2], 1, 3)
    for layer in (1, 2):
        for got, want in zip(kv_rows(chunked, layer, slots_c), kv_rows(whole, layer, slots_w)):
            torch.testing.assert_close(got, want, **TOL)


def test_a_twin_has_its_own_backend_and_computes_the_same():
    hf = tiny("llama")
    side = cpu_engine(hf)
    assert side.engine.twin() is side.engine  # no backend factory (CPU tests): itself
    made = []
    runner = SimpleNamespace(device="cpu", req_to_token_pool=side.req_pool, token_to_kv_pool=side.kv_pool)
    side.engine.new_backend = lambda: made.append(type(side.engine.backend)(runner)) or made[-1]
    twin = side.engine.twin()
    assert made and twin.backend is made[0] is not side.engine.backend and twin.model is side.engine.model
    ref = ReferenceModel(hf).prefill(torch.tensor(TOKENS))
    slots = side.allocator.alloc(len(TOKENS))
    twin.run([segment(TOKENS, slots)], [1], 0, NUM_LAYERS)
    for layer in range(NUM_LAYERS):
        assert_layer_kv(side, layer, slots, ref.kv)


def test_a_segment_whose_slots_do_not_cover_its_positions_is_refused():
    side = cpu_engine(tiny("llama"))
    slots = side.allocator.alloc(len(TOKENS))
    with pytest.raises(ValueError, match="23 slots for 24 positions"):
        side.engine.run([EngineSegment(torch.tensor(TOKENS), slots[:23])], [1], 0, 1)


def test_unsupported_models_and_backends_are_named():
    class NoSplit:
        pass

    assert engine_unsupported(NoSplit(), "triton") == "NoSplit has no forward_split_prefill"
    assert engine_unsupported(cpu_engine(tiny("llama")).model, "fa3") == (
        "attention backend 'fa3' (supported: flashinfer, triton, torch_native)")
    assert "tensor/pipeline parallelism 2/1" in engine_unsupported(object(), "triton", tp_size=2)
    assert engine_unsupported(cpu_engine(tiny("llama")).model, "flashinfer") is None
    gemma = cpu_engine(tiny("gemma2")).model  # sliding windows: flashinfer's ragged prefill drops them
    assert engine_unsupported(gemma, "flashinfer").startswith("sliding-window attention on flashinfer's ragged")
    assert engine_unsupported(gemma, "flashinfer", flashinfer_paged=True) is None
    assert engine_unsupported(gemma, "triton") is None
