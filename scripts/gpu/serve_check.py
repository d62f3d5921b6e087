"""Issue 5's GPU check: one `droidspeak serve` command, cross-model reuse through the router,
and a killed replica that loses no request.

    bash scripts/gpu/serve_check.sh        (on the device machine, after scripts/gpu/prepare.py)

Steps (examples/cluster-gpu-check.yaml: tester x1, libwriter x2, one GPU):
0. if $DS_LATENCY_MODEL names a file with a `latency_model` (scripts/gpu/calibrate_latency.sh
   writes one), a copy of the config gives it to libwriter: the online SLO policy is on;
1. start `python -m sglang_droidspeak.cli serve CONFIG`; wait for the router's /health
   while checking the launcher is alive;
2. for 4 held-out contexts: /generate model=tester (context), then model=libwriter
   (context + query) through the router; read `cached_tokens`; then 4 more contexts sent
   to libwriter at once (a queue forms);
3. /status: libwriter replicas' droidspeak_foreign_hits summed must be > 0; with the policy
   on, libwriter's policy_decisions_total by reason (from /metrics);
4. SIGKILL one libwriter replica's process group; send 8 libwriter requests: all answered;
5. SIGTERM the launcher: exit code 0.
Writes $OUT/serve_check.json and prints a short table.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
import urllib.request
from pathlib import Path

import yaml

from sglang_droidspeak.bench.servers import metric_lines, post  # noqa: E402

ROUTER = "http://127.0.0.1:8000"
CONFIG = "examples/cluster-gpu-check.yaml"


def get_json(url: str, timeout: float = 10) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def wait_router(launcher: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if launcher.poll() is not None:
            raise RuntimeError(f"launcher exited with {launcher.returncode}")
        try:
            if urllib.request.urlopen(ROUTER + "/health", timeout=2).status == 200:
                return
        except Exception:
            pass
        time.sleep(2)
    raise RuntimeError("router not healthy in time")


def generate(model: str, ids: list, n: int = 8) -> dict:
    body = {"model": model, "input_ids": ids, "sampling_params": {"max_new_tokens": n, "temperature": 0}}
    return post(ROUTER + "/generate", body, timeout=120)


def foreign_hits(status: dict, model: str) -> float:
    return sum((r.get("metrics") or {}).get("droidspeak_foreign_hits", 0) or 0
               for r in status["models"][model]["replicas"])


def kill_one_replica(run_dir: Path) -> str:
    """SIGKILL the process group of libwriter replica 1 (pid from its settings/log names)."""
    out = subprocess.run(["pgrep", "-f", "--", "--port 30703"], capture_output=True, text=True).stdout.split()
    for pid in out:
        try:
            os.killpg(int(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return ",".join(out)


def config_with_policy(run_dir: Path) -> tuple[str, bool]:
    """CONFIG, or a copy whose libwriter has the calibrated latency model (policy on)."""
    source = os.environ.get("DS_LATENCY_MODEL", "")
    if not source or "latency_model" not in json.loads(Path(source).read_text() or "{}"):
        return CONFIG, False
    data = yaml.safe_load(Path(CONFIG).read_text())
    for model in data["models"]:
        if model["name"] == "libwriter":
            model["latency_model"] = source
    path = run_dir.parent / "cluster-gpu-check-policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path), True


def burst(examples: list) -> list:
    """Tester reads 4 contexts, then libwriter gets all 4 at once (requests wait in its
    queue: the policy's "queued" branch); returns their cached_tokens."""
    for ex in examples:
        generate("tester", ex["context_ids"], n=1)
    time.sleep(0.5)
    with ThreadPoolExecutor(len(examples)) as pool:
        replies = list(pool.map(lambda ex: generate("libwriter", ex["context_ids"] + ex["query_ids"], n=32), examples))
    return [r["meta_info"].get("cached_tokens") for r in replies]


def policy_decisions(url: str) -> list[str]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        return [l for l in metric_lines(r.read().decode(), "policy_decisions_total") if not l.endswith(" 0.0")]


def main() -> None:
    out = Path(os.environ.get("OUT", "/tmp/out"))
    out.mkdir(parents=True, exist_ok=True)
    run_dir = Path("/tmp/ds-serve")
    config, policy = config_with_policy(run_dir)
    quality = json.loads(Path(".cache/gpu-models/quality.json").read_text())
    log = open(out / "serve.log", "w")
    launcher = subprocess.Popen([sys.executable, "-m", "sglang_droidspeak.cli", "serve", config,
                                 "--run-dir", str(run_dir)], stdout=log, stderr=subprocess.STDOUT)
    result: dict = {"date": time.strftime("%Y-%m-%d"), "command": "bash scripts/gpu/serve_check.sh",
                    "config": config, "policy_on": policy}
    try:
        wait_router(launcher, 540)
        rows = []
        for ex in quality["examples"][:4]:
            generate("tester", ex["context_ids"], n=1)
            time.sleep(0.5)
            r = generate("libwriter", ex["context_ids"] + ex["query_ids"])
            rows.append({"context": len(ex["context_ids"]), "cached": r["meta_info"].get("cached_tokens")})
        result["reuse_rows"] = rows
        result["burst_cached"] = burst(quality["examples"][12:16])
        status = get_json(ROUTER + "/status")
        result["foreign_hits"] = foreign_hits(status, "libwriter")
        result["policy_decisions"] = {r["url"]: policy_decisions(r["url"])
                                      for r in status["models"]["libwriter"]["replicas"]}
        result["killed_pids"] = kill_one_replica(run_dir)
        answered = 0
        for ex in quality["examples"][4:12]:
            try:
                generate("libwriter", ex["context_ids"][:256] + ex["query_ids"])
                answered += 1
            except Exception as exc:
                result.setdefault("errors", []).append(repr(exc))
        result["after_kill_answered"] = f"{answered}/8"
        result["status_after_kill"] = get_json(ROUTER + "/status")
    except Exception as exc:
        result["error"] = repr(exc)
    finally:
        launcher.send_signal(signal.SIGTERM)
        try:
            result["launcher_exit"] = launcher.wait(60)
        except subprocess.TimeoutExpired:
            launcher.kill()
            result["launcher_exit"] = "killed"
        subprocess.run(["tar", "czf", str(out / "serve-logs.tar.gz"), "-C", str(run_dir), "."], check=False)
        (out / "serve_check.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "status_after_kill"}, indent=1))


if __name__ == "__main__":
    main()
