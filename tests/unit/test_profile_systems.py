"""A profile's optional ``systems:`` section (CacheBlend and hybrid points): round trip,
field-naming errors, the profiler's keys, and every stored profile unchanged."""

from pathlib import Path

import pytest
import yaml

from sglang_droidspeak.plan import LayerPlan, ProfileError, load_profile, save_profile
from sglang_droidspeak.plan.blend_plan import BlendPlan
from sglang_droidspeak.plan.layer_plan import LayerGroup, PlanError
from sglang_droidspeak.plan.profile import FrontierPoint
from sglang_droidspeak.plan.system_points import (
    CACHEBLEND, DROIDSPEAK, FULL_PREFILL, HYBRID, HybridPlan, cacheblend_budget, cacheblend_plan, plan_from_key,
    system_of,
)
from test_profile import _profile, _write

PROFILES = Path(__file__).resolve().parents[2] / "profiles"
SYSTEMS = (
    FrontierPoint(BlendPlan(8, 0.25, 1), 0.58, 0.61 - 0.58),
    FrontierPoint(BlendPlan(8, 0.5, 2), 0.60, 0.61 - 0.60),
    FrontierPoint(HybridPlan(8, LayerGroup(0, 2), 1), 0.59, 0.61 - 0.59),
)
SECTION = """
systems:
  cacheblend:
    - {budget: 2, quality: 0.58, quality_drop: 0.03}
    - {budget: 4, select_layer: 2, quality: 0.60, quality_drop: 0.01}
  hybrid:
    - {groups: [[0, 2]], budget: 1, quality: 0.59, quality_drop: 0.02}
"""


def _with_systems(tmp_path, section=SECTION):
    text = yaml.safe_dump(_profile().to_dict(), sort_keys=False) + section
    return _write(tmp_path, text)


def test_yaml_section_reads_as_served_plans(tmp_path):
    profile = load_profile(_with_systems(tmp_path))
    assert [str(p.plan) for p in profile.systems] == ["blend:0.25@1", "blend:0.5@2", "hybrid:0-2+1"]
    assert [(p.system, p.budget) for p in profile.systems] == [(CACHEBLEND, 2.0), (CACHEBLEND, 4.0), (HYBRID, 3.0)]
    assert profile.points() == profile.frontier + profile.systems
    assert profile.cheapest_within(0.10).plan == LayerPlan.contiguous(8, 0, 2)  # DroidSpeak only, as before


def test_round_trip_with_systems(tmp_path):
    profile = _profile(systems=SYSTEMS)
    loaded = load_profile(save_profile(profile, tmp_path / "x.yaml"))
    assert loaded == profile
    assert loaded.to_dict()["systems"] == {
        "cacheblend": [{"budget": 2, "select_layer": 1, "quality": 0.58, "quality_drop": 0.61 - 0.58},
                       {"budget": 4, "select_layer": 2, "quality": 0.60, "quality_drop": 0.61 - 0.60}],
        "hybrid": [{"groups": [[0, 2]], "budget": 1, "quality": 0.59, "quality_drop": 0.61 - 0.59}]}


def test_a_profile_without_systems_writes_no_section():
    assert "systems" not in _profile().to_dict()


@pytest.mark.parametrize("path", sorted(PROFILES.glob("*.yaml")), ids=lambda p: p.name)
def test_stored_profiles_load_unchanged(path):
    profile, data = load_profile(path), yaml.safe_load(path.read_text())
    assert profile.to_dict() == data
    if "systems" not in data:  # written before the section existed: DroidSpeak-only, as before
        assert profile.systems == () and profile.points() == profile.frontier
    assert {p.system for p in profile.frontier} <= {DROIDSPEAK, FULL_PREFILL}


def test_the_real_familys_profile_carries_its_cacheblend_points():
    profile = load_profile(PROFILES / "smollm2-base__smollm2-test-lora.yaml")
    assert [(p.system, p.budget) for p in profile.systems] == [("cacheblend", 4), ("cacheblend", 8), ("cacheblend", 12)]
    assert profile.points()[: len(profile.frontier)] == profile.frontier


@pytest.mark.parametrize("section, message", [
    ("systems:\n  cachblend:\n    - {budget: 2, quality: 0.6, quality_drop: 0.01}\n",
     r"systems: unknown field 'cachblend' \(did you mean 'cacheblend'\?\)"),
    ("systems:\n  droidspeak: []\n", r"systems: unknown field 'droidspeak'; known: cacheblend, hybrid"),
    ("systems: {}\n", r"systems: must name at least one of \['cacheblend', 'hybrid'\]"),
    ("systems:\n  cacheblend: []\n", r"systems.cacheblend: must be a non-empty list"),
    ("systems:\n  cacheblend:\n    - {budget: 9, quality: 0.6, quality_drop: 0.01}\n",
     r"systems.cacheblend\[0\].budget: must be an integer in 1..8, got 9"),
    ("systems:\n  cacheblend:\n    - {budget: 0.5, quality: 0.6, quality_drop: 0.01}\n",
     r"systems.cacheblend\[0\].budget: must be an integer in 1..8, got 0.5"),
    ("systems:\n  cacheblend:\n    - {budget: 2, select_layer: 8, quality: 0.6, quality_drop: 0.01}\n",
     r"systems.cacheblend\[0\].select_layer: must be an integer in 0..7, got 8"),
    ("systems:\n  cacheblend:\n    - {quality: 0.6, quality_drop: 0.01}\n",
     r"systems.cacheblend\[0\].budget: required field is missing"),
    ("systems:\n  cacheblend:\n    - {budget: 2, ratio: 0.25, quality: 0.6, quality_drop: 0.01}\n",
     r"systems.cacheblend\[0\]: unknown field 'ratio'"),
    ("systems:\n  cacheblend:\n    - {budget: 2, quality: 0.6, quality_drop: 0.2}\n",
     r"systems.cacheblend\[0\].quality_drop: must be receiver_quality - quality = 0.01, got 0.2"),
    ("systems:\n  cacheblend:\n    - {budget: 4, quality: 0.6, quality_drop: 0.01}\n"
     "    - {budget: 2, quality: 0.6, quality_drop: 0.01}\n", r"systems.cacheblend: must be sorted by budget, got \[4, 2\]"),
    ("systems:\n  hybrid:\n    - {groups: [[0, 2], [4, 6]], budget: 1, quality: 0.6, quality_drop: 0.01}\n",
     r"systems.hybrid\[0\].groups: must be one \[start, end\] pair"),
    ("systems:\n  hybrid:\n    - {groups: [[3, 2]], budget: 1, quality: 0.6, quality_drop: 0.01}\n",
     r"systems.hybrid\[0\].groups: .*empty or outside"),
    ("systems:\n  hybrid:\n    - {groups: [[0, 6]], budget: 3, quality: 0.6, quality_drop: 0.01}\n",
     r"systems.hybrid\[0\].budget: must be an integer in 1..2, got 3"),
    ("systems:\n  hybrid:\n    - {groups: [[0, 8]], budget: 1, quality: 0.6, quality_drop: 0.01}\n",
     r"systems.hybrid\[0\].groups: a hybrid group must leave at least one layer"),
])
def test_bad_systems_name_the_field(tmp_path, section, message):
    path = _with_systems(tmp_path, section)
    with pytest.raises(ProfileError, match=message) as info:
        load_profile(path)
    assert str(path) in str(info.value)


def test_profiler_keys_map_to_plans():
    assert plan_from_key("cacheblend:4", 32) == BlendPlan(32, 0.125, 1)
    assert plan_from_key("hybrid:2-6+3", 32) == HybridPlan(32, LayerGroup(2, 6), 3)
    assert [plan_from_key(k, 32) for k in ("receiver", "sender", "plan:[0, 4)", "cacheblend:x")] == [None] * 4
    with pytest.raises(ValueError, match=r"cacheblend budget must be an int in 1..32, got 33"):
        plan_from_key("cacheblend:33", 32)
    with pytest.raises(ValueError, match=r"hybrid budget must be an int in 1..28"):
        plan_from_key("hybrid:2-6+29", 32)
    with pytest.raises(PlanError):
        plan_from_key("hybrid:6-2+1", 32)


def test_cacheblend_budget_round_trips_awkward_ratios():
    assert [cacheblend_budget(cacheblend_plan(30, k)) for k in (1, 4, 7, 30)] == [1, 4, 7, 30]
    with pytest.raises(ValueError, match="not a whole budget"):
        cacheblend_budget(BlendPlan(8, 0.3))


def test_system_of():
    assert [system_of(p) for p in (None, LayerPlan.full_reuse(4), LayerPlan.full_prefill(4), BlendPlan(4, 0.5),
                                   HybridPlan(4, LayerGroup(0, 1), 1))] == [
        FULL_PREFILL, DROIDSPEAK, FULL_PREFILL, CACHEBLEND, HYBRID]


def test_profiler_scores_become_system_points():
    from sglang_droidspeak.plan.profile_systems import points_from_scores

    scores = {"receiver": 1.0, "plan:[0, 2)": 0.7, "hybrid:0-2+1": 0.95, "cacheblend:3": 0.9, "cacheblend:2": 0.8}
    points = points_from_scores(scores, 1.0, 8)
    assert [(str(p.plan), p.quality, p.quality_drop) for p in points] == [
        ("blend:0.25@1", 0.8, 1.0 - 0.8), ("blend:0.375@1", 0.9, 1.0 - 0.9), ("hybrid:0-2+1", 0.95, 1.0 - 0.95)]


def test_profiler_system_keys_are_the_ones_the_profile_reads():
    from sglang_droidspeak.profiler.systems import cacheblend_system, hybrid_system

    assert plan_from_key(cacheblend_system(3).key, 8) == BlendPlan(8, 3 / 8, 1)
    assert plan_from_key(hybrid_system(8, 2, 4, 3).key, 8) == HybridPlan(8, LayerGroup(2, 4), 3)
