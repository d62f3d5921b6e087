"""Profile files: the offline-profiled layer plans for one sender -> receiver pair.

A profile is YAML (``profiles/<sender>__<receiver>.yaml``)::

    format_version: 1
    sender:   {name: tester,    fingerprint: {...}}   # identity.ModelFingerprint fields
    receiver: {name: libwriter, fingerprint: {...}}
    num_layers: 8
    dataset: lcc                 # task name (sglang_droidspeak.tasks)
    metric: edit_sim
    granularity: 1               # group bounds are multiples of this (except num_layers)
    created: '2026-11-28T04:00:00+00:00'
    tool_version: 0.1.0
    receiver_quality: 0.61       # the receiver's own full prefill
    full_reuse_quality: 0.40     # reuse every layer of the sender
    validation:                  # optional (profiler --validate-examples): every quality in the file
      examples: 64               # is measured on these examples, disjoint from the 32 selection ones
      seed: 0                    # build_task seed; the validation examples follow the first `offset`
      offset: 32                 # (the selection set) in that seed's order, skipping any prompt they hold
      selection_receiver_quality: 0.60     # the selection set's receiver and full reuse, for the record
      selection_full_reuse_quality: 0.43
    sensitivity: [...]           # optional: quality drop when only layer l is reused (selection set)
    frontier:                    # Pareto frontier, by num_recomputed_layers ascending
      - {groups: [[0, 2]], num_recomputed_layers: 2, quality: 0.55, quality_drop: 0.06}
        # + selection_quality: 0.58 on every point (frontier and systems) of a validated profile
    systems:                     # optional: other systems measured on the same examples
      cacheblend:                # token recompute at the compute of `budget` layers, served as
        - {budget: 2, select_layer: 1, quality: 0.58, quality_drop: 0.03}   # blend:(2/8)@1
      hybrid:                    # group [s, e) + token recompute at `budget` layers (not served yet)
        - {groups: [[0, 2]], budget: 1, quality: 0.59, quality_drop: 0.02}

``quality_drop`` is ``receiver_quality - quality`` (absolute, in metric units). Without
``systems`` a profile is DroidSpeak-only, as before the section existed; ``frontier`` always
holds the DroidSpeak points (plan.system_points: the systems and their plans).
Loading (``profile_io``) validates every field and names the file and field on error.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

from sglang_droidspeak.identity import ModelFingerprint
from sglang_droidspeak.plan.blend_plan import BlendPlan
from sglang_droidspeak.plan.system_points import (
    CACHEBLEND, DROIDSPEAK, HYBRID, PROFILE_SYSTEMS, SERVABLE, HybridPlan, Plan, cacheblend_budget,
    layer_equivalents, system_of,
)

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelRef:
    name: str
    fingerprint: ModelFingerprint


@dataclass(frozen=True)
class FrontierPoint:
    """One measured point: a DroidSpeak LayerPlan (``frontier``) or another system's plan."""

    plan: Plan
    quality: float
    quality_drop: float
    selection_quality: float | None = None  # validated profiles: the score on the selection examples

    @property
    def num_recomputed_layers(self) -> int:
        return self.plan.num_recomputed_layers

    @property
    def system(self) -> str:
        return system_of(self.plan)

    @property
    def budget(self) -> float:
        """Layer-equivalents of prefix compute (plan.system_points)."""
        return layer_equivalents(self.plan)


@dataclass(frozen=True)
class Validation:
    """How a validated profile's qualities were measured (profiler ``validate_examples``)."""

    examples: int
    seed: int
    offset: int  # the selection set's size: validation examples come after it in the seed's order
    selection_receiver_quality: float
    selection_full_reuse_quality: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Profile:
    sender: ModelRef
    receiver: ModelRef
    num_layers: int
    dataset: str
    metric: str
    receiver_quality: float
    full_reuse_quality: float
    frontier: tuple[FrontierPoint, ...]
    granularity: int = 1
    sensitivity: tuple[float, ...] | None = None
    created: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    tool_version: str = ""
    systems: tuple[FrontierPoint, ...] = ()  # CacheBlend / hybrid points, by system then budget
    validation: Validation | None = None  # None: measured on the examples the frontier was chosen on

    def points(self) -> tuple[FrontierPoint, ...]:
        """Every measured point: the DroidSpeak frontier, then the other systems'."""
        return self.frontier + self.systems

    def cheapest_within(self, max_quality_drop: float) -> FrontierPoint | None:
        """The fewest-layer frontier point whose drop is at most ``max_quality_drop``."""
        ok = [p for p in self.frontier if p.quality_drop <= max_quality_drop]
        return min(ok, key=lambda p: p.num_recomputed_layers) if ok else None

    def cheapest_servable_within(self, max_quality_drop: float) -> FrontierPoint | None:
        """The smallest-budget servable point (any system) whose drop is at most
        ``max_quality_drop``; ties go to DroidSpeak, then to the earlier point. Without
        ``systems`` it is ``cheapest_within``."""
        ok = [p for p in self.points() if p.system in SERVABLE and p.quality_drop <= max_quality_drop]
        return min(ok, key=lambda p: (p.budget, p.system != DROIDSPEAK)) if ok else None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "sender": {"name": self.sender.name, "fingerprint": self.sender.fingerprint.to_dict()},
            "receiver": {"name": self.receiver.name, "fingerprint": self.receiver.fingerprint.to_dict()},
            "num_layers": self.num_layers,
            "dataset": self.dataset,
            "metric": self.metric,
            "granularity": self.granularity,
            "created": self.created,
            "tool_version": self.tool_version,
            "receiver_quality": self.receiver_quality,
            "full_reuse_quality": self.full_reuse_quality,
        }
        if self.validation is not None:
            data["validation"] = self.validation.to_dict()
        if self.sensitivity is not None:
            data["sensitivity"] = list(self.sensitivity)
        data["frontier"] = [
            {"groups": p.plan.to_list(), "num_recomputed_layers": p.num_recomputed_layers, **_qualities(p)}
            for p in self.frontier
        ]
        if self.systems:
            data["systems"] = {name: [_system_point_dict(p) for p in self.systems if p.system == name]
                               for name in PROFILE_SYSTEMS if any(p.system == name for p in self.systems)}
        return data


def _system_point_dict(point: FrontierPoint) -> dict[str, Any]:
    plan = point.plan
    if isinstance(plan, BlendPlan):
        head: dict[str, Any] = {"budget": cacheblend_budget(plan), "select_layer": plan.select_layer}
    elif isinstance(plan, HybridPlan):
        head = {"groups": [[plan.group.start, plan.group.end]], "budget": plan.budget}
    else:
        raise ValueError(f"Profile.systems holds {CACHEBLEND} and {HYBRID} points, got {plan}")
    return {**head, **_qualities(point)}


def _qualities(point: FrontierPoint) -> dict[str, float]:
    data = {"quality": point.quality, "quality_drop": point.quality_drop}
    if point.selection_quality is not None:
        data["selection_quality"] = point.selection_quality
    return data
