"""Quality at equal latency: each DroidSpeak point against CacheBlend-style at its TTFT.

CacheBlend-style's curve (full reuse, then its points by budget; quality_latency_map.curve)
is piecewise linear in relative TTFT. At a DroidSpeak point's relative TTFT x, every segment
whose TTFT span holds x gives a crossing (interpolated linearly in TTFT). No crossing: x is
outside CacheBlend's measured latency range, the point is not compared (LeftOut). Several
different crossings (TTFT not monotone in budget): per metric the value best for CacheBlend
(highest; lowest for target_nll), and the comparison is marked ambiguous, so a claim that
DroidSpeak is better never rests on the choice. difference = DroidSpeak - CacheBlend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

from sglang_droidspeak.bench.quality_latency_map import (CACHEBLEND, DROIDSPEAK, EPS, LOWER_IS_BETTER, LeftOut,
                                                          Point, curve)


@dataclass(frozen=True)
class Comparison:
    system: str
    budget: float
    relative: float  # the DroidSpeak point's TTFT / full prefill
    droidspeak: dict
    cacheblend: dict  # CacheBlend-style's quality at the same relative TTFT
    difference: dict  # droidspeak - cacheblend, per metric
    ambiguous: bool


class Verdict(NamedTuple):
    metric: str
    compared: int
    better: int  # comparisons where DroidSpeak is strictly better on ``metric``
    text: str


def crossings(points: list[Point], relative: float) -> list[dict]:
    """The quality of each segment of ``points`` (by budget) at TTFT ``relative``."""
    found = []
    for a, b in zip(points, points[1:]):
        lo, hi = sorted((a.relative, b.relative))
        if not lo - EPS <= relative <= hi + EPS:
            continue
        if hi - lo < EPS:  # a flat segment: both ends are at this TTFT
            found += [dict(a.quality), dict(b.quality)]
            continue
        t = (relative - a.relative) / (b.relative - a.relative)
        found.append({m: a.quality[m] + t * (b.quality[m] - a.quality[m]) for m in a.quality if m in b.quality})
    return found


def best_for_cacheblend(found: list[dict]) -> dict:
    metrics = set.intersection(*(set(c) for c in found))
    return {m: (min if m in LOWER_IS_BETTER else max)(c[m] for c in found) for m in sorted(metrics)}


def cacheblend_at(points: list[Point], relative: float) -> Optional[tuple[dict, bool]]:
    """(CacheBlend-style's quality at ``relative``, ambiguous) or None outside its range."""
    blend = curve(points, CACHEBLEND)
    if not any(p.kind == CACHEBLEND for p in blend):
        return None
    found = crossings(blend, relative)
    if not found:
        return None
    distinct = {tuple(sorted((m, round(v, 12)) for m, v in c.items())) for c in found}
    return best_for_cacheblend(found), len(distinct) > 1


def latency_range(points: list[Point], kind: str) -> Optional[tuple[float, float]]:
    """(min, max) relative TTFT of ``kind``'s curve, None if it has no point of its own."""
    mine = curve(points, kind)
    if not any(p.kind == kind for p in mine):
        return None
    return min(p.relative for p in mine), max(p.relative for p in mine)


def equal_latency(points: list[Point]) -> tuple[list[Comparison], list[LeftOut]]:
    """A Comparison per DroidSpeak point inside CacheBlend's range; the others, with why not."""
    span = latency_range(points, CACHEBLEND)
    comparisons, left_out = [], []
    for p in (p for p in points if p.kind == DROIDSPEAK):
        found = cacheblend_at(points, p.relative)
        if found is None:
            where = "no CacheBlend-style point" if span is None else f"outside [{span[0]:.3f}, {span[1]:.3f}]"
            left_out.append(LeftOut(p.system, p.budget, f"TTFT {p.relative:.3f} x full prefill: {where}"))
            continue
        quality, ambiguous = found
        difference = {m: p.quality[m] - quality[m] for m in quality if m in p.quality}
        comparisons.append(Comparison(p.system, p.budget, p.relative, dict(p.quality), quality, difference,
                                      ambiguous))
    return comparisons, left_out


def is_better(comparison: Comparison, metric: str) -> bool:
    diff = comparison.difference[metric]
    return diff < 0 if metric in LOWER_IS_BETTER else diff > 0


def verdict(comparisons: list[Comparison], metric: str, has_cacheblend: bool = True) -> Verdict:
    """Is DroidSpeak strictly better than CacheBlend-style on ``metric`` at every compared TTFT?"""
    usable = [c for c in comparisons if metric in c.difference]
    better = sum(is_better(c, metric) for c in usable)
    if not has_cacheblend:
        text = "cannot be judged: CacheBlend-style has no point (no usable blend:R rows in the bench)"
    elif not usable:
        text = "cannot be judged: no DroidSpeak point lies within CacheBlend-style's measured latency range"
    elif better == len(usable):
        text = f"met: strictly better at each of the {len(usable)} equal-latency point(s)"
    else:
        text = f"not met: strictly better at {better} of the {len(usable)} equal-latency point(s)"
    return Verdict(metric, len(usable), better, text)
