"""The front door ``droidspeak serve`` puts before the servers (``router.kind`` in the YAML).

``gateway`` (default): SGLang Model Gateway as a subprocess (gateway.py), log in
``<run-dir>/logs/gateway.log``, every server registered under its model name once all are
healthy; its own health checks take dead servers out. ``droidspeak``: our router
(sglang_droidspeak.router) in this process, with the cluster's peers for cross-model
placement; a server that exits is kept marked failed. Both get ``router.settings``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

from sglang_droidspeak.cluster.gateway import gateway_argv, register_workers, start_gateway
from sglang_droidspeak.cluster.gateway_vocab import ENV, vocab_dir, vocab_problem
from sglang_droidspeak.cluster.procs import ServerProcess, say
from sglang_droidspeak.cluster.router_section import RouterConfig


def router_tables(servers: Sequence[ServerProcess]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(routes: model -> replica URLs, peers: receiver URL -> sender URLs) for ``build_app``."""
    routes: dict[str, list[str]] = {}
    for s in servers:
        routes.setdefault(s.plan.model, []).append(s.url)
    peers = {}
    for s in servers:
        models = {p["model"] for p in s.plan.settings.get("peers", ())}
        peers[s.url] = [o.url for o in servers if o.plan.model in models]
    return routes, {url: senders for url, senders in peers.items() if senders}


class OurRouterDoor:
    def __init__(self, runner):
        self.runner = runner

    def alive(self) -> bool:
        return True

    def mark_down(self, url: str) -> None:
        """Keep the replica at ``url`` marked failed (its server exited)."""
        from sglang_droidspeak.router.info import SETS

        for rset in self.runner.app[SETS].values():
            for replica in rset.replicas:
                if replica.url == url and replica.healthy:
                    rset.fail(replica)

    async def stop(self) -> None:
        await self.runner.cleanup()


class GatewayDoor:
    def __init__(self, proc: subprocess.Popen, log_path: Path):
        self.proc, self.log_path = proc, log_path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def mark_down(self, url: str) -> None:
        """Nothing to do: the gateway's health checks take the worker out."""

    async def stop(self, grace_s: float = 10.0) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        await asyncio.to_thread(self.proc.wait)


async def start_front_door(router: RouterConfig, servers: Sequence[ServerProcess], run_dir: Path):
    """The started door, or None (the reason printed)."""
    starter = _start_gateway if router.kind == "gateway" else _start_ours
    try:
        return await starter(router, servers, run_dir)
    except (OSError, RuntimeError) as exc:
        say(f"error: router ({router.kind}) on {router.host}:{router.port}: {exc}", sys.stderr)
        return None


async def _start_ours(router: RouterConfig, servers: Sequence[ServerProcess], run_dir: Path) -> OurRouterDoor:
    from sglang_droidspeak.router.proxy import build_app, start_router

    routes, peers = router_tables(servers)
    return OurRouterDoor(await start_router(build_app(routes, peers, settings=router.settings),
                                            router.host, router.port))


def gateway_problem(environ=os.environ) -> str:
    """Why the gateway cannot start here ("" when it can)."""
    if importlib.util.find_spec("sglang_router") is None:
        return ("sglang-router is not installed: pip install 'sglang-droidspeak[gateway]' "
                "(or set router.kind: droidspeak)")
    return vocab_problem(vocab_dir(environ))


async def _start_gateway(router: RouterConfig, servers: Sequence[ServerProcess], run_dir: Path) -> GatewayDoor:
    problem = gateway_problem()
    if problem:
        raise RuntimeError(problem)
    argv = gateway_argv(sys.executable, router.host, router.port, router.gateway_metrics_port, router.settings,
                        router.policy)
    log_path = run_dir / "logs" / "gateway.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    door = GatewayDoor(start_gateway(argv, log_path, {**os.environ, ENV: str(vocab_dir())}), log_path)
    host = "127.0.0.1" if router.host in ("0.0.0.0", "*") else "[::1]" if router.host == "::" else router.host
    workers = [(s.plan.model, s.url) for s in servers]
    try:
        await asyncio.to_thread(register_workers, f"http://{host}:{router.port}", workers, 60.0, door.alive)
    except RuntimeError as exc:
        await door.stop()
        raise RuntimeError(f"{exc}; see {log_path}") from None
    return door
