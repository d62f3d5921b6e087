"""Active health checks: every replica's GET /health, every ``health_check_interval_s``.

A probe that answers 200 within ``health_check_timeout_s`` marks a failed replica ok
again; any other outcome (refused, reset, timeout, non-200) marks it failed at once,
which also takes it out of prefix affinity (``Replica.mark_failed``). Traffic marks
replicas failed too (relay.py); this loop is what brings them back. Probes of one round
run concurrently, so one hung replica delays no other.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from sglang_droidspeak.router.replicas import Replica, ReplicaSet
from sglang_droidspeak.router.upstream import UPSTREAM_ERRORS

LOG = logging.getLogger("sglang_droidspeak.router")


async def probe(session: aiohttp.ClientSession, replica: Replica, timeout_s: float) -> bool:
    """GET ``replica.url``/health answered 200 within ``timeout_s``."""
    try:
        async with session.get(replica.url + "/health", timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            return r.status == 200
    except UPSTREAM_ERRORS:
        return False


async def check_once(session: aiohttp.ClientSession, sets: dict[str, ReplicaSet], timeout_s: float) -> None:
    pairs = [(rset, r) for rset in sets.values() for r in rset.replicas]
    results = await asyncio.gather(*(probe(session, r, timeout_s) for _, r in pairs))
    for (rset, replica), ok in zip(pairs, results):
        if ok and not replica.healthy:
            LOG.info("%s (%s) answers its health check again", replica.url, rset.model)
            replica.mark_ok()
        elif not ok and replica.healthy:
            LOG.warning("%s (%s) failed its health check: marked failed", replica.url, rset.model)
            rset.fail(replica)


async def check_forever(session: aiohttp.ClientSession, sets: dict[str, ReplicaSet], interval_s: float,
                        timeout_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        await check_once(session, sets, timeout_s)
