"""The router's HTTP side: an aiohttp app that forwards each request to one replica.

POST /v1/chat/completions, /v1/completions and /generate read the JSON body's "model"
(or take the only model when there is one and the field is absent), pick a replica of
that model (``ReplicaSet.pick``) and forward the body byte for byte. The upstream answer
is relayed chunk by chunk as it arrives (SSE streams included), with its status and
headers. A connection error, a body that fails before its first byte, or a 5xx before
anything reached the client marks the replica failed and retries on another replica of
the same model, at most once per replica; the last replica's 5xx is passed through.
Once bytes reached the client, an upstream failure closes the client's connection, so
the client sees a truncated response rather than a clean end (one attempt: relay.py).
GET /v1/models lists the models, GET /health reports replica state, GET /status adds
each replica's /metrics summary (``summarize_metrics``; scraped with a 2 s timeout, null
with an error on failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
from typing import Any

import aiohttp
from aiohttp import web

from sglang_droidspeak.router.relay import UPSTREAM_ERRORS, relay
from sglang_droidspeak.router.replicas import (
    PickConfig,
    Replica,
    ReplicaSet,
    link_peers,
)

SETS = web.AppKey("replica_sets", dict)
SESSION = web.AppKey("client_session", aiohttp.ClientSession)
CONNECT_TIMEOUT = web.AppKey("connect_timeout_s", float)


def error_response(status: int, message: str, kind: str) -> web.Response:
    """An OpenAI-style JSON error body."""
    body = {"error": {"message": message, "type": kind, "code": status}}
    return web.json_response(body, status=status)


def _text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # content parts, a prompt list or token ids
        return "\x1f".join(_text_of(v) for v in value)
    if isinstance(value, dict):
        return _text_of(value.get("text", ""))
    return "" if value is None else str(value)


def prompt_hint(payload: dict, limit: int) -> str:
    """The request's prompt as text (about ``limit`` characters are enough): chat
    messages as role + content, else "prompt" (completions), "text" or "input_ids"."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        parts, size = [], 0
        for m in messages:
            piece = f"\x1e{m.get('role', '')}\x1d{_text_of(m.get('content'))}" if isinstance(m, dict) else ""
            parts.append(piece)
            size += len(piece)
            if size >= limit:
                break
        return "".join(parts)[:limit]
    for key in ("prompt", "text", "input_ids"):
        if key in payload:
            return _text_of(payload[key])[:limit]
    return ""


def _resolve_model(payload: dict, sets: dict[str, ReplicaSet]) -> tuple[str | None, web.Response | None]:
    model = payload.get("model")
    if model is None:
        if len(sets) == 1:
            return next(iter(sets)), None
        return None, error_response(400, f"missing field 'model' (one of: {', '.join(sets)})",
                                    "invalid_request_error")
    if not isinstance(model, str) or model not in sets:
        return None, error_response(404, f"unknown model {model!r}; known: {', '.join(sets)}",
                                    "model_not_found")
    return model, None


async def handle_forward(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    try:
        payload = json.loads(body)
    except ValueError:
        return error_response(400, "request body is not valid JSON", "invalid_request_error")
    if not isinstance(payload, dict):
        return error_response(400, "request body must be a JSON object", "invalid_request_error")
    sets = request.app[SETS]
    model, rejection = _resolve_model(payload, sets)
    if rejection is not None:
        return rejection
    rset = sets[model]
    hint = prompt_hint(payload, rset.config.prefix_chars)
    tried: list[Replica] = []
    reasons: list[str] = []
    while len(tried) < len(rset):
        replica = rset.pick(hint, exclude=tried)
        tried.append(replica)
        replica.in_flight += 1
        try:
            outcome = await relay(request, request.app[SESSION], rset, replica, body,
                                  final=len(tried) == len(rset))
        finally:
            replica.in_flight -= 1
        if not isinstance(outcome, str):
            return outcome
        reasons.append(outcome)
    return error_response(502, f"every replica of model {model!r} failed: {'; '.join(reasons)}",
                          "upstream_error")


async def handle_models(request: web.Request) -> web.Response:
    data = [{"id": m, "object": "model", "owned_by": "sglang-droidspeak"} for m in request.app[SETS]]
    return web.json_response({"object": "list", "data": data})


async def handle_health(request: web.Request) -> web.Response:
    models = {m: [r.to_json() for r in s.replicas] for m, s in request.app[SETS].items()}
    return web.json_response({"status": "ok", "models": models})


# /status summary key -> Prometheus sample name. Gauges (no _total): mean over the
# samples (one per rank), None when absent; counters: sum, 0 when absent (not yet counted).
STATUS_METRICS = {"cache_hit_rate": "sglang:cache_hit_rate", "token_usage": "sglang:token_usage",
                  "droidspeak_foreign_hits": "sglang:droidspeak_foreign_hits_total",
                  "droidspeak_tokens_reused": "sglang:droidspeak_tokens_reused_total",
                  "droidspeak_fallbacks": "sglang:droidspeak_fallbacks_total"}


def summarize_metrics(text: str) -> dict[str, float | None]:
    """``STATUS_METRICS`` from Prometheus text (``name{labels} value [timestamp]`` lines)."""
    samples: dict[str, list[float]] = {}
    for line in (x for x in text.splitlines() if not x.startswith("#")):
        name, brace, rest = line.partition("{")
        if not brace or " " in name:  # no labels
            name, _, rest = line.partition(" ")
        with contextlib.suppress(ValueError, IndexError):
            samples.setdefault(name.strip(), []).append(float(rest.rpartition("}")[2].split()[0]))
    return {key: sum(samples.get(name, [])) if name.endswith("_total")
            else statistics.fmean(samples[name]) if name in samples else None
            for key, name in STATUS_METRICS.items()}


async def _replica_status(session: aiohttp.ClientSession, replica: Replica) -> dict:
    status = {"url": replica.url, "healthy": replica.healthy, "in_flight": replica.in_flight,
              "metrics": None, "metrics_error": None}
    try:  # identity: the session does not decompress (it relays bodies as they are)
        async with session.get(replica.url + "/metrics", headers={"Accept-Encoding": "identity"},
                               timeout=aiohttp.ClientTimeout(total=2.0)) as upstream:
            if upstream.status != 200:
                raise aiohttp.ClientError(f"HTTP {upstream.status}")
            status["metrics"] = summarize_metrics(await upstream.text(errors="replace"))
    except UPSTREAM_ERRORS as exc:
        status["metrics_error"] = f"{type(exc).__name__}: {exc}"
    return status


async def handle_status(request: web.Request) -> web.Response:
    sets = request.app[SETS]
    found = iter(await asyncio.gather(*(_replica_status(request.app[SESSION], r)
                                        for s in sets.values() for r in s.replicas)))
    return web.json_response({"models": {m: {"replicas": [next(found) for _ in s.replicas]}
                                         for m, s in sets.items()}})


async def _session_context(app: web.Application):
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=app[CONNECT_TIMEOUT])
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector,
                                     auto_decompress=False) as session:
        app[SESSION] = session
        yield


def build_app(routes: dict[str, list[str]], peers: dict[str, list[str]] | None = None,
              config: PickConfig | None = None, connect_timeout_s: float = 5.0) -> web.Application:
    """The router app for ``routes`` (model name -> replica base URLs).

    ``peers`` (receiver replica URL -> sender replica URLs of other models) tells which
    replicas can fetch DroidSpeak KV from which; see ``replicas.link_peers``. Raises
    ValueError naming a model without URLs or a peer URL that is not a replica.
    """
    if not routes:
        raise ValueError("routes: at least one model is needed")
    sets = {model: ReplicaSet(model, urls, config or PickConfig()) for model, urls in routes.items()}
    link_peers(sets, peers or {})
    app = web.Application(client_max_size=1 << 30)
    app[SETS] = sets
    app[CONNECT_TIMEOUT] = connect_timeout_s
    app.cleanup_ctx.append(_session_context)
    for path in ("/v1/chat/completions", "/v1/completions", "/generate"):
        app.router.add_post(path, handle_forward)
    app.router.add_get("/v1/models", handle_models)
    app.router.add_get("/health", handle_health)
    app.router.add_get("/status", handle_status)
    return app
