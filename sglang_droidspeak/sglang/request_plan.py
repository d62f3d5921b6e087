"""Per-request plan choice, from ``sampling_params.custom_params["droidspeak_plan"]``.

    value                 meaning
    absent / "auto"       the pair's plan from settings or profiles (the default)
    "off"                 no cross-model reuse for this request: normal prefill
    "s:e,s:e"             exactly these recompute groups (a string: SGLang's
                          custom_params allow only flat JSON values)
    "reuse"               full reuse: recompute no layer
    [[s, e], ...]         the same as a list (in-process callers)
    "blend:R"             CacheBlend-style baseline (plan/blend_plan.py): full reuse,
                          then R of the prefix's tokens (token 0 and the largest V
                          deviations at layer 1) recomputed in every layer; R in [0, 1],
                          same budget as recomputing R * L layers (R = k / L)
    "blend:R@S"           the same, selecting by V deviation at layer S

A value that is not one of these (or a plan that does not fit the model) turns reuse
off for the request, with a warning: a bad request parameter never costs correctness.
Imports no SGLang.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Union

from sglang_droidspeak.plan.blend_plan import BlendPlan, is_blend, parse_blend
from sglang_droidspeak.plan.layer_plan import LayerPlan, PlanError

PLAN_PARAM = "droidspeak_plan"
PLAN_FORCED_ATTR = "droidspeak_plan_forced"  # set on a Req by the tree: it named its plan, no online policy
OFF = "off"
logger = logging.getLogger(__name__)
Choice = Union[None, str, LayerPlan, BlendPlan]  # None = auto, OFF, or a forced plan


def parse_plan_choice(value: Any, num_layers: Optional[int]) -> Choice:
    """``value`` as in the module table; raises ValueError naming the problem."""
    if value is None or value == "auto":
        return None
    if value == OFF:
        return OFF
    if is_blend(value):
        return _blend(value, num_layers)
    if isinstance(value, str):
        value = _groups_from_string(value)
    if not isinstance(value, list) or not all(isinstance(g, list) and len(g) == 2 for g in value):
        raise ValueError(f"{PLAN_PARAM} must be 'auto', 'off' or a list of [start, end] pairs, got {value!r}")
    if num_layers is None:
        raise ValueError(f"{PLAN_PARAM}: the model's layer count is unknown, cannot apply {value!r}")
    try:
        return LayerPlan(num_layers, tuple(tuple(g) for g in value))
    except PlanError as exc:
        raise ValueError(f"{PLAN_PARAM}: {exc}") from exc


def _blend(value: str, num_layers: Optional[int]) -> BlendPlan:
    if num_layers is None:
        raise ValueError(f"{PLAN_PARAM}: the model's layer count is unknown, cannot apply {value!r}")
    try:
        return parse_blend(value, num_layers)
    except ValueError as exc:
        raise ValueError(f"{PLAN_PARAM}: {exc}") from exc


def _groups_from_string(value: str) -> list:
    if value == "reuse":
        return []
    try:
        return [[int(a), int(b)] for a, b in (part.split(":") for part in value.split(","))]
    except ValueError:
        raise ValueError(f"{PLAN_PARAM} string must be 'auto', 'off', 'reuse', 's:e,s:e' or 'blend:R', "
                         f"got {value!r}") from None


def request_plan_choice(req: Any, num_layers: Optional[int]) -> Choice:
    """The choice a request carries; OFF (with a warning) when it is malformed."""
    params = getattr(getattr(req, "sampling_params", None), "custom_params", None) or {}
    try:
        return parse_plan_choice(params.get(PLAN_PARAM) if isinstance(params, dict) else None, num_layers)
    except ValueError as exc:
        logger.warning("droidspeak: rid=%s: %s; prefilling normally", getattr(req, "rid", "?"), exc)
        return OFF
