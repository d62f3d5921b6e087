"""Errors in the OpenAI API's format, for every answer the router itself gives.

    {"error": {"message": "...", "type": "invalid_request_error", "param": null, "code": "model_not_found"}}

``json_errors`` is a middleware: aiohttp's own refusals (unknown route 404, wrong method
405, body too large 413) and any unexpected exception (500) leave as such JSON too.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from aiohttp import web

LOG = logging.getLogger("sglang_droidspeak.router")

# HTTP status -> OpenAI error "type"
_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 405: "invalid_request_error",
          413: "invalid_request_error", 502: "upstream_error", 503: "service_unavailable",
          504: "timeout_error"}


def error_body(status: int, message: str, code: Optional[str] = None, param: Optional[str] = None) -> dict[str, Any]:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(http_status: int, message: str, code: Optional[str] = None, param: Optional[str] = None,
                   **extra: Any) -> web.Response:
    """A JSON error answer; ``extra`` keys go beside ``error`` (e.g. /health's model table)."""
    return web.json_response({**error_body(http_status, message, code, param), **extra}, status=http_status)


_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


@web.middleware
async def json_errors(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text if exc.status != 404 else f"no route {request.method} {request.path}"
        response = error_response(exc.status, message or exc.reason, _CODES.get(exc.status))
        for name in ("Allow", "Retry-After"):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    except Exception:  # noqa: BLE001 -- the client gets JSON, the log gets the traceback
        LOG.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal router error", "internal_error")
