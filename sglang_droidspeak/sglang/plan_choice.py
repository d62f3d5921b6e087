"""Per-request plan choice on the receiver: the online policy (plan.policy) when configured.

    settings                                   plan used for a REMOTE hit
    custom_params droidspeak_plan = a plan     that plan (forced; no policy)
    no slo_ttft_ms / latency_model             the pair's plan (inline, or the profile's
                                               cheapest point within max_quality_drop)
    policy_enabled and a profile for the pair  choose_plan(frontier, queue length now,
                                               latency model, SLO): a plan, or None =
                                               prefill normally (reason logged + counted)

Imports no SGLang.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, NamedTuple, Optional

from sglang_droidspeak.plan.layer_plan import LayerPlan
from sglang_droidspeak.plan.policy import choose_plan
from sglang_droidspeak.sglang.settings import DroidSpeakSettings

STATIC = "static plan"
logger = logging.getLogger(__name__)


class PlanChoice(NamedTuple):
    plan: Optional[LayerPlan]  # None: prefill normally
    reason: str


class PlanChooser:
    def __init__(self, settings: DroidSpeakSettings, model: str, num_layers: int, metrics: Any):
        self.settings, self.model, self.num_layers, self.metrics = settings, model, num_layers, metrics
        self._profiles = settings.profile_lookup() if settings.policy_enabled else None

    def choose(self, sender: str, default: LayerPlan, forced: bool, prefix_len: int, suffix_len: int,
               queue_len: int, pipelined: Optional[bool] = None) -> PlanChoice:
        """The plan for one REMOTE hit of ``prefix_len`` tokens (``default``: the pair's plan).
        ``pipelined``: the request's own import mode (None: the latency model's)."""
        profile = None if forced or self._profiles is None else self._profiles(sender, self.model)
        if profile is None:
            return PlanChoice(default, STATIC)
        s = self.settings
        model = s.latency_model if pipelined is None else dataclasses.replace(s.latency_model, pipelined=pipelined)
        try:
            decision = choose_plan(profile.frontier, queue_len=queue_len, latency_model=model,
                                   slo_ttft_ms=s.slo_ttft_ms, max_quality_drop=s.max_quality_drop,
                                   prefix_len=prefix_len, suffix_len=max(1, suffix_len),
                                   num_layers=self.num_layers)
        except ValueError as exc:  # a profile or model that does not fit: keep the static plan
            logger.warning("droidspeak: policy failed for %s -> %s (%s); using %s", sender, self.model, exc, default)
            return PlanChoice(default, STATIC)
        self.metrics.record_decision(decision.reason)
        total = decision.predicted.total_ms if decision.predicted else float("nan")
        logger.info("droidspeak: policy %s -> %s: %s (queue %d, %d+%d tokens, predicted %.1f ms): %s",
                    sender, self.model, decision.plan, queue_len, prefix_len, suffix_len, total, decision.reason)
        return PlanChoice(decision.plan, decision.reason)
