"""Every upstream fault of issue 20, through both front doors, with the official openai client.

The upstreams are stand-ins (standin_sglang.py, the one mock: SGLang needs a GPU). Each case
measures what docs/ROUTER.md's fault table shows: the client's status (or error), the time
to it, the front door's in-flight count after, its /health after, and how many requests the
faulty upstream received (a replayed answer shows there). Limits: front_doors.TEST_SETTINGS
(2 s total/first byte, 1 s idle, 1 s health checks) for both doors.
"""

from __future__ import annotations

import itertools
import time
from typing import NamedTuple, Optional

import httpx
import openai
import pytest
from front_doors import Gateway, OurRouter, gateway_or_skip, http_status, list_workers
from standin_sglang import LoopThread, StandIn

MESSAGES = [{"role": "user", "content": "hi"}]
_ids = itertools.count()


class Case(NamedTuple):
    mode: str               # every replica's fault (standin_sglang.StandIn.mode, or "killed")
    replicas: int = 1       # (the gateway's cache_aware picks among fresh workers at random,
                            # so a fault on one of two would make its row a coin toss)
    stream: bool = False
    client_timeout_s: float = 10.0


class Seen(NamedTuple):
    outcome: str            # "ok: <text>" or "<status or exception name>"
    seconds: float
    in_flight: int
    health: int
    received: int           # by all replicas
    cancelled: int          # requests the replicas saw the front door drop


@pytest.fixture(scope="module")
def loop():
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    gateway_or_skip()
    door = Gateway(tmp_path_factory.mktemp("gateway"))  # cache_aware, as droidspeak serve starts it
    yield door
    door.close()


def call(url: str, model: str, case: Case) -> str:
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=case.client_timeout_s)
    try:
        if case.stream:
            parts = client.chat.completions.create(model=model, messages=MESSAGES, stream=True)
            return "ok: " + "".join(p.choices[0].delta.content or "" for p in parts)
        return "ok: " + client.chat.completions.create(model=model, messages=MESSAGES).choices[0].message.content
    except openai.APIStatusError as exc:
        return str(exc.status_code)
    except openai.APIError as exc:
        return type(exc).__name__ if exc.__cause__ is None else f"{type(exc).__name__}({type(exc.__cause__).__name__})"
    except httpx.HTTPError as exc:  # a stream cut mid-way reaches the caller unwrapped
        return type(exc).__name__


def wait_unhealthy(gateway: Gateway, ups: list[StandIn], timeout_s: float = 5.0) -> None:
    urls, deadline = {u.url for u in ups}, time.monotonic() + timeout_s
    while any(w["is_healthy"] for w in list_workers(gateway.url) if w["url"] in urls):
        assert time.monotonic() < deadline, "the gateway did not mark the killed worker unhealthy"
        time.sleep(0.1)


def run_case(loop, door_kind: str, case: Case, gateway=None) -> Seen:
    model = f"{case.mode}-{next(_ids)}"
    ups = [loop.run(StandIn(model).start()) for _ in range(case.replicas)]
    door = gateway if door_kind == "gateway" else OurRouter(loop, {model: [u.url for u in ups]})
    if door_kind == "gateway":
        door.add(model, [u.url for u in ups])
    for up in ups:
        if case.mode == "killed":
            loop.run(up.kill())
        up.mode, up.delay_s = case.mode, 0.5
    if case.mode == "killed" and door_kind == "gateway":  # before its health check notices, the
        wait_unhealthy(door, ups)                         # answer is a 500 or a 503: a race
    try:
        start = time.monotonic()
        outcome = call(door.url, model, case)
        seconds = round(time.monotonic() - start, 1)
        time.sleep(0.1)  # the front door notices a dropped client within this
        health = http_status(door.url + "/health")
        return Seen(outcome, seconds, door.in_flight(model), health, sum(u.received for u in ups),
                    sum(u.cancelled for u in ups))
    finally:
        for up in ups:
            up.mode = "ok"
        if door_kind != "gateway":
            door.close()


# (case, door) -> the row docs/ROUTER.md shows, minus the timing (checked separately)
EXPECTED = {
    (Case("hang"), "droidspeak"): ("502", 0, 503, 1, 1),
    (Case("hang"), "gateway"): ("503", 0, 200, 1, 1),
    (Case("reset", 2), "droidspeak"): ("502", 0, 503, 2, 2),
    (Case("reset", 2), "gateway"): ("500", 0, 200, 5, 5),
    (Case("stall", stream=True), "droidspeak"): ("RemoteProtocolError", 0, 503, 1, 1),
    (Case("stall", stream=True), "gateway"): ("RemoteProtocolError", 0, 200, 1, 1),
    (Case("slow"), "droidspeak"): ("ok: {m} says hi", 0, 200, 1, 0),
    (Case("slow"), "gateway"): ("ok: {m} says hi", 0, 200, 1, 0),
    (Case("error500", 2), "droidspeak"): ("500", 0, 200, 1, 0),
    (Case("error500", 2), "gateway"): ("500", 0, 200, 5, 0),
    (Case("killed"), "droidspeak"): ("502", 0, 503, 0, 0),
    (Case("killed"), "gateway"): ("503", 0, 200, 0, 0),
    (Case("hang", client_timeout_s=0.5), "droidspeak"): ("APITimeoutError(ReadTimeout)", 0, 200, 1, 1),
    (Case("hang", client_timeout_s=0.5), "gateway"): ("APITimeoutError(ReadTimeout)", 0, 200, 1, 1),
}
# seconds to the outcome, (low, high): a hang ends at the 2 s limit, a stall at the 1 s idle
# limit (ours) or the 2 s total (gateway), a slow answer after its 0.5 s, the rest at once
WINDOWS = {"hang": (1.9, 3.0), "stall": (0.9, 2.5), "slow": (0.45, 1.5)}


@pytest.mark.parametrize("door_kind", ["droidspeak", "gateway"])
@pytest.mark.parametrize("case", sorted({c for c, _ in EXPECTED}, key=repr), ids=repr)
def test_fault(loop, request, door_kind, case):
    gateway: Optional[Gateway] = request.getfixturevalue("gateway") if door_kind == "gateway" else None
    seen = run_case(loop, door_kind, case, gateway)
    outcome, in_flight, health, received, cancelled = EXPECTED[(case, door_kind)]
    model_text = seen.outcome.removeprefix("ok: ").removesuffix(" says hi")
    assert (seen.outcome, seen.in_flight, seen.health, seen.received, seen.cancelled) == \
        (outcome.format(m=model_text), in_flight, health, received, cancelled), seen
    low, high = (0.4, 0.7) if case.client_timeout_s < 1 else WINDOWS.get(case.mode, (0.0, 1.0))
    if door_kind == "droidspeak" and case.mode == "stall":
        low, high = 0.9, 1.5
    assert low <= seen.seconds <= high, seen
