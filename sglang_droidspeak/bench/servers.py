"""Start, watch and query SGLang servers for benchmarks and GPU checks (stdlib only).

Used by ``droidspeak bench-prefill`` and the scripts under scripts/gpu/; not a CLI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, NamedTuple, Optional


class Server:
    """One `python -m sglang.launch_server` process with its own log file."""

    def __init__(self, name: str, model: str, port: int, out: Path, *, plugin: bool,
                 config: Optional[dict] = None, extra: tuple[str, ...] = (), env: Optional[dict] = None,
                 backend: str = "triton"):
        self.name, self.port, self.log_path = name, port, out / f"server-{name}.log"
        args = [sys.executable, "-m", "sglang.launch_server", "--model-path", model, "--port", str(port),
                "--host", "127.0.0.1", "--served-model-name", name, "--attention-backend", backend,
                "--enable-metrics", *extra]
        full_env = dict(os.environ, **(env or {}))
        full_env.pop("DROIDSPEAK_CONFIG", None)
        full_env.pop("SGLANG_PLUGINS", None)
        if plugin:
            args += ["--radix-cache-backend", "droidspeak"]
            full_env["SGLANG_PLUGINS"] = "droidspeak"
        if config is not None:
            config_path = out / f"droidspeak-{name}.json"  # JSON is YAML
            config_path.write_text(json.dumps(config))
            full_env["DROIDSPEAK_CONFIG"] = str(config_path)
        self.log = open(self.log_path, "w")
        # own process group: signals reach the scheduler and detokenizer children too
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=full_env,
                                     start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return r.status == 200
        except Exception:
            return False

    def generate(self, body: dict, timeout: float = 300) -> dict:
        return post(self.url + "/generate", body, timeout)

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            return r.read().decode()

    def signal_all(self, sig: int) -> None:
        """Send ``sig`` to the launcher and every process it started (SIGSTOP freezes all)."""
        os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        if self.alive():
            self.signal_all(signal.SIGCONT)
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.signal_all(signal.SIGKILL)
        self.log.close()

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def post(url: str, body: dict, timeout: float = 300) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def wait_healthy(servers: list[Server], timeout: float) -> None:
    """Until every server answers /health; raises (with log tails) if one dies or time runs out."""
    deadline, pending = time.time() + timeout, list(servers)
    while pending:
        for s in list(pending):
            if not s.alive():
                raise RuntimeError(f"server {s.name} died:\n{s.tail()}")
            if s.healthy():
                pending.remove(s)
                print(f"[{time.strftime('%X')}] {s.name} healthy", flush=True)
        if time.time() > deadline:
            raise RuntimeError("not healthy in time: " + ", ".join(f"{s.name}:\n{s.tail(8)}" for s in pending))
        time.sleep(2)


class ServerSpec(NamedTuple):
    """One plugin server of a benchmark: its name, HTTP port, plugin config, extra args and
    GPU (``--base-gpu-id``, put before ``extra``; None: SGLang's default, the first visible)."""

    name: str
    port: int
    config: Optional[dict]
    extra: tuple[str, ...] = ()
    gpu: Optional[str] = None

    @property
    def args(self) -> tuple[str, ...]:
        return (*(() if self.gpu is None else ("--base-gpu-id", self.gpu)), *self.extra)


def startup_waves(specs: list[ServerSpec]) -> list[list[ServerSpec]]:
    """Specs in order, cut into waves with at most one server per GPU: servers of one wave
    start together; two on one GPU never do (their memory profiling would race). No GPU
    given counts as GPU "0".

        GPUs 0,1,1  ->  [a@0, b@1], [c@1]        GPUs 0,0  ->  [a@0], [b@0]
    """
    waves: list[list[ServerSpec]] = []
    for spec in specs:
        if not waves or (spec.gpu or "0") in {s.gpu or "0" for s in waves[-1]}:
            waves.append([])
        waves[-1].append(spec)
    return waves


def start_in_waves(specs: list[ServerSpec], model: str, out: Path, timeout: float) -> list[Server]:
    """Start the servers wave by wave (``startup_waves``), each wave healthy before the next;
    on any failure stop what was started and raise. Returns them in the order of ``specs``."""
    started: list[Server] = []
    try:
        for wave in startup_waves(specs):
            batch = [Server(s.name, model, s.port, out, plugin=True, config=s.config, extra=s.args) for s in wave]
            started += batch
            wait_healthy(batch, timeout)
    except Exception:
        for server in started:
            server.stop()
        raise
    return started


def argv_of(servers: list[Server]) -> dict[str, list[str]]:
    """Each server's launch arguments (after the interpreter), for a result's record."""
    return {s.name: [str(x) for x in s.proc.args[1:]] for s in servers}


def metric_lines(text: str, needle: str = "droidspeak") -> list[str]:
    return [line for line in text.splitlines() if needle in line and not line.startswith("#")]


def metric_sum(text: str, name: str, **labels: Any) -> float:
    """Sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in metric_lines(text, name):
        if not line.startswith(name):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total
