"""Request ids and the access log: one line per request, whatever its end.

The id is the client's ``X-Request-ID`` when it is 1-128 printable ASCII characters without
spaces, else a new ``uuid4().hex``; it goes upstream in the same header and comes back on
every answer (streams included, via ``on_response_prepare``). After the handler ends the
logger ``sglang_droidspeak.router.access`` writes

    rid=<id> POST /v1/chat/completions status=200 model=tester replica=http://h:1 attempts=1 ms=12.3 outcome=ok

``status=499`` when the client went away first (the upstream request is then cancelled).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from dataclasses import dataclass

from aiohttp import web

ACCESS_LOG = logging.getLogger("sglang_droidspeak.router.access")
HEADER = "X-Request-ID"
_VALID = re.compile(r"[!-~]{1,128}")


@dataclass
class Trace:
    """What the access-log line says about one request (the handlers fill it in)."""

    rid: str
    model: str = "-"
    replica: str = "-"
    attempts: int = 0
    outcome: str = "ok"


# aiohttp >= 3.13 types request storage keys; older ones take a string
TRACE = web.RequestKey("trace", Trace) if hasattr(web, "RequestKey") else "droidspeak_trace"


def request_id_of(request: web.Request) -> str:
    given = request.headers.get(HEADER, "")
    return given if _VALID.fullmatch(given) else uuid.uuid4().hex


@web.middleware
async def access_log(request: web.Request, handler) -> web.StreamResponse:
    trace = request[TRACE] = Trace(request_id_of(request))
    start, status = time.perf_counter(), 499
    try:
        response = await handler(request)
        status = response.status
        return response
    except asyncio.CancelledError:
        trace.outcome = "client_gone"
        raise
    finally:
        ACCESS_LOG.info("rid=%s %s %s status=%d model=%s replica=%s attempts=%d ms=%.1f outcome=%s",
                        trace.rid, request.method, request.path, status, trace.model, trace.replica,
                        trace.attempts, 1000 * (time.perf_counter() - start), trace.outcome)


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every answer carries the request's id."""
    if TRACE in request:
        response.headers[HEADER] = request[TRACE].rid
