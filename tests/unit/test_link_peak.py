"""scripts/gpu/link_peak.py's host rows on the CPU, over a real ZMQ socket pair (the CUDA
and NCCL rows need GPUs: scripts/gpu/link_peak.sh on the device machine)."""

import json

from script_module import load_script


def load():
    return load_script("gpu/link_peak.py")


def test_timed_rate_counts_bytes_over_wall_time():
    lp = load()
    calls = []
    rates = lp.timed_rate(lambda: calls.append(1), 10**9, repeats=3)
    assert len(calls) == 5 and len(rates) == 3 and all(r > 0 for r in rates)  # 2 warm-ups untimed


def test_zmq_loopback_moves_whole_frames(tmp_path, monkeypatch):
    lp = load()
    row = lp.zmq_loopback(1 << 20, repeats=3)
    assert row.name == "zmq_tcp_loopback" and row.size_bytes == 1 << 20 and len(row.gbps_all) == 3
    assert row.gbps_median == sorted(row.gbps_all)[1] > 0
    monkeypatch.setenv("OUT", str(tmp_path))
    lp.main(["--only", "zmq", "--size-mb", "1", "--repeats", "2"])
    result = json.loads((tmp_path / "link-peak.json").read_text())
    assert [r["name"] for r in result["rows"]] == ["zmq_tcp_loopback"] and result["errors"] == {}
    assert result["rows"][0]["size_bytes"] == 1 << 20 and len(result["rows"][0]["gbps_all"]) == 2
