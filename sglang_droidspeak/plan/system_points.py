"""The systems a profile measures for a pair, and the plan each one's points carry.

    system        plan type     budget (layer-equivalents k)   servable   profiler key
    ------------  ------------  -----------------------------  ---------  -------------------
    droidspeak    LayerPlan     recomputed layers              yes        plan:<groups>
    cacheblend    BlendPlan     ratio * L (ratio = k / L)      yes        cacheblend:<k>
    hybrid        HybridPlan    (e - s) + k                    no (yet)   hybrid:<s>-<e>+<k>
    full_prefill  None          L                              yes        receiver

A CacheBlend point measured at budget k is served as ``BlendPlan(L, k / L, select_layer)``
(select layer 1 unless the profile says otherwise). A hybrid point recomputes the group
[s, e) and then, CacheBlend-style, tokens at the compute of k more layers; profiles may
record it, the engine does not serve it yet (``plan.policy`` skips it, naming why).
Imports no torch or SGLang.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Union

from sglang_droidspeak.plan.blend_plan import DEFAULT_SELECT_LAYER, BlendPlan
from sglang_droidspeak.plan.layer_plan import LayerGroup, LayerPlan

DROIDSPEAK = "droidspeak"
CACHEBLEND = "cacheblend"
HYBRID = "hybrid"
FULL_PREFILL = "full_prefill"
SYSTEMS = (DROIDSPEAK, CACHEBLEND, HYBRID, FULL_PREFILL)  # metric labels, response metadata
PROFILE_SYSTEMS = (CACHEBLEND, HYBRID)  # keys of a profile's optional ``systems:`` section
SERVABLE = (DROIDSPEAK, CACHEBLEND, FULL_PREFILL)
HYBRID_PREFIX = "hybrid:"
_HYBRID_KEY = re.compile(r"hybrid:(\d+)-(\d+)\+(\d+)\Z")
_CACHEBLEND_KEY = re.compile(r"cacheblend:(\d+)\Z")


@dataclass(frozen=True)
class HybridPlan:
    """Group [start, end) recomputed, then token recompute at the compute of ``budget`` layers."""

    num_layers: int
    group: LayerGroup
    budget: int

    def __post_init__(self) -> None:
        group = self.group if isinstance(self.group, LayerGroup) else LayerGroup(*self.group)
        object.__setattr__(self, "group", group)
        LayerPlan(self.num_layers, (group,))  # PlanError naming a bad group
        room = self.num_layers - group.num_layers
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or not 1 <= self.budget <= room:
            raise ValueError(f"hybrid budget must be an int in 1..{room} (the layers outside {group}), "
                             f"got {self.budget!r}")

    @property
    def layer_equivalents(self) -> float:
        return float(self.group.num_layers + self.budget)

    @property
    def num_recomputed_layers(self) -> int:
        return self.group.num_layers + self.budget

    def __str__(self) -> str:
        return f"{HYBRID_PREFIX}{self.group.start}-{self.group.end}+{self.budget}"


Plan = Union[LayerPlan, BlendPlan, HybridPlan]


def system_of(plan: Optional[Plan]) -> str:
    """The system that serves ``plan`` (None: a normal prefill)."""
    if plan is None:
        return FULL_PREFILL
    if isinstance(plan, BlendPlan):
        return CACHEBLEND
    if isinstance(plan, HybridPlan):
        return HYBRID
    return FULL_PREFILL if plan.is_full_prefill else DROIDSPEAK


def layer_equivalents(plan: Plan) -> float:
    """The budget k of the module table (layers' worth of prefix compute)."""
    if isinstance(plan, LayerPlan):
        return float(plan.num_recomputed_layers)
    return plan.layer_equivalents


def recomputes_everything(plan: Plan) -> bool:
    """A plan that is a normal prefill in disguise (every layer, or every token)."""
    if isinstance(plan, BlendPlan):
        return plan.ratio == 1.0
    return isinstance(plan, LayerPlan) and plan.is_full_prefill


def cacheblend_plan(num_layers: int, budget: int, select_layer: int = DEFAULT_SELECT_LAYER) -> BlendPlan:
    """The served plan of a CacheBlend point measured at ``budget`` layers: ratio k / L."""
    if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= num_layers:
        raise ValueError(f"cacheblend budget must be an int in 1..{num_layers}, got {budget!r}")
    return BlendPlan(num_layers, budget / num_layers, select_layer)


def cacheblend_budget(plan: BlendPlan) -> int:
    """k of a BlendPlan made by ``cacheblend_plan``; ValueError when ratio * L is not whole."""
    k = round(plan.ratio * plan.num_layers)
    if abs(k - plan.ratio * plan.num_layers) > 1e-9 or k < 1:
        raise ValueError(f"{plan}: ratio * num_layers = {plan.ratio * plan.num_layers:g} is not a whole budget >= 1")
    return k


def plan_from_key(key: str, num_layers: int) -> Optional[Plan]:
    """The plan of a profiler system key "cacheblend:<k>" or "hybrid:<s>-<e>+<k>"; None for
    other keys (receiver, sender, plan:...). ValueError when such a key does not fit the model."""
    blend = _CACHEBLEND_KEY.match(key)
    if blend:
        return cacheblend_plan(num_layers, int(blend.group(1)))
    hybrid = _HYBRID_KEY.match(key)
    if hybrid:
        start, end, budget = (int(x) for x in hybrid.groups())
        return HybridPlan(num_layers, LayerGroup(start, end), budget)
    return None
