"""The pipelining / link-rate part of ``droidspeak bench-prefill`` (issue 4's bandwidth sweep).

A *config* is one request's import options, every config on one server pair: ``pipelined``
and ``throttle_gbps`` (the link rate the sender paces the fetch to; None: unthrottled),
sent as custom_params (``Config.custom_params``). Results from before per-request options
(one server pair per config) read the same. Per sample the receiver's import
split comes from its /metrics (``sglang:droidspeak_import_stage_seconds_sum{stage}``,
read before and after the one timed request; sglang/metrics.py):

    column          meaning
    fetch ms        request -> FetchDone: the transfer (serial: + the host->device writes)
    recompute ms    the recompute groups' GPU time
    import ms       the whole import (allocate -> inserted)
    suffix ms       TTFT - import: the request's own extend (suffix) and request overheads
    bound ms        1.1 x max(recompute, fetch) + suffix (the issue's target for pipelined)
    within bound    TTFT <= bound, i.e. import <= 1.1 x max(recompute, fetch)

Medians are per (length, plan, config) and per column, so a row's columns need not come
from one sample. Imports no SGLang or torch; matplotlib only inside ``plot``.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from sglang_droidspeak.bench.plotting import load_pyplot, save
from sglang_droidspeak.sglang.request_options import LINK_GBPS_PARAM, PIPELINED_PARAM

STAGES = ("fetch", "recompute", "drain", "total")
BOUND_FACTOR = 1.1
_STAGE_SUM = re.compile(r'^sglang:droidspeak_import_stage_seconds_sum\{([^}]*)\}\s+(\S+)$')
COLUMNS = ("length", "plan", "pipelined", "link Gbit/s", "TTFT ms", "speedup vs full prefill", "fetch ms",
           "recompute ms", "import ms", "suffix ms", "bound ms", "within bound")


@dataclass(frozen=True)
class Config:
    pipelined: bool
    throttle_gbps: Optional[float]  # None: unthrottled

    def custom_params(self) -> dict:
        """The request's options for this config (merged with its ``droidspeak_plan``)."""
        params: dict = {PIPELINED_PARAM: "on" if self.pipelined else "off"}
        if self.throttle_gbps is not None:
            params[LINK_GBPS_PARAM] = self.throttle_gbps
        return params

    def label(self) -> str:
        link = "host path" if self.throttle_gbps is None else f"{self.throttle_gbps:g} Gbit/s"
        return f"{'pipelined' if self.pipelined else 'serial'}, {link}"


def parse_configs(pipelined: str, throttles: str) -> list[Config]:
    """``--pipelined on,off`` x ``--throttle-gbps none,10,25,100`` (empty or 'none': unthrottled),
    throttle-major, in the order given (the first config is the main table's)."""
    modes = [{"on": True, "off": False}.get(p.strip()) for p in pipelined.split(",") if p.strip()]
    if not modes or None in modes:
        raise ValueError(f"--pipelined: a list of 'on' and 'off', got {pipelined!r}")
    words = [t.strip() for t in throttles.split(",") if t.strip()] or ["none"]
    try:
        rates = [None if word == "none" else float(word) for word in words]
    except ValueError:
        raise ValueError(f"--throttle-gbps: comma-separated numbers > 0 or 'none', got {throttles!r}") from None
    if any(rate is not None and not rate > 0 for rate in rates):
        raise ValueError(f"--throttle-gbps: comma-separated numbers > 0 or 'none', got {throttles!r}")
    return [Config(mode, rate) for rate in dict.fromkeys(rates) for mode in dict.fromkeys(modes)]


def stage_sums(metrics_text: str, model: str = "b") -> dict[str, float]:
    """stage -> seconds summed so far, from a /metrics text (stages not there are absent)."""
    sums = {}
    for line in metrics_text.splitlines():
        found = _STAGE_SUM.match(line.strip())
        if found and f'model="{model}"' in found.group(1):
            stage = re.search(r'stage="([^"]*)"', found.group(1))
            if stage and stage.group(1) in STAGES:
                sums[stage.group(1)] = float(found.group(2))
    return sums


def stage_ms(before: dict[str, float], after: dict[str, float]) -> dict[str, Optional[float]]:
    """Per stage, milliseconds added between two ``stage_sums`` (None where not reported)."""
    return {f"{s}_ms": (1e3 * (after[s] - before.get(s, 0.0)) if s in after else None) for s in STAGES}


@dataclass(frozen=True)
class SweepRow:
    length: int
    plan: str
    config: Config
    ttft_ms: float
    speedup: Optional[float]
    fetch_ms: Optional[float]
    recompute_ms: Optional[float]
    import_ms: Optional[float]

    @property
    def suffix_ms(self) -> Optional[float]:
        return None if self.import_ms is None else self.ttft_ms - self.import_ms

    @property
    def bound_ms(self) -> Optional[float]:
        parts = (self.fetch_ms, self.recompute_ms, self.suffix_ms)
        return None if None in parts else BOUND_FACTOR * max(self.fetch_ms, self.recompute_ms) + self.suffix_ms

    @property
    def within_bound(self) -> Optional[bool]:
        return None if self.bound_ms is None else self.ttft_ms <= self.bound_ms


def _median(values: Iterable[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def config_of(sample: dict) -> Config:
    return Config(sample.get("pipelined", True), sample.get("throttle_gbps"))


def sweep_rows(samples: list[dict], full: str = "off") -> list[SweepRow]:
    """One row per (length, plan, config) of the samples that are not full prefill."""
    groups: dict[tuple, list[dict]] = {}
    for s in samples:
        groups.setdefault((s["length"], s["plan"], config_of(s)), []).append(s)
    rows = []
    for (length, plan, config), mine in groups.items():
        if plan == full:
            continue
        fulls = [s["ttft_ms"] for s in samples if s["length"] == length and s["plan"] == full]
        ttft = statistics.median(s["ttft_ms"] for s in mine)
        speedup = statistics.median(fulls) / ttft if fulls and ttft > 0 else None
        rows.append(SweepRow(length, plan, config, ttft, speedup, _median(s.get("fetch_ms") for s in mine),
                             _median(s.get("recompute_ms") for s in mine), _median(s.get("total_ms") for s in mine)))
    return rows


def _cell(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: list[SweepRow]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        link = "host" if r.config.throttle_gbps is None else f"{r.config.throttle_gbps:g}"
        within = {None: "-", True: "yes", False: "no"}[r.within_bound]
        cells = (str(r.length), r.plan, "yes" if r.config.pipelined else "no", link, _cell(r.ttft_ms),
                 _cell(r.speedup, 2), _cell(r.fetch_ms), _cell(r.recompute_ms), _cell(r.import_ms),
                 _cell(r.suffix_ms), _cell(r.bound_ms), within)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def rows_to_json(rows: list[SweepRow]) -> list[dict]:
    return [{"length": r.length, "plan": r.plan, "pipelined": r.config.pipelined,
             "throttle_gbps": r.config.throttle_gbps, "ttft_ms": r.ttft_ms, "speedup": r.speedup,
             "fetch_ms": r.fetch_ms, "recompute_ms": r.recompute_ms, "import_ms": r.import_ms,
             "suffix_ms": r.suffix_ms, "bound_ms": r.bound_ms, "within_bound": r.within_bound} for r in rows]


def plot(rows: list[SweepRow], path: Path) -> Optional[str]:
    """TTFT against link rate, one line per (length, plan, pipelined), as the paper's Fig. 20."""
    throttled = [r for r in rows if r.config.throttle_gbps is not None]
    plt, problem = load_pyplot()
    if problem:
        return problem
    if not throttled:
        return "no plot: no throttled rows"
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key in dict.fromkeys((r.length, r.plan, r.config.pipelined) for r in throttled):
        mine = sorted((r for r in throttled if (r.length, r.plan, r.config.pipelined) == key),
                      key=lambda r: r.config.throttle_gbps)
        ax.plot([r.config.throttle_gbps for r in mine], [r.ttft_ms for r in mine], marker="o",
                linestyle="-" if key[2] else "--", label=f"{key[0]} {key[1]} {'pipelined' if key[2] else 'serial'}")
    ax.set_xscale("log")
    ax.set_xlabel("emulated link (Gbit/s)")
    ax.set_ylabel("TTFT (ms)")
    ax.set_title("receiver TTFT vs link bandwidth")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="x-small")
    save(plt, fig, path, dpi=120)
    return None
