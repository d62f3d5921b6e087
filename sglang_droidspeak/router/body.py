"""Read a request body within a size limit and parse it as a bounded JSON object.

Memory per request: the body is read once into one buffer (``Content-Length`` known: sized
up front; chunked: grown, never past ``max_bytes``, so up to about 2x while it grows), the nesting depth is checked on that
buffer before any parsing, and ``json.loads`` decodes it (one text copy) into the payload,
whose strings are a third copy. The router keeps the buffer to forward and drops the
payload once it has the model and the prompt hint: about 3x the body at the peak
(tests/unit/test_router_limits.py measures it).
"""

from __future__ import annotations

import json
import re
from typing import Any, Union

import numpy as np
from aiohttp import web

from sglang_droidspeak.router.errors import error_response

_STRINGS = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)  # possessive: no backtracking
_NOT_BRACKETS = re.compile(rb"[^\[\]{}]+")
_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


class BodyError(Exception):
    """A body the router refuses; ``response`` is the JSON error to send."""

    def __init__(self, response: web.Response):
        super().__init__(response.text)
        self.response = response


def json_depth(body: Union[bytes, bytearray]) -> int:
    """The deepest nesting of ``[``/``{`` in a JSON text (brackets inside strings ignored)."""
    brackets = _NOT_BRACKETS.sub(b"", _STRINGS.sub(b'""', body))
    if not brackets:
        return 0
    steps = np.frombuffer(brackets.translate(_STEP), dtype=np.int8)
    return int(np.cumsum(steps, dtype=np.int64).max())


async def read_body(request: web.Request, max_bytes: int) -> bytearray:
    """The whole body, or BodyError 413 as soon as it is known to exceed ``max_bytes``
    (400 when it is longer than its Content-Length)."""
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise BodyError(_too_large(declared, max_bytes))
    if declared is None:
        return await _read_chunked(request, max_bytes)
    buffer, filled = bytearray(declared), 0  # one allocation: no growth copies
    while chunk := await request.content.readany():
        if filled + len(chunk) > declared:
            raise BodyError(error_response(400, "request body is longer than its Content-Length", "invalid_body"))
        buffer[filled:filled + len(chunk)] = chunk
        filled += len(chunk)
    del buffer[filled:]
    return buffer


async def _read_chunked(request: web.Request, max_bytes: int) -> bytearray:
    buffer = bytearray()
    while chunk := await request.content.readany():
        if len(buffer) + len(chunk) > max_bytes:
            raise BodyError(_too_large(len(buffer) + len(chunk), max_bytes))
        buffer += chunk
    return buffer


def parse_object(body: Union[bytes, bytearray], max_depth: int) -> dict[str, Any]:
    """The body as a JSON object; BodyError 400 when it is not JSON, too deep, or not an object."""
    depth = json_depth(body)
    if depth > max_depth:
        raise BodyError(error_response(400, f"request body nests JSON {depth} levels deep; at most "
                                            f"{max_depth} are allowed", "json_too_deep"))
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise BodyError(error_response(400, "request body is not valid JSON", "invalid_json")) from None
    if not isinstance(payload, dict):
        raise BodyError(error_response(400, "request body must be a JSON object", "invalid_json"))
    return payload


def _too_large(size: int, max_bytes: int) -> web.Response:
    return error_response(413, f"request body of {size} bytes or more exceeds the limit of {max_bytes} bytes",
                          "request_too_large")
