"""bench-throughput's load driver and command against REAL local HTTP servers.

The upstreams are tests/unit/sglang_stream_stub.py: a stand-in for SGLang (which cannot run
on a CPU machine) that streams SGLang-style ``data:`` chunks with controlled delays (TTFT
250 ms for plan "off", 20 ms otherwise; 10 ms between tokens) and fails on purpose for
the models "http500", "errchunk" and "dropper". Timing assertions are lower bounds plus
generous upper bounds: the delays are real sleeps.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import sglang_stream_stub as stub
from sglang_droidspeak.bench import load_driver as drv
from sglang_droidspeak.bench.workload import Session
from sglang_droidspeak.cli import main


@pytest.fixture()
def upstream():
    server = stub.serve_in_thread()
    stub.SEEN.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def sessions(*agent_lists: tuple[str, ...], gap_s: float = 0.05) -> list[Session]:
    return [Session(i, i * gap_s, 40, agents, (8,) * len(agents), 4) for i, agents in enumerate(agent_lists)]


def test_streams_timed_and_chained(upstream):
    work = sessions(("coder", "tester", "reviewer"), ("coder", "tester"))
    records, wall_s = asyncio.run(drv.run_sessions(work, {"": upstream}, "0:8", seed=0, salt="t"))
    assert [(r.session_id, r.step, r.model) for r in sorted(records, key=lambda r: (r.session_id, r.step))] == [
        (0, 0, "coder"), (0, 1, "tester"), (0, 2, "reviewer"), (1, 0, "coder"), (1, 1, "tester")]
    for r in records:
        assert r.ok and r.num_output_tokens == 4 and r.prompt_len == 48 and r.context_len == 40
        # client-side times: chunks read in one go may show a ~0 gap, so bound sums, not each gap
        assert 20 <= r.ttft_ms < 500 and len(r.itl_ms) == 3 and all(0 <= g < 300 for g in r.itl_ms)
        assert r.e2e_ms >= max(r.ttft_ms, 20 + 30) and 20 <= sum(r.itl_ms) < 500
    by_key = {(r.session_id, r.step): r for r in records}
    assert by_key[(0, 0)].cached_tokens == 0 and by_key[(0, 1)].cached_tokens == 40  # the coder's context
    assert by_key[(0, 2)].cached_tokens == 40 and by_key[(1, 1)].cached_tokens == 40
    # chaining: the tester is sent only after the coder's answer ended
    assert by_key[(0, 1)].send_s * 1000 >= by_key[(0, 0)].send_s * 1000 + by_key[(0, 0)].e2e_ms - 1
    assert by_key[(1, 0)].send_s >= 0.05 and wall_s >= 3 * 0.05


def test_plan_off_sees_no_foreign_context_and_body_is_sglang_native(upstream):
    records, _ = asyncio.run(drv.run_sessions(sessions(("coder", "tester")), {"": upstream}, "off", 0, "t"))
    assert [r.cached_tokens for r in records] == [0, 0] and all(r.ttft_ms >= 250 for r in records)
    body = drv.request_body("tester", [5, 6], "0:8", 3)
    assert body == {"model": "tester", "input_ids": [5, 6], "stream": True, "sampling_params": {
        "max_new_tokens": 3, "temperature": 0, "ignore_eos": True, "custom_params": {"droidspeak_plan": "0:8"}}}


def test_failures_are_recorded_not_raised(upstream):
    targets = {"coder": upstream, "http500": upstream, "errchunk": upstream, "dropper": upstream,
               "gone": "http://127.0.0.1:9"}
    work = sessions(("http500", "coder"), ("errchunk",), ("dropper",), ("gone",), ("coder", "tester"), gap_s=0.0)
    records, _ = asyncio.run(drv.run_sessions(work, {**targets, "tester": upstream}, "reuse", 0, "t", 5.0))
    errors = {r.model: r.error for r in records}
    assert errors["http500"] == "HTTP 500: boom" and errors["errchunk"].startswith("error chunk: ")
    assert errors["dropper"] == "stream ended without [DONE]" and errors["gone"].startswith("ClientConnectorError")
    assert errors["coder"] is None and errors["tester"] is None
    assert [r.model for r in records if r.session_id == 0] == ["http500"]  # a failed agent ends its session
    dropper = next(r for r in records if r.model == "dropper")
    assert dropper.ttft_ms is not None and dropper.num_output_tokens == 1 and not dropper.ok


def test_command_against_per_model_urls(upstream, tmp_path):
    out = tmp_path / "res" / "tput.json"
    urls = ",".join(f"{m}={upstream}" for m in ("coder", "tester", "reviewer"))
    code = main(["bench", "throughput", "--url", urls, "--systems", "off,reuse,0:8", "--qps", "40,20",
                 "--num-sessions", "3", "--warmup-sessions", "1", "--min-context-len", "16", "--max-context-len",
                 "32", "--min-suffix-len", "2", "--max-suffix-len", "4", "--max-new-tokens", "3",
                 "--slo-ttft-ms", "150", "--slo-percentile", "90", "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["max_qps"] == {"off": None, "reuse": 40.0, "0:8": 40.0}
    assert [(p["system"], p["qps"], p["slo_met"]) for p in result["points"]] == [
        ("off", 20.0, False), ("reuse", 20.0, True), ("0:8", 20.0, True), ("reuse", 40.0, True),
        ("0:8", 40.0, True)]  # off misses at 20 and is skipped at 40
    assert result["warnings"] == [] and "error" not in result and result["flush_failed"] == []
    assert {r["qps"] for r in result["requests"]} == {20.0, 40.0} and all(r["error"] is None for r in result["requests"])
    assert len(result["requests"]) == sum(p["num_requests"] for p in result["points"])
    assert result["command"].startswith("droidspeak bench-throughput ") and "--qps=40,20" in result["command"]
    assert any("cacheblend" in t for t in result["todo"]) and result["card"]
    md = out.with_suffix(".md").read_text()
    assert "| full prefill | none |" in md and "| droidspeak 0:8 | 40 |" in md and "not run |" in md
    assert out.with_suffix(".png").stat().st_size > 1000
    out.with_suffix(".md").unlink()
    assert main(["bench-throughput", "--replot", str(out)]) == 0 and out.with_suffix(".md").read_text() == md


def test_flush_is_best_effort(upstream):
    from sglang_droidspeak.bench.throughput_outputs import flush_targets
    stub.SEEN.append(("coder", [1, 2]))
    assert flush_targets({"a": upstream, "b": upstream, "gone": "http://127.0.0.1:9"}) == ["http://127.0.0.1:9"]
    assert stub.SEEN == []


def test_url_or_launch_required(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["bench-throughput", "--out", str(tmp_path / "x.json")])
    capsys.readouterr()
    assert main(["bench-throughput", "--url", "http://x", "--systems", "off,0:99", "--out",
                 str(tmp_path / "x.json")]) == 1  # one line, no traceback (cli_errors)
    assert capsys.readouterr().err.startswith("droidspeak bench-throughput: error: ValueError: plan '0:99': ")


FAKE_LAUNCH = '''
import json, os, sys
record = {"argv": sys.argv[1:], "config": json.load(open(os.environ["DROIDSPEAK_CONFIG"])),
          "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "plugins": os.environ.get("SGLANG_PLUGINS")}
name = sys.argv[sys.argv.index("--served-model-name") + 1]
json.dump(record, open(os.path.join(os.environ["FAKE_SGLANG_RECORDS"], name + ".json"), "w"))
import sglang_stream_stub
sglang_stream_stub.main()
'''


def test_launch_starts_sender_then_receivers(tmp_path, monkeypatch):
    """--launch against a fake ``sglang.launch_server`` that runs the stub in its own process
    (so receivers see no foreign context: the fall-back warnings are expected here)."""
    fake = tmp_path / "fake" / "sglang"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "launch_server.py").write_text(FAKE_LAUNCH)
    (tmp_path / "records").mkdir()
    here = Path(__file__).resolve()
    monkeypatch.setenv("PYTHONPATH", f"{fake.parent}:{here.parents[2]}:{here.parent}")
    monkeypatch.setenv("FAKE_SGLANG_RECORDS", str(tmp_path / "records"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    from test_bench_prefill import free_base, tokenizer_dir
    out = tmp_path / "launch.json"
    code = main(["bench-throughput", "--launch", "--gpus", "0,1,1", "--data-plane", "nccl",
                 "--port-base", str(free_base()), "--zmq-base", "5990", "--systems", "reuse", "--qps", "50",
                 "--num-sessions", "2", "--warmup-sessions", "0", "--min-context-len", "16", "--max-context-len", "16",
                 "--min-suffix-len", "2", "--max-suffix-len", "2", "--max-new-tokens", "2",
                 "--tokenizer-from", str(tokenizer_dir(tmp_path)), "--work-dir", str(tmp_path / "work"),
                 "--startup-timeout", "30", "--out", str(out)])
    assert code == 0
    records = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "records").iterdir()}
    assert sorted(records) == ["coder", "reviewer", "tester"]
    gpu_ids = [records[m]["argv"][records[m]["argv"].index("--base-gpu-id") + 1] for m in ("coder", "tester", "reviewer")]
    assert gpu_ids == ["0", "1", "1"]  # --base-gpu-id, not CUDA_VISIBLE_DEVICES (NCCL needs every GPU visible)
    assert [records[m]["gpu"] for m in ("coder", "tester", "reviewer")] == [None] * 3
    assert records["coder"]["config"] == {"model": "coder", "export_bind": "tcp://127.0.0.1:5990",
                                          "announce_bind": "tcp://127.0.0.1:5991", "data_plane": "nccl"}
    assert records["tester"]["config"]["data_plane"] == records["reviewer"]["config"]["data_plane"] == "nccl"
    tester = records["tester"]["config"]
    assert tester["peers"] == [{"model": "coder", "fetch": "tcp://127.0.0.1:5990", "announce": "tcp://127.0.0.1:5991"}]
    assert tester["plans"] == [{"sender": "coder", "receiver": "tester", "num_layers": 32, "groups": [[0, 8]]}]
    argv = records["reviewer"]["argv"]
    assert argv[argv.index("--load-format") + 1] == "dummy" and argv[argv.index("--context-length") + 1] == "36"
    assert records["coder"]["plugins"] == "droidspeak"
    result = json.loads(out.read_text())
    assert result["server_gpus"] == {"coder": "0", "tester": "1", "reviewer": "1"} and "error" not in result
    assert "KV over data plane nccl" in result["servers_note"] and not any("NCCL" in t for t in result["todo"])
    assert result["points"][0]["num_errors"] == 0 and result["warnings"][0].startswith("reuse @ 50: ")


def test_the_data_plane_goes_into_every_server_config():
    from sglang_droidspeak.bench.throughput import ThroughputConfig
    from sglang_droidspeak.bench.throughput_servers import check_plane_gpus, droidspeak_configs
    from sglang_droidspeak.sglang.settings import parse_settings
    models = ["coder", "tester", "reviewer"]
    for plane in ("zmq", "cuda_ipc", "nccl"):
        configs = droidspeak_configs(models, 5990, 60.0, "0:8", 32, plane)
        assert {name: parse_settings(c).data_plane for name, c in configs.items()} == dict.fromkeys(models, plane)
    assert [c["data_plane"] for c in droidspeak_configs(models, 5990, 60.0, "", 32).values()] == ["zmq"] * 3
    assert ThroughputConfig().data_plane == "zmq" and ThroughputConfig(data_plane="cuda_ipc").data_plane == "cuda_ipc"
    with pytest.raises(ValueError, match="--data-plane must be one of zmq, cuda_ipc, nccl, nixl, got 'rdma'"):
        ThroughputConfig(data_plane="rdma")
    with pytest.raises(SystemExit) as exit_info:  # a bad argument: the usage and status 2 (cli_errors)
        main(["bench-throughput", "--url", "http://x", "--data-plane", "ZMQ"])
    assert exit_info.value.code == 2
    check_plane_gpus("nccl", "0,1,1", 3)
    check_plane_gpus("cuda_ipc", "0", 3)
    for gpus in ("0", "0,1,0"):
        with pytest.raises(ValueError, match="nccl needs the sender on another GPU"):
            check_plane_gpus("nccl", gpus, 3)


def test_blend_systems_are_accepted_and_replace_the_todo():
    from types import SimpleNamespace

    from sglang_droidspeak.bench import throughput_outputs, throughput_report
    from sglang_droidspeak.bench.throughput import parse_systems
    from sglang_droidspeak.bench.workload import WorkloadSpec
    assert parse_systems("off,blend:0.125,0:8", 32) == ["off", "blend:0.125", "0:8"]
    with pytest.raises(ValueError, match="blend:2"):
        parse_systems("off,blend:2", 32)
    cfg = SimpleNamespace(mix="a>b", num_sessions=1, warmup_sessions=0, seed=0, launch=False, url="u",
                          slo_ttft_ms=1.0, slo_percentile=90.0)
    spec = WorkloadSpec(())
    result = throughput_outputs.new_result(cfg, spec, ["off", "blend:0.25"], "cmd", "card")
    assert not any("cacheblend" in t for t in result["todo"])
    table = throughput_report.max_qps_table({"off": None, "blend:0.25": 2.0}, "slo")
    assert "| cacheblend 0.25 | 2 |" in table and "not run" not in table


def test_request_rows_keep_times_to_the_microsecond():
    from sglang_droidspeak.bench.load_driver import RequestRecord
    from sglang_droidspeak.bench.throughput_outputs import request_row

    record = RequestRecord(3, 1, "tester", "0:8", 4096, 4200, 1.23456789, 250.0004999, 900.1236,
                           (7.8881739, 3.9670049), 3, 4096)
    assert request_row(2.0, record) == {
        "qps": 2.0, "session_id": 3, "step": 1, "model": "tester", "plan": "0:8", "context_len": 4096,
        "prompt_len": 4200, "send_s": 1.235, "ttft_ms": 250.0, "e2e_ms": 900.124, "itl_ms": [7.888, 3.967],
        "num_output_tokens": 3, "cached_tokens": 4096, "error": None}
    failed = RequestRecord(0, 0, "coder", "off", 10, 20, 0.5, None, 12.0, (), 0, None, "timeout")
    assert request_row(1.0, failed)["ttft_ms"] is None and request_row(1.0, failed)["itl_ms"] == []
