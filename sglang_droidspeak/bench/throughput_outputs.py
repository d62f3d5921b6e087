"""The result dict and files of ``droidspeak bench-throughput`` (JSON, Markdown, PNG).

    new_result(...)        header: date, card, command, workload, systems, SLO, TODO
    request_row(qps, r)    one request's record for the JSON, times rounded to 1 us
    write_outputs(...)     max QPS per system and warnings from the points, then
                           ``out`` (compact JSON; +inf as the string "inf"), ``.md``, ``.png``
    replot(path)           the .md and .png again from a written JSON
    flush_targets(...)     best-effort /flush_cache on every target URL
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sglang_droidspeak.bench import throughput_report as report
from sglang_droidspeak.bench.prefill_report import CACHEBLEND_TODO, has_blend
from sglang_droidspeak.bench.throughput_stats import PointSummary, hit_warnings, max_qps_meeting_slo


def new_result(cfg: Any, spec: Any, systems: list[str], command: str, card: str) -> dict:
    workload = {**dataclasses.asdict(spec), "mix": cfg.mix, "num_sessions": cfg.num_sessions,
                "arrival_s": getattr(cfg, "arrival_s", 0.0),
                "warmup_sessions": cfg.warmup_sessions, "seed": cfg.seed}
    plane = getattr(cfg, "data_plane", "zmq")
    servers_note = ("--launch: one Llama-3.1-8B-shaped --load-format dummy server per model, GPUs "
                    f"{cfg.gpus}, first model the sender, KV over data plane {plane}" if cfg.launch
                    else f"--url {cfg.url}")
    return {"date": time.strftime("%Y-%m-%d"), "card": card, "command": command, "servers_note": servers_note,
            "workload": workload, "systems": systems, "slo_ttft_ms": cfg.slo_ttft_ms,
            "slo_percentile": cfg.slo_percentile, "points": [], "requests": [],
            "todo": ([] if has_blend(systems) else [CACHEBLEND_TODO])
            + ([] if plane == "nccl" else [f"NCCL data plane: not run (KV over {plane})"])}


def request_row(qps: float, record: Any) -> dict:
    """A ``load_driver`` record as a JSON row; every time in ms or s rounded to 3 decimals
    (1 us: far below the timer's noise, and a third of the file: run 6's was 1.4 MB)."""
    row = {"qps": qps, **dataclasses.asdict(record)}
    for key in ("send_s", "ttft_ms", "e2e_ms"):
        if isinstance(row.get(key), float):
            row[key] = round(row[key], 3)
    row["itl_ms"] = [round(gap, 3) for gap in row.get("itl_ms", ())]
    return row


def _point(p: dict) -> PointSummary:
    return PointSummary(**{**p, "ttft_slo_ms": math.inf if p["ttft_slo_ms"] == "inf" else p["ttft_slo_ms"]})


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_outputs(result: dict, out: Path, plot: bool = True, json_too: bool = True) -> list[Path]:
    """``out`` (JSON), ``out``.md and, if ``plot``, ``out``.png; returns the paths written."""
    points = [_point(p) for p in result["points"]]
    result["max_qps"] = {s: max_qps_meeting_slo(points, s) for s in result["systems"]}
    result["warnings"] = hit_warnings(points)
    result["points"] = [_json_safe(p) for p in result["points"]]
    md, png = out.with_suffix(".md"), out.with_suffix(".png")
    md.write_text(report.markdown_report(result))
    if plot:
        result["plot"] = report.plot([dataclasses.asdict(p) for p in points], png, result["slo_ttft_ms"],
                                     result["slo_percentile"]) or str(png)
    if json_too:
        out.write_text(json.dumps(_json_safe(result), separators=(",", ":")))
    return [out, md] + ([png] if plot and result["plot"] == str(png) else [])


def replot(path: Path) -> list[Path]:
    return write_outputs(json.loads(path.read_text()), path, json_too=False)


def flush_targets(targets: dict[str, str], tries: int = 20) -> list[str]:
    """POST /flush_cache to each distinct URL until accepted (400: requests still running);
    returns the URLs that never accepted (a router has no /flush_cache: best effort)."""
    failed = []
    for url in dict.fromkeys(targets.values()):
        for _ in range(tries):
            try:
                urllib.request.urlopen(urllib.request.Request(url + "/flush_cache", b"", method="POST"),
                                       timeout=60).read()
                break
            except urllib.error.HTTPError as exc:
                if exc.code != 400:
                    failed.append(url)
                    break
                time.sleep(0.1)
            except OSError:
                failed.append(url)
                break
        else:
            failed.append(url)
    return failed
