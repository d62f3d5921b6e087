"""Both front doors over stand-in SGLang servers (standin_sglang.py: the one mock).

``OurRouter`` serves sglang_droidspeak.router on the test's LoopThread; ``Gateway`` runs
SGLang Model Gateway (the pinned sglang-router) as a subprocess in multi-model mode and
registers the stand-ins with their model ids, as ``droidspeak serve`` does. A machine
without the gateway or its vocabulary fails these tests with the reason, unless
DROIDSPEAK_SKIP_GATEWAY_TESTS=1 (then the gateway's tests are skipped). Loopback only.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sglang_droidspeak.cluster.gateway import (  # noqa: F401 (http_status: for the tests)
    gateway_argv,
    http_status,
    list_workers,
    register_workers,
    start_gateway,
)
from sglang_droidspeak.cluster.gateway_vocab import ENV, vocab_dir, vocab_problem
from sglang_droidspeak.router.proxy import build_app, start_router
from sglang_droidspeak.router.settings import RouterSettings

# Short limits so every fault ends within seconds; the same for both doors where both have it.
TEST_SETTINGS = RouterSettings(connect_timeout_s=1.0, first_byte_timeout_s=2.0, idle_timeout_s=1.0,
                               total_timeout_s=2.0, health_check_interval_s=1.0, health_check_timeout_s=1.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gateway_or_skip() -> None:
    """Fail (or skip with DROIDSPEAK_SKIP_GATEWAY_TESTS=1) when the gateway cannot start here."""
    problem = vocab_problem(vocab_dir())
    if importlib.util.find_spec("sglang_router") is None:
        problem = "sglang-router is not installed (bash scripts/install_cpu.sh)"
    if problem and os.environ.get("DROIDSPEAK_SKIP_GATEWAY_TESTS") == "1":
        pytest.skip(f"gateway: {problem}")
    if problem:
        pytest.fail(f"gateway: {problem}; set DROIDSPEAK_SKIP_GATEWAY_TESTS=1 to skip on purpose")


class OurRouter:
    """sglang_droidspeak.router on ``loop`` (a LoopThread) over ``routes``."""

    kind = "droidspeak"

    def __init__(self, loop, routes: dict[str, list[str]], settings: RouterSettings = TEST_SETTINGS):
        self.loop, self.port = loop, free_port()
        self.app = build_app(routes, settings=settings)
        self.runner = loop.run(start_router(self.app, "127.0.0.1", self.port))
        self.url = f"http://127.0.0.1:{self.port}"

    def add(self, model: str, urls: list[str]) -> None:
        raise NotImplementedError("a fresh OurRouter per model set")

    def in_flight(self, model: str) -> int:
        from sglang_droidspeak.router.info import SETS
        return sum(r.in_flight for r in self.app[SETS][model].replicas)

    def close(self) -> None:
        self.loop.run(self.runner.cleanup())


class Gateway:
    """The gateway subprocess on a free port; ``add`` registers stand-ins under a model id."""

    kind = "gateway"

    def __init__(self, log_dir: Path, settings: RouterSettings = TEST_SETTINGS, policy: str = "cache_aware"):
        self.port, metrics = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = gateway_argv(sys.executable, "127.0.0.1", self.port, metrics, settings, policy)
        env = {**os.environ, ENV: str(vocab_dir()), "RUST_BACKTRACE": "0"}
        self.log_path = log_dir / "gateway.log"
        self.proc = start_gateway(argv, self.log_path, env)

    def add(self, model: str, urls: list[str]) -> None:
        try:
            for url in urls:  # one by one: the gateway keeps them in this order
                register_workers(self.url, [(model, url)], 20, alive=lambda: self.proc.poll() is None)
        except RuntimeError as exc:
            raise AssertionError(f"{exc}\n{self.log_path.read_text(errors='replace')[-3000:]}") from None

    def in_flight(self, model: str) -> int:
        return sum(w["load"] for w in list_workers(self.url) if w["model_id"] == model)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
