"""Online choice of a layer plan per request (DESIGN.md section 1, "Online choice").

    step  rule                                                        on failure
    1     candidates = frontier points with quality_drop <= max       plan None, NO_PLAN
          (and quality >= accuracy_target when given)
    2     drop candidates whose predicted TTFT > full prefill's       plan None, FULL_PREFILL_FASTER
          (bandwidth aware: a slow link makes reuse pointless;        (also when only points that
          checked on the points that reuse at least one layer)        recompute every layer remain)
    3     queue_len > 0: FEWEST recomputed layers meeting the SLO      fewest-layer candidate,
          queue_len == 0: MOST recomputed layers meeting the SLO      SLO_UNREACHABLE

"Meeting the SLO" means ``latency_model.predict(...).total_ms <= slo_ttft_ms``; the queue
changes only which end of the frontier is preferred (time spent waiting is not modelled).
A chosen point that recomputes every layer is returned as plan None (normal prefill).
The ``reason`` strings are module constants: logs and metric labels rely on them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from sglang_droidspeak.plan.latency import LatencyEstimate, PrefillLatencyModel
from sglang_droidspeak.plan.layer_plan import LayerPlan
from sglang_droidspeak.plan.profile import FrontierPoint

NO_PLAN = "no plan within quality bound"
FULL_PREFILL_FASTER = "full prefill faster"
SLO_UNREACHABLE = "SLO unreachable"
QUEUED_FEWEST = "queued: fewest layers within SLO"
IDLE_MOST = "idle: most layers within SLO"
REASONS = (NO_PLAN, FULL_PREFILL_FASTER, SLO_UNREACHABLE, QUEUED_FEWEST, IDLE_MOST)


class PolicyError(ValueError):
    """Bad arguments to ``choose_plan``; the message names the argument."""


class Decision(NamedTuple):
    """plan None = normal prefill. ``predicted`` estimates what will run (the full prefill
    when plan is None); it is always set by ``choose_plan``."""

    plan: LayerPlan | None
    reason: str
    predicted: LatencyEstimate | None


def _check_args(frontier: tuple[FrontierPoint, ...], queue_len: int, slo_ttft_ms: float,
                max_quality_drop: float, num_layers: int) -> None:
    if isinstance(queue_len, bool) or not isinstance(queue_len, int) or queue_len < 0:
        raise PolicyError(f"queue_len must be an int >= 0, got {queue_len!r}")
    if not slo_ttft_ms > 0:
        raise PolicyError(f"slo_ttft_ms must be > 0, got {slo_ttft_ms!r}")
    if not max_quality_drop >= 0:
        raise PolicyError(f"max_quality_drop must be >= 0, got {max_quality_drop!r}")
    for i, point in enumerate(frontier):
        if point.plan.num_layers != num_layers:
            raise PolicyError(f"profile_frontier[{i}] has {point.plan.num_layers} layers, num_layers is {num_layers}")


def within_quality(frontier: Iterable[FrontierPoint], max_quality_drop: float,
                   accuracy_target: float | None = None,
                   full_quality: float | None = None) -> list[FrontierPoint]:
    """Points meeting the quality bound. With ``full_quality`` (e.g. a fresher measurement of
    the receiver's own quality) the drop is ``full_quality - quality``, not the stored one."""
    def drop(p: FrontierPoint) -> float:
        return p.quality_drop if full_quality is None else full_quality - p.quality
    return [p for p in frontier if drop(p) <= max_quality_drop
            and (accuracy_target is None or p.quality >= accuracy_target)]


def choose_plan(
    profile_frontier: Iterable[FrontierPoint],
    *,
    queue_len: int,
    latency_model: PrefillLatencyModel,
    slo_ttft_ms: float,
    max_quality_drop: float,
    accuracy_target: float | None = None,
    prefix_len: int,
    suffix_len: int,
    num_layers: int,
    full_quality: float | None = None,
) -> Decision:
    """Pick the plan for one request whose ``prefix_len`` tokens are cached by the sender
    (rules: module docstring). Ties in layer count keep the frontier's order."""
    frontier = tuple(profile_frontier)
    _check_args(frontier, queue_len, slo_ttft_ms, max_quality_drop, num_layers)
    full = latency_model.full_prefill(prefix_len, suffix_len, num_layers)
    candidates = within_quality(frontier, max_quality_drop, accuracy_target, full_quality)
    if not candidates:
        return Decision(None, NO_PLAN, full)
    predicted = [(p, latency_model.predict(p.plan, prefix_len, suffix_len, num_layers)) for p in candidates]
    faster = [(p, est) for p, est in predicted if est.total_ms <= full.total_ms]
    if all(p.plan.is_full_prefill for p, _ in faster):  # no reuse beats a normal prefill
        return Decision(None, FULL_PREFILL_FASTER, full)
    by_layers = sorted(faster, key=lambda pe: pe[0].num_recomputed_layers)
    in_slo = [(p, est) for p, est in by_layers if est.total_ms <= slo_ttft_ms]
    if not in_slo:
        return _decide(*by_layers[0], SLO_UNREACHABLE, full)
    if queue_len > 0:
        return _decide(*in_slo[0], QUEUED_FEWEST, full)
    most = max(p.num_recomputed_layers for p, _ in in_slo)
    point, est = next((p, e) for p, e in in_slo if p.num_recomputed_layers == most)
    return _decide(point, est, IDLE_MOST, full)


def _decide(point: FrontierPoint, est: LatencyEstimate, reason: str, full: LatencyEstimate) -> Decision:
    if point.plan.is_full_prefill:
        return Decision(None, reason, full)
    return Decision(point.plan, reason, est)
