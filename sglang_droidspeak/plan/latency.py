"""Prefill latency model: predicted TTFT of a request that reuses a prefix under a plan.

Terms (n = prefix_len, m = suffix_len, L = num_layers, k = plan.num_recomputed_layers,
r = L - k reused layers, e = len(plan.e_layers()), i.e. groups with start > 0):

    term             formula                                        unit
    compute_prefix   ms_per_layer_token * k * n                     ms
    compute_suffix   ms_per_layer_token * L * m                     ms
    compute_ms       compute_prefix + compute_suffix                ms
    transfer_bytes   (r * kv_bytes_per_layer_token
                      + e * e_bytes_per_token) * n                  bytes
    transfer_ms      transfer_bytes / (link_gbps * 1e9 / 8) * 1e3   ms  (link_gbps: gigaBITs/s)
    total_ms         pipelined:     ms_fixed + max(compute_prefix, transfer_ms) + compute_suffix
                     not pipelined: ms_fixed + compute_ms + transfer_ms

A BlendPlan (CacheBlend-style, plan/blend_plan.py; t = plan.num_tokens(n) ~ R * n tokens,
S = plan.select_layer) moves every layer's K/V and no E, and its token recompute needs
every layer's K/V first, so only the selection pass may overlap the transfer:

    term             formula                                        unit
    select_ms        ms_per_layer_token * S * n   (0 < t < n; else 0: nothing to select)
    recompute_ms     ms_per_layer_token * L * t                     ms
    compute_suffix   ms_per_layer_token * L * m                     ms
    compute_ms       select_ms + recompute_ms + compute_suffix      ms
    transfer_bytes   L * kv_bytes_per_layer_token * n               bytes
    total_ms         pipelined:     ms_fixed + max(select_ms, transfer_ms) + recompute_ms
                                    + compute_suffix
                     not pipelined: ms_fixed + compute_ms + transfer_ms

A full prefill (no reuse) costs ms_fixed + ms_per_layer_token * L * (n + m).
``fit`` calibrates the two compute constants from measured (layer_tokens, ms) samples.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from sglang_droidspeak.plan.blend_plan import BlendPlan
from sglang_droidspeak.plan.layer_plan import LayerPlan
from sglang_droidspeak.text_files import excerpt
from sglang_droidspeak.validation import unknown_keys_problem

_BYTES_PER_MS_PER_GBPS = 1e9 / 8 / 1e3  # one gigabit/s moves 125000 bytes per ms
_NUMBER_FIELDS = ("ms_per_layer_token", "ms_fixed", "kv_bytes_per_layer_token", "e_bytes_per_token", "link_gbps")


class LatencyModelError(ValueError):
    """Bad latency-model constants or samples; the message names the field."""


class LatencyEstimate(NamedTuple):
    compute_ms: float
    transfer_ms: float
    total_ms: float


def _check_number(name: str, value: Any, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LatencyModelError(f"field '{name}' must be a number, got {excerpt(value)}")
    if not math.isfinite(value):
        raise LatencyModelError(f"field '{name}' must be finite, got {excerpt(value)}")
    if positive and value <= 0:
        raise LatencyModelError(f"field '{name}' must be > 0, got {excerpt(value)}")
    if not positive and value < 0:
        raise LatencyModelError(f"field '{name}' must be >= 0, got {excerpt(value)}")


def fit_line(samples: Iterable[tuple[float, float]], min_slope: float = 0.0) -> tuple[float, float]:
    """Least-squares (slope, intercept) of ms = slope * layer_tokens + intercept.

    If the unconstrained intercept is negative the best fit with intercept >= 0 is returned
    (a line through the origin). Raises LatencyModelError for fewer than two distinct
    layer_tokens values, or a slope <= ``min_slope`` when ``min_slope`` is 0. With
    ``min_slope > 0`` such a flat fit (compute below the timing's resolution, e.g. a tiny
    model dominated by fixed costs) gives ``(min_slope, mean ms)`` instead.
    """
    pts = [(float(x), float(y)) for x, y in samples]
    if len({x for x, _ in pts}) < 2:
        raise LatencyModelError(f"field 'samples' needs at least two distinct layer_tokens, got {pts!r}")
    n = len(pts)
    xm, ym = sum(x for x, _ in pts) / n, sum(y for _, y in pts) / n
    sxx = sum((x - xm) ** 2 for x, _ in pts)
    slope = sum((x - xm) * (y - ym) for x, y in pts) / sxx
    intercept = ym - slope * xm
    if intercept < 0:
        slope, intercept = sum(x * y for x, y in pts) / sum(x * x for x, _ in pts), 0.0
    if slope <= min_slope:
        if min_slope > 0:
            return min_slope, ym
        raise LatencyModelError(f"field 'samples' give ms_per_layer_token={slope!r}; expected > 0")
    return slope, intercept


@dataclass(frozen=True)
class PrefillLatencyModel:
    """Measured constants of one receiver on one data plane (see the module table)."""

    ms_per_layer_token: float
    ms_fixed: float
    kv_bytes_per_layer_token: float
    e_bytes_per_token: float
    link_gbps: float
    pipelined: bool = True

    def __post_init__(self) -> None:
        for name in _NUMBER_FIELDS:
            _check_number(name, getattr(self, name), positive=name == "link_gbps")
        if not isinstance(self.pipelined, bool):
            raise LatencyModelError(f"field 'pipelined' must be a bool, got {excerpt(self.pipelined)}")

    def transfer_ms(self, plan: LayerPlan | BlendPlan, prefix_len: int) -> float:
        """Time to move the reused layers' KV and the needed E caches of ``prefix_len`` tokens
        (a BlendPlan: every layer's KV, no E)."""
        if isinstance(plan, BlendPlan):
            per_token = plan.num_layers * self.kv_bytes_per_layer_token
        else:
            per_token = (len(plan.reused_layers()) * self.kv_bytes_per_layer_token
                         + len(plan.e_layers()) * self.e_bytes_per_token)
        return per_token * prefix_len / (self.link_gbps * _BYTES_PER_MS_PER_GBPS)

    def predict(self, plan: LayerPlan | BlendPlan, prefix_len: int, suffix_len: int,
                num_layers: int) -> LatencyEstimate:
        """TTFT of reusing ``prefix_len`` tokens under ``plan`` and prefilling ``suffix_len`` new ones."""
        _check_request(prefix_len, suffix_len, num_layers)
        if not isinstance(plan, (LayerPlan, BlendPlan)):
            raise LatencyModelError(f"field 'plan' must be a LayerPlan or a BlendPlan, got {excerpt(str(plan))}")
        if plan.num_layers != num_layers:
            raise LatencyModelError(f"field 'num_layers' is {num_layers} but the plan has {plan.num_layers}")
        if isinstance(plan, BlendPlan):
            return self._predict_blend(plan, prefix_len, suffix_len)
        prefix = self.ms_per_layer_token * plan.num_recomputed_layers * prefix_len
        suffix = self.ms_per_layer_token * num_layers * suffix_len
        transfer = self.transfer_ms(plan, prefix_len)
        if self.pipelined:
            total = self.ms_fixed + max(prefix, transfer) + suffix
        else:
            total = self.ms_fixed + prefix + suffix + transfer
        return LatencyEstimate(prefix + suffix, transfer, total)

    def _predict_blend(self, plan: BlendPlan, prefix_len: int, suffix_len: int) -> LatencyEstimate:
        """The BlendPlan rows of the module table."""
        tokens, layers = plan.num_tokens(prefix_len), plan.num_layers
        select = self.ms_per_layer_token * plan.select_layer * prefix_len if 0 < tokens < prefix_len else 0.0
        recompute = self.ms_per_layer_token * layers * tokens
        suffix = self.ms_per_layer_token * layers * suffix_len
        transfer = self.transfer_ms(plan, prefix_len)
        if self.pipelined:
            total = self.ms_fixed + max(select, transfer) + recompute + suffix
        else:
            total = self.ms_fixed + select + recompute + suffix + transfer
        return LatencyEstimate(select + recompute + suffix, transfer, total)

    def full_prefill(self, prefix_len: int, suffix_len: int, num_layers: int) -> LatencyEstimate:
        """Estimate of a normal prefill of all ``prefix_len + suffix_len`` tokens (no transfer)."""
        _check_request(prefix_len, suffix_len, num_layers)
        compute = self.ms_per_layer_token * num_layers * (prefix_len + suffix_len)
        return LatencyEstimate(compute, 0.0, self.ms_fixed + compute)

    def full_prefill_ms(self, prefix_len: int, suffix_len: int, num_layers: int) -> float:
        return self.full_prefill(prefix_len, suffix_len, num_layers).total_ms

    def fit(self, samples: Iterable[tuple[float, float]], min_ms_per_layer_token: float = 0.0) -> PrefillLatencyModel:
        """A copy with ms_per_layer_token and ms_fixed fitted to ``(layer_tokens, measured_ms)``
        samples of normal prefills (``fit_line``); the link constants are kept."""
        slope, intercept = fit_line(samples, min_ms_per_layer_token)
        return dataclasses.replace(self, ms_per_layer_token=slope, ms_fixed=intercept)

    def to_dict(self) -> dict[str, Any]:
        return {**{name: getattr(self, name) for name in _NUMBER_FIELDS}, "pipelined": self.pipelined}

    @classmethod
    def from_dict(cls, data: Any) -> PrefillLatencyModel:
        """Parse ``to_dict`` output (e.g. from YAML); LatencyModelError names a bad, missing
        or unknown field. ``pipelined`` defaults to True."""
        if not isinstance(data, Mapping):
            raise LatencyModelError(f"expected a mapping of latency constants, got {type(data).__name__}")
        unknown = set(data) - set(_NUMBER_FIELDS) - {"pipelined"}
        if unknown:
            raise LatencyModelError(unknown_keys_problem(unknown, (*_NUMBER_FIELDS, "pipelined")))
        missing = [name for name in _NUMBER_FIELDS if name not in data]
        if missing:
            raise LatencyModelError(f"missing field '{missing[0]}'")
        return cls(**{name: data[name] for name in _NUMBER_FIELDS}, pipelined=data.get("pipelined", True))


def _check_request(prefix_len: int, suffix_len: int, num_layers: int) -> None:
    checks = (("prefix_len", prefix_len, 0), ("suffix_len", suffix_len, 0), ("num_layers", num_layers, 1))
    for name, value, low in checks:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise LatencyModelError(f"field '{name}' must be an int >= {low}, got {excerpt(value)}")
