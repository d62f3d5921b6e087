"""BlendPlan: the CacheBlend-style baseline as a per-request plan ("blend:R" or "blend:R@S").

    field          meaning
    ratio R        fraction of the prefix's tokens recomputed in every layer, in [0, 1]
    select_layer   S: the layer whose V deviation (receiver vs sender) picks the tokens;
                   the receiver runs its layers 0..S-1 over all tokens, then V at S
                   (CacheBlend's default and ours: 1)

Equal recompute budget: a DroidSpeak plan recomputing k of L layers over n tokens costs
k*n layer-tokens; recomputing R*n tokens in all L layers costs the same at R = k / L
(``blend:0.125`` ~ ``0:4`` and ``blend:0.25`` ~ ``0:8`` on a 32-layer model). The
selection pass (S layers over all n tokens, plus the V projection at S) comes on top,
as in CacheBlend (reference/budget.py counts it).

``str(plan)`` is canonical ("blend:0.125@1"): the radix tree keys derived KV by it, so
blend imports never share a namespace with DroidSpeak plans (whose strings are
"reuse-all" or "[s, e)+..."). Imports no torch or SGLang.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

BLEND_PREFIX = "blend:"
DEFAULT_SELECT_LAYER = 1


@dataclass(frozen=True)
class BlendPlan:
    num_layers: int
    ratio: float
    select_layer: int = DEFAULT_SELECT_LAYER

    def __post_init__(self) -> None:
        if not isinstance(self.num_layers, int) or self.num_layers <= 0:
            raise ValueError(f"num_layers must be a positive int, got {self.num_layers!r}")
        if not (isinstance(self.ratio, (int, float)) and math.isfinite(self.ratio) and 0 <= self.ratio <= 1):
            raise ValueError(f"blend ratio must be a number in [0, 1], got {self.ratio!r}")
        if not isinstance(self.select_layer, int) or not 0 <= self.select_layer < self.num_layers:
            raise ValueError(f"blend select_layer must be in [0, {self.num_layers}), got {self.select_layer!r}")
        object.__setattr__(self, "ratio", float(self.ratio))

    @property
    def layer_equivalents(self) -> float:
        """R * L: the DroidSpeak layer count k with the same recompute budget."""
        return self.ratio * self.num_layers

    @property
    def num_recomputed_layers(self) -> int:
        """``layer_equivalents`` rounded (the per-hit metric counts whole layers)."""
        return int(math.floor(self.layer_equivalents + 0.5))

    def num_tokens(self, prefix_len: int) -> int:
        """Tokens recomputed in every layer: round(R * n), at least 1 (token 0) when R > 0."""
        if self.ratio == 0 or prefix_len == 0:
            return 0
        return min(prefix_len, max(1, int(math.floor(self.ratio * prefix_len + 0.5))))

    def __str__(self) -> str:
        return f"{BLEND_PREFIX}{self.ratio:g}@{self.select_layer}"


def is_blend(text: object) -> bool:
    return isinstance(text, str) and text.startswith(BLEND_PREFIX)


def parse_blend(text: str, num_layers: int) -> BlendPlan:
    """"blend:R" or "blend:R@S" -> BlendPlan; ValueError naming the problem."""
    body = text[len(BLEND_PREFIX):] if is_blend(text) else None
    if not body:
        raise ValueError(f"a blend plan is 'blend:R' or 'blend:R@S', got {text!r}")
    ratio_text, at, select_text = body.partition("@")
    try:
        ratio = float(ratio_text)
        select_layer = int(select_text) if at else DEFAULT_SELECT_LAYER
    except ValueError:
        raise ValueError(f"a blend plan is 'blend:R' (R a number in [0, 1]) or 'blend:R@S' (S a layer), "
                         f"got {text!r}") from None
    return BlendPlan(num_layers, ratio, select_layer)
