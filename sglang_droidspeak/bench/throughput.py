"""``droidspeak bench-throughput`` (also ``droidspeak bench throughput``): latency at QPS (issue 6).

A MetaGPT-like multi-agent workload (bench.workload: a coder and a tester, sometimes a
reviewer, read one repository in turn; Poisson session arrivals) runs against SGLang at
each QPS for each system (the per-request ``droidspeak_plan``: "off" = full prefill with
stock prefix caching, "reuse" = full KV reuse, "s:e,.." = DroidSpeak at that plan, "blend:R"
= the CacheBlend-style baseline at the budget of R * L layers, "auto" = the receiver's
configured plan). Reports TTFT / TBT / E2E against QPS and, per system, the highest QPS
whose p``--slo-percentile`` TTFT meets ``--slo-ttft-ms``. Without a "blend:R" system the
CacheBlend-style baseline is recorded as not run.

    droidspeak bench-throughput --url http://127.0.0.1:8000          # a running router
    droidspeak bench-throughput --url coder=http://h:30001,tester=http://h:30002,reviewer=...
    droidspeak bench-throughput --launch [--gpus 0,1,1]   # 8B-shaped dummy servers (GPU, SGLang)
    droidspeak bench-throughput --launch --data-plane cuda_ipc   # K/V GPU to GPU (2 GPUs: nccl)
    droidspeak bench-throughput --replot RESULT.json      # the .md and .png again

Every option's default is a field of ThroughputConfig. Per QPS (ascending) every system
runs the same sessions (arrivals, lengths, pipelines: --seed) on fresh token ids, after a
discarded warm-up of --warmup-sessions per system; caches are flushed between runs
(best effort: a router has no /flush_cache). With --skip-after-miss a system stops at its
first QPS that misses the SLO. JSON (``--out``, rewritten after every point: raw
per-request rows + summaries), ``.md`` and ``.png`` beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from sglang_droidspeak.bench import load_driver as drv
from sglang_droidspeak.bench import prefill_model as pm
from sglang_droidspeak.bench import throughput_outputs as outputs
from sglang_droidspeak.bench import workload as wl
from sglang_droidspeak.bench.prefill import DEFAULT_SECRET
from sglang_droidspeak.bench.throughput_stats import summarize
from sglang_droidspeak.config_cli import add_dataclass_arguments, dataclass_from_args
from sglang_droidspeak.sglang.settings_fields import DATA_PLANES


@dataclass(frozen=True)
class ThroughputConfig:
    url: str = ""
    launch: bool = False
    systems: str = "off,reuse,0:8"
    qps: str = "0.25,0.5,1,2"
    num_sessions: int = 16
    arrival_s: float = 0.0
    warmup_sessions: int = 1
    mix: str = "coder>tester:1,coder>tester>reviewer:1"
    min_context_len: int = 4096
    max_context_len: int = 16384
    min_suffix_len: int = 32
    max_suffix_len: int = 128
    max_new_tokens: int = 64
    slo_ttft_ms: float = 2000.0
    slo_percentile: float = 90.0
    skip_after_miss: bool = True
    request_timeout: float = 600.0
    flush: bool = True
    seed: int = 0
    out: str = f"docs/results/bench-throughput-{time.strftime('%Y-%m-%d')}.json"
    replot: str = ""
    tokenizer_from: str = ".cache/gpu-models/libwriter"
    work_dir: str = "/tmp/ds-bench-tput"
    gpus: str = "0"
    port_base: int = 30800
    zmq_base: int = 5901
    auto_plan: str = "0:8"
    fetch_timeout: float = 120.0
    mem_fraction: float = 0.8
    max_total_tokens: int = 131072
    server_args: str = ""
    startup_timeout: float = 600.0
    data_plane: str = "zmq"

    def __post_init__(self) -> None:
        if self.data_plane not in DATA_PLANES:
            raise ValueError(f"--data-plane must be one of {', '.join(DATA_PLANES)}, got {self.data_plane!r}")


HELP = {
    "url": "router base URL, or name=url,name=url (one server per model); or use --launch",
    "launch": "start one 8B-shaped dummy-weight server per model of --mix (needs SGLang and a GPU)",
    "systems": "plans sent per request: off, reuse, auto, s:e[,s:e], blend:R; ';' separates when plans "
               "hold ','",
    "qps": "session arrival rates (sessions/s), comma-separated", "num_sessions": "sessions per point (at least)",
    "arrival_s": "also at least QPS x this many seconds of arrivals per point, so that high rates reach a steady "
                 "state instead of one burst (0: --num-sessions only)",
    "mix": "pipelines 'a>b[>c][:weight]', comma-separated; the first model is --launch's sender",
    "slo_percentile": "TTFT percentile checked against --slo-ttft-ms",
    "gpus": "--launch: one CUDA device for all servers, or one per model (e.g. 0,1,1)",
    "auto_plan": "--launch: the receivers' pair plan (what 'auto' means); empty: none",
    "data_plane": "--launch: how K/V moves from the sender to its receivers (every server's plugin setting "
                  "data_plane): zmq, cuda_ipc (all servers on one GPU), nccl (sender and receivers on different "
                  "GPUs, e.g. --gpus 0,1,1)",
    "replot": "no load: rewrite .md/.png of this result JSON",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, ThroughputConfig, HELP)


def parse_systems(text: str, num_layers: int) -> list[str]:
    """Plans in order, deduplicated; ValueError naming a malformed one."""
    from sglang_droidspeak.bench.prefill_report import recomputed_layers, split_plans
    parts = split_plans(text)
    for plan in parts:
        if plan != "auto":
            recomputed_layers(plan, num_layers)
    if not parts:
        raise ValueError("--systems: at least one plan is needed")
    return list(dict.fromkeys(parts))


def workload_spec(cfg: ThroughputConfig) -> wl.WorkloadSpec:
    spec = wl.WorkloadSpec(wl.parse_mix(cfg.mix), cfg.min_context_len, cfg.max_context_len, cfg.min_suffix_len,
                           cfg.max_suffix_len, cfg.max_new_tokens)
    wl.check_spec(spec)
    return spec


def command_line(cfg: ThroughputConfig) -> str:
    words = [f"--{k.replace('_', '-')}={v}" for k, v in dataclasses.asdict(cfg).items() if k != "replot"]
    return "droidspeak bench-throughput " + shlex.join(words)


def run(args: argparse.Namespace) -> int:
    cfg = dataclass_from_args(ThroughputConfig, args)
    if cfg.replot:
        print("\n".join(str(p) for p in outputs.replot(Path(cfg.replot))))
        return 0
    if cfg.launch == bool(cfg.url):
        raise SystemExit("give exactly one of --url and --launch")
    spec = workload_spec(cfg)
    systems = parse_systems(cfg.systems, pm.LLAMA_31_8B["num_hidden_layers"])
    qps_list = sorted(float(q) for q in cfg.qps.split(","))
    if min(qps_list) <= 0 or cfg.num_sessions < 1 or cfg.arrival_s < 0 or not 0 <= cfg.slo_percentile <= 100:
        raise SystemExit("--qps entries must be > 0, --num-sessions >= 1, --arrival-s >= 0, "
                         "0 <= --slo-percentile <= 100")
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = outputs.new_result(cfg, spec, systems, command_line(cfg), pm.card())
    code, servers = 0, []
    try:
        if cfg.launch:
            servers = launch(cfg, spec, result)
        targets = {s.name: s.url for s in servers} if cfg.launch else drv.parse_targets(cfg.url)
        sweep(cfg, spec, systems, qps_list, targets, result, out)
    except Exception as exc:  # keep what was measured
        result["error"] = repr(exc)
        print("ERROR", repr(exc), "\n", "\n".join(s.tail(10) for s in servers), flush=True)
        code = 1
    finally:
        for server in servers:
            server.stop()
    paths = outputs.write_outputs(result, out)
    print(Path(paths[1]).read_text())
    return code


def launch(cfg: ThroughputConfig, spec: wl.WorkloadSpec, result: dict) -> list:
    """The model dir and one started server per model of the mix (bench.throughput_servers)."""
    from sglang_droidspeak.bench.throughput_servers import start_servers
    os.environ.setdefault("DROIDSPEAK_SECRET", DEFAULT_SECRET)
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    context_len = spec.max_context_len + spec.max_suffix_len + spec.max_new_tokens
    model_dir = pm.write_model_dir(work / "llama-3.1-8b-shape", Path(cfg.tokenizer_from), context_len)
    return start_servers(cfg, wl.models_of(spec.mix), model_dir, work, context_len, result)


def sessions_at(cfg: ThroughputConfig, qps: float) -> int:
    """Sessions of one point: --num-sessions, or QPS x --arrival-s if that is more."""
    return max(cfg.num_sessions, math.ceil(qps * cfg.arrival_s - 1e-9))


def measure_point(cfg, spec, system: str, qps: float, num_sessions: int, targets: dict[str, str], salt: str,
                  result: dict):
    """One run of ``num_sessions`` sessions with ``system``; then the caches flushed (URLs
    that refused go to ``result["flush_failed"]``). Returns (records, PointSummary)."""
    sessions = wl.make_sessions(spec, qps, num_sessions, cfg.seed)
    records, wall_s = asyncio.run(drv.run_sessions(sessions, targets, system, cfg.seed, salt, cfg.request_timeout))
    if cfg.flush:
        failed = outputs.flush_targets(targets)
        result["flush_failed"] = sorted(set(result.get("flush_failed", [])) | set(failed))
    return records, summarize(records, system, qps, num_sessions, wall_s, cfg.slo_ttft_ms, cfg.slo_percentile)


def sweep(cfg, spec, systems: list[str], qps_list: list[float], targets: dict[str, str], result: dict,
          out: Path) -> None:
    """Warm-up per system (discarded), then QPS ascending x systems into ``result``; the
    outputs are rewritten after every point, so a run cut short keeps what it measured."""
    for system in systems if cfg.warmup_sessions > 0 else ():
        measure_point(cfg, spec, system, qps_list[0], cfg.warmup_sessions, targets, f"warmup:{system}", result)
    missed: set[str] = set()
    for qps in qps_list:
        for system in systems:
            if system in missed:
                continue
            records, point = measure_point(cfg, spec, system, qps, sessions_at(cfg, qps), targets, f"{system}@{qps}",
                                           result)
            result["requests"] += [outputs.request_row(qps, r) for r in records]
            result["points"].append(dataclasses.asdict(point))
            if cfg.skip_after_miss and not point.slo_met:
                missed.add(system)
            outputs.write_outputs(result, out, plot=False)
            print(f"[{time.strftime('%X')}] {system} @ {qps:g}: p{cfg.slo_percentile:g} TTFT "
                  f"{point.ttft_slo_ms:.1f} ms, errors {point.num_errors}", flush=True)
