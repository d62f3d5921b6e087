"""Per-request plan choice on the receiver: the online policy (plan.policy) when configured.

    settings                                   plan used for a REMOTE hit
    custom_params droidspeak_plan = a plan     that plan (forced; no policy)
    no slo_ttft_ms / latency_model             the pair's plan (inline, or the profile's
                                               cheapest point within max_quality_drop)
    policy_enabled and a profile for the pair  choose_plan(every servable point of the
                                               profile, queue length now, latency model,
                                               SLO): a LayerPlan, a BlendPlan (the profile's
                                               CacheBlend points) or None = prefill normally
                                               (reason logged, counted by reason and system)

A BlendPlan takes the same import path as a request's "blend:R" (runtime_imports: the
fetch of every layer's K/V, then blend_import). Hybrid points are skipped (plan.policy's
SKIPPED reason, logged once per sender). Imports no SGLang.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, NamedTuple, Optional, Union

from sglang_droidspeak.plan.blend_plan import BlendPlan
from sglang_droidspeak.plan.layer_plan import LayerPlan
from sglang_droidspeak.plan.policy import choose_plan, servable
from sglang_droidspeak.plan.system_points import system_of
from sglang_droidspeak.sglang.quality_guard import GUARD_REASON
from sglang_droidspeak.sglang.settings import DroidSpeakSettings

STATIC = "static plan"
logger = logging.getLogger(__name__)


class PlanChoice(NamedTuple):
    plan: Optional[Union[LayerPlan, BlendPlan]]  # None: prefill normally
    reason: str

    @property
    def system(self) -> str:
        """plan.system_points: droidspeak, cacheblend or full_prefill."""
        return system_of(self.plan)


class PlanChooser:
    guard: Any = None  # the live QualityGuard (quality_guard.py), set by the runtime; None: off

    def __init__(self, settings: DroidSpeakSettings, model: str, num_layers: int, metrics: Any):
        self.settings, self.model, self.num_layers, self.metrics = settings, model, num_layers, metrics
        self._profiles = settings.profile_lookup() if settings.policy_enabled else None
        self._skips_logged: set[str] = set()

    def choose(self, sender: str, default: Union[LayerPlan, BlendPlan], forced: bool, prefix_len: int, suffix_len: int,
               queue_len: int, pipelined: Optional[bool] = None) -> PlanChoice:
        """The plan for one REMOTE hit of ``prefix_len`` tokens (``default``: the pair's plan).
        ``pipelined``: the request's own import mode (None: the latency model's)."""
        if not forced and self.guard is not None and self.guard.blocks(sender):  # tripped: prefill normally
            return PlanChoice(None, GUARD_REASON)
        profile = None if forced or self._profiles is None else self._profiles(sender, self.model)
        if profile is None:
            return PlanChoice(default, STATIC)
        s = self.settings
        model = s.latency_model if pipelined is None else dataclasses.replace(s.latency_model, pipelined=pipelined)
        try:
            decision = choose_plan(self._points(sender, profile), queue_len=queue_len, latency_model=model,
                                   slo_ttft_ms=s.slo_ttft_ms, max_quality_drop=s.max_quality_drop,
                                   prefix_len=prefix_len, suffix_len=max(1, suffix_len),
                                   num_layers=self.num_layers)
        except ValueError as exc:  # a profile or model that does not fit: keep the static plan
            logger.warning("droidspeak: policy failed for %s -> %s (%s); using %s", sender, self.model, exc, default)
            return PlanChoice(default, STATIC)
        self.metrics.record_decision(decision.reason)
        self.metrics.record_system(system_of(decision.plan))
        total = decision.predicted.total_ms if decision.predicted else float("nan")
        logger.info("droidspeak: policy %s -> %s: %s (queue %d, %d+%d tokens, predicted %.1f ms): %s",
                    sender, self.model, decision.plan, queue_len, prefix_len, suffix_len, total, decision.reason)
        return PlanChoice(decision.plan, decision.reason)

    def _points(self, sender: str, profile: Any) -> tuple:
        """The profile's servable points; the skipped ones are logged once per sender."""
        points, skipped = servable(profile.points())
        if skipped and sender not in self._skips_logged:
            self._skips_logged.add(sender)
            logger.info("droidspeak: %s -> %s: %d profile points skipped: %s", sender, self.model, len(skipped),
                        "; ".join(sorted({f"{p.plan}: {why}" for p, why in skipped})))
        return points
