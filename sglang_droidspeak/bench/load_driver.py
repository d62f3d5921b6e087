"""The load driver of ``droidspeak bench-throughput``: sessions -> streaming ``/generate``.

    targets = parse_targets("http://127.0.0.1:8000")                 # the router: every model
    targets = parse_targets("coder=http://h:30001,tester=http://h:30002")  # one server per model
    records = asyncio.run(run_sessions(sessions, targets, plan="0:8", seed=0, salt="0:8@1.0"))

Each session waits for its Poisson arrival, then sends its agents one after another (the
next when the previous response has finished). A request is SGLang's native ``/generate``
with ``"stream": true``, ``"model"`` (the router routes by it; SGLang ignores it) and
``sampling_params.custom_params.droidspeak_plan``; SGLang answers ``data: {json}`` lines,
``meta_info.completion_tokens`` cumulative, ending ``data: [DONE]``. Per request a
``RequestRecord``: send time, TTFT (first chunk with a token), inter-token gaps (a chunk
of n tokens after a gap g counts n gaps of g / n), end-to-end latency, ``cached_tokens``
of the last ``meta_info``, or the error (HTTP status, an ``"error"`` chunk, a timeout or a
dropped connection): recorded, never raised. A failed agent ends its session (the next
agent would read a hand-off that never came).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Optional

import aiohttp

from sglang_droidspeak.bench.workload import Session, session_token_ids


@dataclass(frozen=True)
class RequestRecord:
    session_id: int
    step: int  # position of the agent in its session's pipeline
    model: str
    plan: str
    context_len: int  # the shared part of prompt_len
    prompt_len: int
    send_s: float  # since the start of the run
    ttft_ms: Optional[float]  # None: no token came back
    e2e_ms: float
    itl_ms: tuple[float, ...] = ()  # one per output token after the first
    num_output_tokens: int = 0
    cached_tokens: Optional[int] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Stream:
    """What one streaming answer showed so far (times from time.perf_counter())."""
    first_token_at: Optional[float] = None
    last_token_at: Optional[float] = None
    num_tokens: int = 0
    gaps_ms: list[float] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    error: Optional[str] = None

    def add_chunk(self, chunk: dict, now: float) -> None:
        if "error" in chunk:
            self.error = f"error chunk: {json.dumps(chunk['error'])[:300]}"
            return
        self.meta = chunk.get("meta_info") or self.meta
        new = self.total_tokens(chunk) - self.num_tokens
        if new <= 0:
            return
        if self.first_token_at is None:
            self.first_token_at, new_gaps = now, new - 1
        else:
            new_gaps = new
        gap_ms = (now - self.last_token_at) * 1000 / new if self.last_token_at is not None else 0.0
        self.gaps_ms.extend([gap_ms] * new_gaps)
        self.num_tokens, self.last_token_at = self.num_tokens + new, now

    def total_tokens(self, chunk: dict) -> int:
        """Output tokens so far: meta_info.completion_tokens, else the (cumulative) output_ids,
        else one more per chunk."""
        if "completion_tokens" in self.meta:
            return int(self.meta["completion_tokens"])
        if "output_ids" in chunk:
            return len(chunk["output_ids"])
        return self.num_tokens + 1


def parse_targets(text: str) -> dict[str, str]:
    """A base URL ("" key: every model) or ``name=url,name=url``; trailing slashes dropped."""
    text = text.strip()
    if "=" not in text:
        if not text:
            raise ValueError("--url: empty")
        return {"": text.rstrip("/")}
    targets = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, url = part.partition("=")
        if not name or not url:
            raise ValueError(f"--url entry {part!r}: expected name=url")
        targets[name.strip()] = url.strip().rstrip("/")
    return targets


def url_for(targets: dict[str, str], model: str) -> str:
    if model in targets:
        return targets[model]
    if "" in targets:
        return targets[""]
    raise ValueError(f"no --url for model {model!r} (have: {', '.join(targets)})")


def request_body(model: str, input_ids: list[int], plan: str, max_new_tokens: int) -> dict:
    return {"model": model, "input_ids": input_ids, "stream": True, "sampling_params": {
        "max_new_tokens": max_new_tokens, "temperature": 0, "ignore_eos": True,
        "custom_params": {"droidspeak_plan": plan}}}


async def stream_generate(http: aiohttp.ClientSession, url: str, body: dict, timeout_s: float) -> _Stream:
    """POST ``body`` to ``url``/generate and read its SSE lines into a _Stream (errors inside)."""
    stream = _Stream()
    try:
        async with http.post(url + "/generate", json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            if resp.status != 200:
                stream.error = f"HTTP {resp.status}: {(await resp.text())[:300]}"
                return stream
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    return stream
                stream.add_chunk(json.loads(payload), time.perf_counter())
                if stream.error:
                    return stream
            stream.error = "stream ended without [DONE]"
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
        stream.error = f"{exc.__class__.__name__}: {exc}"[:300]
    return stream


async def send_one(http, targets, session: Session, step: int, input_ids: list[int], plan: str,
                   run_start: float, timeout_s: float) -> RequestRecord:
    model = session.agents[step]
    body = request_body(model, input_ids, plan, session.max_new_tokens)
    sent = time.perf_counter()
    stream = await stream_generate(http, url_for(targets, model), body, timeout_s)
    done = time.perf_counter()
    if stream.error is None and stream.first_token_at is None:
        stream.error = "no output token"
    ttft = None if stream.first_token_at is None else (stream.first_token_at - sent) * 1000
    return RequestRecord(session.session_id, step, model, plan, session.context_len, len(input_ids),
                         sent - run_start, ttft,
                         (done - sent) * 1000, tuple(stream.gaps_ms), stream.num_tokens,
                         stream.meta.get("cached_tokens"), stream.error)


async def run_session(http, targets, session: Session, plan: str, seed: int, salt: str,
                      run_start: float, timeout_s: float) -> list[RequestRecord]:
    await asyncio.sleep(max(0.0, run_start + session.arrival_s - time.perf_counter()))
    records = []
    for step, input_ids in enumerate(session_token_ids(session, seed, salt)):
        records.append(await send_one(http, targets, session, step, input_ids, plan, run_start, timeout_s))
        if not records[-1].ok:
            break
    return records


async def run_sessions(sessions: list[Session], targets: dict[str, str], plan: str, seed: int, salt: str,
                       timeout_s: float = 300.0) -> tuple[list[RequestRecord], float]:
    """Every session concurrently, each at its arrival; (records by send time, wall seconds)."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        run_start = time.perf_counter()
        per_session = await asyncio.gather(*(run_session(http, targets, s, plan, seed, salt, run_start, timeout_s)
                                             for s in sessions))
        wall_s = time.perf_counter() - run_start
    return sorted((r for rs in per_session for r in rs), key=lambda r: r.send_s), wall_s
