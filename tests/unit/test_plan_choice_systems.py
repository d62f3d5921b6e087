"""PlanChooser among systems (no SGLang): a profile's CacheBlend point comes back as a
BlendPlan, /metrics counts the system, hybrids are skipped, the static plan may be a
BlendPlan, and the response metadata keys are set on the request.

Profile (L = 4, receiver quality 0.875) and latency as test_policy.py (n = 8, m = 2;
PlanChooser passes suffix_len as given): DroidSpeak [0, 1) drop 0.375 (5 ms), [0, 2)
drop 0.25 (7 ms); CacheBlend budget 1 = blend:0.25@1 (7 ms) with the drop in each test;
hybrid [0, 1)+1 drop 0 (never served).
"""

import logging
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from sglang_droidspeak.plan.blend_plan import BlendPlan
from sglang_droidspeak.plan.layer_plan import LayerGroup, LayerPlan
from sglang_droidspeak.plan.policy import HYBRID_NOT_SERVED, IDLE_MOST, QUEUED_FEWEST
from sglang_droidspeak.plan.profile import FrontierPoint
from sglang_droidspeak.plan.system_points import HybridPlan
from sglang_droidspeak.plan import ModelRef, save_profile
from sglang_droidspeak.sglang.metrics import DroidSpeakMetrics
from sglang_droidspeak.sglang.plan_choice import STATIC, PlanChooser
from sglang_droidspeak.sglang.response_info import record_choice, record_derived, record_fallback, response_info
from sglang_droidspeak.sglang.settings import DroidSpeakSettings
from test_policy import _model
from test_profile import _fp, _profile

L, N, M = 4, 8, 2


def _points(blend_drop):
    q = 0.875
    frontier = (FrontierPoint(LayerPlan.contiguous(L, 0, 1), q - 0.375, 0.375),
                FrontierPoint(LayerPlan.contiguous(L, 0, 2), q - 0.25, 0.25))
    systems = (FrontierPoint(BlendPlan(L, 0.25, 1), q - blend_drop, blend_drop),
               FrontierPoint(HybridPlan(L, LayerGroup(0, 1), 1), q, 0.0))
    return frontier, systems


def _settings(tmp_path, blend_drop, max_drop=0.375, policy=True):
    frontier, systems = _points(blend_drop)
    fp = _fp(layers=L)
    profile = _profile(sender=ModelRef("a", fp), receiver=ModelRef("b", fp), num_layers=L, receiver_quality=0.875,
                       full_reuse_quality=0.5, frontier=frontier, systems=systems, granularity=1, sensitivity=None)
    save_profile(profile, tmp_path / "a__b.yaml")
    extra = {"slo_ttft_ms": 8.0, "latency_model": _model()} if policy else {}
    return DroidSpeakSettings(profiles_dir=str(tmp_path), max_quality_drop=max_drop, **extra)


def _value(registry, system):
    return registry.get_sample_value("sglang:droidspeak_policy_systems_total", {"model": "b", "system": system})


def _chooser(settings):
    registry = CollectorRegistry()
    return PlanChooser(settings, "b", L, DroidSpeakMetrics("b", registry)), registry


def test_the_policy_returns_a_blend_plan_and_counts_cacheblend(tmp_path, caplog):
    chooser, registry = _chooser(_settings(tmp_path, blend_drop=0.125))
    with caplog.at_level(logging.INFO, "sglang_droidspeak.sglang.plan_choice"):
        choice = chooser.choose("a", LayerPlan.contiguous(L, 0, 1), False, N, M, queue_len=0)
        chooser.choose("a", LayerPlan.contiguous(L, 0, 1), False, N, M, queue_len=0)
    assert choice == (BlendPlan(L, 0.25, 1), IDLE_MOST) and choice.system == "cacheblend"
    assert [_value(registry, s) for s in ("cacheblend", "droidspeak", "full_prefill")] == [2.0, 0.0, 0.0]
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert skipped == [f"droidspeak: a -> b: 1 profile points skipped: hybrid:0-1+1: {HYBRID_NOT_SERVED}"]


def test_the_policy_keeps_droidspeak_when_cacheblend_is_worse(tmp_path):
    chooser, registry = _chooser(_settings(tmp_path, blend_drop=0.3))
    choice = chooser.choose("a", LayerPlan.contiguous(L, 0, 1), False, N, M, queue_len=0)
    assert choice == (LayerPlan.contiguous(L, 0, 2), IDLE_MOST) and choice.system == "droidspeak"
    queued = chooser.choose("a", LayerPlan.contiguous(L, 0, 1), False, N, M, queue_len=3)
    assert queued == (LayerPlan.contiguous(L, 0, 1), QUEUED_FEWEST)
    assert [_value(registry, s) for s in ("cacheblend", "droidspeak", "full_prefill")] == [0.0, 2.0, 0.0]


def test_a_forced_plan_is_not_counted(tmp_path):
    chooser, registry = _chooser(_settings(tmp_path, blend_drop=0.125))
    forced = BlendPlan(L, 0.5)
    assert chooser.choose("a", forced, True, N, M, queue_len=0) == (forced, STATIC)
    assert _value(registry, "cacheblend") == 0.0


def test_static_plan_is_the_cheapest_servable_point(tmp_path):
    # bound 0.125: only the CacheBlend point (budget 1) and the hybrid (not served) meet it
    assert _settings(tmp_path, 0.125, max_drop=0.125, policy=False).plan_lookup()("a", "b") == BlendPlan(L, 0.25, 1)
    # bound 0.375: [0, 1) and blend:0.25 both cost 1 layer: the tie goes to DroidSpeak
    assert _settings(tmp_path, 0.125, policy=False).plan_lookup()("a", "b") == LayerPlan.contiguous(L, 0, 1)
    assert _settings(tmp_path, 0.125, max_drop=0.01, policy=False).plan_lookup()("a", "b") is None


def test_metric_refuses_a_system_it_does_not_serve():
    metrics = DroidSpeakMetrics("b", CollectorRegistry())
    with pytest.raises(ValueError, match="system must be one of"):
        metrics.record_system("hybrid")


def test_response_info_keys_on_the_request():
    req = SimpleNamespace(customized_info={"other": [1]})
    record_choice(req, BlendPlan(L, 0.25), IDLE_MOST)
    assert req.customized_info == {"other": [1], "droidspeak_system": ["cacheblend"],
                                   "droidspeak_plan": ["blend:0.25@1"], "droidspeak_reason": [IDLE_MOST]}
    record_fallback(req, "timeout")
    assert response_info(req) == {"droidspeak_system": "full_prefill", "droidspeak_plan": "none",
                                  "droidspeak_reason": "timeout"}
    fresh = SimpleNamespace(customized_info=None)
    record_derived(fresh, "[0, 2)")
    assert response_info(fresh) == {"droidspeak_system": "droidspeak", "droidspeak_plan": "[0, 2)",
                                    "droidspeak_reason": "derived"}
    record_choice(fresh, None, "full prefill faster")
    assert response_info(fresh)["droidspeak_system"] == "full_prefill"
