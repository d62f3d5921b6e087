"""The real-pair quality study's systems and tables (scripts/gpu/real_quality.py).

Systems per pair, from scored DroidSpeak plans (``study_systems``; the points are the
profile's frontier, or ``best_groups``: the best single group per chosen budget among
all the profiler scored):

    receiver, sender, plan:reuse-all     the references
    plan:<group>                         DroidSpeak at every point of <= max_budget layers
    cacheblend:<k>                       token recompute at each of those budgets k (equal compute)
    hybrid:<s>-<e>+<k - j>               the frontier's best group [s, e) of j <= hybrid_layers layers,
                                         then token recompute up to each larger budget k

Every metric gets its mean and 95% interval; at each budget the three recompute systems
are compared pairwise on the same examples (``paired``: the mean of per-example
differences and its 95% interval), so "wins" and "loses" are read off one interval.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from sglang_droidspeak.plan import LayerPlan, Profile
from sglang_droidspeak.profiler.evaluate import cacheblend_tokens, hybrid_tokens
from sglang_droidspeak.profiler.quality_study import ci95_half_width
from sglang_droidspeak.profiler.store import ResultStore
from sglang_droidspeak.profiler.systems import RECEIVER, SENDER, System, cacheblend_system, hybrid_system, plan_system
from sglang_droidspeak.reference import ReferenceModel

LOWER_IS_BETTER = ("target_nll",)
_GROUP = re.compile(r"\[(\d+), (\d+)\)")


def frontier_points(profile: Profile) -> list[tuple[LayerPlan, float]]:
    return [(p.plan, p.quality) for p in profile.frontier]


def best_groups(scores: Mapping[str, float], num_layers: int, budgets: Sequence[int]) -> list[tuple[LayerPlan, float]]:
    """Per budget k, the best-scoring single group of k layers (``scores``: str(plan) -> quality,
    as real_family.py writes them; ties go to the earliest group)."""
    groups = {}
    for text, quality in scores.items():
        match = _GROUP.fullmatch(text)
        if match:
            groups[int(match[1]), int(match[2])] = quality
    points = []
    for k in budgets:
        candidates = sorted((s, e) for s, e in groups if e - s == k)
        if candidates:
            s, e = max(candidates, key=lambda g: groups[g])
            points.append((LayerPlan.contiguous(num_layers, s, e), groups[s, e]))
    return points


def study_systems(points: Sequence[tuple[LayerPlan, float]], receiver: ReferenceModel, context_len: int,
                  max_budget: int = 0, hybrid_layers: int = 4) -> list[System]:
    """The systems above from scored plans (max_budget 0: every budget below full prefill)."""
    num_layers = receiver.num_layers
    points = [(plan, q) for plan, q in points if 0 < plan.num_recomputed_layers < num_layers
              and (not max_budget or plan.num_recomputed_layers <= max_budget)]
    budgets = sorted({plan.num_recomputed_layers for plan, _ in points})
    systems = [RECEIVER, SENDER, plan_system(LayerPlan.full_reuse(num_layers))] + [plan_system(p) for p, _ in points]
    systems += [cacheblend_system(k) for k in budgets if cacheblend_tokens(receiver, k, context_len) is not None]
    small = [(plan, q) for plan, q in points if len(plan.groups) == 1 and plan.num_recomputed_layers <= hybrid_layers
             and plan.groups[0].end < num_layers]
    if small:
        best = max(small, key=lambda p: (p[1], -p[0].num_recomputed_layers))[0]
        group, used = best.groups[0], best.num_recomputed_layers
        systems += [hybrid_system(num_layers, group.start, group.end, k - used) for k in budgets if k > used]
    return systems


def recomputed_tokens(system: System, receiver: ReferenceModel, context_len: int) -> int | None:
    """Tokens a token-recompute system recomputes per layer after its selection (else None)."""
    if system.kind == "cacheblend":
        return cacheblend_tokens(receiver, system.cacheblend_layers, context_len)
    return hybrid_tokens(receiver, system, context_len) if system.kind == "hybrid" else None


def system_rows(store: ResultStore, systems: Sequence[System], metrics: Sequence[str], receiver: ReferenceModel,
                context_len: int) -> dict[str, dict]:
    """system key -> recompute fraction, fetched layers, tokens, and every metric's mean and 95% interval."""
    rows = {}
    for system in systems:
        records = list(store.records(system.key))
        rows[system.key] = {
            "recompute_fraction": round(system.recompute_fraction(receiver.num_layers), 4),
            "fetched_layers": system.num_fetched_layers(receiver.num_layers),
            "recomputed_tokens": recomputed_tokens(system, receiver, context_len),
            "num_examples": len(records),
            "metrics": {m: {"mean": sum(v) / len(v), "ci95": ci95_half_width(v)}
                        for m in metrics if (v := [r.metrics[m] for r in records if m in r.metrics])},
        }
    return rows


def paired(store: ResultStore, a: str, b: str, metric: str) -> dict[str, float | str]:
    """Mean of per-example (a - b) on ``metric`` with its 95% interval, and a's verdict."""
    pairs = [(r.metrics[metric], store.get(b, r.example).metrics[metric]) for r in store.records(a)
             if store.get(b, r.example) is not None and metric in r.metrics]
    diffs = [x - y for x, y in pairs]
    mean, ci = (sum(diffs) / len(diffs), ci95_half_width(diffs)) if diffs else (float("nan"), 0.0)
    better = -mean if metric in LOWER_IS_BETTER else mean
    verdict = "wins" if better > ci else "loses" if better < -ci else "tie"
    return {"diff": mean, "ci95": ci, "verdict": verdict, "num_examples": len(diffs)}


def equal_budget(store: ResultStore, systems: Sequence[System], metrics: Sequence[str]) -> dict[str, dict]:
    """Per budget k: DroidSpeak, hybrid and CacheBlend compared pairwise (same examples)."""
    num_layers = next(s.plan.num_layers for s in systems if s.plan is not None)
    by_budget: dict[int, dict[str, str]] = {}
    for s in systems:
        if s.kind in ("plan", "cacheblend", "hybrid") and not (s.kind == "plan" and s.plan.is_full_reuse):
            k = round(s.recompute_fraction(num_layers) * num_layers)
            by_budget.setdefault(k, {})[s.kind] = s.key
    out = {}
    for k, keys in sorted(by_budget.items()):
        versus = [(a, b) for a, b in (("plan", "cacheblend"), ("hybrid", "cacheblend"), ("hybrid", "plan"))
                  if a in keys and b in keys]
        out[str(k)] = {"systems": keys, **{f"{keys[a]} vs {keys[b]}": {m: paired(store, keys[a], keys[b], m)
                                                                        for m in metrics} for a, b in versus}}
    return out


LABELS = {"receiver": "receiver full prefill", "sender": "sender alone", "plan:reuse-all": "full reuse"}


def markdown(pair: str, result: dict, metrics: Sequence[str]) -> str:
    """One pair's table (mean ± 95% interval) and its equal-budget verdicts."""
    stages = "".join(f", {k} {v} s" for k, v in result.get("seconds_by_stage", {}).items())
    lines = [f"### {pair} ({result['task']}, {result['split']}, {result['num_examples']} examples, "
             f"{result['seconds']} s{stages})", "",
             "| system | recompute | fetched layers | " + " | ".join(metrics) + " |",
             "|---|---:|---:|" + "---:|" * len(metrics)]
    for key, row in result["systems"].items():
        cells = " | ".join(f"{row['metrics'][m]['mean']:.3f} ± {row['metrics'][m]['ci95']:.3f}"
                           if m in row["metrics"] else "-" for m in metrics)
        lines.append(f"| {LABELS.get(key, key)} | {row['recompute_fraction']:.0%} | {row['fetched_layers']} | {cells} |")
    for k, entry in result["equal_budget"].items():
        for versus, by_metric in entry.items():
            if versus != "systems":
                said = ", ".join(f"{m} {v['diff']:+.3f} ± {v['ci95']:.3f} ({v['verdict']})" for m, v in by_metric.items())
                lines.append(f"- k={k}: {versus}: {said}")
    return "\n".join(lines) + "\n"
