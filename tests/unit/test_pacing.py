"""The link throttle (transfer/pacing.py) with an injected clock, its use by the FetchServer,
and the ``pipelined`` / ``throttle_gbps`` settings. No timing assertions."""

from __future__ import annotations

import pytest

from fetch_serving import Serving
from sglang_droidspeak.sglang.metrics import DroidSpeakMetrics
from sglang_droidspeak.sglang.settings import SettingsError, parse_settings
from sglang_droidspeak.transfer import wire
from sglang_droidspeak.transfer.fetch_client import FetchClient
from sglang_droidspeak.transfer.frames import FetchDone
from sglang_droidspeak.transfer.pacing import LinkPacer, PacerPolicy, PacingError
from test_fetch import SECRET, chunks_for, request
from test_ipc_export import DST_SLOTS, export, sides  # noqa: F401 - sides is a fixture
from test_ipc_export import request as ipc_request


class FakeClock:
    def __init__(self):
        self.now, self.slept = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def pacer(gbps=8.0, burst=1000):
    clock = FakeClock()
    return LinkPacer(gbps, burst, clock=clock, sleep=clock.sleep), clock


def test_rate_and_burst_exact():
    p, clock = pacer()  # 8 Gbit/s = 1e9 bytes/s, a 1000-byte bucket
    assert p.bytes_per_s == 1e9
    assert p.consume(600) == 0.0 and p.tokens == 400.0
    assert p.consume(400) == 0.0 and p.tokens == 0.0
    assert p.consume(2000) == pytest.approx(2e-6, abs=1e-15)  # debt of 2000 bytes at 1e9 B/s
    assert clock.slept == [p.slept_s] and p.tokens == -2000.0
    assert p.consume(0) == pytest.approx(0.0, abs=1e-12)  # the sleep paid the debt (float rounding aside)
    assert p.tokens == pytest.approx(0.0, abs=1e-3)
    clock.now += 1.0  # idle: the bucket refills, but only to its burst
    assert p.consume(1500) == pytest.approx(5e-7, abs=1e-15) and p.num_bytes == 4500


def test_back_to_back_frames_take_the_link_time_minus_one_burst():
    p, clock = pacer(gbps=10.0, burst=1 << 20)
    start, frame, num_frames = clock.now, 8 << 20, 32  # 32 frames of 8 MiB
    for _ in range(num_frames):
        p.consume(frame)
    expected = (num_frames * frame - (1 << 20)) / (10e9 / 8)
    assert clock.now - start == pytest.approx(expected, rel=1e-12)
    assert p.slept_s == pytest.approx(expected, rel=1e-12)


def test_time_spent_sending_is_not_slept_again():
    p, clock = pacer(burst=1000)
    assert p.consume(1000) == 0.0  # the full bucket
    clock.now += 5e-7  # sending that frame took half of the next frame's link time
    assert p.consume(1000) == pytest.approx(5e-7, rel=1e-9)
    p2, clock2 = pacer(burst=0)
    clock2.now += 3.0  # idle time never builds credit beyond the burst
    assert p2.consume(1000) == pytest.approx(1e-6, rel=1e-9)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), True, "10"])
def test_bad_rate_names_the_field(bad):
    with pytest.raises(PacingError, match="throttle_gbps"):
        LinkPacer(bad)
    with pytest.raises(PacingError, match="burst_bytes"):
        LinkPacer(10, burst_bytes=-1)


class RecordingPacer:
    def __init__(self):
        self.sizes = []

    def consume(self, num_bytes):
        self.sizes.append(num_bytes)
        return 0.0


def test_fetch_server_paces_every_frame_by_its_encoded_bytes():
    serving = Serving(chunks_for, SECRET)
    serving.server.pacing = PacerPolicy(recorder := RecordingPacer())
    client = FetchClient(SECRET)
    try:
        done = client.fetch(serving.server.endpoint, request(), lambda chunk: None, timeout_s=5)
        assert done == FetchDone("r1", 2)
        expected = [sum(len(f) for f in wire.encode(msg, SECRET)) for msg in chunks_for(request())]
        assert recorder.sizes == expected and expected[0] > 24  # header + 24 payload bytes
    finally:
        client.close()
        serving.close()


def test_settings_pipelined_and_throttle():
    default = parse_settings({})
    assert (default.pipelined, default.throttle_gbps) == (True, None)
    parsed = parse_settings({"pipelined": False, "throttle_gbps": 25})
    assert (parsed.pipelined, parsed.throttle_gbps) == (False, 25.0)
    for data, field in (({"pipelined": "no"}, "pipelined"), ({"pipelined": 1}, "pipelined"),
                        ({"throttle_gbps": 0}, "throttle_gbps"), ({"throttle_gbps": "fast"}, "throttle_gbps"),
                        ({"throttle_gbps": float("inf")}, "throttle_gbps")):
        with pytest.raises(SettingsError, match=f"cfg.yaml: {field}: "):
            parse_settings(data, where="cfg.yaml")


def test_import_stage_metric():
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    metrics = DroidSpeakMetrics("b", registry)
    metrics.observe_import_stage("fetch", 0.25)
    metrics.observe_import_stage("recompute", 0.5)
    value = registry.get_sample_value
    assert value("sglang:droidspeak_import_stage_seconds_sum", {"model": "b", "stage": "fetch"}) == 0.25
    assert value("sglang:droidspeak_import_stage_seconds_count", {"model": "b", "stage": "drain"}) == 0.0
    with pytest.raises(ValueError, match="stage"):
        metrics.observe_import_stage("network", 1.0)
    with pytest.raises(ValueError, match="s must be"):
        metrics.observe_import_stage("total", -1.0)


def test_ipc_copy_is_paced_per_layer_by_its_k_and_v_bytes(sides):
    sides.ipc.pacing = PacerPolicy(recorder := RecordingPacer())
    messages = export(sides, ipc_request(sides, layers=(0, 2)))
    assert isinstance(messages[-1], FetchDone)
    row = sides.sender.get_key_buffer(0)[0]  # [heads, dim]
    per_layer = 2 * len(DST_SLOTS) * row.numel() * row.element_size()  # K and V rows of the prefix
    assert recorder.sizes == [per_layer, per_layer]
