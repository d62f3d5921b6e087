"""One request recorded with SGLang's own profiler, its GPU kernels summed.

    with recording(server, trace_dir) as rec:     POST /start_profile (GPU activity only),
        server.generate(body)                     the request,
    rec.summary                                   POST /stop_profile, the trace summarised

``kernel_summary`` reads a torch chrome trace (what SGLang 0.5.17's /stop_profile writes
under ``output_dir``) and returns, in ms:

    total_kernel_ms   sum of every GPU kernel's duration (overlapping streams count twice)
    busy_ms           the union of the kernels' intervals: time at least one kernel ran
    span_ms           first kernel start to last kernel end
    idle_ms           span_ms - busy_ms: the GPU waiting on the host (launches, syncs)
    largest_gaps_ms   the 5 longest idle stretches: [ms after the first kernel, length]
    by_kind_ms        attention / gemm / other (``kind_of``)
    top_kernels_ms    the ``top`` largest kernels by summed time

No SGLang or torch import: the server is any object with ``url``.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import json
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator, Optional

KINDS = (("attention", ("attention", "attn", "fwd_kernel", "flash", "prefill")),
         ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "sm90")))


def kind_of(kernel: str) -> str:
    low = kernel.lower()
    return next((kind for kind, keys in KINDS if any(k in low for k in keys)), "other")


def idle_gaps(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The stretches with no [start, end) interval running, in time order, as (offset from
    the first start, length), in the intervals' unit."""
    gaps: list[tuple[float, float]] = []
    ordered = sorted(intervals)
    reach = ordered[0][1] if ordered else 0.0
    for start, end in ordered[1:]:
        if start > reach:
            gaps.append((reach - ordered[0][0], start - reach))
        reach = max(reach, end)
    return gaps


def span(intervals: list[tuple[float, float]]) -> float:
    """First start to last end (0 for none), in the intervals' unit."""
    return max(b for _, b in intervals) - min(a for a, _ in intervals) if intervals else 0.0


def busy_ms(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals (µs in, ms out): the span less its gaps."""
    return (span(intervals) - sum(length for _, length in idle_gaps(intervals))) / 1000


def largest_gaps(intervals: list[tuple[float, float]], top: int = 5,
                 gaps: Optional[list[tuple[float, float]]] = None) -> list[list[float]]:
    """The ``top`` longest stretches with no kernel running, as [offset from the first
    kernel's start, length] in ms, longest first (µs in; ``gaps``: ``idle_gaps`` of them)."""
    gaps = idle_gaps(intervals) if gaps is None else gaps
    return [[offset / 1000, length / 1000] for offset, length in sorted(gaps, key=lambda g: -g[1])[:top]]


def kernel_summary(trace_path: str, top: int = 12) -> dict:
    """The module docstring's fields from a torch chrome trace (.json or .json.gz)."""
    opener = gzip.open if trace_path.endswith(".gz") else open
    with opener(trace_path, "rt") as f:
        events = json.load(f).get("traceEvents", [])
    kernels = [e for e in events if e.get("cat") == "kernel" and "dur" in e]
    by_name: dict[str, float] = defaultdict(float)
    for e in kernels:
        by_name[e["name"]] += e["dur"] / 1000
    by_kind: dict[str, float] = defaultdict(float)
    for name, ms in by_name.items():
        by_kind[kind_of(name)] += ms
    intervals = [(e["ts"], e["ts"] + e["dur"]) for e in kernels if "ts" in e]
    gaps = idle_gaps(intervals)
    span_ms, idle_ms = span(intervals) / 1000, sum(length for _, length in gaps) / 1000
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1])[:top]
    return {"total_kernel_ms": sum(by_name.values()), "busy_ms": span_ms - idle_ms, "span_ms": span_ms,
            "idle_ms": idle_ms, "num_kernels": len(kernels), "by_kind_ms": dict(by_kind),
            "largest_gaps_ms": largest_gaps(intervals, gaps=gaps),
            "top_kernels_ms": [[name[:120], ms] for name, ms in ranked]}


def post_text(url: str, body: dict, timeout: float) -> str:
    """POST JSON, return the text answer (/start_profile and /stop_profile answer plain text)."""
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read().decode()


class Recording:
    """What ``recording`` leaves: the trace's path and summary (``error`` if none came)."""

    def __init__(self) -> None:
        self.trace: Optional[str] = None
        self.summary: dict = {}


@contextlib.contextmanager
def recording(server: Any, trace_dir: Path, activities: tuple[str, ...] = ("GPU",),
              wait_s: float = 120) -> Iterator[Recording]:
    """Profile whatever the body sends to ``server``; summarise the newest trace after."""
    trace_dir.mkdir(parents=True, exist_ok=True)
    before = set(glob.glob(str(trace_dir / "*.json*")))
    rec = Recording()
    post_text(server.url + "/start_profile", {"output_dir": str(trace_dir), "activities": list(activities)}, 60)
    try:
        yield rec
    finally:
        post_text(server.url + "/stop_profile", {}, 300)
    rec.trace, rec.summary = finished_trace(trace_dir, before, wait_s)


def finished_trace(trace_dir: Path, before: set, wait_s: float) -> tuple[Optional[str], dict]:
    """The newest trace under ``trace_dir`` not in ``before`` and its summary, once it reads
    whole (the profiler may still be writing it): (None, {"error": ...}) after ``wait_s``."""
    deadline, problem = time.time() + wait_s, "none written"
    while time.time() < deadline:
        new = sorted(set(glob.glob(str(trace_dir / "*.json*"))) - before)
        if new:
            try:
                return new[-1], kernel_summary(new[-1])
            except (EOFError, OSError, ValueError) as exc:  # partly written: gzip or JSON cut short
                problem = f"{new[-1]} unreadable ({exc!r})"
        time.sleep(1)
    return None, {"error": f"no whole trace under {trace_dir} within {wait_s:.0f} s: {problem}"}


def one_line(summary: dict) -> str:
    """A profile summary in one log line."""
    if "error" in summary:
        return f"no profile ({summary['error']})"
    kinds = ", ".join(f"{k} {v:.1f}" for k, v in sorted(summary["by_kind_ms"].items()))
    return (f"kernels {summary['total_kernel_ms']:.1f} ms ({kinds}), GPU busy {summary['busy_ms']:.1f} "
            f"of {summary['span_ms']:.1f} ms span (idle {summary['idle_ms']:.1f}), {summary['num_kernels']} kernels")


def markdown_section(samples: list[dict]) -> str:
    """The profiled requests (bench-prefill's ``profiles``) as a Markdown table."""
    lines = ["", "## Profiled receiver requests (one untimed run each, SGLang's profiler, GPU kernels)", "",
             "| length | system | wall ms (profiled) | kernels ms | attention | gemm | other | GPU busy ms "
             "| span ms | idle ms | kernels |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in samples:
        p = s.get("profile", {})
        if "error" in p:
            lines.append(f"| {s['length']} | {s['plan']} | - | {p['error']} | | | | | | | |")
            continue
        kinds = p["by_kind_ms"]
        lines.append(f"| {s['length']} | {s['plan']} | {s.get('ttft_ms', 0):.1f} | {p['total_kernel_ms']:.1f} "
                     f"| {kinds.get('attention', 0):.1f} | {kinds.get('gemm', 0):.1f} | {kinds.get('other', 0):.1f} "
                     f"| {p['busy_ms']:.1f} | {p['span_ms']:.1f} | {p['idle_ms']:.1f} | {p['num_kernels']} |")
    return "\n".join(lines) + "\n"
