"""``droidspeak bench-prefill``: receiver TTFT against context length, per system (issue 6).

Also spelled ``droidspeak bench prefill``. Run on the GPU machine through
``scripts/gpu/bench_prefill.sh``; here it needs SGLang 0.5.17 importable.

    droidspeak bench-prefill [--lengths 1024,...,32768] [--plans reuse,0:4,0:8,0:16,blend:0.125,blend:0.25]
                             [--repeats 3] [--warmup 1] [--out docs/results/bench-prefill-DATE.json]
                             [--pipelined on,off] [--throttle-gbps none,10,25,100]   # the bandwidth sweep
                             [--sweep-lengths 16384] [--sweep-plans reuse,0:8]  # for configs after the first
    droidspeak bench-prefill --replot RESULT.json   # Markdown + PNG again from a result (no servers)
    droidspeak bench-prefill --replot A.json,B.json --out MERGED.json   # two runs, one table

1. A Llama-3.1-8B-shaped model dir (prefill_model.LLAMA_31_8B, tokenizer copied from
   --tokenizer-from) served with ``--load-format dummy``: SGLang 0.5.17's
   ``initialize_dummy_weights`` fills each float parameter with uniform(-1e-3, 1e-3) from a
   generator seeded 1234, so the sender's and receiver's weights are the same (they
   depend only on shape and dtype). Real shapes and costs; no files, no quality.
2. Sender ``a`` (export + announce) is started and healthy before receiver ``b`` (its
   peer; no pair plan: every request forces one), so their memory profiling cannot race.
3. Per length: ``--warmup`` discarded rounds, then ``--repeats`` rounds; a round runs every
   system on its own fresh random context (ids in [3, 2048)): sender prefills it
   (max_new_tokens=1), ``--announce-wait``, then the receiver's request context + 16-token
   suffix with that plan is timed client-side (TTFT = its wall time); both caches flushed.
   Full prefill = plan "off" (stock prefix caching on a context the receiver never saw).
4. JSON (``--out``, rewritten after every length), ``.md`` table and ``.png`` plot beside it
   (prefill_outputs.py, which also does ``--replot``).
5. Sweep: every config (``--throttle-gbps`` x ``--pipelined``) on the one server pair: the
   sender allows request rates (``allow_request_throttle``), and each timed request names
   its config in custom_params next to ``droidspeak_plan`` (``droidspeak_pipelined``; with
   a rate, ``droidspeak_link_gbps``; sglang/request_options.py). Step 3 per config, full
   prefill only with the first; the configs after the first run ``--sweep-lengths`` x
   ``--sweep-plans`` (default: all). Each sample also gets the receiver's import split from
   /metrics; the report adds the table and ``-sweep.png`` of bench/sweep_report.py
   (columns, bound). The main table shows the first config only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shlex
import time
from pathlib import Path
from typing import Optional

from sglang_droidspeak.bench import kernel_profile as kp
from sglang_droidspeak.bench import prefill_model as pm
from sglang_droidspeak.bench import prefill_report as rep
from sglang_droidspeak.bench import sweep_report as sweep
from sglang_droidspeak.bench.prefill_outputs import (  # noqa: F401 (first_config_samples, reuse_warnings: re-exported)
    first_config_samples,
    replot,
    reuse_warnings,
    write_outputs,
)

SUFFIX_LEN = 16
VOCAB_LIMIT = 2048  # context ids stay below the small tokenizer's vocabulary
DEFAULT_LENGTHS = "1024,2048,4096,8192,16384,32768"
DEFAULT_PLANS = "reuse,0:4,0:8,0:16,blend:0.125,blend:0.25"  # blend:R at the budgets of 0:4, 0:8
DEFAULT_SECRET = "bench-prefill-secret-0123456789"
META_KEYS = ("cached_tokens", "prompt_tokens", "e2e_latency", "queue_time", "forward_entry_time",
             "prefill_finished_time", "cached_tokens_details")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--lengths", default=DEFAULT_LENGTHS, help="context lengths, comma-separated")
    a("--plans", default=DEFAULT_PLANS, help="systems besides full prefill: 'reuse', 's:e,s:e' plans and/or "
      "'blend:R' (CacheBlend-style, R of the tokens in every layer = the budget of R*L layers), "
      "separated by ';' or ',' between single-group plans")
    a("--repeats", type=int, default=3, help="timed runs per (length, system); the median is reported")
    a("--warmup", type=int, default=1, help="discarded runs per (length, system) before the timed ones")
    a("--out", default=f"docs/results/bench-prefill-{time.strftime('%Y-%m-%d')}.json")
    a("--tokenizer-from", default=".cache/gpu-models/libwriter", help="dir with tokenizer.json, tokenizer_config.json")
    a("--work-dir", default="/tmp/ds-bench", help="model dir, DroidSpeak configs, server logs")
    a("--port-base", type=int, default=30700, help="sender HTTP port; the receiver gets the next one")
    a("--zmq-base", type=int, default=5801, help="sender export port; announce gets the next one")
    a("--announce-wait", type=float, default=0.5, help="seconds between the sender's prefill and the timed request")
    a("--fetch-timeout", type=float, default=120.0, help="receiver's fetch_timeout_s (a 32K fetch moves 4 GiB)")
    a("--data-plane", default="zmq", choices=("zmq", "cuda_ipc", "nccl"),
      help="how K/V moves between the two servers (plugin setting data_plane): zmq, cuda_ipc (one GPU), "
      "nccl (two GPUs, see --gpus)")
    a("--gpus", default="", help="'S,R': --base-gpu-id of the sender and of the receiver (default: both on the "
      "first visible GPU; with --data-plane nccl: 0,1)")
    a("--pipelined", default="on", help="receiver's import: 'on', 'off' or 'on,off' (both; set per request)")
    a("--throttle-gbps", default="", help="link rates the sender paces each request to, e.g. none,10,25,100 "
      "(Gbit/s; 'none' or default: unthrottled); every rate and --pipelined mode runs on the same server pair, "
      "the first (rate, mode) gives the main table")
    a("--sweep-lengths", default="", help="lengths for the configs after the first (default: --lengths)")
    a("--sweep-plans", default="", help="plans for the configs after the first (default: --plans)")
    a("--mem-fraction", type=float, default=0.8, help="--mem-fraction-static of each server")
    a("--max-total-tokens", type=int, default=0, help="KV slots per server (0: 2 x longest context + 2048)")
    a("--server-args", default="", help="extra sglang.launch_server args for both (later flags win)")
    a("--startup-timeout", type=float, default=600.0)
    a("--seed", type=int, default=0)
    a("--profile-plans", default="", help="systems (e.g. off,0:8,blend:0.21875) whose receiver request gets one "
      "more run at the first length, recorded with SGLang's profiler: GPU kernel time by kind, busy and idle "
      "(bench/kernel_profile.py; traces under --work-dir/profiles)")
    a("--replot", default=None, help="no servers: rewrite the .md and .png of this result JSON; "
      "A.json,B.json merges runs (e.g. short and long lengths) into --out")


def parse_plans(text: str, num_layers: int) -> list[str]:
    """Systems in order: "off" first, then each of ``text`` (validated; ValueError names a bad one)."""
    parts = rep.split_plans(text)
    for plan in parts:
        rep.recomputed_layers(plan, num_layers)
    return [rep.FULL] + [p for p in dict.fromkeys(parts) if p != rep.FULL]


def run(args: argparse.Namespace) -> int:
    if args.replot:
        paths = replot([Path(p) for p in args.replot.split(",")], Path(args.out))
        print("\n".join(str(p) for p in paths))
        return 0
    lengths = [int(x) for x in args.lengths.split(",")]
    num_layers = pm.LLAMA_31_8B["num_hidden_layers"]
    plans = parse_plans(args.plans, num_layers)
    try:
        configs = sweep.parse_configs(args.pipelined, args.throttle_gbps)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if args.repeats < 1 or args.warmup < 0 or min(lengths) < 1:
        raise SystemExit("--repeats must be >= 1, --warmup >= 0 and every --lengths entry >= 1")
    os.environ.setdefault("DROIDSPEAK_SECRET", DEFAULT_SECRET)
    work, out = Path(args.work_dir), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    model_dir = pm.write_model_dir(work / "llama-3.1-8b-shape", Path(args.tokenizer_from), max(lengths) + SUFFIX_LEN)
    result = {"date": time.strftime("%Y-%m-%d"), "card": pm.card(), "command": command_line(args),
              "attention_backend": attention_backend(args.server_args), "warmup_samples": [],
              "model": pm.LLAMA_31_8B, "model_note": pm.MODEL_NOTE, "num_layers": num_layers, "plans": plans,
              "suffix_len": SUFFIX_LEN, "repeats": args.repeats, "warmup": args.warmup, "samples": [],
              "todo": [] if rep.has_blend(plans) else [rep.CACHEBLEND_TODO], "configs": [c.__dict__ for c in configs]}
    code, servers = 0, ()
    try:
        servers = pm.start_servers(args, model_dir, work / "servers", max(lengths) + SUFFIX_LEN, result)
        sweep_lengths = [int(x) for x in args.sweep_lengths.split(",")] if args.sweep_lengths else lengths
        sweep_plans = parse_plans(args.sweep_plans, num_layers)[1:] if args.sweep_plans else plans[1:]
        for index, config in enumerate(configs):
            if index == 0:
                bench(servers, lengths, plans, args, result, out, config, profile=True)
            else:
                bench(servers, sweep_lengths, sweep_plans, args, result, out, config)
        result["receiver_metrics"] = pm.metric_lines(servers[1].metrics())
    except Exception as exc:  # keep what was measured
        result["error"] = repr(exc)
        print("ERROR", repr(exc), "\n", servers[1].tail(20) if len(servers) > 1 else "", flush=True)
        code = 1
    finally:
        for server in servers:
            server.stop()
    paths = write_outputs(result, out)
    print(Path(paths[1]).read_text())
    return code


def bench(servers, lengths: list[int], plans: list[str], args, result: dict, out: Path,
          config: sweep.Config = sweep.Config(True, None), profile: bool = False) -> None:
    """Per length: warm-up rounds (discarded), then timed rounds into ``result["samples"]``;
    the outputs are rewritten after each length, so a run cut short keeps what it measured.
    ``profile``: after the first length's rounds, the --profile-plans requests (``profile_plans``)."""
    rng = random.Random(args.seed)
    for length in lengths:
        for _ in range(args.warmup):  # kept apart: the first import after start-up is the cold one
            for plan in plans:
                result.setdefault("warmup_samples", []).append(
                    measure(servers, plan, length, rng, args.announce_wait, config))
        for repeat in range(args.repeats):
            for plan in plans:
                sample = measure(servers, plan, length, rng, args.announce_wait, config)
                result["samples"].append({"repeat": repeat, **sample, **config.__dict__})
        if profile and length == lengths[0]:
            profile_plans(servers, profile_targets(args.profile_plans, plans), length, rng, args, result, config)
        write_outputs(result, out, plot=False)
        print(f"[{time.strftime('%X')}] {config.label()}: length {length} done", flush=True)


def profile_targets(text: str, plans: list[str]) -> list[str]:
    """The systems of ``plans`` that ``text`` (--profile-plans, split as --plans) names."""
    named = set(rep.split_plans(text))
    return [p for p in plans if p in named]


def profile_plans(servers, plans: list[str], length: int, rng: random.Random, args, result: dict,
                  config: sweep.Config = sweep.Config(True, None)) -> None:
    """One more (untimed) round per plan with ``config`` and the receiver's request profiled:
    its kernel summary in ``result["profiles"]`` (a failed recording is kept as its error)."""
    for plan in plans:
        trace_dir = Path(args.work_dir) / "profiles" / f"{length}-{plan.replace(':', '_')}"
        try:
            sample = measure(servers, plan, length, rng, args.announce_wait, config, profile_dir=trace_dir)
        except Exception as exc:  # the timed samples stand without it
            sample = {"length": length, "plan": plan, "profile": {"error": repr(exc)}}
        result.setdefault("profiles", []).append(sample)
        print(f"[{time.strftime('%X')}] profiled {plan} at {length}: {kp.one_line(sample['profile'])}", flush=True)


def attention_backend(server_args: str) -> str:
    """The servers' attention backend: the last --attention-backend in ``server_args``, else
    bench/servers.py's default (triton)."""
    words = shlex.split(server_args or "")
    named = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--attention-backend"]
    named += [w.split("=", 1)[1] for w in words if w.startswith("--attention-backend=")]
    return named[-1] if named else "triton"


def command_line(args: argparse.Namespace) -> str:
    """The equivalent ``droidspeak bench-prefill`` call with every option spelled out."""
    skip = {"command", "_module", "replot"}
    words = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in skip and v is not None]
    return "droidspeak bench-prefill " + shlex.join(words)


def measure(servers, plan: str, length: int, rng: random.Random, wait_s: float,
            config: sweep.Config = sweep.Config(True, None), profile_dir: Optional[Path] = None) -> dict:
    """One fresh context: sender prefill, wait, timed receiver request with ``plan`` and
    ``config``'s options (sweep.Config.custom_params), flush both. With ``profile_dir`` the
    receiver's request is recorded (kernel_profile.recording): ``profile`` in the sample."""
    sender, receiver = servers
    ctx = [rng.randrange(3, VOCAB_LIMIT) for _ in range(length)]
    suffix = [rng.randrange(3, VOCAB_LIMIT) for _ in range(SUFFIX_LEN)]
    start = time.perf_counter()
    sender.generate({"input_ids": ctx, "sampling_params": {"max_new_tokens": 1, "temperature": 0}})
    sender_ms = (time.perf_counter() - start) * 1000
    time.sleep(wait_s)
    body = {"input_ids": ctx + suffix, "sampling_params": {
        "max_new_tokens": 1, "temperature": 0, "custom_params": {"droidspeak_plan": plan, **config.custom_params()}}}
    before = sweep.stage_sums(receiver.metrics())
    with (kp.recording(receiver, profile_dir) if profile_dir else contextlib.nullcontext()) as rec:
        start = time.perf_counter()
        meta = receiver.generate(body).get("meta_info", {})
        ttft_ms = (time.perf_counter() - start) * 1000
    stages = sweep.stage_ms(before, sweep.stage_sums(receiver.metrics()))
    for server in servers:
        pm.flush(server)
    cached = meta.get("cached_tokens")
    return {"length": length, "plan": plan, "ttft_ms": ttft_ms, "sender_ms": sender_ms, "cached_tokens": cached,
            "reused_context": cached is not None and cached >= length - 1,
            "meta": {k: meta[k] for k in META_KEYS if k in meta}, **stages,
            **({"profile": rec.summary} if profile_dir else {})}
