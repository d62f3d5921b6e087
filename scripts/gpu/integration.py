"""SGLang integration checks on one GPU: exactness, quality, fallbacks, metrics.

    bash scripts/gpu/integration.sh        (on the device machine; see that script)

Servers (all stock sglang 0.5.17, --dtype bfloat16, CUDA graphs and the overlap
scheduler left ON, i.e. production settings):

    name     model        plugin role                                  port
    lw-a     libwriter    sender (exports KV, computes E on demand)    30100
    lw-b     libwriter    receiver of lw-a and odd (inline plans)      30200
    odd      libwriter    sender, rope_theta changed: incompatible     30300
             (rope 2e4)
    stock    libwriter    none (plain SGLang, default radix cache)     30400
    tester   tester       sender                                       30500
    libwriter libwriter   receiver of tester (plan from profiles/) and 30600
                          of lw-a (no profile: must not share)

Checks, each printed as one row and written to $OUT/integration.json:
1. exactness: lw-b (same weights as lw-a) under every plan vs stock greedy output (bf16:
   sgl_kernel's rmsnorm has no fp32 kernel, so SGLang 0.5.17 cannot serve fp32 on CUDA)
2. quality: libwriter reusing tester's KV with the profile's plan vs the reference
   engine's numbers (fp32 and bf16) for the same examples and weights (quality.json,
   scripts/gpu/prepare.py)
3. fallbacks: incompatible sender, no profile, KV memory pressure, a frozen (SIGSTOP)
   sender: each answered exactly as stock, with the fallback counted
4. /metrics shows the droidspeak counters; no leak warning or traceback in the logs

DS_DATA_PLANE (zmq, cuda_ipc or nccl) sets every server's data plane. With nccl (kind
nvidia-h200-x2) the receivers lw-b and libwriter start on GPU 1 (--base-gpu-id 1) and the
rest on GPU 0, since NCCL cannot join two processes on one GPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from checks import check_exactness, check_fallbacks, check_quality  # noqa: E402
from sglang_droidspeak.bench.servers import Server, metric_lines, wait_healthy  # noqa: E402

MODELS = Path(".cache/gpu-models")
COMMON = ("--dtype", "bfloat16", "--mem-fraction-static", "0.8", "--log-level", "info")


def peer(model, base):
    return {"model": model, "fetch": f"tcp://127.0.0.1:{base}", "announce": f"tcp://127.0.0.1:{base + 1}"}


DATA_PLANE = os.environ.get("DS_DATA_PLANE", "zmq")  # zmq | cuda_ipc | nccl (lw-a -> lw-b, tester -> libwriter)
RECEIVERS = ("lw-b", "libwriter")


def placement(name: str, data_plane: str = DATA_PLANE) -> tuple[str, ...]:
    """nccl cannot join two processes on one GPU: receivers go to GPU 1, the rest stay on 0."""
    return ("--base-gpu-id", "1") if data_plane == "nccl" and name in RECEIVERS else ()


def sender_config(name, base):
    return {"model": name, "export_bind": f"tcp://127.0.0.1:{base}", "announce_bind": f"tcp://127.0.0.1:{base + 1}",
            "data_plane": DATA_PLANE}


def make_odd_model(out: Path) -> Path:
    odd = out / "odd-model"
    shutil.copytree(MODELS / "libwriter", odd, dirs_exist_ok=True)
    config = json.loads((odd / "config.json").read_text())
    config["rope_parameters"]["rope_theta"] = 20000.0
    (odd / "config.json").write_text(json.dumps(config))
    return odd


def start_servers(out: Path) -> dict[str, Server]:
    lw = str(MODELS / "libwriter")
    plan = lambda s: {"sender": s, "receiver": "lw-b", "num_layers": 8, "groups": [[0, 2]]}  # noqa: E731
    tokens = ("--max-total-tokens", "65536")
    return {
        "lw-a": Server("lw-a", lw, 30100, out, plugin=True, config=sender_config("lw-a", 5601), extra=COMMON + tokens),
        "lw-b": Server("lw-b", lw, 30200, out, plugin=True, extra=COMMON + ("--max-total-tokens", "4096") + placement("lw-b"), config={
            "model": "lw-b", "min_foreign_tokens": 16, "fetch_timeout_s": 2.0, "data_plane": DATA_PLANE,
            "peers": [peer("lw-a", 5601), peer("odd", 5611)], "plans": [plan("lw-a"), plan("odd")]}),
        "odd": Server("odd", str(make_odd_model(out)), 30300, out, plugin=True, config=sender_config("odd", 5611),
                      extra=COMMON + tokens),
        "stock": Server("stock", lw, 30400, out, plugin=False, extra=COMMON + tokens),
        "tester": Server("tester", str(MODELS / "tester"), 30500, out, plugin=True,
                         config=sender_config("tester", 5621),
                         extra=COMMON + tokens),
        "libwriter": Server("libwriter", lw, 30600, out, plugin=True, extra=COMMON + tokens + placement("libwriter"),
                            config={
            "model": "libwriter", "profiles_dir": "profiles", "max_quality_drop": 0.06, "min_foreign_tokens": 16,
            "data_plane": DATA_PLANE,
            "peers": [peer("tester", 5621), peer("lw-a", 5601)]}),
    }


def main() -> None:
    out = Path(os.environ.get("OUT", "/tmp/out"))
    work = Path("/tmp/ds-work")
    work.mkdir(parents=True, exist_ok=True)
    quality = json.loads((MODELS / "quality.json").read_text())
    prompts = [(ex["context_ids"][:512], ex["query_ids"]) for ex in quality["examples"][:3]]
    servers = start_servers(work)
    results: dict = {"date": time.strftime("%Y-%m-%d"), "command": "bash scripts/gpu/integration.sh",
                     "data_plane": DATA_PLANE}
    phases = {
        "exactness": lambda: check_exactness(servers, prompts),
        "quality": lambda: check_quality(servers, quality),
        "fallbacks": lambda: check_fallbacks(servers, prompts),
        "metrics": lambda: {n: metric_lines(servers[n].metrics()) for n in ("lw-a", "lw-b", "tester", "libwriter")},
    }
    wanted = os.environ.get("DS_PHASES")  # e.g. "exactness,metrics" (default: all); DS_DATA_PLANE=cuda_ipc
    if wanted:
        phases = {k: v for k, v in phases.items() if k in wanted.split(",")}
    try:
        wait_healthy(list(servers.values()), timeout=480)
        for name, phase in phases.items():
            try:  # one failing phase must not hide the others
                results[name] = phase()
                print(name, "done", flush=True)
            except Exception as exc:
                results.setdefault("errors", {})[name] = repr(exc)
                print("ERROR in", name, repr(exc), flush=True)
    except Exception as exc:  # keep what we have
        results["error"] = repr(exc)
        print("ERROR", repr(exc), flush=True)
    finally:
        for server in servers.values():
            server.stop()
        logs = {n: s.log_path.read_text(errors="replace") for n, s in servers.items()}
        results["log_findings"] = {n: [l for l in text.splitlines() if "leak" in l.lower() or "Traceback" in l
                                       or "droidspeak" in l][:40] for n, text in logs.items()}
        (out / "integration.json").write_text(json.dumps(results, indent=1))
        subprocess.run(["tar", "czf", str(out / "logs.tar.gz"), "-C", str(work), "."], check=False)
    summarize(results)


def summarize(r: dict) -> None:
    ex = r.get("exactness", {})
    print("\n== exactness (lw-b vs stock, bf16, greedy 16 tokens)")
    print(f"  ok={ex.get('ok')} reuse bitwise={ex.get('reuse_bitwise')} all reused={ex.get('all_reused')} "
          f"teacher-forced within {ex.get('tolerance_nats')}={ex.get('teacher_forced_within_tolerance')} "
          f"greedy same tokens {ex.get('greedy_same_tokens')}/{ex.get('num_plan_rows')}")
    for row in ex.get("rows", []):
        print(f"  prompt {row['prompt']} {row['plan']:>10}: cached={row['cached']} tf|dlogp| "
              f"{row['max_tf_logprob_diff']:.3g} (vs cold {row['max_tf_logprob_diff_cold']:.3g}) "
              f"greedy same={row['same_ids']}/{row['same_ids_as_cold']} diverge@{row['first_divergence']}")
    q = r.get("quality", {})
    print(f"\n== quality ok={q.get('ok')} (tester -> libwriter, plan {q.get('plan')}, {q.get('num_examples')} "
          f"examples, max |sglang - ref| {q.get('max_abs_diff')}, cached {q.get('cached_tokens')})")
    for ref, table in q.get("tables", {}).items():
        print(f"  vs {ref}: within noise {q['within_noise_by_reference'][ref]}")
        for key, row in table.items():
            print("  " + key.ljust(11) + "  ".join(
                f"{m}: sglang {v['sglang']:.4f} ref {v['reference']:.4f} diff CI95 "
                f"[{v['diff_ci95'][0]:+.3f}, {v['diff_ci95'][1]:+.3f}]" for m, v in row.items()))
    print("\n== fallbacks", json.dumps(r.get("fallbacks")))
    for name, lines in r.get("metrics", {}).items():
        print(f"== metrics {name}: " + "; ".join(l for l in lines if "_total" in l and not l.endswith(" 0.0"))[:900])
    print("error:", r.get("error"), r.get("errors"))


if __name__ == "__main__":
    main()
