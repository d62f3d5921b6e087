"""The numbers of ``droidspeak bench-throughput``: per (system, QPS) point and per system (pure).

    percentile(values, p)      linear interpolation between order statistics (numpy's
                               default); +inf values (failed requests) sort last
    summarize(records, ...)    one PointSummary: TTFT mean/p50/p90/p99 and the SLO
                               percentile, mean TBT, mean/p90 E2E, goodput, errors, hits
    max_qps_meeting_slo(...)   per system, the highest swept QPS such that it and every
                               lower swept QPS meet the SLO (None: not even the lowest)

TTFT statistics other than the SLO percentile are over successful requests; the SLO
percentile counts a failed request as an infinite TTFT, so failures cannot pass an SLO.
A point meets the SLO when that percentile is <= ``slo_ttft_ms``. Goodput = successful
requests with TTFT <= SLO per wall-clock second of the run. A receiver request (step > 0)
*hits* when its ``cached_tokens`` cover the shared context (>= context_len - 1).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from sglang_droidspeak.bench.load_driver import RequestRecord


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100) of ``values``; ValueError if empty or p is out of range."""
    if not values or not 0 <= p <= 100:
        raise ValueError(f"percentile: need values and 0 <= p <= 100 (got {len(values)} values, p={p})")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low, frac = int(math.floor(rank)), rank - math.floor(rank)
    if frac == 0 or ordered[low] == ordered[low + 1]:
        return ordered[low]
    if math.isinf(ordered[low + 1]):
        return math.inf
    return ordered[low] + (ordered[low + 1] - ordered[low]) * frac


def _mean(values: Sequence[float]) -> Optional[float]:
    return statistics.fmean(values) if values else None


def _pct(values: Sequence[float], p: float) -> Optional[float]:
    return percentile(values, p) if values else None


@dataclass(frozen=True)
class PointSummary:
    system: str  # the plan string sent with every request
    qps: float  # offered session arrival rate
    num_sessions: int
    num_requests: int
    num_errors: int
    wall_s: float
    request_rate: float  # requests sent per wall second
    ttft_mean_ms: Optional[float]
    ttft_p50_ms: Optional[float]
    ttft_p90_ms: Optional[float]
    ttft_p99_ms: Optional[float]
    slo_percentile: float
    ttft_slo_ms: float  # TTFT at slo_percentile, failures as +inf
    slo_ttft_ms: float
    slo_met: bool
    tbt_mean_ms: Optional[float]
    e2e_mean_ms: Optional[float]
    e2e_p90_ms: Optional[float]
    goodput_rps: float
    receiver_hits: int
    num_receiver_requests: int


def summarize(records: Sequence[RequestRecord], system: str, qps: float, num_sessions: int, wall_s: float,
              slo_ttft_ms: float, slo_percentile: float) -> PointSummary:
    """One point; ValueError if ``records`` is empty."""
    if not records:
        raise ValueError(f"no requests for system {system!r} at qps {qps}")
    ok = [r for r in records if r.ok]
    ttfts = [r.ttft_ms for r in ok]
    ttft_slo = percentile([math.inf if not r.ok else r.ttft_ms for r in records], slo_percentile)
    gaps = [g for r in ok for g in r.itl_ms]
    e2es = [r.e2e_ms for r in ok]
    receivers = [r for r in records if r.step > 0]
    hits = sum(1 for r in receivers if r.cached_tokens is not None and r.cached_tokens >= r.context_len - 1)
    good = sum(1 for t in ttfts if t <= slo_ttft_ms)
    return PointSummary(
        system, qps, num_sessions, len(records), len(records) - len(ok), wall_s, len(records) / wall_s,
        _mean(ttfts), _pct(ttfts, 50), _pct(ttfts, 90), _pct(ttfts, 99), slo_percentile, ttft_slo, slo_ttft_ms,
        ttft_slo <= slo_ttft_ms, _mean(gaps), _mean(e2es), _pct(e2es, 90), good / wall_s, hits, len(receivers))


def max_qps_meeting_slo(points: Iterable[PointSummary], system: str) -> Optional[float]:
    """The highest QPS of ``system`` below which (inclusive) every swept point meets the SLO."""
    best = None
    for point in sorted((p for p in points if p.system == system), key=lambda p: p.qps):
        if not point.slo_met:
            break
        best = point.qps
    return best


def hit_warnings(points: Iterable[PointSummary]) -> list[str]:
    """Points whose receiver hits contradict their system: 'off' must not hit the shared
    context, any other system should (a miss fell back to prefill: not that system's number)."""
    warnings = []
    for p in points:
        if p.system == "off" and p.receiver_hits:
            warnings.append(f"{p.system} @ {p.qps:g}: {p.receiver_hits} receiver requests reused the context")
        elif p.system != "off" and p.receiver_hits < p.num_receiver_requests:
            warnings.append(f"{p.system} @ {p.qps:g}: {p.num_receiver_requests - p.receiver_hits} of "
                            f"{p.num_receiver_requests} receiver requests fell back to prefill")
    return warnings
