"""The router over real HTTP: small aiohttp upstreams on ephemeral 127.0.0.1 ports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sglang_droidspeak.router.cli import parse_pairs
from sglang_droidspeak.router.proxy import build_app, prompt_hint
from sglang_droidspeak.router.replicas import (
    PickConfig,
    PrefixLRU,
    ReplicaSet,
    prefix_chain,
)
from sglang_droidspeak.router.settings import RouterSettings

LONG_P = "shared context " * 80  # 1200 characters: 5 chunks of 256
LONG_Q = "another document " * 80


def sse(name: str, i: int) -> bytes:
    return f"data: {json.dumps({'by': name, 'i': i})}\n\n".encode()


class Upstream:
    """A fake SGLang server: records raw bodies, answers JSON or an SSE stream."""

    def __init__(self, name: str, status: int = 200):
        self.name, self.status, self.bodies, self.url = name, status, [], ""
        self.hold: asyncio.Event | None = None  # wait before answering
        self.gate: asyncio.Event | None = None  # wait between stream chunks 0 and 1
        self.die_mid_stream = self.finished = False
        self.sick = False  # its /health answers 503

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=503 if self.sick else 200, text="ok")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.bodies.append(raw)
        if self.status != 200:
            return web.json_response({"error": self.name}, status=self.status)
        if self.hold is not None:
            await self.hold.wait()
        if not json.loads(raw).get("stream"):
            return web.json_response({"served_by": self.name, "path": request.path})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(sse(self.name, 0))
        if self.die_mid_stream:
            self.die_mid_stream = False
            request.transport.close()
            return resp
        if self.gate is not None:
            await asyncio.wait_for(self.gate.wait(), 3)
        await resp.write(sse(self.name, 1) + b"data: [DONE]\n\n")
        self.finished = True
        return resp


async def _start(app: web.Application, stack: contextlib.AsyncExitStack) -> str:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    stack.push_async_callback(server.close)
    return str(server.make_url("")).rstrip("/")


@contextlib.asynccontextmanager
async def servers(upstreams: list[Upstream], routes, peers=None, settings: RouterSettings | None = None):
    """Start the upstreams, then the router over ``routes`` (model -> upstream names or
    raw URLs); yields (router base URL, client session)."""
    async with contextlib.AsyncExitStack() as stack:
        for up in upstreams:
            app = web.Application()
            app.router.add_post("/{tail:.*}", up.handle)
            app.router.add_get("/health", up.health)
            up.url = await _start(app, stack)
        by_name = {u.name: u.url for u in upstreams}
        urls = {m: [by_name.get(n, n) for n in names] for m, names in routes.items()}
        peer_urls = {by_name[r]: [by_name[s] for s in ss] for r, ss in (peers or {}).items()}
        base = await _start(build_app(urls, peer_urls, settings=settings), stack)
        yield base, await stack.enter_async_context(aiohttp.ClientSession())


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


async def post(client, url, body: dict | bytes):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with client.post(url, data=data, headers={"Content-Type": "application/json"}) as r:
        return r.status, await r.json()


async def served(client, url, body) -> str:
    return (await post(client, url, body))[1]["served_by"]


def test_routes_by_model_name_and_forwards_the_body_unchanged():
    ups = [Upstream(n) for n in ("a0", "a1", "b0", "b1")]

    async def go():
        async with servers(ups, {"a": ["a0", "a1"], "b": ["b0", "b1"]}) as (base, client):
            raw = b'{"model":  "a", "messages": [{"role": "user", "content": "hi"}]}'
            first = await post(client, base + "/v1/chat/completions", raw)
            second = await post(client, base + "/v1/completions", {"model": "b", "prompt": "x"})
            third = await post(client, base + "/generate", {"model": "b", "text": "y"})
            async with client.get(base + "/v1/models") as r:
                models = [m["id"] for m in (await r.json())["data"]]
            return raw, first, second, third, models

    raw, first, second, third, models = run(go())
    assert first == (200, {"served_by": "a0", "path": "/v1/chat/completions"})
    assert second == (200, {"served_by": "b0", "path": "/v1/completions"})
    assert third == (200, {"served_by": "b1", "path": "/generate"})  # b0 was picked once
    assert ups[0].bodies == [raw] and [len(u.bodies) for u in ups] == [1, 0, 1, 1]
    assert models == ["a", "b"]


def test_unknown_or_missing_model_is_rejected_and_a_single_model_is_the_default():
    ups = [Upstream("a0"), Upstream("b0")]

    async def go():
        async with servers(ups, {"a": ["a0"], "b": ["b0"]}) as (base, client):
            unknown = await post(client, base + "/v1/completions", {"model": "zz", "prompt": "x"})
            missing = await post(client, base + "/generate", {"text": "x"})
        async with servers([Upstream("only")], {"solo": ["only"]}) as (base, client):
            default = await post(client, base + "/generate", {"text": "x"})
        return unknown, missing, default

    unknown, missing, default = run(go())
    assert unknown == (404, {"error": {"message": "The model 'zz' does not exist; known: a, b",
                                       "type": "invalid_request_error", "param": "model", "code": "model_not_found"}})
    assert missing[0] == 400 and "missing field 'model'" in missing[1]["error"]["message"]
    assert default == (200, {"served_by": "only", "path": "/generate"})
    assert ups[0].bodies == [] and ups[1].bodies == []


def test_stream_chunks_reach_the_client_before_the_upstream_finishes():
    up = Upstream("s0")

    async def go():
        up.gate = asyncio.Event()
        async with servers([up], {"m": ["s0"]}) as (base, client):
            body = {"model": "m", "prompt": "x", "stream": True}
            async with client.post(base + "/v1/completions", json=body) as r:
                got = b""
                while len(got) < len(sse("s0", 0)):
                    got += await asyncio.wait_for(r.content.readany(), 2)
                finished_at_first_chunk = up.finished
                up.gate.set()
                rest = await r.content.read()
                return r.status, r.headers["Content-Type"], got, finished_at_first_chunk, rest

    assert run(go()) == (200, "text/event-stream", sse("s0", 0), False,
                         sse("s0", 1) + b"data: [DONE]\n\n")


def test_retries_past_a_closed_port_but_passes_an_upstream_error_answer_through_once():
    bad, good = Upstream("bad", status=503), Upstream("good")
    dead = closed_port_url()

    async def go():
        routes = {"m": [dead, "bad", "good"], "gone": [dead]}
        async with servers([bad, good], routes) as (base, client):
            answered = await post(client, base + "/v1/completions", {"model": "m", "prompt": "x"})
            gone = await post(client, base + "/v1/completions", {"model": "gone", "prompt": "x"})
            gone_again = await post(client, base + "/v1/completions", {"model": "gone", "prompt": "x"})
            async with client.get(base + "/health") as r:
                health = r.status, [x["healthy"] for x in (await r.json())["models"]["m"]]
        return answered, gone, gone_again, health

    answered, gone, gone_again, health = run(go())
    assert answered == (503, {"error": "bad"})  # bad's own answer, unchanged, and not replayed on good
    assert gone[0] == 502 and gone[1]["error"]["message"].startswith(
        f"every live replica of model 'gone' failed: {dead}: ClientConnectorError")
    assert gone_again == (503, {"error": {"message": "model 'gone' has no live replica",
                                          "type": "service_unavailable", "param": None, "code": "no_live_replica"}})
    assert health == (503, [False, True, True])  # 'gone' has no live replica; an error answer marks nothing
    assert (len(bad.bodies), len(good.bodies)) == (1, 0)


def test_a_request_waiting_on_a_replica_that_fails_its_health_check_moves_to_another():
    stuck, good = Upstream("stuck"), Upstream("good")
    settings = RouterSettings(health_check_interval_s=0.2, health_check_timeout_s=0.2)  # first byte: 1800 s

    async def go():
        stuck.hold = asyncio.Event()  # never set: accepts the request, never answers
        async with servers([stuck, good], {"m": ["stuck", "good"]}, settings=settings) as (base, client):
            answer = asyncio.ensure_future(post(client, base + "/v1/completions", {"model": "m", "prompt": "x"}))
            while not stuck.bodies:
                await asyncio.sleep(0.01)
            began, stuck.sick = time.monotonic(), True
            return await answer, time.monotonic() - began

    (status, body), seconds = run(go())
    assert (status, body) == (200, {"served_by": "good", "path": "/v1/completions"})
    assert seconds < 1.5 and (len(stuck.bodies), len(good.bodies)) == (1, 1)


def test_an_upstream_dying_mid_stream_truncates_the_response_until_a_health_check_brings_it_back():
    up = Upstream("d0")

    async def go():
        up.die_mid_stream = True
        async with servers([up], {"m": ["d0"]}, settings=RouterSettings(health_check_interval_s=0.2)) as (base, client):
            body = {"model": "m", "prompt": "x", "stream": True}
            got, error = b"", None
            async with client.post(base + "/v1/completions", json=body) as r:
                try:
                    async for chunk in r.content.iter_any():
                        got += chunk
                except aiohttp.ClientPayloadError as exc:
                    error = exc
            marked = (await post(client, base + "/v1/completions", {"model": "m", "prompt": "x"}))[0]
            await asyncio.sleep(0.5)  # at least one health round
            after = await post(client, base + "/v1/completions", {"model": "m", "prompt": "x"})
            return got, error, marked, after

    got, error, marked, after = run(go())
    assert got == sse("d0", 0) and isinstance(error, aiohttp.ClientPayloadError)
    assert marked == 503  # marked failed at once: no live replica
    assert after == (200, {"served_by": "d0", "path": "/v1/completions"})


def test_the_same_long_prompt_goes_back_to_the_same_replica():
    ups = [Upstream("r0"), Upstream("r1")]

    async def go():
        async with servers(ups, {"m": ["r0", "r1"]}) as (base, client):
            url = base + "/v1/completions"
            return [await served(client, url, {"model": "m", "prompt": p}) for p in (LONG_P, LONG_P + " tail", LONG_Q, LONG_Q + " more", LONG_P)]

    assert run(go()) == ["r0", "r0", "r1", "r1", "r0"]


def test_a_cross_model_prefix_at_a_peer_attracts_the_receiver_request():
    ups = [Upstream("a0"), Upstream("b0"), Upstream("b1")]

    async def go():
        async with servers(ups, {"a": ["a0"], "b": ["b0", "b1"]}, peers={"b1": ["a0"]}) as (base, client):
            url = base + "/v1/chat/completions"
            chat = {"messages": [{"role": "user", "content": LONG_P}]}
            other = {"messages": [{"role": "user", "content": LONG_Q}]}
            return (await served(client, url, {"model": "a", **chat}),
                    await served(client, url, {"model": "b", **chat}),
                    await served(client, url, {"model": "b", **other}))

    assert run(go()) == ("a0", "b1", "b0")


def test_without_a_prefix_match_the_replica_with_fewer_in_flight_wins():
    ups = [Upstream("r0"), Upstream("r1")]

    async def go():
        async with servers(ups, {"m": ["r0", "r1"]}) as (base, client):
            url = base + "/v1/completions"
            ups[0].hold = asyncio.Event()
            held = asyncio.create_task(post(client, url, {"model": "m", "prompt": "x"}))
            while not ups[0].bodies:
                await asyncio.sleep(0.01)
            second = await served(client, url, {"model": "m", "prompt": "y"})
            third = await served(client, url, {"model": "m", "prompt": "z"})  # picks 1:1, in flight 1:0
            ups[0].hold.set()
            return (await held)[1]["served_by"], second, third

    assert run(go()) == ("r0", "r1", "r1")


def test_pick_leaves_a_prefix_winner_that_is_too_busy_and_a_failed_replica_until_it_is_ok():
    rset = ReplicaSet("m", ["http://r0/", "http://r1"], PickConfig(balance_abs=2))
    r0, r1 = rset.replicas
    assert r0.url == "http://r0" and rset.pick(LONG_P) is r0
    r0.in_flight = 2  # 2 more in flight is still within balance_abs; 3 is not
    assert rset.pick(LONG_P) is r0
    r0.in_flight = 3
    assert rset.pick(LONG_P) is r1
    r0.in_flight = 0
    rset.fail(r0)
    assert len(r0.prefixes) == 0 and rset.live() == [r1]  # out of prefix affinity too
    assert rset.pick(LONG_Q) is r1 and rset.pick(LONG_Q, exclude=[r1]) is None
    r0.mark_ok()
    assert rset.pick(LONG_P) is r1  # r1 holds LONG_P now; r0 forgot it
    assert rset.pick("x", exclude=[r1]) is r0 and rset.pick("x", exclude=[r0, r1]) is None


def test_prefix_chain_lru_and_hints():
    config = PickConfig(prefix_chars=600, chunk_chars=256, lru_entries=3)
    chain = prefix_chain(LONG_P, config)
    assert [covered for _, covered in chain] == [256, 512, 600]
    assert prefix_chain(LONG_P[:300] + "!", config)[0] == chain[0]
    lru = PrefixLRU(3)
    lru.record(chain[:2])
    assert lru.match(chain) == 512
    other = prefix_chain(LONG_Q, config)
    lru.record(other[:2])
    assert len(lru) == 3 and lru.match(chain) == 512  # chain[0] evicted: chain[1] covers it
    lru.record(other[2:])
    assert lru.match(chain) == 0 and lru.match(other) == 600
    assert prompt_hint({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}, 9) \
        == "\x1euser\x1dhi"
    assert prompt_hint({"prompt": [1, 2]}, 10) == "1\x1f2" and prompt_hint({"text": "abc"}, 2) == "ab"
    assert parse_pairs(["a=http://x/", "a=http://y"], "--model") == {"a": ["http://x", "http://y"]}
    with pytest.raises(ValueError, match="--model 'a': expected KEY=URL"):
        parse_pairs(["a"], "--model")
