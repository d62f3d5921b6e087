"""`droidspeak serve` with its default front door, SGLang Model Gateway, over the FAKE SGLang
of test_launcher.py (the same fixture): servers registered under their model names, routing
by model, `droidspeak status` from the gateway's /workers, a killed replica taken out by the
gateway's health checks, and everything stopped on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys

import yaml
from front_doors import gateway_or_skip
from test_launcher import cluster, get, post, read_pids, wait_for  # noqa: F401 (cluster: a fixture)

from sglang_droidspeak.cli import main
from sglang_droidspeak.cluster.gateway import list_workers


def as_gateway(path) -> None:
    data = yaml.safe_load(path.read_text())
    data["router"] = {**data["router"], "kind": "gateway", "metrics_port": data["router"]["port"] - 1,
                      "health_check_interval_s": 1, "health_check_timeout_s": 1}
    path.write_text(yaml.safe_dump(data))


def gateway_ready(url: str, proc: subprocess.Popen) -> bool:
    assert proc.poll() is None, proc.communicate()[0]
    try:
        return len([w for w in list_workers(url, 2) if w["is_healthy"]]) == 3
    except OSError:
        return False


def test_serve_puts_the_gateway_in_front_by_default(cluster, capsys):  # noqa: F811
    gateway_or_skip()
    path, router_port, ports, pids = cluster
    as_gateway(path)
    proc = subprocess.Popen([sys.executable, "-m", "sglang_droidspeak.cli", "serve", str(path), "--run-dir",
                             str(path.parent / "run"), "--health-timeout-s", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=path.parent)
    router, urls = f"http://127.0.0.1:{router_port}", [f"http://127.0.0.1:{p}" for p in ports]
    try:
        wait_for(lambda: gateway_ready(router, proc), 30, "the gateway with 3 healthy workers")
        assert sorted(m["id"] for m in get(router + "/v1/models")[1]["data"]) == ["libwriter", "tester"]
        answer = post(router + "/generate", {"model": "libwriter", "text": "hi"})
        assert (answer["served_by"], answer["port"]) == ("libwriter", ports[2])
        assert main(["status", "--url", router]) == 0
        table = [line.split() for line in capsys.readouterr().out.splitlines()]
        assert sorted(row[:4] for row in table[1:]) == sorted(
            [["tester", urls[0], "yes", "0"], ["tester", urls[1], "yes", "0"], ["libwriter", urls[2], "yes", "0"]])
        assert sorted(row[5] for row in table[1:]) == ["5", "5", "5"]  # foreign_hits scraped from each /metrics

        servers = read_pids(pids)
        subprocess.run(["kill", "-9", str(servers[f"tester-{ports[1]}"])], check=True)
        wait_for(lambda: not {w["url"]: w["is_healthy"] for w in list_workers(router)}[urls[1]], 10,
                 "the gateway to mark tester[1] unhealthy")
        assert [post(router + "/generate", {"model": "tester", "text": "y"})["port"] for _ in range(3)] == [ports[0]] * 3
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out
    assert f"router: {router} (gateway)" in out
    assert "graceful shutdown" in (path.parent / "run" / "logs" / "gateway.log").read_text()  # SIGTERMed
