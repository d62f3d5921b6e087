"""The online policy inside the receiver (tests/unit/two_servers.py: real pools, tree, ZMQ).

The pair's profile offers [0, 1) and [0, 2) of 4 layers; the latency model and the SLO
decide which, or a normal prefill when the link makes reuse slower than prefilling. With a
CacheBlend point in the profile (``systems``), the policy may serve it as a BlendPlan. The
choice is counted by system and put on the request (response_info.py).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from cpu_sglang import require_cpu_sglang

require_cpu_sglang()

from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams  # noqa: E402
from sglang.srt.mem_cache.radix_cache import RadixKey  # noqa: E402

from sglang_droidspeak.identity import fingerprint_from_config  # noqa: E402
from sglang_droidspeak.plan import FrontierPoint, LayerPlan, ModelRef, Profile, save_profile  # noqa: E402
from sglang_droidspeak.plan.blend_plan import BlendPlan  # noqa: E402
from sglang_droidspeak.plan.policy import FULL_PREFILL_FASTER, IDLE_MOST, QUEUED_FEWEST  # noqa: E402
from sglang_droidspeak.sglang.response_info import response_info  # noqa: E402
from two_servers import NUM_LAYERS, import_and_match, announce_and_wait, leak_free, request, tiny_llama, two_servers  # noqa: E402

CONTEXT = list(range(20, 52))  # 32 tokens
FAST_LINK = {"ms_per_layer_token": 0.01, "ms_fixed": 1.0, "kv_bytes_per_layer_token": 256,
             "e_bytes_per_token": 256, "link_gbps": 100.0, "pipelined": False}


def write_profile(directory, systems=()):
    fp = fingerprint_from_config({"num_hidden_layers": NUM_LAYERS, "hidden_size": 64, "num_attention_heads": 4,
                                  "num_key_value_heads": 2, "vocab_size": 128, "model_type": "llama",
                                  "architectures": ["LlamaForCausalLM"]}, '{"model": {}}')
    frontier = (FrontierPoint(LayerPlan.contiguous(NUM_LAYERS, 0, 1), 0.90, 0.05),
                FrontierPoint(LayerPlan.contiguous(NUM_LAYERS, 0, 2), 0.94, 0.01))
    save_profile(Profile(ModelRef("coder-a", fp), ModelRef("coder-b", fp), NUM_LAYERS, "lcc", "agreement",
                         0.95, 0.80, frontier, systems=systems), directory / "coder-a__coder-b.yaml")


def receiver_settings(tmp_path, link, systems=()):
    write_profile(tmp_path, systems)
    return {"profiles_dir": str(tmp_path), "max_quality_drop": 0.06, "slo_ttft_ms": 1000.0,
            "latency_model": link}


def match(b, tokens):
    req = request(tokens)
    return req, import_and_match(b, req)


def test_idle_receiver_takes_the_most_recomputation_within_the_slo(tmp_path):
    model = tiny_llama()
    with two_servers(model, model, receiver_settings(tmp_path, FAST_LINK)) as (a, b):
        announce_and_wait(a, b, CONTEXT)
        req, m = match(b, CONTEXT + [3, 4])
        assert len(m.device_indices) == len(CONTEXT)
        assert b.tree.tag_of(m.last_device_node).plan == "[0, 2)"  # the profile's static choice is [0, 1)
        assert b.metrics.decisions == [IDLE_MOST] and b.metrics.hits == [("remote", 32, 2)]
        assert b.metrics.systems == ["droidspeak"]
        assert response_info(req) == {"droidspeak_system": "droidspeak", "droidspeak_plan": "[0, 2)",
                                      "droidspeak_reason": IDLE_MOST}


# FAST_LINK, 32 + 2 tokens: [0, 2) predicts 1 + 0.72 + 0.0013 ms, blend:0.5@1 (16 tokens)
# 1 + 0.32 + 0.64 + 0.08 + 0.0026 = 2.04 ms, full prefill 2.36 ms; all within the SLO, so the
# idle policy serves the best quality: the CacheBlend point (drop 0 < 0.01).
BLEND_POINT = FrontierPoint(BlendPlan(NUM_LAYERS, 0.5, 1), 0.95, 0.0)


def test_the_policy_serves_a_better_cacheblend_point_through_the_blend_import(tmp_path):
    model = tiny_llama()
    with two_servers(model, model, receiver_settings(tmp_path, FAST_LINK, (BLEND_POINT,))) as (a, b):
        announce_and_wait(a, b, CONTEXT)
        req, m = match(b, CONTEXT + [3, 4])
        assert len(m.device_indices) == len(CONTEXT)
        assert b.tree.tag_of(m.last_device_node).plan == "blend:0.5@1"
        assert b.metrics.decisions == [IDLE_MOST] and b.metrics.systems == ["cacheblend"]
        assert b.metrics.hits == [("remote", 32, 2)]  # 0.5 of 4 layers' worth of tokens
        assert response_info(req) == {"droidspeak_system": "cacheblend", "droidspeak_plan": "blend:0.5@1",
                                      "droidspeak_reason": IDLE_MOST}
        again, m2 = match(b, CONTEXT + [5, 6])  # adopts the derived prefix: no second decision
        assert m2.device_indices.tolist() == m.device_indices.tolist() and b.metrics.systems == ["cacheblend"]
        assert response_info(again) == {"droidspeak_system": "cacheblend", "droidspeak_plan": "blend:0.5@1",
                                        "droidspeak_reason": "derived"}


def test_a_slow_link_makes_the_policy_prefill_normally(tmp_path):
    model = tiny_llama()
    slow = {**FAST_LINK, "link_gbps": 1e-6}
    with two_servers(model, model, receiver_settings(tmp_path, slow)) as (a, b):
        announce_and_wait(a, b, CONTEXT)
        available = b.allocator.available_size()
        req, m = match(b, CONTEXT + [3, 4])
        assert len(m.device_indices) == 0 and req.extra_key is None
        assert b.metrics.decisions == [FULL_PREFILL_FASTER] and b.metrics.fallbacks == ["policy"]
        assert b.metrics.systems == ["full_prefill"]
        assert response_info(req) == {"droidspeak_system": "full_prefill", "droidspeak_plan": "none",
                                      "droidspeak_reason": FULL_PREFILL_FASTER}
        assert b.allocator.available_size() == available and leak_free(b)
        assert a.runtime.export_server.num_served == 0  # decided before any transfer


def test_a_forced_plan_skips_the_policy(tmp_path):
    model = tiny_llama()
    with two_servers(model, model, receiver_settings(tmp_path, FAST_LINK)) as (a, b):
        announce_and_wait(a, b, CONTEXT)
        req = request(CONTEXT + [3, 4], "0:1")
        m = import_and_match(b, req)
        assert b.tree.tag_of(m.last_device_node).plan == "[0, 1)" and b.metrics.decisions == []


@pytest.mark.parametrize("num_others, plan, reason", [(0, "[0, 2)", IDLE_MOST), (2, "[0, 1)", QUEUED_FEWEST)])
def test_the_queue_counts_the_other_waiting_requests(tmp_path, num_others, plan, reason):
    # SGLang's scheduler cannot run on a CPU: a stand-in with its waiting_queue, which holds
    # the matched request itself while SGLang matches it (GPU run 2026-11-28: counted as 1)
    model = tiny_llama()
    with two_servers(model, model, receiver_settings(tmp_path, FAST_LINK)) as (a, b):
        announce_and_wait(a, b, CONTEXT)
        req = request(CONTEXT + [3, 4])
        b.runtime.scheduler = SimpleNamespace(waiting_queue=[req] + [request([9]) for _ in range(num_others)])
        m = import_and_match(b, req)
        assert b.tree.tag_of(m.last_device_node).plan == plan and b.metrics.decisions == [reason]


# 10 ms per layer-token, a link that moves [0, 2)'s 16384 bytes of K/V in 300 ms and [0, 1)'s
# 24576 in 450 ms; SLO 1000 ms. Serial: [0, 2) = 640 + 80 + 300 = 1020 (misses), [0, 1) = 850.
# Pipelined: [0, 2) = max(640, 300) + 80 = 720, [0, 1) = 530; full prefill 1360.
SLOW_COMPUTE = {"ms_per_layer_token": 10.0, "ms_fixed": 0.0, "kv_bytes_per_layer_token": 256,
                "e_bytes_per_token": 256, "link_gbps": 16384 / 300 / 125000, "pipelined": False}


@pytest.mark.parametrize("pipelined, plan", [(None, "[0, 1)"), ("off", "[0, 1)"), ("on", "[0, 2)")])
def test_the_request_import_mode_enters_the_policy(tmp_path, pipelined, plan):
    model = tiny_llama()
    with two_servers(model, model, receiver_settings(tmp_path, SLOW_COMPUTE)) as (a, b):
        announce_and_wait(a, b, CONTEXT)
        req = request(CONTEXT + [3, 4])
        if pipelined is not None:
            req.sampling_params.custom_params = {"droidspeak_pipelined": pipelined}
        m = import_and_match(b, req)
        assert b.tree.tag_of(m.last_device_node).plan == plan and b.metrics.decisions == [IDLE_MOST]
