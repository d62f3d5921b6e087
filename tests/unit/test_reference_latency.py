"""``droidspeak bench-reference`` on a tiny 4-layer pair: the plan set, the functions each
system times (the quality study's), the result format, and quality-latency reading it.
No timing is asserted: only structure and which code ran."""

from __future__ import annotations

import json

import pytest
import torch

from sglang_droidspeak.bench import reference_latency as rl
from sglang_droidspeak.bench import reference_timing as rt
from sglang_droidspeak.bench.quality_latency import build_study
from sglang_droidspeak.bench.quality_latency_report import latency_source
from sglang_droidspeak.cli import main
from sglang_droidspeak.plan import LayerPlan
from sglang_droidspeak.profiler import evaluate
from sglang_droidspeak.profiler.loading import LoadedModel
from sglang_droidspeak.reference import ReferenceModel
from sglang_droidspeak.reference.tiny import perturbed_copy, tiny_model

L = 4
PLANS = ["off", "reuse", "0:1", "0:2", "0:3", "blend:0.5", "blend:0.75"]  # blend:0.25 cannot pay its selection
SYSTEMS = {"off": "receiver", "reuse": "plan:reuse-all", "0:1": "plan:[0, 1)", "0:2": "plan:[0, 2)",
           "0:3": "plan:[0, 3)", "blend:0.5": "cacheblend:2", "blend:0.75": "cacheblend:3"}
CONFIG = rl.ReferenceLatencyConfig(sender="s", receiver="r", context_len="24,40", query_len=4, repeats=3, warmup=1)


@pytest.fixture(scope="module")
def pair() -> tuple[LoadedModel, LoadedModel]:
    receiver = tiny_model("llama", seed=0, num_layers=L)
    sender = perturbed_copy(receiver, 0.2)
    return (LoadedModel("s", None, ReferenceModel(sender), None, None, "sw"),
            LoadedModel("r", None, ReferenceModel(receiver), None, None, "rw"))


@pytest.fixture(scope="module")
def result(pair) -> dict:
    return rl.measure(*pair, CONFIG)


def test_plan_set_and_skipped_budget(pair):
    systems, skipped = rt.bench_systems(pair[1].model, 24)
    assert [s.plan for s in systems] == PLANS
    assert {s.plan: s.system.key for s in systems} == SYSTEMS
    assert len(skipped) == 1 and skipped[0].startswith("blend:0.25 (cacheblend:1)")
    assert rt.blend_plan_name(1, 6) == "blend:0.16666666666666666" and float("0.16666666666666666") == 1 / 6


def test_result_has_the_bench_prefill_format(pair, result):
    assert result["plans"] == PLANS and result["num_layers"] == L and result["lengths"] == [24, 40]
    assert result["engine"] == "reference" and result["receiver_weights"] == "rw" and result["sender_weights"] == "sw"
    assert result["card"].startswith("CPU ") and "1 threads, torch " + torch.__version__ in result["card"]
    assert result["command"].startswith("droidspeak bench-reference --sender=s --receiver=r --context-len=24,40")
    samples = result["samples"]
    assert len(samples) == len(PLANS) * 3 * 2
    assert sorted((s["length"], s["plan"], s["repeat"]) for s in samples) == sorted(
        (n, p, r) for n in (24, 40) for p in PLANS for r in range(3))
    for s in samples:
        assert s["system"] == SYSTEMS[s["plan"]] and s["ttft_ms"] > 0
        assert s["ttft_ms"] == pytest.approx(s["prefix_ms"] + s["first_token_ms"])
        budget = int(s["system"].split(":")[1]) if s["plan"].startswith("blend") else None
        want = None if budget is None else evaluate.cacheblend_tokens(pair[1].model, budget, s["length"])
        assert s["recompute_tokens"] == want
    assert [(r["length"], r["plan"]) for r in result["rows"]] == [(n, p) for n in (24, 40) for p in PLANS]
    assert "| 40 | cacheblend 0.75 |" in rl.markdown(result)


def counting(monkeypatch, calls):
    """Wrap the functions the quality study's prefix_kv and answer use, recording each call."""
    def wrap(owner, name, record):
        original = getattr(owner, name)
        def wrapper(*args, **kwargs):
            calls.append(record(*args, **kwargs))
            return original(*args, **kwargs)
        monkeypatch.setattr(owner, name, wrapper)
    wrap(ReferenceModel, "prefill", lambda self, ids, e_layers=(): ("prefill", len(ids)))
    wrap(ReferenceModel, "build_receiver_cache", lambda self, sender, plan, ids: ("build", plan))
    wrap(evaluate, "cacheblend_receiver_cache",
         lambda model, sender, ids, tokens, keep_selection_kv=False: ("blend", tokens, keep_selection_kv))
    wrap(ReferenceModel, "generate", lambda self, prefix, query, n, stop_token_ids=(): ("generate", len(query), n))


def test_each_system_times_what_the_quality_study_scores(pair, monkeypatch):
    sender, receiver = pair[0].model, pair[1].model
    systems, _ = rt.bench_systems(receiver, 24)
    context, query = rt.token_ids(receiver.config.vocab_size, 24, 4, seed=0)
    sender_cache = rt.sender_cache_for(sender, systems, context)
    calls = []
    counting(monkeypatch, calls)
    got = {}
    for s in systems:
        calls.clear()
        rt.time_system(receiver, s.system, context, query, sender_cache)
        got[s.plan] = list(calls)
    first_token = ("generate", 4, 1)
    assert got["off"] == [("prefill", 24), first_token]
    assert got["reuse"] == [("build", LayerPlan.full_reuse(L)), first_token]
    assert got["0:2"] == [("build", LayerPlan(L, ((0, 2),))), first_token]
    assert got["blend:0.75"] == [("blend", evaluate.cacheblend_tokens(receiver, 3, 24), True), first_token]


def test_the_quality_study_goes_through_the_same_function(monkeypatch):
    evaluator = object.__new__(evaluate.PairEvaluator)
    evaluator.receiver = "the receiver"
    monkeypatch.setattr(evaluate, "system_prefix_kv", lambda *args: ("timed function", args))
    assert evaluator.prefix_kv("system", "context", "cache") == (
        "timed function", ("the receiver", "system", "context", "cache", None))


def test_lengths_must_fit_max_positions():
    config = rl.ReferenceLatencyConfig(context_len="768,2016", query_len=32)
    assert rl.context_lengths(config, 2048) == [768, 2016]
    with pytest.raises(ValueError, match="at most 2016.*too long: \\[2048\\]"):
        rl.context_lengths(rl.ReferenceLatencyConfig(context_len="768,2048"), 2048)


def quality(sender_weights="sw"):
    def row(system, f):
        return {"system": system, "recompute_fraction": f, "agreement": 1 - f / 2, "target_nll": 4 + f}
    rows = [row("receiver", 1.0), row("sender", 0.0), row("plan:reuse-all", 0.0), row("plan:[0, 1)", 0.25),
            row("plan:[0, 2)", 0.5), row("cacheblend:2", 0.5), row("cacheblend:3", 0.75)]
    return {"date": "2026-11-28", "machine": "CPU", "command": "droidspeak quality --fake", "num_examples": 2,
            "config": {"sender": "s", "receiver": "r", "context_len": 24, "sender_weights": sender_weights,
                       "receiver_weights": "rw"}, "rows": rows}


def test_quality_latency_reads_the_result_with_every_point_measured(result):
    study = build_study(quality(), result, 24, "droidspeak quality-latency --test", "q.json", "b.json")
    assert {p.system: p.source for p in study.points} == {
        "receiver": "off", "plan:reuse-all": "reuse", "plan:[0, 1)": "0:1", "plan:[0, 2)": "0:2",
        "cacheblend:2": "blend:0.5", "cacheblend:3": "blend:0.75"}
    assert all(p.measured for p in study.points) and [x.system for x in study.left_out] == ["sender"]
    assert latency_source(study).label == "r, CPU reference engine"
    gpu = {**result, "model_note": "Llama-3.1-8B shapes (32 layers)"}
    del gpu["engine"]
    gpu_study = build_study(quality(), gpu, 24, "droidspeak quality-latency --test", "q.json", "b.json")
    assert latency_source(gpu_study).label == "Llama-3.1-8B-shaped GPU bench"
    assert "no system here was both scored and timed" in latency_source(gpu_study).sentence


def test_quality_latency_cli_describes_the_reference_bench(result, tmp_path):
    (tmp_path / "b.json").write_text(json.dumps(result))
    for name, weights, phrase in (("same", "sw", "latency from the same pair (r reusing s's KV, same weights, 4 "
                                   "layers) timed on the CPU reference engine at 40 tokens (the quality study "
                                   "scored 24)"), ("other", "xx", "not the scored pair's rw / xx")):
        (tmp_path / "q.json").write_text(json.dumps(quality(weights)))
        assert main(["quality-latency", "--quality", str(tmp_path / "q.json"), "--bench", str(tmp_path / "b.json"),
                     "--length", "40", "--out", str(tmp_path / name)]) == 0
        md = (tmp_path / f"{name}.md").read_text()
        assert phrase in md and "Llama" not in md and "droidspeak bench-reference" in md


def test_cli_writes_json_and_markdown(pair, tmp_path, monkeypatch):
    monkeypatch.setattr(rl, "load_model", {"s": pair[0], "r": pair[1]}.__getitem__)
    out = tmp_path / "res" / "x.json"
    words = ["bench-reference", "--sender", "s", "--receiver", "r", "--query-len", "4", "--repeats", "1",
             "--warmup", "0", "--out", str(out)]
    assert main([*words, "--context-len", "16"]) == 0
    written = json.loads(out.read_text())
    assert written["plans"] == PLANS and len(written["samples"]) == len(PLANS)
    assert "| 16 | droidspeak 0:3 |" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit, match="max_position_embeddings 4096"):
        main([*words, "--context-len", "4093"])
