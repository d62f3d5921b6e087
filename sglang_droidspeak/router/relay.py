"""One forwarding attempt of the router (proxy.handle_forward picks replicas and retries).

    upstream                                  replica      relay(...) returns
    connection error                          fail()       why (handle_forward tries another)
    5xx, and this is not the last replica     fail()       why
    body fails before its first byte          fail()       why
    the last replica's 5xx                    fail()       the response, relayed as below
    any other answer                          -            the response, relayed as it arrives
      ... then the body fails                 fail()       (client connection closed: truncated)
      ... then a clean end, status < 500      mark_ok()

The request body goes upstream byte for byte; the answer comes back chunk by chunk (SSE
streams included) with its status and headers, less the hop-by-hop ones. Imports no SGLang.
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from sglang_droidspeak.router.replicas import Replica, ReplicaSet

# Hop-by-hop and length headers are the transport's business, not the payload's.
_DROP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
         "proxy-authorization", "proxy-authenticate", "host", "content-length"}
UPSTREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


def forward_headers(headers) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in _DROP}


async def relay(request: web.Request, session: aiohttp.ClientSession, rset: ReplicaSet, replica: Replica,
                body: bytes, final: bool) -> web.StreamResponse | str:
    """Forward once to ``replica``; the relayed response, or why it may be retried."""
    try:
        upstream = await session.post(replica.url + request.path, data=body,
                                      headers=forward_headers(request.headers),
                                      params=request.query)
    except UPSTREAM_ERRORS as exc:
        rset.fail(replica)
        return f"{replica.url}: {type(exc).__name__}: {exc}"
    done = False
    try:
        if upstream.status >= 500:
            rset.fail(replica)
            if not final:
                return f"{replica.url}: HTTP {upstream.status}"
        try:
            chunk = await upstream.content.readany()
        except UPSTREAM_ERRORS as exc:
            rset.fail(replica)
            return f"{replica.url}: body failed before its first byte: {type(exc).__name__}"
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                      headers=forward_headers(upstream.headers))
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        done = await _pump(request, rset, replica, upstream, response, chunk)
        return response
    finally:
        if done:
            upstream.release()
        else:
            upstream.close()


async def _pump(request, rset, replica, upstream, response, chunk: bytes) -> bool:
    """Send the headers and copy the body; True when it ended cleanly (the upstream
    connection is reusable). An upstream failure closes the client connection."""
    try:
        await response.prepare(request)
        while chunk:
            await response.write(chunk)
            try:
                chunk = await upstream.content.readany()
            except UPSTREAM_ERRORS:
                rset.fail(replica)
                if request.transport is not None:
                    request.transport.close()  # no clean end: the client sees the truncation
                return False
        await response.write_eof()
    except ConnectionResetError:  # the client went away
        return False
    if upstream.status < 500:
        replica.mark_ok()
    return True
