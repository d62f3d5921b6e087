"""`droidspeak serve` / `status` against a FAKE SGLang (a stdlib HTTP server on PYTHONPATH).

The cluster plan runs ``python -m sglang.launch_server ...``; tmp_path/fake/sglang holds a
launch_server.py that serves /health, /generate (echo) and /metrics on --port, so the
launcher, the router and /status run for real on loopback ports, in well under 15 s.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from sglang_droidspeak.cli import main
from sglang_droidspeak.cluster import launcher
from sglang_droidspeak.cluster.layout import ServerPlan
from sglang_droidspeak.cluster.procs import ServerProcess, stop_servers
from sglang_droidspeak.router.metrics_summary import summarize_metrics

FAKE = r'''
import argparse, json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
p = argparse.ArgumentParser()
for flag in ("--host", "--port", "--served-model-name"):
    p.add_argument(flag)
args, _ = p.parse_known_args()
name, port = args.served_model_name, int(args.port)
if name in os.environ.get("FAKE_SGLANG_FAIL", "").split(","):
    print(f"fake {name}: CUDA out of memory (on purpose)", flush=True)
    sys.exit(3)
with open(os.path.join(os.environ["FAKE_SGLANG_PIDS"], f"{name}-{port}.pid"), "w") as f:
    f.write(str(os.getpid()))
settings = json.load(open(os.environ["DROIDSPEAK_CONFIG"]))
metrics = ("# HELP sglang:droidspeak_foreign_hits_total hits\n"
           'sglang:droidspeak_foreign_hits_total{model="%s",origin="a b"} 2.0\n'
           'sglang:droidspeak_foreign_hits_total{model="%s",origin="c"} 3.0\n'
           'sglang:droidspeak_foreign_hits_created{model="%s",origin="c"} 1.7e9\n'
           "sglang:droidspeak_tokens_reused_total %d\n" % (name, name, name, port % 1000))
if name == "tester":
    metrics += 'sglang:cache_hit_rate{tp_rank="0"} 0.25\nsglang:token_usage 0.5 1700000000\n'
class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def send(self, code, body, kind="application/json"):
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path == "/health":
            self.send(503 if name == os.environ.get("FAKE_SGLANG_UNHEALTHY") else 200, b"{}")
        elif self.path == "/metrics":
            self.send(200, metrics.encode(), "text/plain")
        else:
            self.send(404, b"{}")
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.send(200, json.dumps({"served_by": name, "port": port, "echo": body, "settings": settings,
                                   "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                   "secret": os.environ.get("DROIDSPEAK_SECRET")}).encode())
server = ThreadingHTTPServer((args.host, port), H)
print(f"fake {name} listening on {port}", flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    print(f"fake {name}: SIGINT, bye", flush=True)
'''
SECRET = "0123456789abcdef0123"
MODEL_CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2,
                "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 2}
TOKENIZER = json.dumps({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}})


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """tester (2 replicas) + libwriter (1), compatible; the fake SGLang on PYTHONPATH.
    Returns (config path, router port, server ports, pid dir)."""
    (tmp_path / "fake" / "sglang").mkdir(parents=True)
    (tmp_path / "fake" / "sglang" / "__init__.py").write_text("")
    (tmp_path / "fake" / "sglang" / "launch_server.py").write_text(FAKE)
    pids = tmp_path / "pids"
    pids.mkdir()
    for name in ("tester", "libwriter"):
        (tmp_path / "models" / name).mkdir(parents=True)
        (tmp_path / "models" / name / "config.json").write_text(json.dumps(MODEL_CONFIG))
        (tmp_path / "models" / name / "tokenizer.json").write_text(TOKENIZER)
    router, *servers = free_ports(4)
    base = max(router, *servers) + 1 if max(router, *servers) < 65000 else 1024

    def replica(port, gpu):
        return {"host": "127.0.0.1", "port": port, "gpus": [gpu], "mem_fraction": 0.3}

    data = {"name": "t", "router": {"host": "127.0.0.1", "port": router, "kind": "droidspeak"},
            "profiles_dir": str(tmp_path / "profiles"), "transfer": {"base_port": base},
            "models": [{"name": "tester", "path": str(tmp_path / "models" / "tester"),
                        "replicas": [replica(servers[0], 0), replica(servers[1], 1)]},
                       {"name": "libwriter", "path": str(tmp_path / "models" / "libwriter"),
                        "replicas": [replica(servers[2], 2)]}]}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    pythonpath = os.pathsep.join([str(tmp_path / "fake"), str(Path(__file__).resolve().parents[2])])
    monkeypatch.setenv("PYTHONPATH", pythonpath)
    monkeypatch.setenv("FAKE_SGLANG_PIDS", str(pids))
    monkeypatch.setenv("DROIDSPEAK_SECRET", SECRET)
    return path, router, servers, pids


def get(url: str) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, json.loads(r.read())


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def router_up(url: str, proc: subprocess.Popen) -> bool:
    assert proc.poll() is None, proc.communicate()[0]
    try:
        return get(url + "/health")[0] == 200
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def read_pids(pids: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in pids.glob("*.pid")}


def test_serve_routes_reports_status_survives_a_dead_replica_and_stops_everything_on_sigterm(cluster, capsys):
    path, router_port, ports, pids = cluster
    run_dir = path.parent / "run"
    proc = subprocess.Popen([sys.executable, "-m", "sglang_droidspeak.cli", "serve", str(path),
                             "--run-dir", str(run_dir), "--health-timeout-s", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=path.parent)
    router = f"http://127.0.0.1:{router_port}"
    try:
        wait_for(lambda: router_up(router, proc), 20, "the router")
        servers = read_pids(pids)
        assert sorted(servers) == sorted(f"{m}-{p}" for m, p in zip(("tester", "tester", "libwriter"), ports))
        assert [m["id"] for m in get(router + "/v1/models")[1]["data"]] == ["tester", "libwriter"]

        answer = post(router + "/generate", {"model": "libwriter", "text": "hi"})
        assert (answer["served_by"], answer["port"], answer["echo"]) == (
            "libwriter", ports[2], {"model": "libwriter", "text": "hi"})
        assert (answer["cuda"], answer["secret"]) == ("2", SECRET)
        assert answer["settings"] == json.loads((run_dir / "libwriter-0.json").read_text())
        assert [p["model"] for p in answer["settings"]["peers"]] == ["tester", "tester"]  # both replicas
        assert post(router + "/generate", {"model": "tester", "text": "x"})["served_by"] == "tester"

        urls = [f"http://127.0.0.1:{p}" for p in ports]
        health = get(router + "/health")[1]["models"]
        assert [(r["url"], r["peers"]) for m in ("tester", "libwriter") for r in health[m]] == [
            (urls[0], [urls[2]]), (urls[1], [urls[2]]), (urls[2], [urls[0], urls[1]])]

        status = get(router + "/status")[1]["models"]
        rows = [(r["url"], r["healthy"], r["in_flight"], r["metrics"], r["metrics_error"])
                for m in ("tester", "libwriter") for r in status[m]["replicas"]]

        def metrics(port, tester):
            return {"cache_hit_rate": 0.25 if tester else None, "token_usage": 0.5 if tester else None,
                    "droidspeak_foreign_hits": 5.0, "droidspeak_tokens_reused": port % 1000,
                    "droidspeak_fallbacks": 0}
        assert rows == [(urls[0], True, 0, metrics(ports[0], True), None),
                        (urls[1], True, 0, metrics(ports[1], True), None),
                        (urls[2], True, 0, metrics(ports[2], False), None)]
        assert main(["status", "--url", router]) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].split() == ["model", "replica", "healthy", "in_flight", "hit_rate", "foreign_hits",
                                    "tokens_reused", "fallbacks", "token_usage"]
        assert table[1].split() == ["tester", urls[0], "yes", "0", "0.25", "5", str(ports[0] % 1000), "0", "0.5"]
        assert table[3].split() == ["libwriter", urls[2], "yes", "0", "-", "5", str(ports[2] % 1000), "0", "-"]

        os.kill(servers[f"tester-{ports[1]}"], signal.SIGKILL)  # a replica dies while serving
        wait_for(lambda: not get(router + "/status")[1]["models"]["tester"]["replicas"][1]["healthy"], 5,
                 "tester[1] marked failed")
        for _ in range(3):
            assert post(router + "/generate", {"model": "tester", "text": "y"})["port"] == ports[0]
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=20)[0]
    assert proc.returncode == 0, out
    assert f"tester[1] ({urls[1]}) exited with code -9; the others keep serving" in out
    assert [line.split()[:4] for line in out.splitlines()
            if line.startswith("  ") and line.endswith(".log")] == [
        ["tester", "0", urls[0], "0"], ["tester", "1", urls[1], "1"], ["libwriter", "0", urls[2], "2"]]
    assert not [pid for pid in servers.values() if pid_alive(pid)]
    for name in ("tester-0", "libwriter-0"):  # stopped with SIGINT, not killed
        assert (run_dir / "logs" / f"{name}.log").read_text().splitlines()[-1].endswith("SIGINT, bye")


def test_a_server_that_exits_at_start_stops_the_others_and_shows_its_log(cluster, capsys, monkeypatch):
    path, _, _, pids = cluster
    monkeypatch.setenv("FAKE_SGLANG_FAIL", "libwriter")
    assert main(["serve", str(path), "--run-dir", str(path.parent / "run")]) == 1
    err = capsys.readouterr().err
    assert "error: libwriter[0] exited with code 3 before it was healthy; last lines of " in err
    assert err.rstrip().endswith("fake libwriter: CUDA out of memory (on purpose)")
    started = read_pids(pids)
    assert "libwriter" not in " ".join(started) and not [p for p in started.values() if pid_alive(p)]


def test_not_healthy_in_time_is_an_error_naming_the_server(cluster, capsys, monkeypatch):
    path, _, ports, pids = cluster
    monkeypatch.setenv("FAKE_SGLANG_UNHEALTHY", "libwriter")
    code = main(["serve", str(path), "--run-dir", str(path.parent / "run"), "--health-timeout-s", "1.5"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"error: not healthy after 1.5 s: libwriter[0] ({path.parent / 'run/logs/libwriter-0.log'}):\n" \
           f"fake libwriter listening on {ports[2]}" in err
    assert len(read_pids(pids)) == 3 and not [p for p in read_pids(pids).values() if pid_alive(p)]


@pytest.mark.parametrize("secret, message", [
    (None, ("error: transfer.secret_env: $DROIDSPEAK_SECRET is not set; every server needs the same shared "
            "secret (>= 16 bytes), e.g. export DROIDSPEAK_SECRET=$(openssl rand -hex 16)")),
    ("short", "error: transfer.secret_env: $DROIDSPEAK_SECRET is shorter than 16 bytes")])
def test_a_missing_or_short_secret_starts_nothing(cluster, capsys, monkeypatch, secret, message):
    path, _, _, pids = cluster
    if secret is None:
        monkeypatch.delenv("DROIDSPEAK_SECRET")
    else:
        monkeypatch.setenv("DROIDSPEAK_SECRET", secret)
    assert main(["serve", str(path), "--run-dir", str(path.parent / "run")]) == 1
    assert capsys.readouterr().err.strip() == message
    assert not (path.parent / "run").exists() and read_pids(pids) == {}


def test_a_config_with_errors_starts_nothing(cluster, capsys):
    path, _, _, _ = cluster
    data = yaml.safe_load(path.read_text())
    data["models"][1]["path"] = str(path.parent / "nowhere")
    path.write_text(yaml.safe_dump(data))
    assert main(["serve", str(path), "--run-dir", str(path.parent / "run")]) == 1
    err = capsys.readouterr().err
    assert f"not here: {path}: models[1].path: {path.parent / 'nowhere'} is not on this machine" in err
    assert not (path.parent / "run").exists()


def test_no_router_serves_the_servers_only_until_sigterm(cluster, capsys, monkeypatch):
    path, router_port, ports, pids = cluster
    serving, seen = threading.Event(), {}
    print_table = launcher.print_table
    monkeypatch.setattr(launcher, "print_table", lambda *a: (print_table(*a), serving.set()))

    def stop_when_serving():  # SIGTERM to this very process, only while it serves
        if not serving.wait(10):
            return
        seen["servers"] = [get(f"http://127.0.0.1:{p}/health")[0] for p in ports]
        with pytest.raises(OSError):
            get(f"http://127.0.0.1:{router_port}/health")
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=stop_when_serving)
    thread.start()
    code = main(["serve", str(path), "--run-dir", str(path.parent / "run"), "--no-router"])
    thread.join()
    out = capsys.readouterr().out
    assert (code, seen) == (0, {"servers": [200, 200, 200]})
    assert "\nrouter: " not in out and "stop requested" in out
    assert not [p for p in read_pids(pids).values() if pid_alive(p)]


def test_stop_servers_kills_a_group_that_ignores_sigint(tmp_path):
    code = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('ready', flush=True); " \
           "time.sleep(60)"
    log = tmp_path / "x.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=f, start_new_session=True)
    plan = ServerPlan("x", 0, "127.0.0.1", 1, (), (), {}, {})
    server = ServerProcess(plan, "http://127.0.0.1:1", tmp_path / "x.json", log, proc)
    wait_for(lambda: log.read_text() == "ready\n", 10, "the SIGINT-proof child")
    start = time.monotonic()
    stop_servers([server], grace_s=0.5)
    assert 0.5 <= time.monotonic() - start < 3 and proc.returncode == -signal.SIGKILL


def test_summarize_metrics_sums_counters_and_averages_gauges():
    text = ("# TYPE sglang:cache_hit_rate gauge\n"
            'sglang:cache_hit_rate{tp_rank="0"} 0.5\nsglang:cache_hit_rate{tp_rank="1"} 0.25\n'
            'sglang:droidspeak_fallbacks_total{model="m",reason="no plan {x} y"} 2.0\n'
            'sglang:droidspeak_fallbacks_total{model="m",reason="timeout"} 1.0 1700000000\n'
            'sglang:droidspeak_fallbacks_created{model="m",reason="timeout"} 1.7e9\n'
            "sglang:droidspeak_tokens_reused_total 7\nnot a sample\n\n")
    assert summarize_metrics(text) == {"cache_hit_rate": 0.375, "token_usage": None,
                                       "droidspeak_foreign_hits": 0, "droidspeak_tokens_reused": 7.0,
                                       "droidspeak_fallbacks": 3.0}
