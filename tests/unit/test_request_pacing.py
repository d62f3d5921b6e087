"""A request's own link rate (FetchRequest.link_gbps) on the sender: PacerPolicy's table, and
the ZMQ stream (FetchServer) and the cuda_ipc copy (IpcExporter) paced at that rate only
where ``allow_request_throttle`` permits it. Fake clock and sleep: no timing assertions."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from fetch_serving import Serving
from sglang_droidspeak.sglang.settings import SettingsError, parse_settings
from sglang_droidspeak.transfer import wire
from sglang_droidspeak.transfer.fetch_client import FetchClient
from sglang_droidspeak.transfer.frames import FetchDone
from sglang_droidspeak.transfer.pacing import LinkPacer, PacerPolicy
from test_fetch import SECRET, chunks_for, request
from test_ipc_export import DST_SLOTS, export, sides  # noqa: F401 - sides is a fixture
from test_ipc_export import request as ipc_request
from test_pacing import FakeClock


def fake_pacers(clock: FakeClock):
    """``make_pacer`` for PacerPolicy: no burst, so every byte waits exactly bytes / rate."""
    return lambda gbps: LinkPacer(gbps, 0, clock=clock, sleep=clock.sleep)


def test_policy_table(caplog):
    server = LinkPacer(10.0)
    made = []
    allowing = PacerPolicy(server, True, make_pacer=lambda gbps: made.append(gbps) or f"pacer@{gbps:g}")
    assert allowing.for_request(0.0) is server
    assert allowing.for_request(25.0) == "pacer@25" and allowing.for_request(25.0) == "pacer@25"
    assert made == [25.0, 25.0]  # a fresh pacer per request: no bucket shared between requests
    fresh = PacerPolicy(None, True)
    first, second = fresh.for_request(40.0), fresh.for_request(40.0)
    assert first is not second and first.gbps == 40.0 and fresh.for_request(0.0) is None
    refusing = PacerPolicy(server, False, make_pacer=lambda gbps: pytest.fail("must not pace per request"))
    with caplog.at_level(logging.WARNING, logger="sglang_droidspeak.transfer.pacing"):
        assert refusing.for_request(25.0) is server and refusing.for_request(5.0) is server
    assert [r.getMessage() for r in caplog.records] == [
        "droidspeak: a peer asked for a 25 Gbit/s link; ignoring request rates (this sender has "
        "allow_request_throttle: false)"]  # once per server
    assert PacerPolicy().for_request(25.0) is None


def fetch_with(policy: PacerPolicy, link_gbps: float) -> int:
    """One fetch asking for ``link_gbps`` from a server with ``policy``; its encoded bytes."""
    serving = Serving(chunks_for, SECRET)
    serving.server.pacing = policy
    client = FetchClient(SECRET)
    req = dataclasses.replace(request(), link_gbps=link_gbps)
    try:
        assert client.fetch(serving.server.endpoint, req, lambda chunk: None, timeout_s=5) == FetchDone("r1", 2)
    finally:
        client.close()
        serving.close()
    return sum(len(frame) for msg in chunks_for(req) for frame in wire.encode(msg, SECRET))


def test_an_allowing_server_paces_the_stream_at_the_request_rate():
    clock = FakeClock()
    num_bytes = fetch_with(PacerPolicy(None, True, make_pacer=fake_pacers(clock)), 8.0)  # 1e9 bytes/s
    assert len(clock.slept) == 3  # E chunk, K chunk, FetchDone
    assert sum(clock.slept) == pytest.approx(num_bytes / 1e9, rel=1e-9)


def test_a_non_allowing_server_ignores_the_request_rate():
    clock = FakeClock()
    assert fetch_with(PacerPolicy(None, False, make_pacer=fake_pacers(clock)), 8.0) > 0
    assert clock.slept == []  # no server throttle: not paced at all
    server_clock = FakeClock()
    server_pacer = LinkPacer(80.0, 0, clock=server_clock, sleep=server_clock.sleep)  # 1e10 bytes/s
    num_bytes = fetch_with(PacerPolicy(server_pacer, False, make_pacer=fake_pacers(clock)), 8.0)
    assert clock.slept == [] and sum(server_clock.slept) == pytest.approx(num_bytes / 1e10, rel=1e-9)


def layer_bytes(s) -> int:
    row = s.sender.get_key_buffer(0)[0]  # [heads, dim]
    return 2 * len(DST_SLOTS) * row.numel() * row.element_size()  # K and V rows of the prefix


def test_ipc_copy_is_paced_at_the_request_rate_on_an_allowing_server(sides):
    clock = FakeClock()
    sides.ipc.pacing = PacerPolicy(None, True, make_pacer=fake_pacers(clock))
    assert isinstance(export(sides, ipc_request(sides, layers=(0, 2), link_gbps=8.0))[-1], FetchDone)
    assert clock.slept == pytest.approx([layer_bytes(sides) / 1e9] * 2, rel=1e-9)


def test_ipc_copy_ignores_the_request_rate_on_a_non_allowing_server(sides):
    clock = FakeClock()
    sides.ipc.pacing = PacerPolicy(None, False, make_pacer=fake_pacers(clock))
    assert isinstance(export(sides, ipc_request(sides, layers=(0, 2), link_gbps=8.0))[-1], FetchDone)
    assert clock.slept == []


def test_allow_request_throttle_setting():
    assert parse_settings({}).allow_request_throttle is False
    assert parse_settings({"allow_request_throttle": True}).allow_request_throttle is True
    for bad in ("yes", 1, None):
        with pytest.raises(SettingsError, match="cfg.yaml: allow_request_throttle: must be true or false"):
            parse_settings({"allow_request_throttle": bad}, where="cfg.yaml")
