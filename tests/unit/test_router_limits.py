"""Our router's own answers and limits: body size and JSON depth before parsing, JSON errors
on every route, request ids up and down, the access log, /status beside a hung replica, and
the memory one request costs (measured with tracemalloc)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import tracemalloc

import aiohttp
import pytest
from aiohttp import web
from front_doors import free_port
from standin_sglang import StandIn

from sglang_droidspeak.router.body import json_depth
from sglang_droidspeak.router.proxy import build_app, start_router
from sglang_droidspeak.router.relay import body_chunks
from sglang_droidspeak.router.settings import MIB, RouterSettings


async def router_over(routes, settings=RouterSettings()):
    port = free_port()
    runner = await start_router(build_app(routes, settings=settings), "127.0.0.1", port)
    return runner, f"http://127.0.0.1:{port}"


def run(coro, timeout_s: float = 20):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


def test_bodies_over_the_limit_too_deep_or_not_json_get_json_errors_and_never_reach_upstream():
    async def go():
        up = await StandIn("m").start()
        runner, url = await router_over({"m": [up.url]}, RouterSettings(max_body_bytes=1000, max_json_depth=8))
        results = []
        async with aiohttp.ClientSession() as client:
            for body in (b'{"model": "m", "prompt": "' + b"x" * 1000 + b'"}', b'{"model": "m", "p": ' + b"[" * 9 + b"]" * 9
                         + b"}", b"{not json", b"[1]"):
                async with client.post(url + "/v1/completions", data=body) as r:
                    results.append((r.status, (await r.json())["error"]["code"]))
            async with client.post(url + "/v1/completions", data=b"x" * 2000, chunked=True) as r:
                results.append((r.status, (await r.json())["error"]["code"]))
        await runner.cleanup()
        await up.kill()
        return results, up.received

    results, received = run(go())
    assert results == [(413, "request_too_large"), (400, "json_too_deep"), (400, "invalid_json"),
                       (400, "invalid_json"), (413, "request_too_large")]
    assert received == 0


def test_json_depth_ignores_brackets_in_strings():
    assert json_depth(b'{"a": [1, {"b": "[[[[\\"]]"}]}') == 3
    assert json_depth(b'"[[["') == 0 and json_depth(b"[" * 70 + b"]" * 70) == 70


def test_unknown_routes_and_methods_are_json_errors_and_every_answer_has_a_request_id(caplog):
    async def go():
        up = await StandIn("m").start()
        runner, url = await router_over({"m": [up.url]})
        seen = {}
        async with aiohttp.ClientSession() as client:
            async with client.post(url + "/start_profile") as r:
                seen["404"] = r.status, await r.json(), r.headers["X-Request-ID"]
            async with client.post(url + "/flush_cache") as r:
                seen["flush"] = r.status, await r.json()
            async with client.get(url + "/v1/chat/completions") as r:
                seen["405"] = r.status, (await r.json())["error"]["code"]
            async with client.post(url + "/v1/embeddings", json={"model": "m", "input": "x"},
                                   headers={"X-Request-ID": "abc-1"}) as r:
                seen["given"] = r.status, r.headers["X-Request-ID"]
            async with client.get(url + "/get_model_info") as r:
                seen["info"] = r.status, (await r.json())["model_path"], len(r.headers["X-Request-ID"])
        await runner.cleanup()
        await up.kill()
        return seen

    with caplog.at_level(logging.INFO, logger="sglang_droidspeak.router.access"):
        seen = run(go())
    status, body, rid = seen["404"]
    assert (status, body["error"]["code"], body["error"]["message"]) == (404, "not_found", "no route POST /start_profile")
    assert seen["flush"] == (200, {"flushed": 1})
    assert len(rid) == 32 and seen["405"] == (405, "method_not_allowed")
    assert seen["given"] == (200, "abc-1") and seen["info"] == (200, "/models/m", 32)
    lines = [r.getMessage() for r in caplog.records if r.name == "sglang_droidspeak.router.access"]
    assert len(lines) == 5 and lines[3].startswith("rid=abc-1 POST /v1/embeddings status=200 model=m replica=http")
    assert lines[0].startswith(f"rid={rid} POST /start_profile status=404 model=- replica=- attempts=0")


def test_status_answers_within_its_timeout_beside_a_hung_replica():
    async def go():
        ok, hung = await StandIn("m").start(), await StandIn("m").start()
        hung.mode = "hang"
        runner, url = await router_over({"m": [ok.url, hung.url]}, RouterSettings(status_timeout_s=0.5))
        async with aiohttp.ClientSession() as client:
            start = time.monotonic()
            async with client.get(url + "/status") as r:
                replicas = (await r.json())["models"]["m"]["replicas"]
            seconds = time.monotonic() - start
        await runner.cleanup()
        return seconds, [(x["metrics"] or {}).get("cache_hit_rate") for x in replicas], replicas[1]["metrics_error"]

    seconds, rates, error = run(go())
    assert seconds < 1.0 and rates == [0.5, None] and error.startswith("TimeoutError")


async def _sink(request: web.Request) -> web.Response:
    async for _ in request.content.iter_chunked(1 << 16):  # read and drop: the upstream keeps nothing
        pass
    return web.json_response({"ok": True})


@pytest.mark.parametrize("prompt_mib", [16])
def test_one_request_costs_about_three_times_its_body(prompt_mib):
    """Peak memory allocated while the router handles one request with a ``prompt_mib`` MiB
    prompt (client and upstream in this process keep nothing): measured 3.00x the body."""
    body = json.dumps({"model": "m", "prompt": "x" * (prompt_mib * MIB)}).encode()

    async def go():
        sink = web.Application()
        sink.router.add_post("/v1/completions", _sink)
        sink_runner, sink_port = web.AppRunner(sink), free_port()
        await sink_runner.setup()
        await web.TCPSite(sink_runner, "127.0.0.1", sink_port).start()
        runner, url = await router_over({"m": [f"http://127.0.0.1:{sink_port}"]})
        async with aiohttp.ClientSession() as client:
            tracemalloc.start()
            async with client.post(url + "/v1/completions", data=body_chunks(body),
                                   headers={"Content-Length": str(len(body))}) as r:
                status = r.status
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        await runner.cleanup()
        await sink_runner.cleanup()
        return status, peak

    status, peak = run(go(), 60)
    print(f"router memory for one request with a {len(body)} byte body: peak {peak} bytes = {peak / len(body):.2f}x")
    assert status == 200 and peak <= 3.1 * len(body)
