"""`droidspeak bench-prefill` end to end against a FAKE SGLang, and its pure functions.

The fake (tmp_path/fake/sglang/launch_server.py on PYTHONPATH) serves /health, /generate,
/flush_cache and /metrics. /generate sleeps UNIT x (uncached tokens + foreign tokens x k/L),
k = layers recomputed by the request's droidspeak_plan; the sender "announces" a prompt by
writing a file into a shared dir, so the receiver finds the context like the plugin would.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sglang_droidspeak.bench import prefill, prefill_model
from sglang_droidspeak.bench import prefill_report as rep
from sglang_droidspeak.cli import main
from sglang_droidspeak.sglang.settings import parse_settings

FAKE = r'''
import argparse, hashlib, json, os, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
p = argparse.ArgumentParser()
for flag in ("--host", "--port", "--served-model-name", "--model-path"):
    p.add_argument(flag)
args, _ = p.parse_known_args()
layers = json.load(open(os.path.join(args.model_path, "config.json")))["num_hidden_layers"]
settings = json.load(open(os.environ["DROIDSPEAK_CONFIG"]))
shared, unit = os.environ["FAKE_SGLANG_SHARED"], float(os.environ["FAKE_SGLANG_UNIT_S"])
tree = {}
profiling = {}
digest = lambda ids: hashlib.sha1(json.dumps(ids).encode()).hexdigest()
def longest(ids, known):
    return max([n for h, n in known.items() if n <= len(ids) and digest(ids[:n]) == h], default=0)
def announced():
    return {n: int(open(os.path.join(shared, n)).read()) for n in os.listdir(shared) if not n.startswith(".")}
def k_of(plan):
    if plan.startswith("blend:"):
        return float(plan[6:].split("@")[0]) * layers
    return 0 if plan == "reuse" else sum(int(e) - int(s) for s, e in (g.split(":") for g in plan.split(",")))
def generate(body):
    ids = body["input_ids"]
    plan = body["sampling_params"].get("custom_params", {}).get("droidspeak_plan")
    hit = longest(ids, tree)
    cost = len(ids) - hit
    if plan not in (None, "off") and "peers" in settings:
        foreign = longest(ids, announced())
        if foreign > hit:
            hit, cost = foreign, len(ids) - foreign + foreign * k_of(plan) / layers
    time.sleep(unit * cost)
    tree[digest(ids)] = len(ids)
    if "announce_bind" in settings:
        tmp = os.path.join(shared, "." + digest(ids))
        open(tmp, "w").write(str(len(ids)))
        os.replace(tmp, os.path.join(shared, digest(ids)))
    return {"output_ids": [5], "meta_info": {"cached_tokens": hit, "prompt_tokens": len(ids), "e2e_latency": 0.1}}
class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def send(self, body, kind="application/json"):
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self.send(b"sglang:droidspeak_tokens_reused_total 3.0\n" if self.path == "/metrics" else b"{}", "text/plain")
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        if self.path == "/flush_cache":
            tree.clear()
            return self.send(b"{}")
        if self.path == "/start_profile":
            profiling["dir"] = body["output_dir"]
            return self.send(b"Start profiling.", "text/plain")
        if self.path == "/stop_profile":  # one tiny trace: 1 ms of gemm, 2 ms idle, 0.5 ms of attention
            events = [{"cat": "kernel", "name": "nvjet_gemm", "ts": 0.0, "dur": 1000.0},
                      {"cat": "kernel", "name": "flash_prefill", "ts": 3000.0, "dur": 500.0}]
            out_dir = profiling.pop("dir")
            os.makedirs(out_dir, exist_ok=True)
            json.dump({"traceEvents": events}, open(os.path.join(out_dir, "fake.trace.json"), "w"))
            return self.send(b"Stop profiling.", "text/plain")
        self.send(json.dumps(generate(body)).encode())
server = ThreadingHTTPServer((args.host, int(args.port)), H)
try:
    server.serve_forever()
except KeyboardInterrupt:
    pass
'''
UNIT_S = 0.002
PLANS = ["off", "reuse", "0:4", "0:8", "0:16", "blend:0.125", "blend:0.25"]


def free_base() -> int:
    """A port p with p and p + 1 free."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s2:
                s2.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports")


def tokenizer_dir(tmp_path: Path) -> Path:
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}')
    (tok / "tokenizer_config.json").write_text('{"model_max_length": 2048, "eos_token": "a"}')
    return tok


def use_fake_sglang(tmp_path: Path, monkeypatch, fake: str = FAKE, unit_s: float = UNIT_S) -> None:
    """The ``fake`` SGLang package first on PYTHONPATH, with its shared announce dir and cost unit."""
    (tmp_path / "fake" / "sglang").mkdir(parents=True)
    (tmp_path / "fake" / "sglang" / "__init__.py").write_text("")
    (tmp_path / "fake" / "sglang" / "launch_server.py").write_text(fake)
    (tmp_path / "shared").mkdir()
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path / 'fake'}:{Path(__file__).resolve().parents[2]}")
    monkeypatch.setenv("FAKE_SGLANG_SHARED", str(tmp_path / "shared"))
    monkeypatch.setenv("FAKE_SGLANG_UNIT_S", str(unit_s))


def test_end_to_end_against_fake_sglang(tmp_path, monkeypatch):
    use_fake_sglang(tmp_path, monkeypatch)
    out = tmp_path / "res" / "bench.json"
    code = main(["bench-prefill", "--lengths", "64,128", "--repeats", "1", "--warmup", "0", "--announce-wait", "0",
                 "--out", str(out), "--tokenizer-from", str(tokenizer_dir(tmp_path)), "--work-dir",
                 str(tmp_path / "work"), "--port-base", str(free_base()), "--zmq-base", "5999",
                 "--startup-timeout", "30"])
    assert code == 0
    result = json.loads(out.read_text())
    assert out.with_suffix(".md").is_file() and out.with_suffix(".png").stat().st_size > 1000
    assert result["warnings"] == [] and "error" not in result
    assert ["--load-format", "dummy"] == result["server_args"]["a"][result["server_args"]["a"].index("--load-format"):][:2]
    assert result["receiver_metrics"] == ["sglang:droidspeak_tokens_reused_total 3.0"]
    assert [(s["plan"], s["cached_tokens"]) for s in result["samples"][:7]] == list(zip(PLANS, [0, 64, 64, 64, 64, 64, 64]))
    rows = result["rows"]
    assert [(r["length"], r["system"], r["k"]) for r in rows] == [
        (n, rep.system_name(p), k) for n in (64, 128) for p, k in zip(PLANS, (32, 0, 4, 8, 16, 4, 8))]
    for r in rows:
        full = next(f["ttft_ms"] for f in rows if f["length"] == r["length"] and f["plan"] == "off")
        assert r["speedup"] == full / r["ttft_ms"]  # computed from the measured numbers
        assert r["ideal"] == (None if r["k"] == 0 else 32 / r["k"])
        assert r["efficiency"] == (None if r["k"] == 0 else r["speedup"] / r["ideal"])
        n = r["length"]  # the fake's cost model: (n + 16) / (16 + n k / 32)
        assert r["speedup"] == pytest.approx((n + 16) / (16 + n * r["k"] / 32), rel=0.3)
    md = out.with_suffix(".md").read_text().splitlines()
    table = [line for line in md if line.startswith("|")]
    assert table[0] == "| " + " | ".join(rep.COLUMNS) + " |" and len(table) == 2 + 14
    assert table[3].startswith("| 64 | full reuse | ") and table[3].endswith(" | 0 | inf | n/a |")
    assert table[-1].startswith("| 128 | cacheblend 0.25 | ") and " | 8 | 4.00 | " in table[-1]  # no TODO row
    assert result["todo"] == []
    assert json.loads((tmp_path / "work" / "llama-3.1-8b-shape" / "config.json").read_text())["hidden_size"] == 4096


def test_profile_plans_record_one_more_request_each_at_the_first_length(tmp_path, monkeypatch):
    use_fake_sglang(tmp_path, monkeypatch)
    out = tmp_path / "res" / "bench.json"
    code = main(["bench-prefill", "--lengths", "64,128", "--plans", "0:8,reuse", "--repeats", "1", "--warmup", "0",
                 "--announce-wait", "0", "--out", str(out), "--tokenizer-from", str(tokenizer_dir(tmp_path)),
                 "--work-dir", str(tmp_path / "work"), "--port-base", str(free_base()), "--zmq-base", "5999",
                 "--startup-timeout", "30", "--profile-plans", "off,0:8,1:8"])  # 1:8 is not benched: skipped
    assert code == 0
    result = json.loads(out.read_text())
    assert len(result["samples"]) == 6  # the profiled runs are not timed samples
    assert [(s["length"], s["plan"], s["cached_tokens"]) for s in result["profiles"]] == [(64, "off", 0), (64, "0:8", 64)]
    for s in result["profiles"]:
        p = s["profile"]
        assert (p["total_kernel_ms"], p["busy_ms"], p["span_ms"], p["idle_ms"]) == (1.5, 1.5, 3.5, 2.0)
        assert p["by_kind_ms"] == {"gemm": 1.0, "attention": 0.5} and p["largest_gaps_ms"] == [[1.0, 2.0]]
        assert s["ttft_ms"] > 0
    assert sorted(p.name for p in (tmp_path / "work" / "profiles").iterdir()) == ["64-0_8", "64-off"]
    md = out.with_suffix(".md").read_text()
    assert "## Profiled receiver requests" in md and "| 64 | 0:8 | " in md and " | 1.5 | 0.5 | 1.0 | 0.0 | 1.5 | 3.5 | 2.0 | 2 |" in md


def test_profile_targets_keep_the_benched_order():
    plans = ["off", "0:8", "reuse", "blend:0.25"]
    assert prefill.profile_targets("blend:0.25,off,1:8", plans) == ["off", "blend:0.25"]
    assert prefill.profile_targets("", plans) == []
    assert prefill.profile_targets("0:8;reuse", plans) == ["0:8", "reuse"]


def test_recomputed_layers_and_ideal():
    assert [rep.recomputed_layers(p, 32) for p in ("off", "reuse", "0:8", "0:2,4:6")] == [32, 0, 8, 4]
    assert [rep.recomputed_layers(p, 32) for p in ("blend:0.125", "blend:0.25@2", "blend:0.1")] == [4, 8, 3.2]
    assert rep.system_name("blend:0.125") == "cacheblend 0.125" and rep.system_name("0:4") == "droidspeak 0:4"
    for bad in ("0:40", "x", "3:1", "0:2:4", "blend:2", "blend:x", "blend:0.1@32"):
        with pytest.raises(ValueError, match="plan"):
            rep.recomputed_layers(bad, 32)
    assert rep.ideal_speedup(0, 32) is None and rep.ideal_speedup(8, 32) == 4.0
    assert rep.efficiency(2.5, 4.0) == 0.625 and rep.efficiency(5.0, None) is None


def test_table_rows_and_markdown_exact():
    medians = rep.median_ttft([{"length": 1024, "plan": "off", "ttft_ms": t} for t in (90.0, 110.0, 100.0)]
                              + [{"length": 1024, "plan": "reuse", "ttft_ms": 20.0},
                                 {"length": 1024, "plan": "0:8", "ttft_ms": 40.0},
                                 {"length": 2048, "plan": "reuse", "ttft_ms": 10.0}])
    rows = rep.table_rows(medians, ["off", "reuse", "0:8"], 32)
    assert rows == [rep.TableRow(1024, "full prefill", "off", 100.0, 1.0, 32, 1.0, 1.0),
                    rep.TableRow(1024, "full reuse", "reuse", 20.0, 5.0, 0, None, None),
                    rep.TableRow(1024, "droidspeak 0:8", "0:8", 40.0, 2.5, 8, 4.0, 0.625),
                    rep.TableRow(2048, "full reuse", "reuse", 10.0, None, 0, None, None)]
    assert rep.markdown_table(rows).splitlines()[2:] == [
        "| 1024 | full prefill | 100.0 | 1.00 | 32 | 1.00 | 1.00 |",
        "| 1024 | full reuse | 20.0 | 5.00 | 0 | inf | n/a |",
        "| 1024 | droidspeak 0:8 | 40.0 | 2.50 | 8 | 4.00 | 0.62 |",
        "| 2048 | full reuse | 10.0 | - | 0 | inf | n/a |",
        "| - | cacheblend: not run (add blend:R to the plans) | - | - | - | - | - |"]
    blend = rep.table_rows({(1024, "off"): 100.0, (1024, "blend:0.1"): 50.0}, ["off", "blend:0.1"], 32)
    assert blend[1] == rep.TableRow(1024, "cacheblend 0.1", "blend:0.1", 50.0, 2.0, 3.2, 10.0, 0.2)
    assert rep.markdown_table(blend).splitlines()[2:] == [
        "| 1024 | full prefill | 100.0 | 1.00 | 32 | 1.00 | 1.00 |",
        "| 1024 | cacheblend 0.1 | 50.0 | 2.00 | 3.2 | 10.00 | 0.20 |"]
    assert rep.median_ttft([{"length": 1, "plan": "off", "ttft_ms": t} for t in (1.0, 2.0)]) == {(1, "off"): 1.5}


def test_parse_plans_and_warnings():
    assert prefill.parse_plans("reuse,0:8,off", 32) == ["off", "reuse", "0:8"]
    assert prefill.parse_plans("0:2,4:6;reuse", 32) == ["off", "0:2,4:6", "reuse"]
    assert prefill.parse_plans(prefill.DEFAULT_PLANS, 32)[-2:] == ["blend:0.125", "blend:0.25"]
    with pytest.raises(ValueError, match="0:99"):
        prefill.parse_plans("reuse,0:99", 32)
    samples = [{"length": 64, "plan": "off", "repeat": 0, "cached_tokens": 64, "reused_context": True},
               {"length": 64, "plan": "0:8", "repeat": 1, "cached_tokens": 3, "reused_context": False},
               {"length": 64, "plan": "reuse", "repeat": 0, "cached_tokens": 63, "reused_context": True}]
    assert prefill.reuse_warnings(samples) == [
        "length 64 plan off repeat 0: cached_tokens 64 but plan 'off' must not reuse",
        "length 64 plan 0:8 repeat 1: cached_tokens 3 < context: fell back to prefill"]


def test_model_dir_and_replot(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        prefill_model.write_model_dir(tmp_path / "m", tmp_path, 1024)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        prefill_model.write_model_dir(tmp_path / "m", tokenizer_dir(tmp_path), 200_000)
    model = prefill_model.write_model_dir(tmp_path / "m", tmp_path / "tok", 32784)
    config = json.loads((model / "config.json").read_text())
    assert (config["num_hidden_layers"], config["num_key_value_heads"], config["intermediate_size"],
            config["vocab_size"], config["rope_parameters"]["rope_theta"]) == (32, 8, 14336, 128256, 500000.0)
    assert json.loads((model / "tokenizer_config.json").read_text())["model_max_length"] == 131072
    sender, receiver = (parse_settings(c) for c in prefill_model.droidspeak_configs(5801, 120.0))
    assert (sender.export_bind, sender.announce_bind, receiver.fetch_timeout_s, receiver.plans) == (
        "tcp://127.0.0.1:5801", "tcp://127.0.0.1:5802", 120.0, ())
    assert [(q.model, q.fetch, q.announce) for q in receiver.peers] == [
        ("a", "tcp://127.0.0.1:5801", "tcp://127.0.0.1:5802")]
    assert (sender.data_plane, receiver.data_plane) == ("zmq", "zmq")
    ipc = [parse_settings(c).data_plane for c in prefill_model.droidspeak_configs(5801, 120.0, "cuda_ipc")]
    assert ipc == ["cuda_ipc", "cuda_ipc"]
    result = {"plans": ["off", "0:8"], "num_layers": 32, "samples": [
        {"length": 8, "plan": p, "repeat": 0, "ttft_ms": t, "cached_tokens": c, "reused_context": c >= 7}
        for p, t, c in (("off", 30.0, 0), ("0:8", 10.0, 8))]}
    (tmp_path / "r.json").write_text(json.dumps(result))
    assert main(["bench-prefill", "--replot", str(tmp_path / "r.json")]) == 0
    assert "| 8 | droidspeak 0:8 | 10.0 | 3.00 | 8 | 4.00 | 0.75 |" in (tmp_path / "r.md").read_text()
    assert (tmp_path / "r.png").is_file() and json.loads((tmp_path / "r.json").read_text()) == result
    longer = {**result, "plans": ["off", "reuse"], "samples": [
        {"length": 16, "plan": p, "repeat": 0, "ttft_ms": t, "cached_tokens": c, "reused_context": c >= 15}
        for p, t, c in (("off", 60.0, 0), ("reuse", 12.0, 16))]}
    (tmp_path / "l.json").write_text(json.dumps(longer))
    merged = tmp_path / "merged" / "m.json"
    assert main(["bench-prefill", "--replot", f"{tmp_path / 'r.json'},{tmp_path / 'l.json'}", "--out", str(merged)]) == 0
    assert [(r["length"], r["plan"], r["speedup"]) for r in json.loads(merged.read_text())["rows"]] == [
        (8, "off", 1.0), (8, "0:8", 3.0), (16, "off", 1.0), (16, "reuse", 5.0)]
    assert merged.with_suffix(".md").is_file() and merged.with_suffix(".png").is_file()


def test_module_imports_no_sglang_or_torch():
    code = ("import sys, sglang_droidspeak.cli as c; c.build_parser(['bench-prefill']); "
            "import sglang_droidspeak.bench.prefill; "
            "print(sorted(m for m in sys.modules if m in ('torch', 'sglang', 'matplotlib')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_nccl_plane_puts_the_servers_on_two_gpus():
    nccl = [parse_settings(c).data_plane for c in prefill_model.droidspeak_configs(5801, 120.0, "nccl")]
    assert nccl == ["nccl", "nccl"]
    assert prefill_model.gpu_ids("", "nccl") == ("0", "1") and prefill_model.gpu_ids("", "zmq") is None
    assert prefill_model.gpu_ids("2, 3", "cuda_ipc") == ("2", "3")
    for bad, plane in (("0", "zmq"), ("a,b", "zmq"), ("1,1", "nccl")):
        with pytest.raises(SystemExit, match="--gpus|different GPUs"):
            prefill_model.gpu_ids(bad, plane)


def test_servers_start_in_waves_of_one_per_gpu():
    from sglang_droidspeak.bench.servers import ServerSpec, startup_waves

    def specs(*gpus):
        return [ServerSpec(f"s{i}", 30000 + i, None, ("--x", "1"), g) for i, g in enumerate(gpus)]

    def names(waves):
        return [[s.name for s in wave] for wave in waves]

    assert names(startup_waves(specs("0", "1", "1"))) == [["s0", "s1"], ["s2"]]
    assert names(startup_waves(specs("0", "0"))) == [["s0"], ["s1"]]
    assert names(startup_waves(specs(None, "0", "1"))) == [["s0"], ["s1", "s2"]]  # no GPU given: GPU 0
    assert [s.args for s in specs("1", None)] == [("--base-gpu-id", "1", "--x", "1"), ("--x", "1")]
    assert names(startup_waves(specs("1", "0", "2", "0"))) == [["s0", "s1", "s2"], ["s3"]]
    assert startup_waves([]) == []
