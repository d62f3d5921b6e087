"""Per-request plan choice from custom_params (no SGLang needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

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
