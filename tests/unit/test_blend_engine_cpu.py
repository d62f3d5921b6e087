"""BlendPlans through the engine on the CPU (SGLang's model classes, torch_native attention:
tests/unit/sglang_cpu_model.py) against the reference engine's CacheBlend (default mode).

Per (arch, k): the sender's K/V of every layer go into the import's slots, then
blend_import.Blend runs its steps (select a, select b, recompute) on EngineForward; every
layer's K/V at every slot, the selection and the receiver's next-token logits after a
suffix must equal reference/cacheblend.py's to fp32 noise.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cpu_sglang import require_cpu_sglang

require_cpu_sglang("sglang.srt.layers.attention.torch_native_backend")

from sglang_droidspeak.plan.blend_plan import BlendPlan  # noqa: E402
from sglang_droidspeak.reference import ReferenceModel, cacheblend_receiver_cache  # noqa: E402
from sglang_droidspeak.reference.cacheblend import select_tokens  # noqa: E402
from sglang_droidspeak.reference.tiny import perturbed_copy, tiny_model  # noqa: E402
from sglang_droidspeak.sglang import blend as blend_module  # noqa: E402
from sglang_droidspeak.sglang.blend import (  # noqa: E402
    blend_unsupported, exact_engine, forward_groups, run_segments, runs)
from sglang_droidspeak.sglang.engine_forward import EngineForward  # noqa: E402
from sglang_droidspeak.sglang.blend_import import Blend  # noqa: E402
from sglang_droidspeak.sglang.import_job import BLEND_STEPS, PoolRow  # noqa: E402
from sglang_droidspeak.sglang.import_streams import ImportStreams  # noqa: E402
from sglang_droidspeak.sglang.importer import ModelParts  # noqa: E402
from sglang_cpu_model import cpu_engine  # noqa: E402

NUM_LAYERS, WINDOW, SELECT_LAYER = 4, 8, 1
TOKENS = [int(t) for t in torch.randint(3, 128, (24,), generator=torch.Generator().manual_seed(5))]
SUFFIX = [7, 11, 13]
TOL = dict(atol=2e-5, rtol=2e-5)
N = len(TOKENS)


def tiny(arch):
    window = {"sliding_window": WINDOW} if arch == "gemma2" else {}
    return tiny_model(arch, seed=7, num_layers=NUM_LAYERS, hidden_size=64, num_heads=4, num_kv_heads=2,
                      vocab_size=128, **window)


def pair(arch, same=False):
    sender = tiny(arch)
    return sender, sender if same else perturbed_copy(sender, 0.2, seed=1)


def pool_kv(side, slots):
    """[(K, V)] per layer at ``slots``: [T, Hkv, D] each."""
    return [(side.kv_pool.get_key_buffer(l)[slots], side.kv_pool.get_value_buffer(l)[slots]) for l in range(NUM_LAYERS)]


def assert_pool_equals(side, slots, expected):
    for layer, (k, v) in enumerate(pool_kv(side, slots)):
        torch.testing.assert_close(k, expected.k[layer].transpose(0, 1), **TOL)
        torch.testing.assert_close(v, expected.v[layer].transpose(0, 1), **TOL)


def blend_through_engine(side, sent, k, select_layer=SELECT_LAYER):
    """The sender's K/V into fresh slots, then Blend's steps; (slots, positions, row).
    Every scratch slot is back in the allocator afterwards."""
    slots = side.allocator.alloc(N)
    for layer in range(NUM_LAYERS):
        side.kv_pool.get_key_buffer(layer)[slots] = sent.kv.k[layer].transpose(0, 1)
        side.kv_pool.get_value_buffer(layer)[slots] = sent.kv.v[layer].transpose(0, 1)
    parts = ModelParts(side.kv_pool, side.allocator, 64, torch.float32, torch.device("cpu"), side.engine,
                       side.req_pool)
    row = PoolRow()
    side.req_pool.alloc([row])
    free = side.allocator.available_size()
    blend = Blend(parts, BlendPlan(NUM_LAYERS, k / N, select_layer), torch.tensor(TOKENS), slots, row, None)
    assert blend.num_tokens == k and side.allocator.available_size() == free - (N if 0 < k < N else 0)
    for step in BLEND_STEPS:
        blend.launch(step, side.engine, ImportStreams("cpu", True))
    blend.release()
    assert side.allocator.available_size() == free
    return slots, blend.positions, row


def next_token_logits(side, slots, row):
    suffix_slots = torch.cat([slots, side.allocator.alloc(len(SUFFIX))])
    segment = run_segments(torch.tensor(TOKENS + SUFFIX), suffix_slots, [(N, N + len(SUFFIX))])
    return side.engine.logits(segment, [row.req_pool_idx])[0]  # [vocab]


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("k", [0, 1, 9, N])
def test_engine_blend_equals_the_reference_cacheblend(arch, k):
    sender, receiver = pair(arch)
    ref = ReferenceModel(receiver)
    sent = ReferenceModel(sender).prefill(torch.tensor(TOKENS))
    side = cpu_engine(receiver)
    slots, positions, row = blend_through_engine(side, sent, k)
    expected = cacheblend_receiver_cache(ref, sent, torch.tensor(TOKENS), k, select_layer=SELECT_LAYER)
    assert_pool_equals(side, slots, expected)
    if 0 < k < N:
        assert positions.tolist() == select_tokens(ref, sent, torch.tensor(TOKENS), k, SELECT_LAYER).positions.tolist()
    if k == 9:
        assert len(runs(positions.tolist())) >= 3  # scattered: several segments in one forward
    want = ref.extend(expected, SUFFIX).logits[-1]  # [vocab]
    torch.testing.assert_close(next_token_logits(side, slots, row), want, atol=1e-4, rtol=1e-4)
    if 0 < k:  # the blend moved the receiver's output away from full reuse
        reuse = ref.extend(sent.kv, SUFFIX).logits[-1]
        assert (want - reuse).abs().max() > 1e-3


@pytest.mark.parametrize("select_layer", [0, NUM_LAYERS - 1])
def test_any_select_layer_matches_the_reference(select_layer):
    sender, receiver = pair("llama")
    ref = ReferenceModel(receiver)
    sent = ReferenceModel(sender).prefill(torch.tensor(TOKENS))
    side = cpu_engine(receiver)
    slots, positions, _ = blend_through_engine(side, sent, 7, select_layer)
    assert positions.tolist() == select_tokens(ref, sent, torch.tensor(TOKENS), 7, select_layer).positions.tolist()
    assert_pool_equals(side, slots, cacheblend_receiver_cache(ref, sent, torch.tensor(TOKENS), 7, select_layer))


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
@pytest.mark.parametrize("k", [1, 9, N])
def test_same_weights_give_the_receivers_own_kv(arch, k):
    model, _ = pair(arch, same=True)
    own = ReferenceModel(model).prefill(torch.tensor(TOKENS))
    side = cpu_engine(model)
    slots, _, _ = blend_through_engine(side, own, k)
    assert_pool_equals(side, slots, own.kv)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
@pytest.mark.parametrize("limit", ["rows", "kv"])
def test_runs_split_over_forwards_in_position_order_equal_one_forward(arch, limit, monkeypatch):
    sender, receiver = pair(arch)
    sent = ReferenceModel(sender).prefill(torch.tensor(TOKENS))
    one = cpu_engine(receiver)
    split = cpu_engine(receiver, num_rows=2 if limit == "rows" else 8)  # rows: 2 segments per forward
    if limit == "kv":  # one run per forward
        monkeypatch.setattr(blend_module, "KV_INDEX_BUDGET", 1)
    slots_one, positions, _ = blend_through_engine(one, sent, 9)
    forwards, run = [], split.engine.run
    monkeypatch.setattr(split.engine, "run", lambda segs, rows, *a, **kw: forwards.append(len(segs)) or run(
        segs, rows, *a, **kw))
    slots_split, positions_split, _ = blend_through_engine(split, sent, 9)
    num_runs = len(runs(positions.tolist()))
    assert positions.tolist() == positions_split.tolist() and num_runs > 2
    assert forwards[1:] == ([2] * (num_runs // 2) + [1] * (num_runs % 2) if limit == "rows" else [1] * num_runs)
    for (k1, v1), (k2, v2) in zip(pool_kv(one, slots_one), pool_kv(split, slots_split)):
        torch.testing.assert_close(k2, k1, **TOL)
        torch.testing.assert_close(v2, v1, **TOL)


def test_a_run_that_reads_a_later_forwards_slots_sees_stale_kv():
    """The order matters (the property the backends' save-before-read gives one forward):
    runs recomputed last-first, one per forward, differ from the reference."""
    sender, receiver = pair("llama")
    ref = ReferenceModel(receiver)
    sent = ReferenceModel(sender).prefill(torch.tensor(TOKENS))
    side = cpu_engine(receiver)
    slots, positions, row = blend_through_engine(side, sent, 0)  # sender K/V only
    chosen = select_tokens(ref, sent, torch.tensor(TOKENS), 9, SELECT_LAYER).positions.tolist()
    for span in reversed(runs(chosen)):
        side.engine.run(run_segments(torch.tensor(TOKENS), slots, [span]), [row.req_pool_idx], 0, NUM_LAYERS)
    expected = cacheblend_receiver_cache(ref, sent, torch.tensor(TOKENS), 9, select_layer=SELECT_LAYER)
    got_k = side.kv_pool.get_key_buffer(NUM_LAYERS - 1)[slots]  # [T, Hkv, D]
    assert (got_k - expected.k[NUM_LAYERS - 1].transpose(0, 1)).abs().max() > 1e-3


def test_runs_are_maximal_spans_of_consecutive_positions():
    assert runs([0, 1, 2, 5, 6, 9]) == [(0, 3), (5, 7), (9, 10)]
    assert runs([]) == [] and runs([3]) == [(3, 4)]
    segments = run_segments(torch.arange(10) + 100, torch.arange(10) + 50, [(0, 3), (5, 7)])
    assert [(s.token_ids.tolist(), s.slots.tolist(), s.prefix_len) for s in segments] == [
        ([100, 101, 102], [50, 51, 52], 0), ([105, 106], list(range(50, 57)), 5)]
    assert all(s.e_start is None for s in segments)


def test_forward_groups_keep_position_order_within_both_limits():
    spans = [(0, 2), (4, 5), (7, 9), (12, 13), (20, 22)]
    assert forward_groups(spans, 8) == [spans]
    assert forward_groups(spans, 2) == [spans[:2], spans[2:4], spans[4:]]
    assert forward_groups(spans, 8, max_kv=16) == [spans[:3], spans[3:4], spans[4:]]  # 2+5+9, 13, 22
    assert forward_groups(spans, 8, max_kv=1) == [[span] for span in spans]  # a run too big alone still runs
    assert forward_groups([], 4) == []


def stub_engine(backend_name, use_paged=None, factory=False):
    backend = SimpleNamespace() if use_paged is None else SimpleNamespace(use_paged=use_paged)
    engine = EngineForward(None, backend, torch.zeros(3, 8, dtype=torch.int32), NUM_LAYERS, 64, torch.float32, "cpu",
                           backend_name)
    if factory:
        engine.new_backend = lambda: SimpleNamespace(use_paged=False)
    return engine


@pytest.mark.parametrize("name, use_paged", [("torch_native", None), ("triton", None), ("flashinfer", True)])
def test_backends_that_save_before_reading_run_blends_themselves(name, use_paged):
    engine = stub_engine(name, use_paged, factory=True)
    assert blend_unsupported(engine) is None and exact_engine(engine) is engine


def test_ragged_flashinfer_blends_on_a_paged_twin_and_leaves_its_own_backend_ragged():
    engine = stub_engine("flashinfer", use_paged=False, factory=True)
    twin = exact_engine(engine)
    assert blend_unsupported(engine) is None and twin is not engine
    assert twin.backend.use_paged is True and engine.backend.use_paged is False
    assert twin.req_to_token is engine.req_to_token and twin.backend_name == "flashinfer"


@pytest.mark.parametrize("name", ["flashinfer", "fa3"])
def test_a_backend_that_reads_first_without_a_twin_is_refused(name):
    engine = stub_engine(name, use_paged=False)
    assert f"attention backend {name!r} reads a prefix's K/V before saving" in blend_unsupported(engine)
    with pytest.raises(RuntimeError, match="stale K/V"):
        exact_engine(engine)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma2"])
@pytest.mark.parametrize("select_layer", [1, 3])
def test_selection_v_by_projection_equals_running_the_whole_layer(arch, select_layer, monkeypatch):
    """receiver_v's projection of E_S (layers [0, S) + layer S's V projection) gives the V that
    running layer S whole writes, at one layer less compute; and the projection is really used."""
    side = cpu_engine(tiny(arch))
    row = PoolRow()
    side.req_pool.alloc([row])
    ids = torch.tensor(TOKENS)

    def v_of():
        scratch = side.allocator.alloc(N)
        try:
            return blend_module.receiver_v(side.engine, side.kv_pool, ids, scratch, row.req_pool_idx, select_layer)
        finally:
            side.allocator.free(scratch)

    assert blend_module.v_projection(side.engine.model, select_layer) is not None
    calls = []
    real = side.engine.run
    monkeypatch.setattr(side.engine, "run", lambda *a, **kw: calls.append(a[3]) or real(*a, **kw))
    projected = v_of()
    assert calls == [select_layer]  # layers [0, S) only
    monkeypatch.setattr(blend_module, "v_projection", lambda model, layer: None)
    whole = v_of()
    assert calls == [select_layer, select_layer + 1]
    assert projected.shape == whole.shape == (N, 2, 16)
    torch.testing.assert_close(projected, whole, **TOL)
    assert projected.abs().max() > 0.1  # not a trivially equal pair of zero tensors
