"""Masked token recompute (blend_mask.py, attention_mask.py) on the CPU.

The GPU kernels that take the mask (triton, flashinfer's paged fa2) cannot run here. The
end-to-end tests therefore let SGLang's torch_native backend take a custom mask the way
those kernels document it (``masked_torch_native``: a mock of the kernels' mask
semantics, a dense SDPA with the mask, nothing else changed), and check that the groups,
KV lists, positions and masks blend_mask builds give the reference CacheBlend's K/V. The
kernels themselves are checked on the GPU (scripts/gpu/engine_exactness.py, plan blend:*).
The installers are checked against stand-ins for the backends' metadata objects.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch

from cpu_sglang import require_cpu_sglang

require_cpu_sglang()

from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend  # noqa: E402

from sglang_droidspeak.reference import ReferenceModel, cacheblend_receiver_cache  # noqa: E402
from sglang_droidspeak.sglang import attention_mask, blend_mask  # noqa: E402
from sglang_droidspeak.sglang.blend_mask import mask_groups, masked_group  # noqa: E402
from sglang_droidspeak.sglang.engine_forward import EngineSegment  # noqa: E402
from sglang_cpu_model import cpu_engine  # noqa: E402
from test_blend_engine_cpu import N, SELECT_LAYER, TOKENS, assert_pool_equals, blend_through_engine, pair  # noqa: E402


def test_mask_groups_stay_within_the_budget_in_order():
    positions = [0, 3, 4, 9, 10, 11, 30]
    assert mask_groups(positions, 1000) == [(0, 7)]
    assert mask_groups(positions, 30) == [(0, 3), (3, 5), (5, 6), (6, 7)]  # 3*5, 2*11, 1*12, 1*31 (alone)
    assert mask_groups(positions, 1) == [(i, i + 1) for i in range(7)]
    assert mask_groups([], 8) == []
    assert mask_groups(positions, 1000, max_tokens=3) == [(0, 3), (3, 6), (6, 7)]
    assert mask_groups(positions, 30, max_tokens=2) == [(0, 2), (2, 4), (4, 6), (6, 7)]  # 2*4, 2*10, 2*12, 31


def test_a_selection_splits_into_at_least_four_groups_of_256_tokens_or_more():
    assert [blend_mask.group_tokens(k) for k in (1, 256, 1024, 1025, 3584)] == [256, 256, 256, 257, 896]


def test_the_docstrings_group_layout():
    ids, slots = torch.arange(100, 110), torch.arange(50, 60)
    group = masked_group(ids, slots, torch.tensor([2, 5, 6]))
    seg = group.segment
    assert seg.slots.tolist() == [50, 51, 53, 54, 52, 55, 56] and seg.prefix_len == 4
    assert seg.token_ids.tolist() == [102, 105, 106] and seg.positions.tolist() == [2, 5, 6]
    assert group.mask.int().tolist() == [[1, 1, 0, 0, 1, 0, 0], [1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]]


@pytest.mark.parametrize("seed", range(5))
def test_each_query_sees_exactly_the_positions_up_to_its_own(seed):
    gen = torch.Generator().manual_seed(seed)
    n = 40
    chosen = torch.randperm(n, generator=gen)[:int(torch.randint(1, n, (1,), generator=gen))].sort().values
    slots = torch.randperm(1000, generator=gen)[:n]  # slot -> position through this table
    position_of = {int(s): p for p, s in enumerate(slots.tolist())}
    group = masked_group(torch.arange(n), slots, chosen)
    for i, g in enumerate(chosen.tolist()):
        seen = {position_of[int(s)] for s, on in zip(group.segment.slots, group.mask[i]) if on}
        assert seen == set(range(g + 1))


def masked_sdpa(self, query, output, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens,
                extend_prefix_lens, extend_seq_lens, *args, scaling=None, enable_gqa=False, **kwargs):
    """The masked kernels' semantics on the CPU (mock): queries [T, H, D] of each segment
    over its KV list with its [n_i, seq_len_i] block of the mask."""
    mask = getattr(self, "_test_mask", None)
    if mask is None:
        return TorchNativeAttnBackend._run_sdpa_forward_extend.__wrapped__(
            self, query, output, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, extend_prefix_lens,
            extend_seq_lens, *args, scaling=scaling, enable_gqa=enable_gqa, **kwargs)
    start_q = start_m = 0
    for row, seq_len, n in zip(req_pool_indices.tolist(), seq_lens.tolist(), extend_seq_lens.tolist()):
        kv = req_to_token[row, :seq_len]
        block = mask[start_m:start_m + n * seq_len].view(n, seq_len)
        q = query[start_q:start_q + n].movedim(0, 1)  # [H, n, D]
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k_cache[kv].movedim(0, 1), v_cache[kv].movedim(0, 1), attn_mask=block, scale=scaling,
            enable_gqa=enable_gqa)
        output[start_q:start_q + n] = out.movedim(0, 1)
        start_q, start_m = start_q + n, start_m + n * seq_len
    return output


@pytest.fixture
def masked_torch_native(monkeypatch):
    """torch_native takes custom masks for the test's duration (mock of the GPU kernels)."""
    real_sdpa, real_init = TorchNativeAttnBackend._run_sdpa_forward_extend, TorchNativeAttnBackend.init_forward_metadata
    masked_sdpa.__wrapped__ = real_sdpa

    def init(self, batch):
        self._test_mask = None  # a mask lives for one forward, as the kernels' planned one
        return real_init(self, batch)

    installs = []
    monkeypatch.setattr(TorchNativeAttnBackend, "_run_sdpa_forward_extend", masked_sdpa)
    monkeypatch.setattr(TorchNativeAttnBackend, "init_forward_metadata", init)
    monkeypatch.setattr(attention_mask, "MASK_BACKENDS", attention_mask.MASK_BACKENDS + ("torch_native",))
    monkeypatch.setitem(attention_mask.INSTALLERS, "torch_native",
                        lambda backend, segments, lens, mask: installs.append(lens) or setattr(backend, "_test_mask", mask))
    return installs


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("k, budget", [(1, None), (9, None), (9, 60), (N - 1, 100)])
def test_masked_groups_give_the_reference_cacheblend(arch, k, budget, masked_torch_native, monkeypatch):
    if budget is not None:
        monkeypatch.setattr(blend_mask, "MASK_BUDGET", budget)
    sender, receiver = pair(arch)
    ref = ReferenceModel(receiver)
    sent = ReferenceModel(sender).prefill(torch.tensor(TOKENS))
    side = cpu_engine(receiver)
    assert attention_mask.unsupported(side.engine) is None
    slots, positions, _ = blend_through_engine(side, sent, k)
    assert_pool_equals(side, slots, cacheblend_receiver_cache(ref, sent, torch.tensor(TOKENS), k, SELECT_LAYER))
    groups = mask_groups(positions.tolist(), budget or blend_mask.MASK_BUDGET, blend_mask.group_tokens(k))
    assert [rows for (rows, _), in masked_torch_native] == [j - i for i, j in groups]
    assert len(groups) > 1 if budget else len(groups) == 1


def test_sliding_windows_take_the_runs_path(masked_torch_native):
    sender, receiver = pair("gemma2")
    side = cpu_engine(receiver)
    assert "sliding-window" in attention_mask.unsupported(side.engine)
    slots, _, _ = blend_through_engine(side, ReferenceModel(sender).prefill(torch.tensor(TOKENS)), 9)
    assert masked_torch_native == []


def test_a_mask_of_the_wrong_size_is_refused(masked_torch_native):
    side = cpu_engine(pair("llama")[1])
    slots = side.allocator.alloc(4)
    segment = EngineSegment(torch.tensor(TOKENS[:2]), slots, 2)
    with pytest.raises(ValueError, match="mask has 6 entries"):
        side.engine.run([segment], [1], 0, 1, mask=torch.ones(6, dtype=torch.bool))


def stand_in(name, **backend):
    return SimpleNamespace(backend_name=name, backend=SimpleNamespace(**backend), model=torch.nn.Linear(1, 1),
                           device=torch.device("cpu"))


@pytest.mark.parametrize("name, backend, reason", [
    ("torch_native", {}, "takes no custom mask here"),
    ("flashinfer", {"use_paged": False}, "ragged prefill takes no custom mask"),
    ("triton", {"enable_deterministic": True}, "deterministic or DCP"),
    ("triton", {"dcp_size": 2}, "deterministic or DCP"),
    ("flashinfer", {"use_paged": True}, None),
    ("triton", {"enable_deterministic": False, "dcp_size": 1}, None),
])
def test_which_backends_take_a_mask(name, backend, reason):
    got = attention_mask.unsupported(stand_in(name, **backend))
    assert got is None if reason is None else reason in got


def two_segments():
    return [EngineSegment(torch.tensor([1, 2]), torch.tensor([7, 8, 9]), 1),
            EngineSegment(torch.tensor([3]), torch.tensor([4, 5]), 1)]


def test_triton_gets_the_mask_and_a_prefix_masking_kernel_once(monkeypatch):
    kernel = lambda *a, **kw: kw  # noqa: E731
    engine = stand_in("triton", forward_metadata=SimpleNamespace(), extend_attention_fwd=kernel)
    monkeypatch.setattr(attention_mask.dataclasses, "replace", lambda md, **kw: SimpleNamespace(**kw))
    mask = torch.tensor([1, 0, 1, 1, 1, 1, 0, 1], dtype=torch.bool)  # [2, 3] then [1, 2]
    for _ in range(2):
        attention_mask.install(engine, two_segments(), mask)
    md, fwd = engine.backend.forward_metadata, engine.backend.extend_attention_fwd
    assert torch.equal(md.custom_mask, mask) and md.mask_indptr.tolist() == [0, 6, 8]
    assert isinstance(fwd, functools.partial) and fwd.func is kernel and fwd.keywords == {"skip_prefix_custom_mask": False}


def test_flashinfer_plans_its_paged_wrapper_again_with_the_mask():
    calls = []
    wrapper = SimpleNamespace(begin_forward=lambda *a, **kw: calls.append((a, kw)))
    updater = SimpleNamespace(kv_last_page_len=torch.ones(8, dtype=torch.int32), num_qo_heads=4, num_kv_heads=2,
                              head_dim=16, q_data_type=torch.bfloat16, data_type=torch.bfloat16)
    engine = stand_in("flashinfer", use_paged=True, indices_updater_prefill=updater,
                      forward_metadata=SimpleNamespace(use_ragged=False, prefill_wrappers=[wrapper]))
    mask = torch.ones(8, dtype=torch.bool)
    attention_mask.install(engine, two_segments(), mask)
    (args, kw), = calls
    assert [a.tolist() for a in args[:4]] == [[0, 2, 3], [0, 3, 5], [7, 8, 9, 4, 5], [1, 1]]
    assert args[4:] == (4, 2, 16, 1) and torch.equal(kw["custom_mask"], mask)
    assert kw["q_data_type"] == kw["kv_data_type"] == torch.bfloat16
    engine.backend.forward_metadata.use_ragged = True
    with pytest.raises(RuntimeError, match="ragged"):
        attention_mask.install(engine, two_segments(), mask)


@pytest.mark.parametrize("masks", [True, False])
def test_the_warm_up_runs_token_recompute_once_and_frees_its_scratch(masks, request):
    """runtime_e._warm_blend: one token recompute over every 4th of 64 scratch positions, on
    the masked path where the backend takes masks (its own kernel variants, compiled at
    start-up instead of in the first blend), else on the runs path; the scratch comes back."""
    from sglang_droidspeak.sglang.runtime_e import _warm_blend

    installs = request.getfixturevalue("masked_torch_native") if masks else None
    _, receiver = pair("llama")
    side = cpu_engine(receiver)
    parts = SimpleNamespace(engine=side.engine, allocator=side.allocator, req_to_token_pool=side.req_pool,
                            device="cpu")
    free_before = side.allocator.available_size()
    _warm_blend(parts, None, side.num_layers, 64)
    assert side.allocator.available_size() == free_before
    if masks:
        assert [rows for (rows, _), in installs] == [16]  # one masked forward through every layer
