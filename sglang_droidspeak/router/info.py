"""The router's own answers: GET /v1/models, /v1/models/{id}, /health and /status.

/v1/models follows the OpenAI API (``id``, ``object``, ``created``, ``owned_by``).
/health answers 200 when every model has a live (not failed) replica, else 503 with the
models that have none. /status adds each replica's /metrics summary; replicas marked
failed are not scraped and the others get ``status_timeout_s`` together, so /status
never waits on a dead or hung replica.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web

from sglang_droidspeak.router.errors import error_response
from sglang_droidspeak.router.metrics_summary import summarize_metrics
from sglang_droidspeak.router.replicas import Replica, ReplicaSet
from sglang_droidspeak.router.settings import RouterSettings
from sglang_droidspeak.router.upstream import UPSTREAM_ERRORS

SETS = web.AppKey("replica_sets", dict)
SESSION = web.AppKey("client_session", aiohttp.ClientSession)
SETTINGS = web.AppKey("router_settings", RouterSettings)
CREATED = web.AppKey("created", int)
OWNER = "sglang-droidspeak"


def _model_card(app: web.Application, model: str) -> dict:
    return {"id": model, "object": "model", "created": app[CREATED], "owned_by": OWNER}


async def handle_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [_model_card(request.app, m) for m in request.app[SETS]]})


async def handle_model(request: web.Request) -> web.Response:
    model = request.match_info["model"]
    if model not in request.app[SETS]:
        return error_response(404, f"The model '{model}' does not exist", "model_not_found", "model")
    return web.json_response(_model_card(request.app, model))


async def handle_health(request: web.Request) -> web.Response:
    sets: dict[str, ReplicaSet] = request.app[SETS]
    models = {m: [r.to_json() for r in s.replicas] for m, s in sets.items()}
    dead = [m for m, s in sets.items() if not s.live()]
    if dead:
        return error_response(503, f"no live replica for model(s): {', '.join(dead)}", "no_live_replica",
                              status="unavailable", models=models)
    return web.json_response({"status": "ok", "models": models})


async def _replica_status(session: aiohttp.ClientSession, replica: Replica, timeout_s: float) -> dict:
    status = {"url": replica.url, "healthy": replica.healthy, "in_flight": replica.in_flight,
              "metrics": None, "metrics_error": None}
    if not replica.healthy:
        status["metrics_error"] = "replica marked failed: not scraped"
        return status
    try:  # identity: the session does not decompress (it relays bodies as they are)
        async with session.get(replica.url + "/metrics", headers={"Accept-Encoding": "identity"},
                               timeout=aiohttp.ClientTimeout(total=timeout_s)) as upstream:
            if upstream.status != 200:
                raise aiohttp.ClientError(f"HTTP {upstream.status}")
            status["metrics"] = summarize_metrics(await upstream.text(errors="replace"))
    except UPSTREAM_ERRORS as exc:
        status["metrics_error"] = f"{type(exc).__name__}: {exc}"
    return status


async def handle_status(request: web.Request) -> web.Response:
    sets, timeout_s = request.app[SETS], request.app[SETTINGS].status_timeout_s
    found = iter(await asyncio.gather(*(_replica_status(request.app[SESSION], r, timeout_s)
                                        for s in sets.values() for r in s.replicas)))
    return web.json_response({"models": {m: {"replicas": [next(found) for _ in s.replicas]}
                                         for m, s in sets.items()}})


def add_info_routes(app: web.Application) -> None:
    app[CREATED] = int(time.time())
    app.router.add_get("/v1/models", handle_models)
    app.router.add_get("/v1/models/{model:.+}", handle_model)
    app.router.add_get("/health", handle_health)
    app.router.add_get("/status", handle_status)
