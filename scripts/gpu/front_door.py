"""Issue 20 on the GPU: SGLang Model Gateway and our router in front of the same SGLang servers.

    bash scripts/gpu/front_door.sh install    # device call 1: carry [".device-gw"]
    bash scripts/gpu/front_door.sh            # device call 2: carry [".device", ".cache/gpu-models"]
    python3 scripts/gpu/front_door.py --stage-gateway   # here, before call 1: fills .device-gw/

1. `droidspeak serve CONFIG --no-router`: tester x2 + libwriter x2 (micro family, bf16, one
   GPU, KV over cuda_ipc); then our router on :8000 (libwriter replicas peer with the tester
   replicas) and the gateway (IGW, cache_aware, each server registered by model) on :8100;
2. per door, the same multi-agent workload (`droidspeak bench-throughput --url DOOR`, mix
   tester>libwriter, 512-1536-token contexts, plan `auto`, QPS $FD_QPS, $FD_SESSIONS sessions,
   caches flushed between points): TTFT p50/p99 and the highest QPS meeting the TTFT SLO;
3. faults on the real servers, both doors at once: SIGSTOP one libwriter replica (4 requests
   per door: status and seconds each, /health), SIGCONT, then SIGKILL one tester replica;
4. after everything above is stopped: `droidspeak serve examples/cluster-one-gpu.yaml` as a
   user runs it (no router flags: the gateway is the default front door), one /generate per
   model through its port 8000, and `droidspeak status` read from it.
Writes $OUT/front_door.json and prints a table. Both doors: 60 s total, ours 30 s first byte.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from sglang_droidspeak.cluster.gateway import (
    gateway_argv,
    http_status,
    list_workers,
    register_workers,
    start_gateway,
)
from sglang_droidspeak.router.settings import RouterSettings

RUN, OUT = Path("/tmp/ds-front-door"), Path(os.environ.get("OUT", "/tmp/out"))
DOORS = {"droidspeak": "http://127.0.0.1:8000", "gateway": "http://127.0.0.1:8100"}
PORTS = {"tester": (30901, 30902), "libwriter": (30903, 30904)}
SETTINGS = RouterSettings(first_byte_timeout_s=30, total_timeout_s=60)
ARGS = ["--attention-backend", "triton", "--dtype", "bfloat16", "--max-total-tokens", "32768"]


def cluster_yaml() -> Path:
    fractions = iter((0.15, 0.3, 0.45, 0.6))  # each counts what the earlier servers took
    models = [{"name": m, "path": f".cache/gpu-models/{m}", "server_args": list(ARGS),  # a shared list would dump as a YAML alias, which the loader refuses
               "replicas": [{"host": "127.0.0.1", "port": p, "gpus": [0], "mem_fraction": next(fractions)}
                            for p in ports]} for m, ports in PORTS.items()]
    config = {"name": "front-door", "router": {"host": "127.0.0.1", "port": 8000, "kind": "droidspeak"},
              "profiles_dir": "profiles", "slo": {"max_quality_drop": 0.06}, "models": models,
              "transfer": {"data_plane": "cuda_ipc", "base_port": 5950}}
    path = RUN / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def wait(what: str, check, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.time() + timeout_s
    while not check():
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"{what}: not ready (exit {proc.poll()}); logs in {RUN}")
        time.sleep(2)
    print(f"[{time.strftime('%X')}] {what} ready", flush=True)


def start_all() -> list[subprocess.Popen]:
    urls = {m: [f"http://127.0.0.1:{p}" for p in ports] for m, ports in PORTS.items()}
    serve = subprocess.Popen([sys.executable, "-m", "sglang_droidspeak.cli", "serve", str(cluster_yaml()),
                              "--no-router", "--run-dir", str(RUN / "serve"), "--health-timeout-s", "400"],
                             stdout=open(RUN / "serve.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    all_urls = [u for us in urls.values() for u in us]
    wait("4 servers", lambda: all(http_status(u + "/health") == 200 for u in all_urls), 420, serve)
    flags = [f"--model={m}={u}" for m, us in urls.items() for u in us]
    flags += [f"--peer={r}={s}" for r in urls["libwriter"] for s in urls["tester"]]
    ours = subprocess.Popen([sys.executable, "-m", "sglang_droidspeak.router", *flags, "--port", "8000",
                             "--first-byte-timeout-s", "30", "--total-timeout-s", "60"],
                            stdout=open(RUN / "ours.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    wait("our router", lambda: http_status(DOORS["droidspeak"] + "/health") == 200, 30, ours)
    gateway = start_gateway(gateway_argv(sys.executable, "127.0.0.1", 8100, 8101, SETTINGS), RUN / "gateway.log",
                            dict(os.environ))
    register_workers(DOORS["gateway"], [(m, u) for m, us in urls.items() for u in us], 60,
                     lambda: gateway.poll() is None)
    print(f"[{time.strftime('%X')}] gateway ready", flush=True)
    return [serve, ours, gateway]


def bench(door: str) -> dict:
    out = OUT / f"front-door-bench-{door}.json"
    cmd = [sys.executable, "-m", "sglang_droidspeak.cli", "bench-throughput", "--url", DOORS[door],
           "--mix", "tester>libwriter:1", "--min-context-len", "512", "--max-context-len", "1536",
           "--min-suffix-len", "16", "--max-suffix-len", "64", "--max-new-tokens", "32", "--systems", "auto",
           "--qps", os.environ.get("FD_QPS", "2,4,8"), "--num-sessions", os.environ.get("FD_SESSIONS", "16"),
           "--slo-ttft-ms", "300", "--request-timeout", "60", "--out", str(out)]
    subprocess.run(cmd, timeout=200, stdout=open(RUN / f"bench-{door}.log", "w"), stderr=subprocess.STDOUT)
    result = json.loads(out.read_text())
    points = [{k: p[k] for k in ("qps", "ttft_p50_ms", "ttft_p99_ms", "slo_met", "num_errors", "goodput_rps",
                                 "receiver_hits")} for p in result["points"]]
    met = [p["qps"] for p in points if p["slo_met"]]
    return {"command": " ".join(cmd), "points": points, "max_qps_at_slo": max(met) if met else None}


def generate(door: str, model: str) -> tuple[int, float]:
    body = json.dumps({"model": model, "input_ids": list(range(3, 200)),
                       "sampling_params": {"max_new_tokens": 8, "temperature": 0}}).encode()
    start = time.monotonic()
    request = urllib.request.Request(DOORS[door] + "/generate", body, {"Content-Type": "application/json"})
    code = status_of_request(request)
    return code, round(time.monotonic() - start, 2)


def status_of_request(request) -> int:
    try:
        with urllib.request.urlopen(request, timeout=90) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def replica_group(port: int) -> int:
    pids = subprocess.run(["pgrep", "-f", "--", f"--port {port}"], capture_output=True, text=True).stdout.split()
    return os.getpgid(int(pids[0]))


def fault(name: str, model: str, port: int, sig: int) -> dict:
    group = replica_group(port)
    os.killpg(group, sig)
    with ThreadPoolExecutor(8) as pool:
        calls = {door: [pool.submit(generate, door, model) for _ in range(4)] for door in DOORS}
        answers = {door: [f.result() for f in futures] for door, futures in calls.items()}
    row = {"fault": name, "answers": answers,
           "health_after": {door: http_status(url + "/health") for door, url in DOORS.items()},
           "gateway_workers": [(w["url"], w["is_healthy"], w["load"]) for w in list_workers(DOORS["gateway"])]}
    if sig == signal.SIGSTOP:
        os.killpg(group, signal.SIGCONT)
        time.sleep(12)  # two health rounds
        row["health_after_sigcont"] = {door: http_status(url + "/health") for door, url in DOORS.items()}
    return row


def serve_default() -> dict:
    """`droidspeak serve` on the one-GPU example, defaults only: which front door answers, and how."""
    serve = subprocess.Popen([sys.executable, "-m", "sglang_droidspeak.cli", "serve", "examples/cluster-one-gpu.yaml",
                              "--run-dir", str(RUN / "serve-default"), "--health-timeout-s", "400"],
                             stdout=open(RUN / "serve-default.log", "w"), stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        wait("droidspeak serve (defaults)", lambda: http_status(DOORS["droidspeak"] + "/health") == 200, 480, serve)
        answers = {m: generate("droidspeak", m) for m in ("tester", "libwriter")}
        status = subprocess.run([sys.executable, "-m", "sglang_droidspeak.cli", "status", "--url",
                                 DOORS["droidspeak"]], capture_output=True, text=True, timeout=60)
        try:
            workers = [(w["url"], w["is_healthy"]) for w in list_workers(DOORS["droidspeak"])]
        except (OSError, ValueError, KeyError) as exc:  # our router has no /workers: then it answered, not the gateway
            workers = repr(exc)
        return {"answers": answers, "status_rc": status.returncode, "status": (status.stdout + status.stderr)[-3000:],
                "gateway_workers": workers}
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=60)


def stage_gateway() -> int:
    from sglang_droidspeak.cluster.gateway_vocab import FILE_NAME, vocab_dir
    target = Path(".device-gw")
    target.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "sglang-router==0.3.2", "-d",
                    str(target)], check=True)
    (target / FILE_NAME).write_bytes((vocab_dir() / FILE_NAME).read_bytes())
    print("\n".join(f"{p.stat().st_size:>10}  {p}" for p in sorted(target.iterdir())))
    return 0


def main() -> int:
    if "--stage-gateway" in sys.argv:
        return stage_gateway()
    RUN.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    card = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                          text=True).stdout.strip()
    result = {"date": time.strftime("%Y-%m-%d"), "card": card, "doors": {}, "faults": [], "serve_default": None}
    procs = []
    try:
        procs = start_all()
        for door in DOORS:
            result["doors"][door] = bench(door)
        result["faults"].append(fault("SIGSTOP libwriter[1]", "libwriter", PORTS["libwriter"][1], signal.SIGSTOP))
        result["faults"].append(fault("SIGKILL tester[1]", "tester", PORTS["tester"][1], signal.SIGKILL))
    except Exception as exc:  # keep what was measured
        result["error"] = repr(exc)
    finally:
        (OUT / "front_door.json").write_text(json.dumps(result, indent=1))
        stop(procs)
    if "error" not in result:
        try:
            result["serve_default"] = serve_default()
        except Exception as exc:
            result["error"] = f"serve_default: {exc!r}"
        (OUT / "front_door.json").write_text(json.dumps(result, indent=1))
    print_table(result)
    return 1 if "error" in result else 0


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)


def print_table(result: dict) -> None:
    print(f"{result['date']} {result['card']}")
    for door, data in result["doors"].items():
        for p in data["points"]:
            print(f"  {door:10} qps {p['qps']:>4g}  TTFT p50 {p['ttft_p50_ms'] or 0:8.1f} ms  p99 "
                  f"{p['ttft_p99_ms'] or 0:8.1f} ms  slo {'yes' if p['slo_met'] else 'no ':3}  errors {p['num_errors']}")
        print(f"  {door:10} max QPS at the TTFT SLO: {data['max_qps_at_slo']}")
    for row in result["faults"]:
        print(f"  {row['fault']}: " + "; ".join(f"{d}: {a}" for d, a in row["answers"].items())
              + f"  health {row['health_after']}")
    if result.get("serve_default"):
        d = result["serve_default"]
        print(f"  droidspeak serve (defaults): answers {d['answers']}, status rc {d['status_rc']}, "
              f"gateway workers {d['gateway_workers']}")
    if "error" in result:
        print("ERROR", result["error"])


if __name__ == "__main__":
    raise SystemExit(main())
