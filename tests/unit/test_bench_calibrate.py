"""bench/calibrate.py: the latency model fitted to a bench-prefill result (tiny, exact)."""

from __future__ import annotations

import json

import pytest

from sglang_droidspeak.bench import calibrate

CONFIG = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2}  # head_dim 16


def _result(ms_per_layer_token: float, link_bytes_per_ms: float, num_layers: int = 4, suffix: int = 16) -> dict:
    """Synthetic samples that follow the latency model exactly (two repeats each)."""
    kv_bytes = 2 * 2 * 16 * 2  # per layer and token, bf16
    samples = []
    for length in (1024, 4096):
        suffix_ms = ms_per_layer_token * num_layers * suffix
        rows = {"off": ms_per_layer_token * num_layers * (length + suffix),
                "reuse": suffix_ms + num_layers * kv_bytes * length / link_bytes_per_ms,
                "0:1": suffix_ms + ms_per_layer_token * length + 3 * kv_bytes * length / link_bytes_per_ms}
        rows["blend:0.25"] = rows["0:1"]  # a CacheBlend-style row: no layer plan, not predicted
        samples += [{"length": length, "plan": plan, "ttft_ms": ms} for plan, ms in rows.items() for _ in (0, 1)]
    return {"model": CONFIG, "num_layers": num_layers, "suffix_len": suffix, "samples": samples}


def test_fit_recovers_compute_and_link_and_predicts_plans_exactly():
    model, predictions = calibrate.fit(_result(0.001, 1000.0))
    assert model.ms_per_layer_token == pytest.approx(0.001) and model.ms_fixed == pytest.approx(0.0, abs=1e-9)
    assert model.kv_bytes_per_layer_token == 128 and model.e_bytes_per_token == 128
    assert model.link_gbps == pytest.approx(8 * 1000.0 * 1e3 / 1e9)  # 1000 bytes/ms
    assert model.pipelined is False
    assert [(p.length, p.plan) for p in predictions] == [(1024, "0:1"), (1024, "reuse"), (4096, "0:1"), (4096, "reuse")]
    assert all(abs(p.rel_error) < 1e-9 for p in predictions)


def test_main_writes_model_and_predictions(tmp_path, capsys):
    src, out = tmp_path / "bench.json", tmp_path / "model.json"
    src.write_text(json.dumps(_result(0.002, 500.0)))
    assert calibrate.main([str(src), "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["latency_model"]["ms_per_layer_token"] == pytest.approx(0.002)
    assert len(written["predictions"]) == 4 and "latency_model" in capsys.readouterr().out


def test_sweep_rows_and_other_lengths_do_not_enter_the_fit():
    result = _result(0.001, 1000.0)
    result["configs"] = [{"pipelined": True, "throttle_gbps": None}, {"pipelined": True, "throttle_gbps": 10.0}]
    for sample in result["samples"]:
        sample.update(pipelined=True, throttle_gbps=None)
    paced = [{"length": 4096, "plan": "reuse", "ttft_ms": 1e6, "pipelined": True, "throttle_gbps": 10.0}] * 3
    result["samples"] += paced  # a sweep config's rows: far slower, must not move the link
    model, predictions = calibrate.fit(result)
    assert model.link_gbps == pytest.approx(8.0 * 1e6 / 1e9 * 1e3 / 1e3)
    assert all(abs(p.rel_error) < 1e-9 for p in predictions)
    result["samples"] += [{"length": 8192, "plan": "off", "ttft_ms": 1e5, "pipelined": True, "throttle_gbps": None}]
    model, predictions = calibrate.fit(result, {1024, 4096})  # the superlinear long context left out
    assert model.ms_per_layer_token == pytest.approx(0.001)
    assert {p.length for p in predictions} == {1024, 4096}
