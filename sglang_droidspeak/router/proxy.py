"""The router's HTTP side: an aiohttp app that forwards each request to one replica.

SGLang's data-plane routes (``MODEL_POSTS``: chat/completions, completions, /generate,
embeddings, rerank, score, tokenize, detokenize, encode, classify, messages) read the
JSON body's "model" (or take the only model when there is one and the field is absent),
pick a live replica of that model (``ReplicaSet.pick``) and forward the body byte for
byte (relay.py: timeouts, retries, streaming). ``MODEL_GETS`` (model and server info,
load) go to a live replica of the model named by ``?model=`` (or the only model). POST
/flush_cache goes to every replica. The router's own answers are in info.py; every other
route gets a JSON 404. Every request
gets an id and one access-log line (access.py); every error is OpenAI-style JSON
(errors.py). Bodies are read within ``max_body_bytes`` and checked for depth before
parsing (body.py). ``start_router`` serves the app with handler cancellation on, so a
client that disconnects cancels the upstream request.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

import aiohttp
from aiohttp import web

from sglang_droidspeak.router.access import TRACE, access_log, add_request_id
from sglang_droidspeak.router.body import BodyError, parse_object, read_body
from sglang_droidspeak.router.errors import error_response, json_errors
from sglang_droidspeak.router.health import check_forever
from sglang_droidspeak.router.info import SESSION, SETS, SETTINGS, add_info_routes
from sglang_droidspeak.router.metrics_summary import summarize_metrics  # noqa: F401 (re-exported)
from sglang_droidspeak.router.prompt import prompt_hint
from sglang_droidspeak.router.relay import Retry, relay
from sglang_droidspeak.router.replicas import PickConfig, ReplicaSet, link_peers
from sglang_droidspeak.router.settings import RouterSettings
from sglang_droidspeak.router.upstream import UPSTREAM_ERRORS

MODEL_POSTS = ("/v1/chat/completions", "/v1/completions", "/generate", "/v1/embeddings", "/v1/rerank",
               "/v1/score", "/v1/tokenize", "/tokenize", "/v1/detokenize", "/detokenize", "/encode",
               "/classify", "/v1/messages", "/v1/messages/count_tokens")
MODEL_GETS = ("/get_model_info", "/model_info", "/get_server_info", "/server_info", "/get_load")
_THREAD_PARSE_BYTES = 1 << 20  # bigger bodies are parsed off the event loop


def resolve_model(model: Any, sets: dict[str, ReplicaSet]) -> tuple[Optional[str], Optional[web.Response]]:
    if model is None:
        if len(sets) == 1:
            return next(iter(sets)), None
        return None, error_response(400, f"missing field 'model' (one of: {', '.join(sets)})",
                                    "model_required", "model")
    if not isinstance(model, str) or model not in sets:
        return None, error_response(404, f"The model {model!r} does not exist; known: {', '.join(sets)}",
                                    "model_not_found", "model")
    return model, None


async def _payload(request: web.Request) -> tuple[bytearray, dict]:
    settings = request.app[SETTINGS]
    body = await read_body(request, settings.max_body_bytes)
    if len(body) > _THREAD_PARSE_BYTES:
        return body, await asyncio.to_thread(parse_object, body, settings.max_json_depth)
    return body, parse_object(body, settings.max_json_depth)


async def handle_model_post(request: web.Request) -> web.StreamResponse:
    try:
        body, payload = await _payload(request)
    except BodyError as exc:
        return exc.response
    model, rejection = resolve_model(payload.get("model"), request.app[SETS])
    if rejection is not None:
        return rejection
    rset = request.app[SETS][model]
    hint = prompt_hint(payload, rset.config.prefix_chars)
    del payload  # only the bytes travel on
    return await forward(request, rset, body, hint)


async def handle_model_get(request: web.Request) -> web.StreamResponse:
    model, rejection = resolve_model(request.query.get("model"), request.app[SETS])
    if rejection is not None:
        return rejection
    return await forward(request, request.app[SETS][model], None, "")


async def forward(request: web.Request, rset: ReplicaSet, body: Optional[bytearray], hint: str) -> web.StreamResponse:
    """Try live replicas (best first) until one answers; 503 when none is live, 502 when all fail."""
    trace = request[TRACE]
    trace.model = rset.model
    tried, reasons = [], []
    while (replica := rset.pick(hint, exclude=tried)) is not None:
        tried.append(replica)
        trace.replica, trace.attempts = replica.url, len(tried)
        replica.in_flight += 1
        try:
            outcome = await relay(request, request.app[SESSION], rset, replica, body, request.app[SETTINGS])
        finally:
            replica.in_flight -= 1
        if not isinstance(outcome, Retry):
            return outcome
        reasons.append(outcome.reason)
    if not tried:
        trace.outcome = "no_live_replica"
        return error_response(503, f"model {rset.model!r} has no live replica", "no_live_replica")
    trace.outcome = "all_failed"
    return error_response(502, f"every live replica of model {rset.model!r} failed: {'; '.join(reasons)}",
                          "upstream_unreachable")


async def handle_flush_cache(request: web.Request) -> web.Response:
    """POST /flush_cache to every replica at once (as the gateway does); 200 when all flushed."""
    replicas = [r for rset in request.app[SETS].values() for r in rset.replicas]
    timeout = aiohttp.ClientTimeout(total=request.app[SETTINGS].status_timeout_s * 5)

    async def flush(url: str) -> str:
        try:
            async with request.app[SESSION].post(url + "/flush_cache", timeout=timeout) as r:
                return "" if r.status == 200 else f"{url}: HTTP {r.status}"
        except UPSTREAM_ERRORS as exc:
            return f"{url}: {type(exc).__name__}"

    failed = [f for f in await asyncio.gather(*(flush(r.url) for r in replicas)) if f]
    if failed:
        return error_response(502, "flush_cache failed on: " + "; ".join(failed), "flush_failed")
    return web.json_response({"flushed": len(replicas)})


async def _session_and_health(app: web.Application):
    settings = app[SETTINGS]
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout_s)
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector, auto_decompress=False) as session:
        app[SESSION] = session
        checker = asyncio.create_task(check_forever(session, app[SETS], settings.health_check_interval_s,
                                                    settings.health_check_timeout_s))
        yield
        checker.cancel()


def build_app(routes: dict[str, list[str]], peers: dict[str, list[str]] | None = None,
              config: PickConfig | None = None, settings: RouterSettings | None = None) -> web.Application:
    """The router app for ``routes`` (model name -> replica base URLs).

    ``peers`` (receiver replica URL -> sender replica URLs of other models) tells which
    replicas can fetch DroidSpeak KV from which; see ``replicas.link_peers``. Raises
    ValueError naming a model without URLs or a peer URL that is not a replica.
    """
    if not routes:
        raise ValueError("routes: at least one model is needed")
    sets = {model: ReplicaSet(model, urls, config or PickConfig()) for model, urls in routes.items()}
    link_peers(sets, peers or {})
    settings = settings or RouterSettings()
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[access_log, json_errors])
    app[SETS], app[SETTINGS] = sets, settings
    app.cleanup_ctx.append(_session_and_health)
    app.on_response_prepare.append(add_request_id)
    for path in MODEL_POSTS:
        app.router.add_post(path, handle_model_post)
    app.router.add_put("/classify", handle_model_post)
    for path in MODEL_GETS:
        app.router.add_get(path, handle_model_get)
    app.router.add_post("/flush_cache", handle_flush_cache)
    add_info_routes(app)
    return app


async def start_router(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve ``app`` on host:port (a client that disconnects cancels its handler, and so the
    upstream request); the started runner. Raises OSError when the port cannot be bound."""
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError:
        await runner.cleanup()
        raise
    return runner
