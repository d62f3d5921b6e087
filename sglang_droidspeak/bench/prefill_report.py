"""The pure part of ``droidspeak bench-prefill``: systems, table rows, Markdown, plot.

A *system* is a per-request plan string (``sampling_params.custom_params.droidspeak_plan``):

    plan       system name        recomputed layers k     ideal speedup L/k
    "off"      full prefill       L                       1
    "reuse"    full reuse         0                       inf (None here)
    "s:e,.."   droidspeak s:e,..  sum of (e - s)          L / k
    "blend:R"  cacheblend R       R * L layer-equivalents L / k = 1 / R
               (CacheBlend-style, plan/blend_plan.py; its selection pass is not in k)

For one context length, speedup = TTFT(full prefill) / TTFT(system) and efficiency =
speedup / ideal. Where the ideal is infinite (full reuse) the efficiency is undefined:
None in the rows and JSON, "n/a" in the table (never 0, which would read as a failure).
Imports no SGLang or torch; matplotlib only inside ``plot``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from sglang_droidspeak.bench.plotting import load_pyplot, save
from sglang_droidspeak.plan.blend_plan import BLEND_PREFIX, is_blend, parse_blend
from sglang_droidspeak.plan.layer_plan import LayerPlan, PlanError

FULL = "off"
REUSE = "reuse"
CACHEBLEND_TODO = "cacheblend: not run (add blend:R to the plans)"
COLUMNS = ("length", "system", "TTFT ms", "speedup vs full prefill", "recomputed layers k",
           "ideal speedup L/k", "efficiency")


def system_name(plan: str) -> str:
    if is_blend(plan):
        return f"cacheblend {plan[len(BLEND_PREFIX):]}"
    return {FULL: "full prefill", REUSE: "full reuse"}.get(plan, f"droidspeak {plan}")


def has_blend(plans: Iterable[str]) -> bool:
    return any(is_blend(plan) for plan in plans)


def split_plans(text: str) -> list[str]:
    """A list of plans: ';' separated if there is one (plans with several groups:
    '0:2,6:8;reuse'), else ','; blanks dropped, order kept."""
    return [p.strip() for p in (text.split(";") if ";" in text else text.split(",")) if p.strip()]


def recomputed_layers(plan: str, num_layers: int) -> float:
    """k for ``plan`` ("off", "reuse", "s:e,s:e" or "blend:R[@S]": R * L layer-equivalents);
    ValueError naming the plan if it is malformed."""
    if plan == FULL:
        return num_layers
    if plan == REUSE:
        return 0
    if is_blend(plan):
        try:
            return parse_blend(plan, num_layers).layer_equivalents
        except ValueError as exc:
            raise ValueError(f"plan {plan!r}: {exc}") from None
    try:
        groups = tuple(tuple(int(x) for x in part.split(":")) for part in plan.split(","))
        if not all(len(g) == 2 for g in groups):
            raise ValueError("each group is s:e")
        return LayerPlan(num_layers, groups).num_recomputed_layers
    except (ValueError, PlanError) as exc:
        raise ValueError(f"plan {plan!r}: must be 'off', 'reuse' or 's:e,s:e' within {num_layers} layers ({exc})")


def ideal_speedup(k: float, num_layers: int) -> Optional[float]:
    """L / k; None for k == 0 (infinite)."""
    return None if k == 0 else num_layers / k


def efficiency(speedup: Optional[float], ideal: Optional[float]) -> Optional[float]:
    return None if speedup is None or ideal is None else speedup / ideal


@dataclass(frozen=True)
class TableRow:
    length: int
    system: str
    plan: str
    ttft_ms: float
    speedup: Optional[float]  # None: no full-prefill number for this length
    k: float  # recomputed layers (layer-equivalents for blend:R)
    ideal: Optional[float]  # None: infinite
    efficiency: Optional[float]


def median_ttft(samples: Iterable[dict]) -> dict[tuple[int, str], float]:
    """(length, plan) -> median of the samples' ``ttft_ms``."""
    groups: dict[tuple[int, str], list[float]] = {}
    for s in samples:
        groups.setdefault((s["length"], s["plan"]), []).append(s["ttft_ms"])
    return {key: statistics.median(values) for key, values in groups.items()}


def table_rows(medians: dict[tuple[int, str], float], plans: list[str], num_layers: int) -> list[TableRow]:
    """One row per (length, plan) present in ``medians``, lengths ascending, plans in order."""
    rows = []
    for length in sorted({length for length, _ in medians}):
        full = medians.get((length, FULL))
        for plan in plans:
            if (length, plan) not in medians:
                continue
            ttft = medians[(length, plan)]
            speedup = full / ttft if full is not None and ttft > 0 else None
            k = recomputed_layers(plan, num_layers)
            ideal = ideal_speedup(k, num_layers)
            rows.append(TableRow(length, system_name(plan), plan, ttft, speedup, k, ideal,
                                 efficiency(speedup, ideal)))
    return rows


def _fmt(value: Optional[float], none: str) -> str:
    return none if value is None else f"{value:.2f}"


def markdown_table(rows: list[TableRow]) -> str:
    """The table (COLUMNS), then the CacheBlend TODO row unless a blend:R row is present;
    ends with a newline."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = (str(r.length), r.system, f"{r.ttft_ms:.1f}", _fmt(r.speedup, "-"), f"{r.k:g}",
                 _fmt(r.ideal, "inf"), _fmt(r.efficiency, "n/a"))
        lines.append("| " + " | ".join(cells) + " |")
    if not has_blend(r.plan for r in rows):
        lines.append("| - | " + CACHEBLEND_TODO + " | - | - | - | - | - |")
    return "\n".join(lines) + "\n"


def markdown_report(result: dict, rows: list[TableRow]) -> str:
    head = [f"# bench-prefill {result.get('date', '?')}", "",
            f"- card: {result.get('card', '?')}",
            f"- attention backend (baseline and DroidSpeak alike): {result.get('attention_backend', 'triton')}",
            f"- model: {result.get('model_note', '?')}",
            f"- command: `{result.get('command', '?')}`",
            f"- TTFT: client-side wall time of the receiver's request (context + {result.get('suffix_len', '?')}"
            f"-token suffix, max_new_tokens=1), median of {result.get('repeats', '?')} runs", "", ""]
    return "\n".join(head) + markdown_table(rows)


def plot(rows: list[TableRow], path: Path) -> Optional[str]:
    """TTFT vs length (log-x), one line per system, to ``path``; the reason if it could not."""
    plt, problem = load_pyplot()
    if problem:
        return problem
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for system in dict.fromkeys(r.system for r in rows):
        mine = [r for r in rows if r.system == system]
        ax.plot([r.length for r in mine], [r.ttft_ms for r in mine], marker="o", label=system)
    ax.set_xscale("log", base=2)
    lengths = sorted({r.length for r in rows})
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.minorticks_off()
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("TTFT (ms)")
    ax.set_title("receiver TTFT vs context length")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    save(plt, fig, path, dpi=120)
    return None


def rows_to_json(rows: list[TableRow]) -> list[dict]:
    return [{**r.__dict__, "speedup": _finite(r.speedup), "efficiency": _finite(r.efficiency)} for r in rows]


def _finite(value: Optional[float]) -> Optional[float]:
    return None if value is None or not math.isfinite(value) else value
