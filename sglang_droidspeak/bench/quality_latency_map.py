"""The mapping of ``droidspeak quality-latency``: quality rows to TTFT by compute budget.

The compute budget f = ``recompute_fraction`` (share of the prefix's layer-token compute) is
the same on the 8-layer micro model and a bench of L layers (the 32-layer 8B shape of
bench-prefill; the micro model itself, L = 8, for bench-reference):

    quality row        kind         the bench plans that anchor its TTFT curve
    receiver           receiver     "off" (f = 1)
    plan:reuse-all     reuse        "reuse" (f = 0); the first point of both curves
    plan:<groups>      droidspeak   "reuse", "0:m" (f = m / L), "off"
    cacheblend:<k>     cacheblend   "reuse", "blend:R" (f = R, select layer 1)
    sender             left out     (the sender alone: no KV reuse, nothing to time)

TTFT = the median at one length of the bench's first config. A budget with no bench plan of
its kind is interpolated linearly in f between the nearest measured budgets of that kind
(``measured`` False); outside them the row is left out (LeftOut), never extrapolated.
CacheBlend is not anchored at "off": blend:1 pays the selection pass on top of full prefill.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

from sglang_droidspeak.bench import prefill_report as rep
from sglang_droidspeak.bench.prefill_outputs import first_config_samples
from sglang_droidspeak.plan.blend_plan import DEFAULT_SELECT_LAYER, is_blend, parse_blend

METRICS = ("agreement", "target_acc", "target_nll", "edit_sim")
LOWER_IS_BETTER = frozenset({"target_nll"})
DROIDSPEAK, CACHEBLEND, REUSE, RECEIVER = "droidspeak", "cacheblend", "reuse", "receiver"
EPS = 1e-9


class Anchor(NamedTuple):
    """A measured bench point: budget f, median TTFT, its plan."""
    budget: float
    ttft_ms: float
    plan: str


class Latency(NamedTuple):
    ttft_ms: float
    measured: bool
    source: str  # the plan, or "A .. B" (interpolated between the plans A and B)


class LeftOut(NamedTuple):
    system: str
    budget: float
    reason: str


@dataclass(frozen=True)
class BenchCurves:
    full_ms: float  # median TTFT of "off" at the length
    droidspeak: list[Anchor]  # by budget: reuse, 0:m, off
    cacheblend: list[Anchor]  # by budget: reuse, blend:R
    ignored: list[str]  # notes on bench plans used by neither curve


@dataclass(frozen=True)
class Point:
    system: str
    kind: str
    budget: float
    ttft_ms: float
    relative: float  # TTFT / full prefill TTFT
    measured: bool
    source: str
    quality: dict


def medians_at(bench: dict, length: int) -> dict[str, float]:
    """plan -> median TTFT at ``length`` (first config); ValueError if "off" is missing there."""
    medians = rep.median_ttft(first_config_samples(bench))
    at = {plan: ms for (n, plan), ms in medians.items() if n == length}
    if rep.FULL not in at:
        have = sorted({n for n, plan in medians if plan == rep.FULL})
        raise ValueError(f"the bench has no full prefill ('off') at length {length}; lengths with one: {have}")
    return at


def anchor_of(plan: str, num_layers: int) -> Optional[tuple[tuple[str, ...], float]]:
    """(curves it anchors, budget f) or None for a plan used by neither curve."""
    if plan == rep.FULL:
        return (DROIDSPEAK,), 1.0
    if plan == rep.REUSE:
        return (DROIDSPEAK, CACHEBLEND), 0.0
    if is_blend(plan):
        blend = parse_blend(plan, num_layers)
        return ((CACHEBLEND,), blend.ratio) if blend.select_layer == DEFAULT_SELECT_LAYER else None
    if "," in plan or not plan.startswith("0:"):
        return None
    return (DROIDSPEAK,), rep.recomputed_layers(plan, num_layers) / num_layers


def bench_curves(bench: dict, length: int) -> BenchCurves:
    at = medians_at(bench, length)
    curves: dict[str, list[Anchor]] = {DROIDSPEAK: [], CACHEBLEND: []}
    ignored = []
    for plan in sorted(at, key=lambda p: p not in (rep.FULL, rep.REUSE)):  # off, reuse win a tie
        found = anchor_of(plan, bench["num_layers"])
        if found is None:
            ignored.append(f"{plan}: neither 0:m nor blend:R@{DEFAULT_SELECT_LAYER}")
            continue
        kinds, budget = found
        for kind in kinds:
            same = [a.plan for a in curves[kind] if abs(a.budget - budget) < EPS]
            if same:
                ignored.append(f"{plan}: {kind} budget {budget:g} already measured by {same[0]}")
            else:
                curves[kind].append(Anchor(budget, at[plan], plan))
    return BenchCurves(at[rep.FULL], sorted(curves[DROIDSPEAK]), sorted(curves[CACHEBLEND]), ignored)


def latency_at(anchors: list[Anchor], budget: float) -> Optional[Latency]:
    """Measured TTFT at ``budget``, else linear in f between its neighbours, else None."""
    for anchor in anchors:
        if abs(anchor.budget - budget) < EPS:
            return Latency(anchor.ttft_ms, True, anchor.plan)
    below = [a for a in anchors if a.budget < budget]
    above = [a for a in anchors if a.budget > budget]
    if not below or not above:
        return None
    lo, hi = below[-1], above[0]
    t = (budget - lo.budget) / (hi.budget - lo.budget)
    return Latency(lo.ttft_ms + t * (hi.ttft_ms - lo.ttft_ms), False, f"{lo.plan} .. {hi.plan}")


def kind_of(system: str) -> Optional[str]:
    if system == "receiver":
        return RECEIVER
    if system == "plan:reuse-all":
        return REUSE
    if system.startswith("plan:"):
        return DROIDSPEAK
    return CACHEBLEND if system.startswith("cacheblend:") else None


def map_rows(rows: list[dict], curves: BenchCurves) -> tuple[list[Point], list[LeftOut]]:
    """Each quality row with a TTFT (Point) or the reason it has none (LeftOut)."""
    points, left_out = [], []
    for row in rows:
        system, budget, kind = row["system"], row["recompute_fraction"], kind_of(row["system"])
        if kind is None:
            left_out.append(LeftOut(system, budget, "no KV reuse (the sender alone): no bench plan times it"))
            continue
        anchors = curves.cacheblend if kind == CACHEBLEND else curves.droidspeak
        latency = latency_at(anchors, budget)
        if latency is None:
            measured = ", ".join(f"{a.budget:g} ({a.plan})" for a in anchors) or "none"
            left_out.append(LeftOut(system, budget, f"budget outside the {kind} budgets the bench measured "
                                    f"[{measured}]: not extrapolated"))
            continue
        quality = {m: row[m] for m in METRICS if m in row}
        points.append(Point(system, kind, budget, latency.ttft_ms, latency.ttft_ms / curves.full_ms,
                            latency.measured, latency.source, quality))
    return points, left_out


def curve(points: list[Point], kind: str) -> list[Point]:
    """One system's curve by budget: full reuse, then the kind's points."""
    return sorted((p for p in points if p.kind in (REUSE, kind)), key=lambda p: p.budget)
