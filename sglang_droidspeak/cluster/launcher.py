"""``droidspeak serve CONFIG``: start every server of a cluster config, then the router.

    export DROIDSPEAK_SECRET=$(openssl rand -hex 16)
    droidspeak serve cluster.yaml [--run-dir DIR] [--health-timeout-s 600] [--no-router]

1. ``check_cluster``; any error: the report is printed and the exit status is 1
   (incompatible pairs are warnings: those models are served, they just never share).
2. ``$<transfer.secret_env>`` must hold >= 16 bytes, else exit 1 (the servers need it).
3. Each server (``plan_cluster``, with this Python as ``python``) gets its settings in
   ``<run-dir>/<model>-<replica>.json`` (``DROIDSPEAK_CONFIG`` names it), the plan's env
   over this process's env, its output in ``<run-dir>/logs/<model>-<replica>.log`` and
   its own process group.
4. Polls every server's GET /health until 200. A server that exits first, or the
   ``--health-timeout-s`` running out: log tails are printed, everything is stopped,
   exit 1.
5. The front door on ``router.host:port`` (front_door.py): SGLang Model Gateway by
   default (a subprocess; every server registered under its model name), or with
   ``router.kind: droidspeak`` our router in this process (routes {model: replica URLs};
   peers: each receiver replica -> every replica of every model in its settings'
   ``peers``). Then a table of the servers is printed.
6. Serves until SIGINT or SIGTERM (exit 0). A server that dies meanwhile is reported (our
   router keeps it marked failed; the gateway's health checks take it out); the others
   keep serving. When every server has died, or the gateway has: exit 1.
7. Shutdown: front door first, then SIGINT to every server's process group, SIGKILL to the
   groups still there after 30 s.
A SIGINT/SIGTERM while starting stops everything too (exit 0). All servers are started
on this machine: a replica host must be one of its addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

from sglang_droidspeak.cluster.check import check_cluster
from sglang_droidspeak.cluster.cli import print_report
from sglang_droidspeak.cluster.config import ClusterConfig, ClusterConfigError, load_cluster_config
from sglang_droidspeak.cluster.front_door import router_tables, start_front_door  # noqa: F401 (router_tables: re-exported)
from sglang_droidspeak.cluster.layout import ClusterPlan, plan_cluster
from sglang_droidspeak.cluster.procs import ServerProcess, say, start_server, stop_servers, wait_healthy
from sglang_droidspeak.cluster.router_section import RouterConfig
from sglang_droidspeak.sglang.settings import MIN_SECRET_BYTES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="cluster YAML file")
    parser.add_argument("--run-dir", default=None,
                        help="settings files and logs/ go here (default: out/serve/<name or config stem>)")
    parser.add_argument("--health-timeout-s", type=float, default=600.0,
                        help="give up when a server is not healthy after this long")
    parser.add_argument("--no-router", action="store_true", help="start the servers only")


def secret_problem(config: ClusterConfig, environ: Mapping[str, str]) -> str:
    """Why ``$<transfer.secret_env>`` cannot be used, or "" when it can."""
    name = config.transfer.secret_env
    value = environ.get(name)
    if value is None:
        return (f"transfer.secret_env: ${name} is not set; every server needs the same shared secret "
                f"(>= {MIN_SECRET_BYTES} bytes), e.g. export {name}=$(openssl rand -hex 16)")
    if len(value.encode("utf-8", "surrogateescape")) < MIN_SECRET_BYTES:
        return f"transfer.secret_env: ${name} is shorter than {MIN_SECRET_BYTES} bytes"
    return ""


def run(args: argparse.Namespace) -> int:
    try:
        config = load_cluster_config(args.config)
    except ClusterConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report = check_cluster(config)
    print_report(config, report, sys.stdout if report.ok else sys.stderr)
    if not report.ok:
        return 1
    problem = secret_problem(config, os.environ)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    plan = plan_cluster(config, report, python=sys.executable)
    run_dir = Path(args.run_dir or Path("out/serve") / (config.name or Path(args.config).stem))
    return asyncio.run(serve(plan, run_dir, args.health_timeout_s, router=not args.no_router, front_door=config.router))


async def serve(plan: ClusterPlan, run_dir: Path, health_timeout_s: float = 600.0, router: bool = True,
                grace_s: float = 30.0, env: Optional[Mapping[str, str]] = None,
                front_door: Optional[RouterConfig] = None) -> int:
    """Start, watch and stop the cluster ``plan`` (steps 3-7 above); the exit status.

    ``env`` (default ``os.environ``) is the base of every server's environment;
    ``front_door`` (default: the gateway on ``plan.router``) says which router to start."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    servers: list[ServerProcess] = []
    try:
        door_config = front_door or RouterConfig(*plan.router)
        return await _run(plan, run_dir, servers, stop, health_timeout_s, router and door_config, env)
    finally:
        try:
            if servers:
                say(f"stopping {len(servers)} server(s)")
        finally:
            await asyncio.to_thread(stop_servers, servers, grace_s)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


async def _run(plan: ClusterPlan, run_dir: Path, servers: list[ServerProcess], stop: asyncio.Event,
               health_timeout_s: float, router: Optional[RouterConfig], env: Optional[Mapping[str, str]]) -> int:
    run_dir.mkdir(parents=True, exist_ok=True)
    for server_plan in plan.servers:
        try:
            servers.append(start_server(server_plan, run_dir, os.environ if env is None else env))
        except OSError as exc:
            say(f"error: cannot start {server_plan.model}[{server_plan.replica_index}]: {exc}", sys.stderr)
            return 1
    say(f"started {len(servers)} server(s); waiting for /health (logs in {run_dir / 'logs'})")
    problem = await wait_healthy(servers, health_timeout_s, stop)
    if problem:
        say(f"error: {problem}", sys.stderr)
        return 1
    if problem == "":
        say("stop requested while starting")
        return 0
    door = None
    try:
        if router:
            door = await start_front_door(router, servers, run_dir)
            if door is None:
                return 1
        print_table(plan, servers, router, run_dir)
        return await watch(servers, stop, door)
    finally:
        if door is not None:
            await door.stop()


def print_table(plan: ClusterPlan, servers: Sequence[ServerProcess], router: Optional[RouterConfig],
                run_dir: Path) -> None:
    rows = [("model", "replica", "url", "gpus", "pid", "log")]
    rows += [(s.plan.model, str(s.plan.replica_index), s.url, ",".join(map(str, s.plan.gpus)) or "-",
              str(s.proc.pid), str(s.log_path)) for s in servers]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    if router:
        host, port = plan.router
        print(f"router: http://{host}:{port} ({router.kind})  (droidspeak status --url http://{host}:{port})")
    say(f"serving {plan.name or run_dir.name}; SIGINT or SIGTERM stops it")


async def watch(servers: Sequence[ServerProcess], stop: asyncio.Event, door=None, poll_s: float = 1.0) -> int:
    """Until ``stop``: report servers that exit and tell ``door`` (the front door) about
    them. 0 when stopped; 1 when every server, or the front door, has exited."""
    while not stop.is_set():
        if door is not None and not door.alive():
            say(f"error: the front door exited; see {getattr(door, 'log_path', 'its log')}", sys.stderr)
            return 1
        for s in servers:
            if s.alive():
                continue
            if not s.reported_exit:
                s.reported_exit = True
                say(f"error: {s.name} ({s.url}) exited with code {s.proc.returncode}; the others keep "
                    f"serving; last lines of {s.log_path}:\n{s.tail()}", sys.stderr)
            if door is not None:
                door.mark_down(s.url)
        if servers and not any(s.alive() for s in servers):
            say("error: every server has exited", sys.stderr)
            return 1
        try:
            await asyncio.wait_for(stop.wait(), poll_s)
        except asyncio.TimeoutError:
            pass
    say("stop requested")
    return 0
