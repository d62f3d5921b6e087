"""Recompute cost in layer-tokens, to compare DroidSpeak and CacheBlend at equal compute.

One layer-token = one token through one decoder layer (projections, attention, MLP).
Recomputing k layers of n tokens costs k*n layer-tokens, the same as recomputing k*n/L
tokens in all L layers (``RecomputeCost.token_equivalent``). Full prefill costs L*n.

CacheBlend's selection step computes K/V projections of all n tokens at select_layer; that
partial layer counts as ``kv_projection_fraction(config)`` of a layer-token per token
(the share of a layer's per-token matmul FLOPs spent on the K and V projections; the
attention-score term, which grows with n, is left out of the fraction).
"""

from __future__ import annotations

from typing import NamedTuple

from sglang_droidspeak.plan.layer_plan import LayerPlan


class RecomputeCost(NamedTuple):
    layer_tokens: float
    num_layers: int
    num_tokens: int

    @property
    def token_equivalent(self) -> float:
        """Tokens recomputed in all layers that cost the same."""
        return self.layer_tokens / self.num_layers

    @property
    def prefill_fraction(self) -> float:
        """Cost relative to a full prefill of the n tokens."""
        return self.layer_tokens / (self.num_layers * self.num_tokens)


def kv_projection_fraction(config) -> float:
    """Share of a decoder layer's per-token matmul FLOPs spent on the K and V projections."""
    hidden = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q_dim, kv_dim = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    kv = 2 * hidden * kv_dim
    total = hidden * q_dim + kv + q_dim * hidden + 3 * hidden * config.intermediate_size
    return kv / total


def droidspeak_cost(plan: LayerPlan, num_tokens: int) -> RecomputeCost:
    return RecomputeCost(float(plan.num_recomputed_layers * num_tokens), plan.num_layers, num_tokens)


def cacheblend_cost(
    num_layers: int,
    num_tokens: int,
    num_recompute_tokens: int,
    select_layer: int = 1,
    keep_selection_kv: bool = False,
    kv_fraction: float = 0.0,
) -> RecomputeCost:
    """Cost of ``cacheblend_receiver_cache`` with the same arguments.

    kv_fraction: ``kv_projection_fraction(config)``; the default 0.0 counts the selection
    projections as free, which favours CacheBlend.
    """
    n, k, s, L = num_tokens, num_recompute_tokens, select_layer, num_layers
    if keep_selection_kv:
        total = s * n + kv_fraction * n + (1 - kv_fraction) * k + (L - s - 1) * k
    elif k == 0:
        total = 0.0
    elif k == n:
        total = float(L * n)  # every token selected: no selection pass
    else:
        total = s * n + kv_fraction * n + L * k
    return RecomputeCost(float(total), L, n)


def hybrid_cost(num_layers: int, num_tokens: int, start: int, end: int, num_recompute_tokens: int,
                kv_fraction: float = 0.0) -> RecomputeCost:
    """Cost of ``hybrid_receiver_cache``: the group's (end - start) * n, plus, when tokens are
    recomputed after it, the selection projection at layer ``end`` and the tokens' layers
    (counted as CacheBlend's keep_selection_kv mode counts them)."""
    n, t, L = num_tokens, num_recompute_tokens, num_layers
    total = float((end - start) * n)
    if t > 0 and end < L:
        total += kv_fraction * n + (1 - kv_fraction) * t + (L - end - 1) * t
    return RecomputeCost(total, L, n)


def hybrid_tokens_for_cost(extra_layer_tokens: float, num_layers: int, num_tokens: int, end: int,
                           kv_fraction: float = 0.0) -> int:
    """The largest num_recompute_tokens after a group ending at ``end`` whose cost beyond the
    group's fits ``extra_layer_tokens`` (0: the selection pass does not fit, or end == L)."""
    if end >= num_layers:
        return 0
    for t in range(num_tokens, 0, -1):
        extra = hybrid_cost(num_layers, num_tokens, 0, end, t, kv_fraction).layer_tokens - end * num_tokens
        if extra <= extra_layer_tokens + 1e-9:
            return t
    return 0


def cacheblend_tokens_for_cost(
    layer_tokens: float,
    num_layers: int,
    num_tokens: int,
    select_layer: int = 1,
    keep_selection_kv: bool = False,
    kv_fraction: float = 0.0,
) -> int | None:
    """The largest num_recompute_tokens whose CacheBlend cost fits ``layer_tokens`` (None: none fits)."""
    for k in range(num_tokens, -1, -1):
        cost = cacheblend_cost(num_layers, num_tokens, k, select_layer, keep_selection_kv, kv_fraction)
        if cost.layer_tokens <= layer_tokens + 1e-9:
            return k
    return None
