"""The systems a sender -> receiver pair is scored under, and their recompute cost.

    system key          what the receiver's prefix KV is               recomputed layer-tokens
    ------------------  ---------------------------------------------  -----------------------
    receiver            its own full prefill                           L * n
    sender              none: the sender answers alone (its own KV)    0 (reference row)
    plan:<groups>       DroidSpeak: sender KV, groups recomputed        k * n
    cacheblend:<k>      sender KV; CacheBlend's selection pass, then   k * n (same budget)
                        the most-deviating tokens recomputed in the
                        other layers, as many as the budget allows
    hybrid:<s>-<e>+<k>  DroidSpeak group [s, e) from E_s, then in layers   (e - s + k) * n
                        >= e CacheBlend-style token recompute (selection
                        at layer e) for the compute of k more layers

``plan:reuse-all`` is full KV reuse. Costs are in layer-token units, so DroidSpeak with k
layers, CacheBlend at ``cacheblend:k`` and ``hybrid:s-e+j`` with e - s + j = k spend the
same compute on the prefix (selection passes included; reference/budget.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from sglang_droidspeak.plan import LayerPlan


@dataclass(frozen=True)
class System:
    kind: str  # "receiver" | "sender" | "plan" | "cacheblend" | "hybrid"
    plan: LayerPlan | None = None  # hybrid: one group
    cacheblend_layers: int = 0  # the layer budget k token recompute spends (hybrid: after the group)

    @property
    def key(self) -> str:
        if self.kind == "plan":
            return f"plan:{self.plan}"
        if self.kind == "cacheblend":
            return f"cacheblend:{self.cacheblend_layers}"
        if self.kind == "hybrid":
            group = self.plan.groups[0]
            return f"hybrid:{group.start}-{group.end}+{self.cacheblend_layers}"
        return self.kind

    def recompute_fraction(self, num_layers: int) -> float:
        """Share of the prefix's layer-token compute this system spends."""
        if self.kind == "plan":
            return self.plan.recompute_fraction
        if self.kind == "cacheblend":
            return self.cacheblend_layers / num_layers
        if self.kind == "hybrid":
            return (self.plan.num_recomputed_layers + self.cacheblend_layers) / num_layers
        return 1.0 if self.kind == "receiver" else 0.0

    def num_fetched_layers(self, num_layers: int, select_layer: int = 1) -> int:
        """Layers whose KV is taken (wholly or for the unselected tokens) from the sender."""
        if self.kind in ("plan", "hybrid"):
            selection = int(self.kind == "hybrid" and self.cacheblend_layers > 0 and self.plan.groups[0].end < num_layers)
            return num_layers - self.plan.num_recomputed_layers - selection
        if self.kind == "cacheblend":
            return num_layers - select_layer - 1
        return 0


RECEIVER = System("receiver")
SENDER = System("sender")


def plan_system(plan: LayerPlan) -> System:
    return System("plan", plan=plan)


def cacheblend_system(num_layers_budget: int) -> System:
    return System("cacheblend", cacheblend_layers=num_layers_budget)


def hybrid_system(num_layers: int, start: int, end: int, num_layers_budget: int) -> System:
    """Group [start, end), then token recompute for the compute of ``num_layers_budget`` layers."""
    if num_layers_budget < 0:
        raise ValueError(f"hybrid budget must be >= 0 layers, got {num_layers_budget}")
    if end == num_layers and num_layers_budget > 0:
        raise ValueError(f"group [{start}, {end}) ends at the last layer: no layers after it for token recompute")
    return System("hybrid", plan=LayerPlan.contiguous(num_layers, start, end), cacheblend_layers=num_layers_budget)
