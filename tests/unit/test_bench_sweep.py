"""The bandwidth sweep of ``droidspeak bench-prefill``: configs, the import split from
/metrics, the sweep table's columns and bound, and a sweep end to end against the fake
SGLang of test_bench_prefill.py (which here also reports import stage sums)."""

from __future__ import annotations

import json

import pytest

from sglang_droidspeak.bench import prefill_model
from sglang_droidspeak.bench import sweep_report as sweep
from sglang_droidspeak.cli import main
from sglang_droidspeak.sglang.request_options import parse_request_options
from sglang_droidspeak.sglang.settings import parse_settings
from test_bench_prefill import FAKE, free_base, tokenizer_dir, use_fake_sglang

STAGE_LINES = '''sglang:droidspeak_import_stage_seconds_sum{model="b",stage="fetch"} 1.5
sglang:droidspeak_import_stage_seconds_sum{model="b",stage="recompute"} 0.25
sglang:droidspeak_import_stage_seconds_count{model="b",stage="fetch"} 3.0
sglang:droidspeak_import_stage_seconds_sum{model="a",stage="total"} 9.0
'''


def test_parse_configs():
    assert sweep.parse_configs("on", "") == [sweep.Config(True, None)]
    assert sweep.parse_configs("on,off", "10,25") == [
        sweep.Config(True, 10.0), sweep.Config(False, 10.0), sweep.Config(True, 25.0), sweep.Config(False, 25.0)]
    for pipelined, throttles, flag in (("yes", "", "--pipelined"), ("", "", "--pipelined"),
                                       ("on", "10,x", "--throttle-gbps"), ("on", "0", "--throttle-gbps")):
        with pytest.raises(ValueError, match=flag):
            sweep.parse_configs(pipelined, throttles)
    assert sweep.parse_configs("on,off", "none,10") == [
        sweep.Config(True, None), sweep.Config(False, None), sweep.Config(True, 10.0), sweep.Config(False, 10.0)]
    assert sweep.parse_configs("on", "25,none") == [sweep.Config(True, 25.0), sweep.Config(True, None)]
    assert sweep.Config(False, 25.0).label() == "serial, 25 Gbit/s"
    assert sweep.Config(True, None).label() == "pipelined, host path"


def test_stage_sums_and_differences():
    before = sweep.stage_sums(STAGE_LINES)
    assert before == {"fetch": 1.5, "recompute": 0.25}  # model b only, _sum only
    after = {"fetch": 1.75, "recompute": 0.25, "total": 0.5}
    assert sweep.stage_ms(before, after) == {"fetch_ms": 250.0, "recompute_ms": 0.0, "drain_ms": None,
                                             "total_ms": 500.0}


def sample(plan, ttft, pipelined=True, throttle=10.0, fetch=None, recompute=None, total=None):
    return {"length": 1024, "plan": plan, "ttft_ms": ttft, "pipelined": pipelined, "throttle_gbps": throttle,
            "fetch_ms": fetch, "recompute_ms": recompute, "total_ms": total}


def test_rows_bound_and_table_exact():
    samples = [sample("off", 100.0, throttle=None),
               sample("0:8", 50.0, True, 10.0, 30.0, 20.0, 34.0), sample("0:8", 54.0, True, 10.0, 34.0, 20.0, 36.0),
               sample("0:8", 80.0, False, 10.0, 30.0, 20.0, 60.0),
               sample("reuse", 25.0, True, None)]
    rows = sweep.sweep_rows(samples)
    assert [(r.plan, r.config) for r in rows] == [("0:8", sweep.Config(True, 10.0)),
                                                  ("0:8", sweep.Config(False, 10.0)),
                                                  ("reuse", sweep.Config(True, None))]
    piped, serial, reuse = rows
    assert (piped.ttft_ms, piped.fetch_ms, piped.import_ms, piped.suffix_ms) == (52.0, 32.0, 35.0, 17.0)
    assert piped.bound_ms == pytest.approx(1.1 * 32.0 + 17.0) and piped.within_bound is True
    assert serial.bound_ms == pytest.approx(1.1 * 30.0 + 20.0) and serial.within_bound is False
    assert reuse.bound_ms is None and reuse.within_bound is None and reuse.speedup == 4.0
    lines = sweep.markdown_table(rows).splitlines()
    assert lines[0] == "| " + " | ".join(sweep.COLUMNS) + " |"
    assert lines[2:] == ["| 1024 | 0:8 | yes | 10 | 52.0 | 1.92 | 32.0 | 20.0 | 35.0 | 17.0 | 52.2 | yes |",
                         "| 1024 | 0:8 | no | 10 | 80.0 | 1.25 | 30.0 | 20.0 | 60.0 | 20.0 | 53.0 | no |",
                         "| 1024 | reuse | yes | host | 25.0 | 4.00 | - | - | - | - | - | - |"]
    assert sweep.rows_to_json(rows)[1]["within_bound"] is False


def test_one_server_pair_serves_every_config():
    sender, receiver = (parse_settings(c) for c in prefill_model.droidspeak_configs(5801, 60.0))
    assert (sender.allow_request_throttle, sender.throttle_gbps) == (True, None)
    assert (receiver.allow_request_throttle, receiver.pipelined) == (False, True)


def test_each_config_becomes_the_request_options():
    assert sweep.Config(True, None).custom_params() == {"droidspeak_pipelined": "on"}
    assert sweep.Config(False, 25.0).custom_params() == {"droidspeak_pipelined": "off", "droidspeak_link_gbps": 25.0}
    for config in (sweep.Config(True, 10.0), sweep.Config(False, None)):
        options = parse_request_options(config.custom_params())
        assert (options.pipelined, options.link_gbps) == (config.pipelined, config.throttle_gbps or 0.0)


# the fake adds 10 ms fetch, 4 ms recompute and 12 ms total per foreign hit to its stage sums
STAGED_FAKE = FAKE.replace("tree = {}\n", "tree = {}\nstages = {'fetch': 0.0, 'recompute': 0.0, 'total': 0.0}\n").replace(
    "            hit, cost = foreign, len(ids) - foreign + foreign * k_of(plan) / layers\n",
    "            hit, cost = foreign, len(ids) - foreign + foreign * k_of(plan) / layers\n"
    "            for s, v in (('fetch', 0.010), ('recompute', 0.004), ('total', 0.012)): stages[s] += v\n").replace(
    'self.send(b"sglang:droidspeak_tokens_reused_total 3.0\\n" if self.path == "/metrics" else b"{}", "text/plain")',
    'self.send("".join(f\'sglang:droidspeak_import_stage_seconds_sum{{model="b",stage="{s}"}} {v}\\n\' '
    'for s, v in stages.items()).encode() if self.path == "/metrics" else b"{}", "text/plain")').replace(
    "    hit = longest(ids, tree)\n",
    "    hit = longest(ids, tree)\n"
    "    if 'peers' in settings:\n"
    "        with open(os.environ['FAKE_SGLANG_PARAMS'], 'a') as log:\n"
    "            log.write(json.dumps(body['sampling_params']['custom_params']) + '\\n')\n")


def test_sweep_end_to_end_against_fake_sglang(tmp_path, monkeypatch):
    assert all(part in STAGED_FAKE for part in ("stages = {", "stages[s] += v", "stages.items()", "FAKE_SGLANG_PARAMS"))
    use_fake_sglang(tmp_path, monkeypatch, STAGED_FAKE, unit_s=0.001)
    monkeypatch.setenv("FAKE_SGLANG_PARAMS", str(tmp_path / "params.jsonl"))
    out = tmp_path / "res" / "sweep.json"
    code = main(["bench-prefill", "--lengths", "64", "--plans", "reuse,0:8", "--repeats", "1", "--warmup", "0",
                 "--announce-wait", "0", "--pipelined", "on,off", "--throttle-gbps", "10,100", "--out", str(out),
                 "--sweep-lengths", "64", "--sweep-plans", "0:8",
                 "--tokenizer-from", str(tokenizer_dir(tmp_path)), "--work-dir", str(tmp_path / "work"),
                 "--port-base", str(free_base()), "--zmq-base", "5999", "--startup-timeout", "30"])
    assert code == 0
    result = json.loads(out.read_text())
    assert "error" not in result and len(result["configs"]) == 4
    configs = [(s["plan"], s["pipelined"], s["throttle_gbps"]) for s in result["samples"]]
    assert configs == [("off", True, 10.0), ("reuse", True, 10.0), ("0:8", True, 10.0),  # the main table
                       ("0:8", False, 10.0), ("0:8", True, 100.0), ("0:8", False, 100.0)]  # --sweep-plans
    assert [len(r) for r in result["rows"]] and [r["plan"] for r in result["rows"]] == ["off", "reuse", "0:8"]
    split = result["sweep_rows"][0]
    assert (split["fetch_ms"], split["recompute_ms"], split["import_ms"]) == pytest.approx((10.0, 4.0, 12.0))
    assert split["bound_ms"] == pytest.approx(11.0 + split["ttft_ms"] - 12.0)
    md = out.with_suffix(".md").read_text()
    assert "## Pipelining and link rate" in md and "| 64 | 0:8 | no | 100 |" in md
    assert (tmp_path / "res" / "sweep-sweep.png").stat().st_size > 1000
    logs = sorted(p.relative_to(tmp_path / "work").as_posix() for p in (tmp_path / "work").rglob("server-*.log"))
    assert logs == ["servers/server-a.log", "servers/server-b.log"]  # one pair for all four configs
    assert result["droidspeak_config"]["a"]["allow_request_throttle"] is True
    params = [json.loads(line) for line in (tmp_path / "params.jsonl").read_text().splitlines()]
    assert params == [{"droidspeak_plan": plan, "droidspeak_pipelined": "on" if piped else "off",
                       "droidspeak_link_gbps": rate} for plan, piped, rate in configs]
