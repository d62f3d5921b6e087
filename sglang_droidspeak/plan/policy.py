"""Online choice of a plan per request (DESIGN.md section 1, "Online choice"), among systems.

A profile's points come from several systems (plan.system_points): DroidSpeak groups
(LayerPlan), CacheBlend-style token recompute (BlendPlan) and hybrids (not served yet).

    step  rule                                                        on failure
    0     points of systems the engine does not serve are skipped    (SKIPPED names why:
          (``servable``)                                              HYBRID_NOT_SERVED)
    1     candidates = points with drop <= max_quality_drop           plan None, NO_PLAN
          (and quality >= accuracy_target when given)
    2     drop candidates whose predicted TTFT > full prefill's       plan None, FULL_PREFILL_FASTER
          (bandwidth aware: a slow link makes reuse pointless;        (also when only points that
          checked on the points that reuse something)                 recompute everything remain)
    3     queue_len > 0: CHEAPEST predicted compute meeting the SLO   cheapest candidate,
          queue_len == 0: BEST quality (smallest drop) meeting it     SLO_UNREACHABLE

Ties, in order (the first rule that separates two candidates decides):

    queued (and SLO_UNREACHABLE)       idle
    1  less predicted compute_ms       1  smaller drop
    2  smaller drop                    2  DroidSpeak before CacheBlend
    3  DroidSpeak before CacheBlend    3  more predicted compute_ms
    4  profile order                   4  profile order

"Meeting the SLO" means ``latency_model.predict(...).total_ms <= slo_ttft_ms``. Under a
queue the GPU is what other requests wait for, so the queued rule minimises predicted GPU
time (``compute_ms``; for DroidSpeak plans that is "fewest recomputed layers"). Idle, the
best quality that meets the SLO is served (on a DroidSpeak Pareto frontier: the most
layers). So a CacheBlend point with a smaller drop than DroidSpeak's within the SLO wins
when idle; under a queue it wins when it is the cheapest point within the quality bound.
A chosen point that recomputes everything is returned as plan None (normal prefill).
The ``reason`` strings are module constants: logs and metric labels rely on them (their
wording predates other systems: "layers" is the DroidSpeak reading of each rule).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from sglang_droidspeak.plan.blend_plan import BlendPlan
from sglang_droidspeak.plan.latency import LatencyEstimate, PrefillLatencyModel
from sglang_droidspeak.plan.layer_plan import LayerPlan
from sglang_droidspeak.plan.profile import FrontierPoint
from sglang_droidspeak.plan.system_points import DROIDSPEAK, HYBRID, SERVABLE, recomputes_everything

NO_PLAN = "no plan within quality bound"
FULL_PREFILL_FASTER = "full prefill faster"
SLO_UNREACHABLE = "SLO unreachable"
QUEUED_FEWEST = "queued: fewest layers within SLO"
IDLE_MOST = "idle: most layers within SLO"
REASONS = (NO_PLAN, FULL_PREFILL_FASTER, SLO_UNREACHABLE, QUEUED_FEWEST, IDLE_MOST)
HYBRID_NOT_SERVED = "hybrid: the engine does not serve it yet"
SKIPPED = {HYBRID: HYBRID_NOT_SERVED}  # system -> why its points are never chosen


class PolicyError(ValueError):
    """Bad arguments to ``choose_plan``; the message names the argument."""


class Decision(NamedTuple):
    """plan None = normal prefill. ``predicted`` estimates what will run (the full prefill
    when plan is None); it is always set by ``choose_plan``."""

    plan: LayerPlan | BlendPlan | None
    reason: str
    predicted: LatencyEstimate | None


class Servable(NamedTuple):
    points: tuple[FrontierPoint, ...]
    skipped: tuple[tuple[FrontierPoint, str], ...]  # (point, SKIPPED reason)


def servable(points: Iterable[FrontierPoint]) -> Servable:
    """Split ``points`` into those the engine serves and the rest, each with its reason."""
    points = tuple(points)
    return Servable(tuple(p for p in points if p.system in SERVABLE),
                    tuple((p, SKIPPED[p.system]) for p in points if p.system in SKIPPED))


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


def _drop(point: FrontierPoint, full_quality: float | None) -> float:
    return point.quality_drop if full_quality is None else full_quality - point.quality


def within_quality(frontier: Iterable[FrontierPoint], max_quality_drop: float,
                   accuracy_target: float | None = None,
                   full_quality: float | None = None) -> list[FrontierPoint]:
    """Points meeting the quality bound. With ``full_quality`` (e.g. a fresher measurement of
    the receiver's own quality) the drop is ``full_quality - quality``, not the stored one."""
    return [p for p in frontier if _drop(p, full_quality) <= max_quality_drop
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
    """Pick the plan for one request whose ``prefix_len`` tokens are cached by the sender,
    among every servable point of ``profile_frontier`` (e.g. ``Profile.points()``; rules and
    ties: module docstring)."""
    frontier = servable(profile_frontier).points
    _check_args(frontier, queue_len, slo_ttft_ms, max_quality_drop, num_layers)
    full = latency_model.full_prefill(prefix_len, suffix_len, num_layers)
    candidates = within_quality(frontier, max_quality_drop, accuracy_target, full_quality)
    if not candidates:
        return Decision(None, NO_PLAN, full)
    predicted = [(p, latency_model.predict(p.plan, prefix_len, suffix_len, num_layers)) for p in candidates]
    faster = [(i, p, est) for i, (p, est) in enumerate(predicted) if est.total_ms <= full.total_ms]
    if all(recomputes_everything(p.plan) for _, p, _ in faster):  # no reuse beats a normal prefill
        return Decision(None, FULL_PREFILL_FASTER, full)

    def cheapest(item):
        i, p, est = item
        return (est.compute_ms, _drop(p, full_quality), p.system != DROIDSPEAK, i)

    def best(item):
        i, p, est = item
        return (_drop(p, full_quality), p.system != DROIDSPEAK, -est.compute_ms, i)

    in_slo = [item for item in faster if item[2].total_ms <= slo_ttft_ms]
    if not in_slo:
        return _decide(min(faster, key=cheapest), SLO_UNREACHABLE, full)
    if queue_len > 0:
        return _decide(min(in_slo, key=cheapest), QUEUED_FEWEST, full)
    return _decide(min(in_slo, key=best), IDLE_MOST, full)


def _decide(item: tuple[int, FrontierPoint, LatencyEstimate], reason: str, full: LatencyEstimate) -> Decision:
    _, point, est = item
    if recomputes_everything(point.plan):
        return Decision(None, reason, full)
    return Decision(point.plan, reason, est)
