"""Budget plan labels and the equal-measured-latency pairing (scripts/gpu/serving_latency.py)."""

from __future__ import annotations

import pytest
from script_module import load_script

from sglang_droidspeak.plan import FrontierPoint, LayerPlan

sl = load_script("gpu/serving_latency.py")
sp = load_script("gpu/serving_plans.py")


class Profile:
    frontier = (FrontierPoint(LayerPlan.contiguous(30, 20, 24), 0.97, 0.03),)


def test_budget_labels_resolve_to_the_profiles_group_and_the_served_blend():
    assert sl.budget_plan("group:4", Profile(), 30, sp.wire)["value"] == "20:24"
    assert sl.budget_plan("group:8", Profile(), 30, sp.wire)["value"] is None
    assert sl.budget_plan("group:4", None, 30, sp.wire)["note"] == "no profile"
    assert sl.budget_plan("cacheblend:6", None, 30, sp.wire)["value"] == "blend:0.2@1"
    assert sl.budget_plan("reuse", Profile(), 30, sp.wire) is None
    with pytest.raises(ValueError, match="1..30"):
        sl.budget_plan("cacheblend:31", None, 30, sp.wire)


def row(value, ttft, sim, ci=0.01):
    return {"value": value, "ttft_ms": {"p50": ttft}, "edit_sim": {"mean": sim, "ci95": ci}}


def test_each_system_meets_the_best_other_system_no_slower_than_it():
    summary = {"own": {"value": "off", "ttft_ms": {"p50": 30.0}},  # no edit_sim: never paired
               "reuse": row("reuse", 12.0, 0.80),
               "group:4": row("20:24", 20.0, 0.82), "group:8": row("16:24", 40.0, 0.90),
               "cacheblend:4": row("blend:0.133333@1", 25.0, 0.86), "cacheblend:2": row("blend:0.0667@1", 18.0, 0.84)}
    got = {(m["system"], m["vs"]): (m["diff"], m["verdict"]) for m in sl.equal_latency(summary)}
    assert got == {("group:4", "cacheblend:2"): (-0.02, "loses"),  # 0.82 vs 0.84, interval 0.0141
                   ("group:8", "cacheblend:4"): (0.04, "wins"),  # the best blend no slower than 40 ms
                   ("cacheblend:4", "group:4"): (0.04, "wins")}  # group:8 (40 ms) is slower than 25 ms
    # cacheblend:2 (18 ms) has no group as fast: group:4 takes 20 ms; reuse is not a group
    tie = sl.equal_latency({"a": row("0:4", 20.0, 0.85, 0.05), "b": row("blend:0.1@1", 20.0, 0.86, 0.05)})
    assert [m["verdict"] for m in tie] == ["tie", "tie"]
    assert "loses" in sl.latency_table({"lib": summary}) and "no DroidSpeak" in sl.latency_table({"x": {}})
