"""The systems a sender -> receiver pair is scored under, and their recompute cost.

    system key          what the receiver's prefix KV is               recomputed layer-tokens
    ------------------  ---------------------------------------------  -----------------------
    receiver            its own full prefill                           L * n
    sender              none: the sender answers alone (its own KV)    0 (reference row)
    plan:<groups>       DroidSpeak: sender KV, groups recomputed        k * n
    cacheblend:<k>      sender KV; CacheBlend's selection pass, then   k * n (same budget)
                        the most-deviating tokens recomputed in the
                        other layers, as many as the budget allows

``plan:reuse-all`` is full KV reuse. Costs are in layer-token units, so DroidSpeak with k
layers and CacheBlend at ``cacheblend:k`` spend the same compute on the prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

from sglang_droidspeak.plan import LayerPlan


@dataclass(frozen=True)
class System:
    kind: str  # "receiver" | "sender" | "plan" | "cacheblend"
    plan: LayerPlan | None = None
    cacheblend_layers: int = 0  # the layer budget k a CacheBlend system spends

    @property
    def key(self) -> str:
        if self.kind == "plan":
            return f"plan:{self.plan}"
        if self.kind == "cacheblend":
            return f"cacheblend:{self.cacheblend_layers}"
        return self.kind

    def recompute_fraction(self, num_layers: int) -> float:
        """Share of the prefix's layer-token compute this system spends."""
        if self.kind == "plan":
            return self.plan.recompute_fraction
        if self.kind == "cacheblend":
            return self.cacheblend_layers / num_layers
        return 1.0 if self.kind == "receiver" else 0.0


RECEIVER = System("receiver")
SENDER = System("sender")


def plan_system(plan: LayerPlan) -> System:
    return System("plan", plan=plan)


def cacheblend_system(num_layers_budget: int) -> System:
    return System("cacheblend", cacheblend_layers=num_layers_budget)
