"""One forwarding attempt of the router (proxy.forward picks replicas and retries).

    what happens upstream                          replica        relay(...) returns
    connect refused / times out, reset, or the     mark failed    Retry (proxy tries another
      body fails before its first byte                              replica: nothing reached the client)
    marked failed (a health check, other traffic)  -              Retry (our upstream request is
      before our first byte                                         closed: SGLang aborts it)
    no first byte within first_byte_timeout_s      mark failed    504 JSON (no retry: the upstream
      (or total_timeout_s)                                          may still be generating)
    an answer, whatever its status                 -              the answer, relayed as it arrives
      ... then no chunk for idle_timeout_s, or     mark failed    (client connection closed: truncated)
          the body fails
      ... then total_timeout_s runs out            -              (client connection closed: truncated)
      ... then the client goes away                -              (upstream connection closed: cancelled)
      ... then a clean end                         mark ok

An upstream's own error answer (a 500, a 503) is passed through once and never replayed on
the other replicas. The request body goes upstream byte for byte with the request id; the
answer comes back chunk by chunk (SSE streams included) with its status and headers, less
the hop-by-hop ones. Headers are held until the first body chunk, so "first byte" means the
first chunk. Imports no SGLang.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import NamedTuple, Optional

import aiohttp
from aiohttp import web

from sglang_droidspeak.router.access import TRACE
from sglang_droidspeak.router.errors import error_response
from sglang_droidspeak.router.replicas import Replica, ReplicaSet
from sglang_droidspeak.router.settings import RouterSettings
from sglang_droidspeak.router.upstream import UPSTREAM_ERRORS, forward_headers


UPLOAD_CHUNK = 1 << 18


async def body_chunks(body: Optional[bytearray]):
    """The body in 256 KiB views, each sent when the socket takes it: Python 3.11's
    transport would otherwise copy whatever one write could not send at once."""
    view = memoryview(body or b"")
    for start in range(0, len(view), UPLOAD_CHUNK):
        yield view[start:start + UPLOAD_CHUNK]


def _headers(request: web.Request, body: Optional[bytearray]) -> dict[str, str]:
    headers = forward_headers(request.headers, request[TRACE].rid)
    if body:
        headers["Content-Length"] = str(len(body))  # not chunked: the upstream sees the length
    return headers


class Retry(NamedTuple):
    """A failure before any byte reached the client: another replica may take the request."""

    reason: str


async def relay(request: web.Request, session: aiohttp.ClientSession, rset: ReplicaSet, replica: Replica,
                body: Optional[bytearray], settings: RouterSettings) -> web.StreamResponse | Retry:
    """Forward once to ``replica``; the relayed (or 504) response, or a Retry."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.total_timeout_s
    try:
        async with asyncio.timeout_at(min(deadline, loop.time() + settings.first_byte_timeout_s)):
            first = _first_chunk(request, session, replica, body)
            upstream, chunk = await _unless_marked_failed(replica, first)
    except ReplicaFailed:
        return Retry(f"{replica.url}: marked failed before its first byte")
    except UPSTREAM_ERRORS as exc:
        rset.fail(replica)
        if isinstance(exc, aiohttp.ClientError) or not isinstance(exc, asyncio.TimeoutError):
            return Retry(f"{replica.url}: {type(exc).__name__}: {exc}")
        request[TRACE].outcome = "first_byte_timeout"
        return error_response(504, f"{replica.url} sent no answer within {settings.first_byte_timeout_s:g} s",
                              "upstream_timeout")
    try:
        return await _pump(request, rset, replica, upstream, chunk, deadline, settings.idle_timeout_s)
    finally:
        upstream.close()  # a no-op after release(); otherwise the upstream sees the disconnect


class ReplicaFailed(Exception):
    """The replica was marked failed while this request waited for its first byte."""


async def _first_chunk(request: web.Request, session: aiohttp.ClientSession, replica: Replica,
                       body: Optional[bytearray]) -> tuple[aiohttp.ClientResponse, bytes]:
    upstream = await session.request(request.method, replica.url + request.path, data=body_chunks(body),
                                     headers=_headers(request, body), params=request.query)
    try:
        return upstream, await upstream.content.readany()
    except BaseException:
        upstream.close()
        raise


async def _unless_marked_failed(replica: Replica, first) -> tuple[aiohttp.ClientResponse, bytes]:
    """Await ``first``; raise ReplicaFailed (``first`` cancelled: its connection closes) as soon as
    ``replica`` is marked failed."""
    work, failed = asyncio.ensure_future(first), asyncio.ensure_future(replica.failed.wait())
    try:
        await asyncio.wait((work, failed), return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            return work.result()
        raise ReplicaFailed
    finally:
        for task in (work, failed):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, *UPSTREAM_ERRORS):
            await work


async def _pump(request: web.Request, rset: ReplicaSet, replica: Replica, upstream: aiohttp.ClientResponse,
                chunk: bytes, deadline: float, idle_s: float) -> web.StreamResponse:
    """Send the headers and copy the body chunk by chunk (see the table above)."""
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                  headers=forward_headers(upstream.headers))
    if upstream.content_length is not None:
        response.content_length = upstream.content_length
    loop = asyncio.get_running_loop()
    try:
        await response.prepare(request)
        while chunk:
            await response.write(chunk)
            async with asyncio.timeout_at(min(deadline, loop.time() + idle_s)):
                chunk = await upstream.content.readany()
        await response.write_eof()
    except ConnectionResetError:  # the client went away (aiohttp's ClientConnectionResetError)
        request[TRACE].outcome = "client_gone"
        return response
    except UPSTREAM_ERRORS as exc:
        if loop.time() < deadline:  # idle timeout or a broken body: the replica's fault
            rset.fail(replica)
        request[TRACE].outcome = f"truncated: {type(exc).__name__}"
        if request.transport is not None:
            request.transport.close()  # no clean end: the client sees the truncation
        return response
    upstream.release()
    replica.mark_ok()
    return response
