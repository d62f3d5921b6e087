"""Markdown and PNG of ``droidspeak bench-throughput`` from its result dict (pure but plot).

The result holds ``points`` (PointSummary dicts), ``max_qps`` (system -> QPS or None) and
header fields (date, card, command, workload). matplotlib is imported inside ``plot`` only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from sglang_droidspeak.bench.plotting import load_pyplot, save
from sglang_droidspeak.bench.prefill_report import CACHEBLEND_TODO, has_blend, system_name

COLUMNS = ("system", "QPS", "requests", "errors", "req/s", "TTFT mean", "TTFT p50", "TTFT p90", "TTFT p99",
           "TTFT @SLO pct", "SLO met", "TBT mean", "E2E mean", "goodput req/s", "receiver hits")


def _ms(value) -> str:
    """A time in ms; None -> "-", +inf (or the JSON's "inf") -> "inf"."""
    if value is None:
        return "-"
    return "inf" if value in ("inf", float("inf")) else f"{value:.1f}"


def point_cells(p: dict) -> tuple[str, ...]:
    return (system_name(p["system"]), f"{p['qps']:g}", str(p["num_requests"]), str(p["num_errors"]),
            f"{p['request_rate']:.2f}", _ms(p["ttft_mean_ms"]), _ms(p["ttft_p50_ms"]), _ms(p["ttft_p90_ms"]),
            _ms(p["ttft_p99_ms"]), _ms(p["ttft_slo_ms"]), "yes" if p["slo_met"] else "no",
            _ms(p["tbt_mean_ms"]), _ms(p["e2e_mean_ms"]), f"{p['goodput_rps']:.2f}",
            f"{p['receiver_hits']}/{p['num_receiver_requests']}")


def markdown_table(points: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(point_cells(p)) + " |" for p in points]
    return "\n".join(lines) + "\n"


def max_qps_table(max_qps: dict[str, Optional[float]], slo: str) -> str:
    lines = [f"| system | highest QPS meeting {slo} |", "|---|---|"]
    lines += [f"| {system_name(s)} | {'none' if q is None else f'{q:g}'} |" for s, q in max_qps.items()]
    if not has_blend(max_qps):
        lines.append(f"| {CACHEBLEND_TODO} | not run |")
    return "\n".join(lines) + "\n"


def sessions_note(workload: dict) -> str:
    """'12 sessions', or 'max(12, QPS x 30 s) sessions' when --arrival-s was set."""
    n, arrival_s = workload.get("num_sessions", "?"), workload.get("arrival_s") or 0
    return f"max({n}, QPS x {arrival_s:g} s) sessions" if arrival_s else f"{n} sessions"


def markdown_report(result: dict) -> str:
    w = result.get("workload", {})
    slo = f"p{result.get('slo_percentile', '?'):g} TTFT <= {result.get('slo_ttft_ms', '?'):g} ms"
    head = [f"# bench-throughput {result.get('date', '?')}", "",
            f"- card: {result.get('card', '?')}",
            f"- servers: {result.get('servers_note', '?')}",
            f"- command: `{result.get('command', '?')}`",
            f"- workload: mix `{w.get('mix', '?')}`, context {w.get('min_context_len', '?')}-"
            f"{w.get('max_context_len', '?')} tokens (log-uniform), suffix {w.get('min_suffix_len', '?')}-"
            f"{w.get('max_suffix_len', '?')}, {w.get('max_new_tokens', '?')} new tokens (ignore_eos), "
            f"{sessions_note(w)} per point, Poisson session arrivals at QPS",
            f"- SLO: {slo}; times in ms; TTFT/E2E client-side; failures count as infinite TTFT at the SLO "
            "percentile; receiver hits: later agents whose cached_tokens cover the shared context", "", ""]
    report = "\n".join(head) + max_qps_table(result.get("max_qps", {}), slo) + "\n" + markdown_table(result["points"])
    if result.get("warnings"):
        report += "\nWarnings:\n\n" + "".join(f"- {x}\n" for x in result["warnings"])
    return report


def plot(points: list[dict], path: Path, slo_ttft_ms: float, slo_percentile: float) -> Optional[str]:
    """Three panels vs QPS, one line per system: TTFT at the SLO percentile (with the SLO
    line), mean TBT, mean E2E. Returns why not, or None when written."""
    plt, problem = load_pyplot()
    if problem:
        return problem
    panels = (("ttft_slo_ms", f"p{slo_percentile:g} TTFT (ms)"), ("tbt_mean_ms", "mean TBT (ms)"),
              ("e2e_mean_ms", "mean E2E latency (ms)"))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, (key, label) in zip(axes, panels):
        for system in dict.fromkeys(p["system"] for p in points):
            mine = sorted((p for p in points if p["system"] == system and p[key] not in (None, float("inf"))),
                          key=lambda p: p["qps"])
            ax.plot([p["qps"] for p in mine], [p[key] for p in mine], marker="o", label=system_name(system))
        if key == "ttft_slo_ms":
            ax.axhline(slo_ttft_ms, color="gray", linestyle="--", label="SLO")
        ax.set_xlabel("QPS (sessions/s)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle("multi-agent throughput: latency vs offered load")
    save(plt, fig, path, dpi=110)
    return None
