"""Both front doors as a user meets them: the official openai client, sync, async and
streaming, over two models (tester x2, libwriter x1) of stand-in SGLang servers
(standin_sglang.py, the one mock: SGLang needs a GPU)."""

from __future__ import annotations

import asyncio

import openai
import pytest
from front_doors import Gateway, OurRouter, gateway_or_skip
from standin_sglang import LoopThread, StandIn

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def upstreams():
    loop = LoopThread()
    ups = {m: [loop.run(StandIn(m).start()) for _ in range(n)] for m, n in (("tester", 2), ("libwriter", 1))}
    yield loop, ups
    loop.close()


@pytest.fixture(scope="module", params=["droidspeak", "gateway"])
def door(request, upstreams, tmp_path_factory):
    loop, ups = upstreams
    if request.param == "droidspeak":
        front = OurRouter(loop, {m: [u.url for u in us] for m, us in ups.items()})
    else:
        gateway_or_skip()
        front = Gateway(tmp_path_factory.mktemp("gateway"))
        for model, us in ups.items():
            front.add(model, [u.url for u in us])
    yield front
    front.close()


def test_sync_chat_routes_by_model_and_returns_the_request_id(door):
    client = openai.OpenAI(base_url=door.url + "/v1", api_key="none", max_retries=0, timeout=10)
    raw = client.chat.completions.with_raw_response.create(model="libwriter", messages=MESSAGES,
                                                           extra_headers={"X-Request-ID": "rid-42"})
    assert raw.parse().choices[0].message.content == "libwriter says hi"
    assert raw.headers["x-request-id"] == "rid-42"
    answer = client.completions.create(model="tester", prompt="x")
    assert answer.model == "tester"


def test_async_requests_to_two_models_at_once_all_reach_their_model(door, upstreams):
    async def go():
        client = openai.AsyncOpenAI(base_url=door.url + "/v1", api_key="none", max_retries=0, timeout=10)
        calls = [client.chat.completions.create(model=m, messages=MESSAGES) for m in ["tester", "libwriter"] * 8]
        answers = await asyncio.wait_for(asyncio.gather(*calls), 20)
        await client.close()
        return [a.choices[0].message.content for a in answers]

    assert asyncio.run(go()) == ["tester says hi", "libwriter says hi"] * 8
    assert door.in_flight("tester") == 0 and door.in_flight("libwriter") == 0


def test_streaming_chunks_arrive_in_order(door):
    client = openai.OpenAI(base_url=door.url + "/v1", api_key="none", max_retries=0, timeout=10)
    stream = client.chat.completions.create(model="tester", messages=MESSAGES, stream=True)
    assert [c.choices[0].delta.content for c in stream] == ["tester", " says", " hi", None]


def test_models_list_and_an_unknown_model(door):
    client = openai.OpenAI(base_url=door.url + "/v1", api_key="none", max_retries=0, timeout=10)
    assert sorted(m.id for m in client.models.list()) == ["libwriter", "tester"]
    if door.kind == "gateway":  # 0.3.2: an unknown model is a 503 after its retries, and no /v1/models/{id}
        with pytest.raises(openai.InternalServerError, match="no_available_workers"):
            client.chat.completions.create(model="nobody", messages=MESSAGES)
        return
    card = client.models.retrieve("tester")
    assert (card.id, card.object, card.owned_by, card.created > 0) == ("tester", "model", "sglang-droidspeak", True)
    with pytest.raises(openai.NotFoundError, match="The model 'nobody' does not exist"):
        client.chat.completions.create(model="nobody", messages=MESSAGES)
    with pytest.raises(openai.NotFoundError, match="model_not_found"):
        client.models.retrieve("nobody")
