"""Per-request plan choice from custom_params (no SGLang needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sglang_droidspeak.plan.blend_plan import BlendPlan
from sglang_droidspeak.plan.layer_plan import LayerPlan
from sglang_droidspeak.sglang.request_plan import OFF, parse_plan_choice, request_plan_choice


def req(value):
    params = {} if value is None else {"droidspeak_plan": value}
    return SimpleNamespace(rid="r", sampling_params=SimpleNamespace(custom_params=params))


@pytest.mark.parametrize("value,expected", [
    (None, None), ("auto", None), ("off", OFF),
    ("0:2", LayerPlan(8, ((0, 2),))), ("0:1,4:6", LayerPlan(8, ((0, 1), (4, 6)))),
    ("reuse", LayerPlan(8, ())), ([[7, 8]], LayerPlan(8, ((7, 8),))), ([], LayerPlan(8, ())),
])
def test_valid_choices(value, expected):
    assert parse_plan_choice(value, 8) == expected
    assert request_plan_choice(req(value), 8) == expected


@pytest.mark.parametrize("value", ["0-2", "2:1", "0:9", "x", 3, [[0]], {"a": 1}])
def test_bad_choices_turn_reuse_off_with_a_warning(value, caplog):
    with pytest.raises(ValueError, match="droidspeak_plan"):
        parse_plan_choice(value, 8)
    assert request_plan_choice(req(value), 8) is OFF
    assert "droidspeak_plan" in caplog.text


def test_plans_need_the_layer_count():
    assert request_plan_choice(req("0:2"), None) is OFF
    assert request_plan_choice(SimpleNamespace(rid="r"), None) is None  # no sampling params: auto


@pytest.mark.parametrize("value,expected", [
    ("blend:0.125", BlendPlan(8, 0.125, 1)), ("blend:1", BlendPlan(8, 1.0, 1)), ("blend:0@0", BlendPlan(8, 0.0, 0)),
    ("blend:0.5@7", BlendPlan(8, 0.5, 7)),
])
def test_blend_choices(value, expected):
    assert parse_plan_choice(value, 8) == expected
    assert request_plan_choice(req(value), 8) == expected


@pytest.mark.parametrize("value", ["blend:2", "blend:x", "blend:", "blend:-0.1", "blend:nan", "blend:inf",
                                   "blend:0.5@8", "blend:0.5@x", "blend:0.5@"])
def test_bad_blend_choices_turn_reuse_off(value, caplog):
    with pytest.raises(ValueError, match="droidspeak_plan"):
        parse_plan_choice(value, 8)
    assert request_plan_choice(req(value), 8) is OFF
    assert "droidspeak_plan" in caplog.text
    assert request_plan_choice(req("blend:0.5"), None) is OFF  # the layer count is needed


def test_blend_plan_budget_and_names():
    plan = BlendPlan(32, 0.125)
    assert str(plan) == "blend:0.125@1" and str(BlendPlan(32, 1)) == "blend:1@1"
    assert plan.layer_equivalents == 4.0 and plan.num_recomputed_layers == 4
    assert [plan.num_tokens(n) for n in (0, 1, 4, 32, 1000)] == [0, 1, 1, 4, 125]
    assert BlendPlan(32, 0.0).num_tokens(1000) == 0 and BlendPlan(32, 1.0).num_tokens(7) == 7
    assert str(plan) not in (str(LayerPlan(32, ())), str(LayerPlan(32, ((0, 4),))))
