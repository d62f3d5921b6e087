"""The optional ``systems:`` section of a profile: other systems' measured points.

    key          point fields (all required unless marked)        plan
    cacheblend   budget: int in 1..L                               BlendPlan(L, budget / L, S)
                 select_layer: int in 0..L-1 (optional, S = 1)
    hybrid       groups: [[s, e]] (one group)                      HybridPlan(L, [s, e), budget)
                 budget: int in 1..L-(e-s)
    both         quality: [0, 1]; quality_drop = receiver_quality - quality (1e-6)
                 selection_quality: [0, 1], required in a validated profile, refused in others

Each system's points are sorted by budget ascending, and the section, when present, names at
least one system with at least one point. Errors name the field, e.g.
``systems.cacheblend[1].budget: must be an integer in 1..8, got 9``. The callers pass the
profile's top ``validation.Section`` (profile_io's type, so errors are ProfileErrors).
"""

from __future__ import annotations

from typing import Any, Mapping

from sglang_droidspeak.plan.layer_plan import LayerGroup, LayerPlan, PlanError
from sglang_droidspeak.plan.profile import FrontierPoint
from sglang_droidspeak.plan.system_points import (
    CACHEBLEND, HYBRID, PROFILE_SYSTEMS, HybridPlan, cacheblend_plan, plan_from_key,
)

DROP_TOLERANCE = 1e-6  # quality_drop must be receiver_quality - quality (as the profiler writes it)
QUALITY_KEYS = ("quality", "quality_drop", "selection_quality")
OPTIONAL_POINT_KEYS = ("select_layer", "selection_quality")  # selection_quality: see measured_quality
CACHEBLEND_KEYS = ("budget", "select_layer") + QUALITY_KEYS
HYBRID_KEYS = ("groups", "budget") + QUALITY_KEYS


def measured_quality(point: Any, receiver_quality: float, validated: bool) -> tuple[float, float, float | None]:
    """(quality, quality_drop, selection_quality) of one point Section, the drop checked against the
    receiver's; ``selection_quality`` is required when the profile is ``validated``, refused otherwise."""
    quality, drop = point.number("quality", 0.0, 1.0), point.number("quality_drop", -1.0, 1.0)
    if abs(drop - (receiver_quality - quality)) > DROP_TOLERANCE:
        point.fail("quality_drop", f"must be receiver_quality - quality = {receiver_quality - quality:.6g}", drop)
    if not validated and "selection_quality" in point.data:
        point.fail("selection_quality", "only a profile with a validation section has it")
    if validated and "selection_quality" not in point.data:
        point.fail("selection_quality", "required: the profile has a validation section")
    return quality, drop, point.number("selection_quality", 0.0, 1.0) if validated else None


def _cacheblend(point: Any, num_layers: int):
    budget = point.integer("budget", 1, num_layers)
    return cacheblend_plan(num_layers, budget, point.integer("select_layer", 0, num_layers - 1, default=1))


def _hybrid(point: Any, num_layers: int) -> HybridPlan:
    groups = point.items("groups")
    if len(groups) != 1 or not isinstance(groups[0], list) or len(groups[0]) != 2:
        point.fail("groups", "must be one [start, end] pair", groups)
    try:
        group = LayerPlan(num_layers, (tuple(groups[0]),)).groups[0]
    except PlanError as e:
        point.fail("groups", str(e))
    room = num_layers - group.num_layers
    if room < 1:
        point.fail("groups", "a hybrid group must leave at least one layer for token recompute", groups)
    return HybridPlan(num_layers, LayerGroup(group.start, group.end), point.integer("budget", 1, room))


_READERS = {CACHEBLEND: (CACHEBLEND_KEYS, _cacheblend), HYBRID: (HYBRID_KEYS, _hybrid)}


def _points(section: Any, name: str, num_layers: int, receiver_quality: float,
            validated: bool) -> list[FrontierPoint]:
    keys, read = _READERS[name]
    required = tuple(k for k in keys if k not in OPTIONAL_POINT_KEYS)
    points = []
    for i in range(len(section.items(name))):
        point = section.item(name, i, keys, required=required)
        plan = read(point, num_layers)
        points.append(FrontierPoint(plan, *measured_quality(point, receiver_quality, validated)))
    budgets = [p.budget for p in points]
    if budgets != sorted(budgets):
        section.fail(name, f"must be sorted by budget, got {[int(b) for b in budgets]}")
    return points


def parse_systems(top: Any, num_layers: int, receiver_quality: float,
                  validated: bool = False) -> tuple[FrontierPoint, ...]:
    """The points of ``top``'s ``systems`` section (empty when the profile has none)."""
    if top.get("systems", None) is None:
        return ()
    section = top.child("systems", PROFILE_SYSTEMS)
    if not section.data:
        top.fail("systems", f"must name at least one of {list(PROFILE_SYSTEMS)}", section.data)
    return tuple(p for name in PROFILE_SYSTEMS if name in section.data
                 for p in _points(section, name, num_layers, receiver_quality, validated))


def points_from_scores(scores: Mapping[str, float], receiver_quality: float, num_layers: int,
                       selection: Mapping[str, float] | None = None) -> tuple[FrontierPoint, ...]:
    """Profile ``systems`` points from the profiler's mean scores by system key
    ("cacheblend:<k>", "hybrid:<s>-<e>+<k>"; other keys are not system points), ordered as
    the section is: by system, then budget. ``selection``: a validated profile's scores of
    the same keys on the selection examples (each point's ``selection_quality``)."""
    points = []
    for key, quality in scores.items():
        plan = plan_from_key(key, num_layers)
        if plan is not None:
            chosen = None if selection is None else selection[key]
            points.append(FrontierPoint(plan, quality, receiver_quality - quality, chosen))
    return tuple(sorted(points, key=lambda p: (PROFILE_SYSTEMS.index(p.system), p.budget)))
