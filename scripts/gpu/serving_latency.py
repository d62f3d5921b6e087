"""Equal compute and equal measured latency on real servers (scripts/gpu/real_serving.py).

Plan labels that name a budget rather than a plan, so one command measures the systems the
quality study compares (docs/QUALITY-REAL.md) at the same budgets:

    label           droidspeak_plan sent                      from
    group:K         the profile's frontier group of exactly   profiles/<sender>__<receiver>.yaml
                    K recomputed layers (none: skipped)
    cacheblend:K    blend:(K/L)@1, the plan the plugin        plan.system_points.cacheblend_plan
                    serves for a profile's cacheblend:K point

Equal measured latency, from one run's summary (``equal_latency``): for each DroidSpeak row
(a plan with layer groups) the CacheBlend-style row (``blend:``) of highest edit similarity
to the receiver's own answer among those whose TTFT p50 is at most the DroidSpeak row's,
and the reverse. A difference is a win or a loss only when it is larger than its unpaired
95% interval (sqrt(ci_a^2 + ci_b^2)); otherwise a tie. Both systems are measured on the same
prompts, servers and card, so their TTFTs compare; their qualities are the served ones
(each row's ``edit_sim`` against ``own``), not the offline study's.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from sglang_droidspeak.plan.system_points import cacheblend_plan


def budget_plan(label: str, profile: Any, num_layers: int, wire) -> Optional[dict]:
    """{label, value, note} for ``group:K`` / ``cacheblend:K`` (None: not such a label);
    ``wire`` turns a LayerPlan into its droidspeak_plan text (serving_plans.wire)."""
    kind, _, k_text = label.partition(":")
    if kind not in ("group", "cacheblend"):
        return None
    if not k_text.isdigit() or not 1 <= int(k_text) <= num_layers:
        raise ValueError(f"--plans: {label!r}: K must be a whole number of layers in 1..{num_layers}")
    k = int(k_text)
    if kind == "cacheblend":
        plan = cacheblend_plan(num_layers, k)
        return {"label": label, "value": str(plan), "note": f"the plugin's plan for a cacheblend:{k} point"}
    points = [p for p in profile.frontier if p.num_recomputed_layers == k] if profile else []
    if not points:
        why = "no profile" if profile is None else f"no frontier group of exactly {k} layers"
        return {"label": label, "value": None, "note": why}
    point = points[0]
    return {"label": label, "value": wire(point.plan),
            "note": f"profile's frontier at {k} layers: quality {point.quality:.4f}"}


def _is_blend(row: dict) -> bool:
    return str(row.get("value") or "").startswith("blend:")


def _is_group(row: dict) -> bool:
    value = str(row.get("value") or "")
    return ":" in value and not value.startswith("blend:")


def _point(label: str, row: dict) -> Optional[tuple[str, float, float, float]]:
    """(label, TTFT p50 ms, edit_sim mean, its 95% half-width), or None when unmeasured."""
    ttft, sim = (row.get("ttft_ms") or {}).get("p50"), row.get("edit_sim") or {}
    if ttft is None or sim.get("mean") is None:
        return None
    return label, float(ttft), float(sim["mean"]), float(sim.get("ci95") or 0.0)


def _verdict(diff: float, half_width: float) -> str:
    return "tie" if abs(diff) <= half_width else ("wins" if diff > 0 else "loses")


def _match(point: tuple, others: list[tuple]) -> Optional[dict]:
    label, ttft, sim, ci = point
    fits = [o for o in others if o[1] <= ttft]
    if not fits:
        return None
    best = max(fits, key=lambda o: (o[2], -o[1]))
    diff, half = sim - best[2], math.sqrt(ci ** 2 + best[3] ** 2)
    return {"system": label, "ttft_p50_ms": ttft, "edit_sim": sim, "vs": best[0], "vs_ttft_p50_ms": best[1],
            "vs_edit_sim": best[2], "diff": round(diff, 6), "ci95": round(half, 6), "verdict": _verdict(diff, half)}


def equal_latency(receiver_summary: dict) -> list[dict]:
    """Each DroidSpeak row against the best CacheBlend-style row no slower than it, then each
    CacheBlend-style row against the best DroidSpeak row no slower than it."""
    rows = [(label, row) for label, row in receiver_summary.items()]
    groups = [p for p in (_point(lb, r) for lb, r in rows if _is_group(r)) if p]
    blends = [p for p in (_point(lb, r) for lb, r in rows if _is_blend(r)) if p]
    out = [m for m in (_match(g, blends) for g in groups) if m]
    return out + [m for m in (_match(b, groups) for b in blends) if m]


def latency_table(summary: dict) -> str:
    """One line per comparison, per receiver."""
    lines = ["equal measured latency (TTFT p50; edit_sim to own, 95% unpaired interval):"]
    for receiver, per_plan in summary.items():
        for m in equal_latency(per_plan):
            lines.append(f"  {receiver:<18} {m['system']:<16} {m['ttft_p50_ms']:8.1f} ms {m['edit_sim']:.3f}  vs "
                         f"{m['vs']:<16} {m['vs_ttft_p50_ms']:8.1f} ms {m['vs_edit_sim']:.3f}  "
                         f"{m['diff']:+.3f} +- {m['ci95']:.3f} {m['verdict']}")
    return "\n".join(lines) if len(lines) > 1 else lines[0] + " (no DroidSpeak and CacheBlend-style rows to pair)"
