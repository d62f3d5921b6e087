"""The outputs of ``droidspeak quality-latency``: OUT.md, OUT.png (matplotlib optional), OUT.json.

A Study holds one run: both inputs' provenance, the mapped points, what was left out and
why, the equal-latency comparisons and the verdicts. The Markdown header says where each
half comes from (quality: micro family, CPU reference engine; latency: whatever the bench's
own fields say: a bench-prefill GPU run, e.g. Llama-3.1-8B-shaped, joined by compute budget
only, or a ``droidspeak bench-reference`` run, ``engine: reference``, which timed the same
code paths, self-consistent when its pair's weights are the quality study's).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple, Optional

from sglang_droidspeak.bench.plotting import load_pyplot, save
from sglang_droidspeak.bench.quality_latency_compare import Comparison, Verdict
from sglang_droidspeak.bench.quality_latency_map import (CACHEBLEND, DROIDSPEAK, METRICS, RECEIVER, LeftOut, Point,
                                                          curve)

PLOT_METRICS = ("agreement", "target_nll")
CURVES = ((DROIDSPEAK, "DroidSpeak", "tab:blue"), (CACHEBLEND, "CacheBlend-style", "tab:orange"))
INTERPOLATION_NOTE = ("Budget = recompute fraction f. An interpolated TTFT is linear in f between the two "
                      "nearest measured plans of that system: an assumption, not a measurement (toward \"off\", "
                      "f = 1, it joins a plan that transfers K/V to one that transfers none).")
NO_CACHEBLEND = "CacheBlend-style: no point (the bench has no usable blend:R rows at this length)"


@dataclass(frozen=True)
class Study:
    command: str
    quality_file: str
    bench_file: str
    quality_meta: dict  # the quality JSON without its rows
    bench_meta: dict  # date, card, command, model_note, num_layers, repeats, configs
    length: int
    full_ms: float
    points: list[Point]
    left_out: list[LeftOut]  # quality rows without a TTFT
    ignored_plans: list[str]  # bench plans on neither curve
    comparisons: list[Comparison]
    not_compared: list[LeftOut]  # DroidSpeak points outside CacheBlend's range
    verdicts: list[Verdict]


class LatencySource(NamedTuple):
    sentence: str  # ends the header's bold sentence "Quality comes from ...; latency from ..."
    label: str  # where the TTFTs come from, for the plot


FIRST_CONFIG = "the bench's first config"  # a bench-prefill TTFT; bench-reference says its own (ttft_note)
JOINED_BY_BUDGET = "They are joined only by compute budget (recompute fraction): no system here was both scored and timed."


def latency_source(study: Study) -> LatencySource:
    """What the bench is, from its own fields (``engine``, ``model_note``, pair weights)."""
    b, cfg, n = study.bench_meta, study.quality_meta.get("config", {}), study.length
    if b.get("engine") != "reference":
        note = b.get("model_note", "")
        label = (note.split(" shapes")[0] if " shapes" in note else "SGLang") + "-shaped GPU bench"
        return LatencySource(f"latency from the {label} ({b.get('num_layers', '?')} layers) at {n} tokens.** "
                             + JOINED_BY_BUDGET, label)
    pair = f"{b.get('receiver', '?')} reusing {b.get('sender', '?')}'s KV"
    label = f"{b.get('receiver', '?')}, CPU reference engine"
    if any(b.get(f"{r}_weights") != cfg.get(f"{r}_weights") for r in ("sender", "receiver")):
        return LatencySource(f"latency from {pair} on the CPU reference engine at {n} tokens, weights "
                             f"{b.get('receiver_weights')} / {b.get('sender_weights')}, not the scored pair's "
                             f"{cfg.get('receiver_weights')} / {cfg.get('sender_weights')}.** " + JOINED_BY_BUDGET,
                             label)
    scored = "" if cfg.get("context_len") in (None, n) else f" (the quality study scored {cfg['context_len']})"
    return LatencySource(
        f"latency from the same pair ({pair}, same weights, {b.get('num_layers', '?')} layers) timed on the CPU "
        f"reference engine at {n} tokens{scored}.** Each system here was both scored and timed by the same code "
        "(profiler.evaluate.system_prefix_kv): plan:[0, k) as 0:k, cacheblend:k as blend:k/L, on seeded token ids "
        "of its own (a dense model's cost does not depend on them).", label)


def header(study: Study) -> list[str]:
    q, b, cfg = study.quality_meta, study.bench_meta, study.quality_meta.get("config", {})
    return [
        f"# Quality against prefill latency: {cfg.get('sender', '?')} -> {cfg.get('receiver', '?')}, "
        f"{study.length} tokens", "",
        "**Quality comes from the micro family (8 layers) on the CPU reference engine; "
        + latency_source(study).sentence, "",
        f"- quality: {q.get('date', '?')}, {q.get('machine', '?')}, `{q.get('command', '?')}` "
        f"({q.get('num_examples', '?')} examples, {cfg.get('dataset', '?')} / {cfg.get('split', '?')}); "
        f"`{study.quality_file}`",
        f"- latency: {b.get('date', '?')}, {b.get('card', '?')}, `{b.get('command', '?')}`; "
        f"{b.get('model_note', '?')}; `{study.bench_file}`",
        f"- TTFT: median of {b.get('repeats', '?')} runs at {study.length} tokens "
        f"({b.get('ttft_note', FIRST_CONFIG)}); "
        f"full prefill {study.full_ms:.1f} ms",
        f"- made by: `{study.command}`", ""]


def _cells(quality: dict) -> list[str]:
    return [f"{quality[m]:.3f}" if m in quality else "-" for m in METRICS]


def points_table(points: list[Point]) -> list[str]:
    lines = ["| system | budget | TTFT ms | TTFT / full prefill | TTFT is | " + " | ".join(METRICS) + " |",
             "|---|---:|---:|---:|---|" + "---:|" * len(METRICS)]
    for p in points:
        how = f"measured ({p.source})" if p.measured else f"interpolated ({p.source})"
        lines.append(f"| {p.system} | {p.budget:.3f} | {p.ttft_ms:.1f} | {p.relative:.3f} | {how} | "
                     + " | ".join(_cells(p.quality)) + " |")
    return lines


def comparison_table(comparisons: list[Comparison]) -> list[str]:
    lines = ["| DroidSpeak system | budget | TTFT / full prefill | "
             + " | ".join(f"{m}: DroidSpeak | CacheBlend | difference" for m in PLOT_METRICS) + " | note |",
             "|---|---:|---:|" + "---:|" * 3 * len(PLOT_METRICS) + "---|"]
    for c in comparisons:
        cells = [f"{c.droidspeak[m]:.3f} | {c.cacheblend[m]:.3f} | {c.difference[m]:+.3f}" for m in PLOT_METRICS]
        note = "ambiguous: CacheBlend's best crossing" if c.ambiguous else ""
        lines.append(f"| {c.system} | {c.budget:.3f} | {c.relative:.3f} | " + " | ".join(cells) + f" | {note} |")
    return lines


def _left(items: list[LeftOut]) -> list[str]:
    return [f"- {x.system} (budget {x.budget:.3f}): {x.reason}" for x in items] or ["- none"]


def markdown(study: Study, png_name: Optional[str]) -> str:
    has_blend = any(p.kind == CACHEBLEND for p in study.points)
    lines = header(study) + ["## Verdict: DroidSpeak vs CacheBlend-style at equal latency (target: strictly better)",
                             ""] + [f"- {v.metric}: {v.text}" for v in study.verdicts]
    lines += ([] if has_blend else ["", f"**{NO_CACHEBLEND}.**"])
    lines += ["", "## Systems", "", INTERPOLATION_NOTE, ""] + points_table(study.points)
    lines += ["", "Quality rows left out (no TTFT):", ""] + _left(study.left_out)
    lines += ["", "Bench plans on neither curve:", ""] + ([f"- {x}" for x in study.ignored_plans] or ["- none"])
    lines += ["", "## At equal latency", "",
              "CacheBlend-style quality interpolated linearly in TTFT along its curve at each DroidSpeak "
              "point's TTFT; difference = DroidSpeak - CacheBlend (higher agreement, lower target_nll is better).",
              ""] + (comparison_table(study.comparisons) if study.comparisons else ["No point compared."])
    lines += ["", "DroidSpeak points not compared:", ""] + _left(study.not_compared)
    lines += ["", f"![quality against latency]({png_name})"] if png_name else []
    return "\n".join(lines) + "\n"


def _draw_panel(ax, points: list[Point], metric: str, source: str) -> None:
    for kind, label, color in CURVES:
        mine = [p for p in curve(points, kind) if metric in p.quality]
        if not any(p.kind == kind for p in mine):
            ax.text(0.02, 0.02, NO_CACHEBLEND if kind == CACHEBLEND else f"{label}: no point",
                    transform=ax.transAxes, fontsize="x-small", wrap=True)
            continue
        ax.plot([p.relative for p in mine], [p.quality[metric] for p in mine], color=color, label=label)
        for measured in (True, False):
            some = [p for p in mine if p.measured == measured]
            ax.scatter([p.relative for p in some], [p.quality[metric] for p in some], color=color, zorder=3,
                       facecolors=color if measured else "none")
    for p in (p for p in points if p.kind == RECEIVER and metric in p.quality):
        ax.scatter([p.relative], [p.quality[metric]], marker="*", s=120, color="black", label="receiver full prefill")
    ax.scatter([], [], color="gray", label="measured TTFT")
    ax.scatter([], [], facecolors="none", edgecolors="gray", label="interpolated TTFT")
    ax.axvline(1.0, color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel(f"TTFT / full prefill TTFT ({source})")
    ax.set_ylabel(f"{metric} (micro family, CPU)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="x-small")


def plot(study: Study, path: Path) -> Optional[str]:
    """Agreement and target_nll against relative TTFT to ``path``; the reason if it could not."""
    plt, problem = load_pyplot()
    if problem:
        return problem
    fig, axes = plt.subplots(1, len(PLOT_METRICS), figsize=(11, 4.4))
    label = latency_source(study).label
    for ax, metric in zip(axes, PLOT_METRICS):
        _draw_panel(ax, study.points, metric, label)
    cfg = study.quality_meta.get("config", {})
    fig.suptitle(f"{cfg.get('sender', '?')} -> {cfg.get('receiver', '?')}: quality (micro, CPU) vs "
                 f"TTFT at {study.length} tokens ({label})", fontsize="medium")
    save(plt, fig, path, dpi=120)
    return None


def to_json(study: Study) -> dict:
    return {**asdict(study), "left_out": [x._asdict() for x in study.left_out],
            "not_compared": [x._asdict() for x in study.not_compared],
            "verdicts": [v._asdict() for v in study.verdicts]}


def write_outputs(study: Study, out: Path) -> list[Path]:
    """OUT.png (when matplotlib can), OUT.md, OUT.json; the paths written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    png, md, js = (out.with_name(out.name + ext) for ext in (".png", ".md", ".json"))
    problem = plot(study, png)
    md.write_text(markdown(study, None if problem else png.name) + (f"\n({problem})\n" if problem else ""))
    js.write_text(json.dumps({**to_json(study), "plot": problem or png.name}, indent=1))
    return ([] if problem else [png]) + [md, js]
