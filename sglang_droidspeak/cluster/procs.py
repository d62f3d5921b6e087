"""Server processes of a launched cluster: start, health-poll, tail, stop (imports no SGLang).

Each server runs in its own session (so its process group is its own): a Ctrl-C at the
launcher's terminal reaches only the launcher, which then stops every group itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence, TextIO

import aiohttp

from sglang_droidspeak.cluster.config import WILDCARD_HOSTS
from sglang_droidspeak.cluster.layout import ServerPlan
from sglang_droidspeak.sglang.settings import CONFIG_ENV


def say(message: str, out: Optional[TextIO] = None) -> None:
    """One timestamped line on ``out`` (default: the current ``sys.stdout``), flushed."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=out or sys.stdout, flush=True)


def local_url(plan: ServerPlan) -> str:
    """The URL this machine reaches the server at: a wildcard host becomes loopback."""
    host = plan.host
    if host in WILDCARD_HOSTS:
        host = "::1" if host == "::" else "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{plan.port}"


@dataclass
class ServerProcess:
    """One started server: its plan, files and process (the leader of its own group)."""

    plan: ServerPlan
    url: str
    settings_path: Path
    log_path: Path
    proc: subprocess.Popen
    reported_exit: bool = False  # the launcher already said that it died

    @property
    def name(self) -> str:
        return f"{self.plan.model}[{self.plan.replica_index}]"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of its log ("" when there is no log yet)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def file_stem(plan: ServerPlan) -> str:
    return f"{plan.model}-{plan.replica_index}"


def server_env(plan: ServerPlan, settings_path: Path, base: Mapping[str, str]) -> dict[str, str]:
    """``base`` + the plan's env + ``DROIDSPEAK_CONFIG=settings_path`` (the latter two win)."""
    return {**base, **plan.env, CONFIG_ENV: str(settings_path)}


def start_server(plan: ServerPlan, run_dir: Path, base_env: Mapping[str, str]) -> ServerProcess:
    """Write ``<run_dir>/<model>-<replica>.json`` (the settings) and start ``plan.command``
    with output to ``<run_dir>/logs/<model>-<replica>.log``. Raises OSError when the
    command cannot be started (the log file is closed then)."""
    stem = file_stem(plan)
    settings_path = run_dir / f"{stem}.json"
    settings_path.write_text(json.dumps(plan.settings, indent=2) + "\n")
    log_path = run_dir / "logs" / f"{stem}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(plan.command, env=server_env(plan, settings_path, base_env), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    return ServerProcess(plan, local_url(plan), settings_path, log_path, proc)


async def is_healthy(session: aiohttp.ClientSession, url: str, timeout_s: float = 2.0) -> bool:
    """GET ``url``/health answers 200 within ``timeout_s``."""
    try:
        async with session.get(url + "/health", timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            return r.status == 200
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        return False


async def wait_healthy(servers: Sequence[ServerProcess], timeout_s: float, stop: asyncio.Event,
                       poll_s: float = 0.5, tail_lines: int = 20) -> Optional[str]:
    """Poll every server's /health until all answer 200.

    Returns None when all are healthy, "" when ``stop`` was set first, else why not: the
    first server found exited (with its log tail), or the ones not healthy after
    ``timeout_s`` (with their tails).
    """
    deadline = time.monotonic() + timeout_s
    pending = list(servers)
    async with aiohttp.ClientSession() as session:
        while pending:
            for server in list(pending):
                if not server.alive():
                    return (f"{server.name} exited with code {server.proc.returncode} before it was healthy; "
                            f"last lines of {server.log_path}:\n{server.tail(tail_lines)}")
                if await is_healthy(session, server.url):
                    pending.remove(server)
                    say(f"{server.name} healthy at {server.url}")
            if not pending:
                return None
            if time.monotonic() >= deadline:
                parts = [f"{s.name} ({s.log_path}):\n{s.tail(tail_lines)}" for s in pending]
                return f"not healthy after {timeout_s:g} s: " + "\n".join(parts)
            try:
                await asyncio.wait_for(stop.wait(), poll_s)
                return ""
            except asyncio.TimeoutError:
                pass
    return None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_servers(servers: Sequence[ServerProcess], grace_s: float = 30.0, poll_s: float = 0.1) -> None:
    """SIGINT every server's process group, wait until every group is empty (at most
    ``grace_s``), then SIGKILL the groups left; every leader is reaped on return."""
    for server in servers:
        if server.alive():
            _signal_group(server.proc.pid, signal.SIGINT)
    deadline = time.monotonic() + grace_s
    while True:
        for server in servers:
            server.proc.poll()  # reap: a zombie leader would keep its group "alive"
        left = [s for s in servers if _group_alive(s.proc.pid)]
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    for server in left:
        say(f"{server.name}: still running after {grace_s:g} s: SIGKILL")
        _signal_group(server.proc.pid, signal.SIGKILL)
    for server in servers:
        server.proc.wait()
