"""The CacheBlend-style baseline ("blend:R") in the SGLang path, on the CPU.

Two runtimes over SGLang's real CPU pools and real ZMQ (two_servers.py); the receiver's KV
after the import must equal ``reference/cacheblend.py``'s (default mode).
"""

from __future__ import annotations

import pytest
import torch

from cpu_sglang import require_cpu_sglang

require_cpu_sglang()

from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams  # noqa: E402
from sglang.srt.mem_cache.radix_cache import RadixKey  # noqa: E402

from sglang_droidspeak.plan.blend_plan import BlendPlan  # noqa: E402
from sglang_droidspeak.reference import ReferenceModel, cacheblend_receiver_cache  # noqa: E402
from sglang_droidspeak.sglang import blend_import  # noqa: E402
from sglang_droidspeak.sglang.radix_cache import FELL_BACK_ATTR  # noqa: E402
from two_servers import NUM_LAYERS, import_and_match, announce_and_wait, leak_free, request, tiny_pair_models, two_servers  # noqa: E402

CONTEXT = list(range(20, 52))  # 32 tokens
SUFFIX = [3, 4, 5]


@pytest.fixture
def pair(request):
    with two_servers(*tiny_pair_models(request.param == "same")) as sides:
        yield sides


@pytest.fixture
def serial_pair():
    with two_servers(*tiny_pair_models(), receiver_settings={"pipelined": False}) as sides:
        yield sides


def import_with(b, plan):
    req = request(CONTEXT + SUFFIX, plan)
    match = import_and_match(b, req)
    return req, match


def assert_pool_holds(b, slots, expected):
    for layer in range(NUM_LAYERS):
        torch.testing.assert_close(b.pool.get_key_buffer(layer)[slots], expected.k[layer].transpose(0, 1),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b.pool.get_value_buffer(layer)[slots], expected.v[layer].transpose(0, 1),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pair", ["different"], indirect=True)
@pytest.mark.parametrize("plan", ["blend:0", "blend:0.25", "blend:1.0", "blend:0.25@2", "blend:0.1@0"])
def test_blend_matches_the_reference(pair, plan):
    a, b = pair
    cache = announce_and_wait(a, b, CONTEXT)
    req, match = import_with(b, plan)
    assert len(match.device_indices) == len(CONTEXT) and b.metrics.fallbacks == []
    blend = BlendPlan(NUM_LAYERS, float(plan[6:].split("@")[0]), int(plan.split("@")[1]) if "@" in plan else 1)
    assert b.tree.tag_of(match.last_device_node).plan == str(blend) and req.extra_key is not None
    expected = cacheblend_receiver_cache(ReferenceModel(b.model), cache, torch.tensor(CONTEXT),
                                         blend.num_tokens(len(CONTEXT)), select_layer=blend.select_layer)
    assert_pool_holds(b, match.device_indices, expected)
    assert b.metrics.hits == [("remote", len(CONTEXT), blend.num_recomputed_layers)]
    assert leak_free(a) and leak_free(b)


@pytest.mark.parametrize("pair", ["different"], indirect=True)
def test_blend_changes_only_the_selected_tokens(pair):
    a, b = pair
    cache = announce_and_wait(a, b, CONTEXT)
    _, match = import_with(b, "blend:0.25")
    changed = set()
    for layer in range(NUM_LAYERS):
        got = b.pool.get_key_buffer(layer)[match.device_indices]  # [T, Hkv, D]
        diff = (got - cache.kv.k[layer].transpose(0, 1)).abs().amax(dim=(1, 2))  # [T]
        changed |= set(torch.nonzero(diff > 0).flatten().tolist())
    assert 0 in changed and len(changed) == 8  # round(0.25 * 32), token 0 included


@pytest.mark.parametrize("pair", ["same"], indirect=True)
def test_full_blend_with_same_weights_equals_own_prefill(pair):
    a, b = pair
    announce_and_wait(a, b, CONTEXT)
    _, match = import_with(b, "blend:1")
    assert_pool_holds(b, match.device_indices, ReferenceModel(b.model).prefill(torch.tensor(CONTEXT)).kv)


@pytest.mark.parametrize("pair", ["different"], indirect=True)
def test_blend_namespaces_differ_from_droidspeak_plans(pair):
    a, b = pair
    announce_and_wait(a, b, CONTEXT)
    _, reuse = import_with(b, "reuse")
    _, blend = import_with(b, "blend:0.25")
    _, again = import_with(b, "blend:0.25@1")  # the same plan, spelled out: adopts the derived prefix
    assert b.tree.tag_of(reuse.last_device_node).plan == "reuse-all"
    assert b.tree.tag_of(blend.last_device_node).plan == "blend:0.25@1"
    assert set(reuse.device_indices.tolist()).isdisjoint(blend.device_indices.tolist())
    assert again.device_indices.tolist() == blend.device_indices.tolist()
    assert [h[0] for h in b.metrics.hits] == ["remote", "remote", "derived"]
    assert leak_free(b)


@pytest.mark.parametrize("pair", ["same"], indirect=True)
@pytest.mark.parametrize("plan", ["blend:2", "blend:x", "blend:", "blend:0.5@4", "blend:nan"])
def test_bad_blend_values_prefill_normally(pair, plan, caplog):
    a, b = pair
    announce_and_wait(a, b, CONTEXT)
    req, match = import_with(b, plan)
    assert len(match.device_indices) == 0 and req.extra_key is None
    assert "droidspeak_plan" in caplog.text and b.metrics.hits == []
    assert a.runtime.export_server.num_served == 0


@pytest.mark.parametrize("pair", ["different"], indirect=True)
@pytest.mark.parametrize("where", ["receiver_v", "hkvd_select", "recompute_tokens"])
def test_failure_midway_frees_the_slots(pair, where, monkeypatch):
    a, b = pair
    announce_and_wait(a, b, CONTEXT)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(blend_import, where, broken)
    available = b.allocator.available_size()
    req, match = import_with(b, "blend:0.25")
    assert len(match.device_indices) == 0 and req.extra_key is None and getattr(req, FELL_BACK_ATTR) is True
    assert b.metrics.fallbacks == ["internal"] and b.allocator.available_size() == available and leak_free(b)


@pytest.mark.parametrize("pair", ["different"], indirect=True)
def test_a_backend_that_reads_the_prefix_before_saving_refuses_blends(pair, monkeypatch):
    a, b = pair
    announce_and_wait(a, b, CONTEXT)
    monkeypatch.setattr(b.runtime.parts.engine, "backend_name", "flashinfer")  # ragged, no twin factory
    available = b.allocator.available_size()
    req, match = import_with(b, "blend:0.25")
    assert len(match.device_indices) == 0 and getattr(req, FELL_BACK_ATTR) is True
    assert b.metrics.fallbacks == ["blend_unsupported"] and a.runtime.export_server.num_served == 0
    assert b.allocator.available_size() == available and leak_free(b)


@pytest.mark.parametrize("pair", ["different"], indirect=True)
def test_no_room_for_the_selection_scratch_prefills_normally(pair):
    a, b = pair
    announce_and_wait(a, b, CONTEXT)
    held = b.allocator.alloc(b.allocator.available_size() - len(CONTEXT) - 4)  # room for the slots only
    available = b.allocator.available_size()
    req, match = import_with(b, "blend:0.25")
    assert len(match.device_indices) == 0 and getattr(req, FELL_BACK_ATTR) is True
    assert b.metrics.fallbacks == ["no_memory"] and b.allocator.available_size() == available
    b.allocator.free(held)
    assert leak_free(b)


def test_serial_import_matches_too(serial_pair):
    a, b = serial_pair
    cache = announce_and_wait(a, b, CONTEXT)
    _, match = import_with(b, "blend:0.25")
    expected = cacheblend_receiver_cache(ReferenceModel(b.model), cache, torch.tensor(CONTEXT), 8)
    assert_pool_holds(b, match.device_indices, expected)


def test_blend_over_the_cuda_ipc_plane():
    from cpu_ipc import CpuIpc

    registry = {}
    backends = (CpuIpc(registry, gpu_uuid="GPU-cpu-stand-in"), CpuIpc(registry))
    with two_servers(*tiny_pair_models(), data_planes=("cuda_ipc", "cuda_ipc"), backends=backends) as (a, b):
        cache = announce_and_wait(a, b, CONTEXT)
        _, match = import_with(b, "blend:0.25")
        assert len(match.device_indices) == len(CONTEXT) and b.metrics.fallbacks == []
        expected = cacheblend_receiver_cache(ReferenceModel(b.model), cache, torch.tensor(CONTEXT), 8)
        assert_pool_holds(b, match.device_indices, expected)
        assert leak_free(a) and leak_free(b)
