"""The live quality guard's parts (sglang_droidspeak/sglang/quality_guard.py), without SGLang.

The shadow requests go to a real local HTTP server (shadow_server.py) standing in for
SGLang's /generate, which cannot serve on a CPU machine.
"""

from __future__ import annotations

import random
import sys
from types import SimpleNamespace

import pytest

from shadow_server import shadow_server
from sglang_droidspeak.identity import fingerprint_from_config
from sglang_droidspeak.plan import FrontierPoint, LayerPlan, ModelRef, Profile, save_profile
from sglang_droidspeak.plan.blend_plan import parse_blend
from sglang_droidspeak.radix.namespace import encode_namespace
from sglang_droidspeak.radix.tags import ModelTag
from sglang_droidspeak.sglang.metrics import DroidSpeakMetrics, NullMetrics
from sglang_droidspeak.sglang.plan_choice import PlanChooser
from sglang_droidspeak.sglang.quality_guard import (
    GUARD_REASON, RID_PREFIX, PairWindow, QualityGuard, ShadowCheck, ShadowEndpoint, ShadowError, guardable,
    profile_bound, shadow_body, teacher_forced_agreement)
from sglang_droidspeak.sglang.settings import SettingsError, parse_settings

PLAN = LayerPlan(8, ((0, 2),))


class GuardMetrics(NullMetrics):
    def __init__(self):
        self.checks, self.trips, self.agreements = [], [], []

    def record_guard_check(self, sender, outcome):
        self.checks.append((sender, outcome))

    def record_guard_trip(self, sender):
        self.trips.append(sender)

    def observe_guard_agreement(self, sender, agreement):
        self.agreements.append((sender, agreement))


def _fp():
    cfg = {"num_hidden_layers": 8, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
           "vocab_size": 128, "architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    return fingerprint_from_config(cfg, '{"model": {}}')


def save_agreement_profile(directory, quality=0.98, metric="agreement", sender="coder-a"):
    """A pair profile promising ``quality`` agreement for PLAN, and 0.9 for CacheBlend at 0.25."""
    point = FrontierPoint(PLAN, quality, round(1.0 - quality, 10))
    blend = FrontierPoint(parse_blend("blend:0.25", 8), 0.9, 0.1)
    save_profile(Profile(ModelRef(sender, _fp()), ModelRef("coder-b", _fp()), 8, "lcc", metric, 1.0, 0.5,
                         (point,), systems=(blend,)), directory / f"{sender}__coder-b.yaml")


# ---- window and trip ----

def test_the_window_trips_only_with_enough_checks_below_bound_minus_margin():
    window = PairWindow(4)
    for agreement in (0.5, 0.5, 0.5):
        window.add(agreement, 0.98)
        assert not window.trips(min_checks=4, margin=0.1)  # too few checks
    window.add(0.5, 0.98)
    assert window.trips(4, 0.1) and window.live == 0.5 and window.bound == 0.98


def test_the_window_keeps_the_last_checks_and_compares_with_their_mean_bound():
    window = PairWindow(3)
    for agreement in (0.2, 0.2, 1.0, 1.0, 0.8):  # the two 0.2 fall out
        window.add(agreement, 0.9)
    assert list(window.checks) == [(1.0, 0.9), (1.0, 0.9), (0.8, 0.9)]
    assert not window.trips(3, 0.0)
    exact = PairWindow(2)
    exact.add(0.85, 0.95)
    exact.add(0.85, 0.95)
    assert not exact.trips(2, 0.1)  # live == bound - margin: not below
    mixed = PairWindow(2)
    mixed.add(0.7, 0.9)
    mixed.add(0.7, 0.7)  # two plans: mean bound 0.8
    assert mixed.trips(2, 0.05) and not mixed.trips(2, 0.15)


# ---- request body and agreement ----

def test_the_shadow_body_is_a_normal_prefill_of_prompt_and_output_with_top1_per_output_position():
    check = ShadowCheck("r1", "coder-a", "[0, 2)", 0.98, (5, 6, 7), (8, 9))
    body = shadow_body(check)
    assert body.pop("rid").startswith(RID_PREFIX)
    assert body == {"input_ids": [5, 6, 7, 8, 9],
                    "sampling_params": {"max_new_tokens": 1, "temperature": 0.0,
                                        "custom_params": {"droidspeak_plan": "off"}},
                    "return_logprob": True, "logprob_start_len": 2, "top_logprobs_num": 1}
    assert shadow_body(check, priority=-sys.maxsize - 1)["priority"] == -sys.maxsize - 1


def test_teacher_forced_agreement_reads_the_rows_after_the_leading_none():
    answer = {"meta_info": {"input_top_logprobs": [None, [[-0.1, 8, None]], [[-0.2, 3, None]],
                                                   [[-0.3, 10, None]]]}}
    assert teacher_forced_agreement([8, 9, 10], answer) == pytest.approx(2 / 3)
    with pytest.raises(ShadowError, match="3 rows, expected 4"):
        teacher_forced_agreement([8, 9, 10], {"meta_info": {"input_top_logprobs": [None, None, None]}})
    with pytest.raises(ShadowError, match="no meta_info.input_top_logprobs"):
        teacher_forced_agreement([8], {"text": "x"})
    with pytest.raises(ShadowError, match=r"input_top_logprobs\[1\] is not a top-1 entry"):
        teacher_forced_agreement([8], {"meta_info": {"input_top_logprobs": [None, []]}})
    with pytest.raises(ShadowError, match="is not an int"):
        teacher_forced_agreement([8], {"meta_info": {"input_top_logprobs": [None, [[-0.1, "8", None]]]}})


# ---- which requests ----

def greedy_req(output=(1, 2, 3, 4), sender="coder-a", plan="[0, 2)", **overrides):
    sampling = SimpleNamespace(top_k=1, frequency_penalty=0.0, presence_penalty=0.0, repetition_penalty=1.0,
                               min_new_tokens=0, logit_bias=None, json_schema=None, regex=None, ebnf=None,
                               structural_tag=None)
    req = SimpleNamespace(rid="r", origin_input_ids=[5, 6, 7], output_ids=list(output),
                          finished_reason=type("FINISH_LENGTH", (), {})(), sampling_params=sampling,
                          extra_key=encode_namespace(ModelTag.derived("coder-b", sender, plan), None),
                          droidspeak_plan_forced=False, lora_id=None, custom_logit_processor=None,
                          multimodal_inputs=None, session=None)
    for name, value in overrides.items():
        target = sampling if hasattr(sampling, name) else req
        setattr(target, name, value)
    return req


@pytest.mark.parametrize("change", [
    {"top_k": 50}, {"repetition_penalty": 1.1}, {"frequency_penalty": 0.5}, {"min_new_tokens": 2},
    {"logit_bias": {"3": 1.0}}, {"regex": "a+"}, {"output_ids": [1, 2, 3]}, {"finished_reason": None},
    {"finished_reason": type("FINISH_ABORT", (), {})()}, {"droidspeak_plan_forced": True}, {"lora_id": "x"},
    {"custom_logit_processor": "p"}])
def test_only_plain_greedy_finished_requests_with_enough_output_are_guardable(change):
    assert guardable(greedy_req(), 4)
    assert not guardable(greedy_req(**change), 4)


# ---- settings and bound ----

def test_guard_settings_default_off_and_parse():
    s = parse_settings({})
    assert (s.guard_fraction, s.guard_margin, s.guard_window, s.guard_min_checks) == (0.0, 0.05, 32, 8)
    assert (s.guard_min_output_tokens, s.guard_timeout_s, s.guard_url) == (4, 30.0, None)
    s = parse_settings({"guard_fraction": 1, "guard_margin": 0.1, "guard_window": 4, "guard_min_checks": 4,
                        "guard_min_output_tokens": 2, "guard_timeout_s": 5, "guard_url": "http://h:1"})
    assert (s.guard_fraction, s.guard_margin, s.guard_window, s.guard_min_checks) == (1.0, 0.1, 4, 4)
    assert (s.guard_min_output_tokens, s.guard_timeout_s, s.guard_url) == (2, 5.0, "http://h:1")


@pytest.mark.parametrize("data, message", [
    ({"guard_fraction": 1.5}, "cfg.yaml: guard_fraction: must be a number in [0, 1], got 1.5"),
    ({"guard_fraction": -0.1}, "cfg.yaml: guard_fraction: must be a number >= 0, got -0.1"),
    ({"guard_fraction": True}, "cfg.yaml: guard_fraction: must be a number >= 0, got True"),
    ({"guard_margin": float("nan")}, "cfg.yaml: guard_margin: must be a number >= 0, got nan"),
    ({"guard_window": 0}, "cfg.yaml: guard_window: must be an int >= 1, got 0"),
    ({"guard_min_checks": 2.5}, "cfg.yaml: guard_min_checks: must be an int >= 1, got 2.5"),
    ({"guard_window": 4, "guard_min_checks": 5}, "cfg.yaml: guard_min_checks: 5 is more than guard_window (4)"),
    ({"guard_timeout_s": 0}, "cfg.yaml: guard_timeout_s: must be a number > 0, got 0"),
    ({"guard_url": "tcp://h:1"}, "cfg.yaml: guard_url: must be an 'http://host:port'"),
    ({"guard_url": ""}, "cfg.yaml: guard_url: must be a non-empty string"),
])
def test_bad_guard_settings_name_the_field(data, message):
    with pytest.raises(SettingsError) as info:
        parse_settings(data, where="cfg.yaml")
    assert str(info.value).startswith(message)


def test_the_bound_is_the_profiles_agreement_for_the_plan_else_one_minus_max_quality_drop(tmp_path):
    save_agreement_profile(tmp_path, 0.98)
    save_agreement_profile(tmp_path, 0.9, metric="edit_sim", sender="coder-c")
    bound = profile_bound(parse_settings({"profiles_dir": str(tmp_path), "max_quality_drop": 0.07}), "coder-b")
    assert bound("coder-a", "[0, 2)") == 0.98
    assert bound("coder-a", "blend:0.25@1") == 0.9  # the profile's CacheBlend point
    assert bound("coder-a", "[0, 4)") == pytest.approx(0.93)  # not on the frontier
    assert bound("coder-c", "[0, 2)") == pytest.approx(0.93)  # not an agreement profile
    assert bound("coder-x", "[0, 2)") == pytest.approx(0.93)  # no profile
    assert profile_bound(parse_settings({}), "coder-b")("coder-a", "[0, 2)") == pytest.approx(0.95)


def test_the_endpoint_follows_server_args():
    args = SimpleNamespace(url=lambda: "http://127.0.0.1:30000", api_key="k1", enable_priority_scheduling=False)
    endpoint = ShadowEndpoint.from_server_args(args)
    assert (endpoint.url, endpoint.headers, endpoint.priority) == ("http://127.0.0.1:30000",
                                                                   (("Authorization", "Bearer k1"),), None)
    args.enable_priority_scheduling, args.schedule_low_priority_values_first = True, False
    assert ShadowEndpoint.from_server_args(args).priority == -sys.maxsize - 1
    args.schedule_low_priority_values_first = True
    assert ShadowEndpoint.from_server_args(args, "http://h:2/").priority == sys.maxsize
    assert ShadowEndpoint.from_server_args(args, "http://h:2/").url == "http://h:2"


# ---- the guard over HTTP ----

def make_guard(url, tmp_path, metrics, **settings):
    save_agreement_profile(tmp_path, 0.98)  # the profile promises 0.98
    s = parse_settings({"profiles_dir": str(tmp_path), "guard_fraction": 1.0, "guard_window": 8,
                        "guard_min_checks": 3, "guard_margin": 0.1, **settings})
    return QualityGuard(s, "coder-b", metrics, ShadowEndpoint(url, (("Authorization", "Bearer k1"),)),
                        profile_bound(s, "coder-b"), rng=random.Random(0))


def test_a_pair_whose_profile_lies_trips_after_min_checks_and_the_chooser_refuses_it(tmp_path, caplog):
    metrics = GuardMetrics()
    with shadow_server("lying") as server:
        guard = make_guard(server.url, tmp_path, metrics)
        chooser = PlanChooser(parse_settings({}), "coder-b", 8, NullMetrics())
        chooser.guard = guard
        try:
            for i in range(2):
                assert guard.on_finished(greedy_req()) is not None
                guard.drain()
                assert not guard.blocks("coder-a") and metrics.trips == []
            assert chooser.choose("coder-a", PLAN, False, 64, 8, 0).plan == PLAN
            with caplog.at_level("WARNING"):
                guard.on_finished(greedy_req())
                guard.drain()
        finally:
            guard.close()
    assert guard.blocks("coder-a") and not guard.blocks("coder-c")
    assert metrics.trips == ["coder-a"]
    assert metrics.checks == [("coder-a", "checked")] * 3
    assert metrics.agreements == [("coder-a", 0.5)] * 3
    trip = guard.tripped["coder-a"]
    assert (trip.live, trip.bound, trip.checks) == (0.5, 0.98, 3)
    assert "quality guard tripped for coder-a -> coder-b: live agreement 0.500 over the last 3 checks, " \
           "below the profile's bound 0.980 - margin 0.100" in caplog.text
    choice = chooser.choose("coder-a", PLAN, False, 64, 8, 0)
    assert (choice.plan, choice.reason) == (None, GUARD_REASON)
    assert chooser.choose("coder-a", PLAN, True, 64, 8, 0).plan == PLAN  # a forced plan is the client's
    assert guard.on_finished(greedy_req()) is None  # a tripped pair is not checked again
    body = dict(server.bodies[0])
    assert body.pop("rid").startswith(RID_PREFIX)
    assert body == {"input_ids": [5, 6, 7, 1, 2, 3, 4],
                    "sampling_params": {"max_new_tokens": 1, "temperature": 0.0,
                                        "custom_params": {"droidspeak_plan": "off"}},
                    "return_logprob": True, "logprob_start_len": 2, "top_logprobs_num": 1}
    assert server.headers[0]["Authorization"] == "Bearer k1" and len(server.bodies) == 3


def test_an_honest_pair_never_trips(tmp_path):
    metrics = GuardMetrics()
    with shadow_server("honest") as server:
        guard = make_guard(server.url, tmp_path, metrics)
        try:
            for _ in range(10):
                guard.on_finished(greedy_req())
                guard.drain()
        finally:
            guard.close()
    assert not guard.blocks("coder-a") and metrics.trips == []
    assert metrics.agreements == [("coder-a", 1.0)] * 10 and len(server.bodies) == 10
    assert len(guard.windows["coder-a"].checks) == 8  # guard_window


def test_failed_shadow_requests_are_counted_and_never_trip(tmp_path):
    metrics = GuardMetrics()
    with shadow_server("lying", status=500) as server:
        guard = make_guard(server.url, tmp_path, metrics)
        try:
            for _ in range(4):
                guard.on_finished(greedy_req())
                guard.drain()
        finally:
            guard.close()
    assert metrics.checks == [("coder-a", "failed")] * 4 and not guard.blocks("coder-a")
    assert len(server.bodies) == 4


def test_sampling_native_and_full_queue(tmp_path):
    metrics = GuardMetrics()
    guard = make_guard("http://127.0.0.1:9", tmp_path, metrics, guard_fraction=0.5)
    guard.close()  # nothing is sent: the thread is stopped, the queue fills
    native = greedy_req()
    native.extra_key = None
    assert guard.on_finished(native) is None  # nothing reused
    salted = greedy_req()
    salted.extra_key = encode_namespace(ModelTag.derived("coder-b", "coder-a", "[0, 2)"), "salt")
    assert guard.on_finished(salted) is None  # a base key cannot be reproduced over HTTP
    taken = sum(guard.on_finished(greedy_req()) is not None for _ in range(40))
    draws = random.Random(0)
    assert taken == sum(draws.random() < 0.5 for _ in range(40)) == 15  # one draw per guardable request
    assert guard.queue.qsize() == 15 and metrics.checks == []
    guard.settings = parse_settings({"guard_fraction": 1.0})
    assert sum(guard.on_finished(greedy_req()) is not None for _ in range(6)) == 1  # the queue holds 16
    assert guard.queue.qsize() == 16 and metrics.checks == [("coder-a", "dropped")] * 5


def test_guard_metrics_on_a_registry():
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    metrics = DroidSpeakMetrics("coder-b", registry)
    metrics.record_guard_check("coder-a", "checked")
    metrics.record_guard_check("coder-a", "failed")
    metrics.record_guard_trip("coder-a")
    metrics.observe_guard_agreement("coder-a", 0.5)
    value = registry.get_sample_value
    assert value("sglang:droidspeak_guard_checks_total", {"model": "coder-b", "sender": "coder-a",
                                                          "outcome": "checked"}) == 1.0
    assert value("sglang:droidspeak_guard_trips_total", {"model": "coder-b", "sender": "coder-a"}) == 1.0
    assert value("sglang:droidspeak_guard_agreement_bucket", {"model": "coder-b", "sender": "coder-a",
                                                              "le": "0.5"}) == 1.0
    assert value("sglang:droidspeak_guard_agreement_sum", {"model": "coder-b", "sender": "coder-a"}) == 0.5
    for bad in (lambda: metrics.record_guard_check("coder-a", "maybe"), lambda: metrics.record_guard_trip(""),
                lambda: metrics.observe_guard_agreement("coder-a", 1.5)):
        with pytest.raises(ValueError):
            bad()
