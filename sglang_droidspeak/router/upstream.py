"""What the router sends upstream besides the body: headers, and the errors it expects."""

from __future__ import annotations

import asyncio

import aiohttp

from sglang_droidspeak.router.access import HEADER

# Hop-by-hop and length headers are the transport's business, not the payload's.
_DROP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
         "proxy-authorization", "proxy-authenticate", "host", "content-length", HEADER.lower()}
# aiohttp's connect/read errors (ConnectionTimeoutError included), a timeout, the OS's resets
UPSTREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


def forward_headers(headers, request_id: str | None = None) -> dict[str, str]:
    """``headers`` less the hop-by-hop ones, with ``X-Request-ID: request_id`` when given."""
    kept = {k: v for k, v in headers.items() if k.lower() not in _DROP}
    if request_id is not None:
        kept[HEADER] = request_id
    return kept
