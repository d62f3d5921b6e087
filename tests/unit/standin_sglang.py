"""Stand-in SGLang servers for the front-door tests: THE ONE MOCK of these tests.

SGLang needs a GPU, so the upstreams here are small aiohttp apps that speak the part of
SGLang's HTTP API the front doors use (OpenAI chat/completions/embeddings, /generate,
/health, /metrics, /v1/models, /get_model_info, /server_info) and can misbehave on
purpose (``mode``): ``ok``; ``hang`` (accept, never answer: /health too); ``reset``
(close the connection on a request); ``stall`` (a stream's first chunk, then nothing);
``slow`` (answer after ``delay_s``); ``error500`` (SGLang's JSON 500). ``kill()`` stops
the server (connection refused). Everything runs on a ``LoopThread`` so the sync
``openai`` client can be used from the test thread. Loopback only.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from aiohttp import web

TOKENS = (" says", " hi")


def chat_answer(model: str) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": model + "".join(TOKENS)},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}}


def chunk_of(model: str, text: str, finish: str | None = None) -> bytes:
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model,
             "choices": [{"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


class LoopThread:
    """An event loop in a daemon thread; ``run(coro)`` waits for it at most ``timeout_s``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout_s: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class StandIn:
    """One stand-in replica serving ``model`` on 127.0.0.1:<ephemeral port>."""

    def __init__(self, model: str):
        self.model, self.mode, self.delay_s = model, "ok", 0.0
        self.received = self.active = self.cancelled = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> "StandIn":
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/get_model_info", self.model_info)
        app.router.add_get("/server_info", self.server_info)
        app.router.add_post("/{path:.*}", self.generate)
        self.runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def kill(self) -> None:
        await self.runner.cleanup()

    async def _hang_if_asked(self) -> None:
        if self.mode == "hang":
            await asyncio.Event().wait()

    async def health(self, request: web.Request) -> web.Response:
        await self._hang_if_asked()
        return web.Response(text="")

    async def metrics(self, request: web.Request) -> web.Response:
        await self._hang_if_asked()
        return web.Response(text=f'sglang:cache_hit_rate{{model_name="{self.model}"}} 0.5\n')

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 1, "owned_by": "sglang", "root": self.model}]})

    async def model_info(self, request: web.Request) -> web.Response:
        return web.json_response({"model_path": f"/models/{self.model}", "tokenizer_path": None,
                                  "is_generation": True, "model_type": "llama",
                                  "architectures": ["LlamaForCausalLM"]})

    async def server_info(self, request: web.Request) -> web.Response:
        return web.json_response({"model_path": f"/models/{self.model}", "served_model_name": self.model,
                                  "tp_size": 1, "dp_size": 1, "version": "0.5.17"})

    async def generate(self, request: web.Request) -> web.StreamResponse:
        self.received += 1
        self.active += 1
        try:
            return await self._answer(request, json.loads(await request.read() or b"{}"))
        except asyncio.CancelledError:
            self.cancelled += 1  # the front door closed the connection: SGLang would abort here
            raise
        finally:
            self.active -= 1

    async def _answer(self, request: web.Request, body: dict) -> web.StreamResponse:
        await self._hang_if_asked()
        if self.mode == "reset":
            request.transport.close()
            await asyncio.sleep(1)  # the connection is gone; nothing more is sent
        if self.mode == "slow":
            await asyncio.sleep(self.delay_s)
        if self.mode == "error500":
            return web.json_response({"object": "error", "message": f"{self.model}: internal error",
                                      "type": "InternalServerError", "param": None, "code": 500}, status=500)
        if body.get("stream"):
            return await self._stream(request)
        if self.mode == "stall":
            await asyncio.Event().wait()
        if request.path == "/generate":
            return web.json_response({"text": self.model + "".join(TOKENS), "meta_info": {"id": "1"}})
        return web.json_response(chat_answer(self.model))

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(chunk_of(self.model, self.model))
        if self.mode == "stall":
            await asyncio.Event().wait()
        for token in TOKENS:
            await response.write(chunk_of(self.model, token))
        await response.write(chunk_of(self.model, "", "stop") + b"data: [DONE]\n\n")
        return response
