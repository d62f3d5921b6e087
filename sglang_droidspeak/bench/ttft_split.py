"""Where a receiver request's TTFT goes, from SGLang's own meta_info and the import split.

Every bench-prefill sample keeps the request's ``meta`` (SGLang 0.5.17's e2e_latency,
queue_time, forward_entry_time, prefill_finished_time, in s) and the receiver's import
split from /metrics (``total_ms``). Per sample, in ms:

    part        what                                     from
    client      HTTP, JSON, the client's side            ttft_ms - e2e
    server      tokenizer manager, IPC, detokenizer      e2e - queue - forward
    import      the DroidSpeak import (parked request)   total_ms (0 for full prefill)
    sched       parked but no import running: the ticks  queue - import
                before it starts and after it ends
    forward     SGLang's forward of the request's        prefill_finished - forward_entry
                uncached tokens (full prefill: all; a
                hit: the 16-token suffix)

``ceiling`` answers what speedup a perfect import could reach at this plan's k of L
layers: full prefill's client + server + forward, against the same fixed parts plus
k/L of full prefill's forward plus this plan's own suffix forward (sched = 0, the
recompute exactly k/L of the full forward). No SGLang or torch import.
"""

from __future__ import annotations

import statistics
from typing import NamedTuple, Optional

PARTS = ("client", "server", "import", "sched", "forward")


class TtftSplit(NamedTuple):
    length: int
    plan: str
    ttft_ms: float
    client: float
    server: float
    import_ms: float
    sched: float
    forward: float


def split(sample: dict) -> Optional[TtftSplit]:
    """One sample's parts (None when its meta lacks SGLang's timing fields)."""
    meta = sample.get("meta") or {}
    if not all(k in meta for k in ("e2e_latency", "queue_time", "forward_entry_time", "prefill_finished_time")):
        return None
    e2e, queue = 1e3 * meta["e2e_latency"], 1e3 * meta["queue_time"]
    forward = 1e3 * (meta["prefill_finished_time"] - meta["forward_entry_time"])
    imported = sample.get("total_ms") or 0.0
    return TtftSplit(sample["length"], sample["plan"], sample["ttft_ms"], sample["ttft_ms"] - e2e,
                     e2e - queue - forward, imported, queue - imported, forward)


def median_splits(samples: list[dict]) -> list[TtftSplit]:
    """The median of every part per (length, plan), in first-seen order."""
    groups: dict[tuple[int, str], list[TtftSplit]] = {}
    for s in samples:
        one = split(s)
        if one is not None:
            groups.setdefault((one.length, one.plan), []).append(one)
    return [TtftSplit(length, plan, *(statistics.median(getattr(r, f) for r in rows) for f in TtftSplit._fields[2:]))
            for (length, plan), rows in groups.items()]


def ceiling(full: TtftSplit, plan_split: TtftSplit, k: float, num_layers: float) -> float:
    """Speedup over ``full`` of a perfect import at k of ``num_layers`` layers (module docstring)."""
    fixed = full.client + full.server
    return (fixed + full.forward) / (fixed + full.forward * k / num_layers + plan_split.forward)


def markdown_section(samples: list[dict], full_plan: str, layers_of) -> str:
    """The parts as a Markdown table; ``layers_of(plan)`` gives k (None: no ceiling)."""
    rows = median_splits(samples)
    if not rows:
        return ""
    fulls = {r.length: r for r in rows if r.plan == full_plan}
    lines = ["", "## Where the TTFT goes (median ms per part, SGLang's meta_info and the import split)", "",
             "client = TTFT - e2e; server = e2e - queue - forward; sched = queue - import; forward = SGLang's "
             "forward of the uncached tokens. Ceiling: the speedup with sched = 0 and the recompute exactly k/L "
             "of full prefill's forward.", "",
             "| length | system | TTFT | client | server | import | sched | forward | ceiling |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        k, full = layers_of(r.plan), fulls.get(r.length)
        top = "-" if k is None or full is None or r.plan == full_plan else f"{ceiling(full, r, k, layers_of(full_plan)):.2f}x"
        lines.append(f"| {r.length} | {r.plan} | {r.ttft_ms:.1f} | {r.client:.1f} | {r.server:.1f} | {r.import_ms:.1f} "
                     f"| {r.sched:.1f} | {r.forward:.1f} | {top} |")
    return "\n".join(lines) + "\n"
