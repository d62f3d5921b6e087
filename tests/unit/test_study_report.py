"""The real-pair study's systems, summaries and paired verdicts (profiler/study_report.py)."""

from __future__ import annotations

import math

import pytest
import torch
from script_module import load_script

from sglang_droidspeak.plan import LayerPlan
from sglang_droidspeak.profiler.store import Record, ResultStore
from sglang_droidspeak.profiler.study_report import (
    best_groups, equal_budget, markdown, paired, study_systems, system_rows,
)
from sglang_droidspeak.profiler.systems import cacheblend_system, hybrid_system, plan_system
from sglang_droidspeak.reference import ReferenceModel
from sglang_droidspeak.reference.tiny import tiny_model

L = 8


@pytest.fixture(scope="module")
def receiver():
    return ReferenceModel(tiny_model("llama", seed=0, num_layers=L))


def plan(s, e):
    return LayerPlan.contiguous(L, s, e)


def test_systems_from_points_with_cacheblend_and_hybrid_at_each_budget(receiver):
    points = [(LayerPlan.full_reuse(L), 0.5), (plan(2, 4), 0.6), (plan(4, 6), 0.7), (plan(2, 6), 0.8),
              (plan(0, 6), 0.9), (LayerPlan.full_prefill(L), 1.0)]
    keys = [s.key for s in study_systems(points, receiver, context_len=64, hybrid_layers=2)]
    assert keys == ["receiver", "sender", "plan:reuse-all", "plan:[2, 4)", "plan:[4, 6)", "plan:[2, 6)", "plan:[0, 6)",
                    "cacheblend:2", "cacheblend:4", "cacheblend:6", "hybrid:4-6+2", "hybrid:4-6+4"]
    capped = [s.key for s in study_systems(points, receiver, context_len=64, max_budget=4, hybrid_layers=1)]
    assert capped == ["receiver", "sender", "plan:reuse-all", "plan:[2, 4)", "plan:[4, 6)", "plan:[2, 6)",
                      "cacheblend:2", "cacheblend:4"]  # no group of <= 1 layer: no hybrid


def test_best_group_per_budget_from_the_profilers_scores():
    scores = {"reuse-all": 0.1, "[0, 2)": 0.3, "[2, 4)": 0.5, "[4, 6)": 0.5, "[0, 4)": 0.6, "[0, 2)+[4, 6)": 0.9}
    assert best_groups(scores, L, [2, 4, 6]) == [(plan(2, 4), 0.5), (plan(0, 4), 0.6)]


def test_rows_and_paired_verdicts(tmp_path, receiver):
    store = ResultStore(tmp_path / "s.jsonl", {"t": 1})
    a, b, h = plan_system(plan(2, 4)), cacheblend_system(2), hybrid_system(L, 2, 3, 1)
    values = {a.key: [0.5, 0.6, 0.7, 0.8], b.key: [0.6, 0.7, 0.8, 0.9], h.key: [0.5, 0.6, 0.7, 0.9]}
    for key, row in values.items():
        store.add_many(Record(key, i, {"agreement": v, "target_nll": 1 - v}, "") for i, v in enumerate(row))
    loss = paired(store, a.key, b.key, "agreement")
    assert (loss["verdict"], loss["num_examples"]) == ("loses", 4)
    assert loss["diff"] == pytest.approx(-0.1) and loss["ci95"] == pytest.approx(0.0, abs=1e-12)
    assert paired(store, a.key, b.key, "target_nll")["verdict"] == "loses"  # higher NLL is worse
    assert paired(store, b.key, a.key, "target_nll")["verdict"] == "wins"
    tie = paired(store, h.key, a.key, "agreement")
    assert tie["verdict"] == "tie" and tie["diff"] == pytest.approx(0.025)
    assert tie["ci95"] == pytest.approx(1.96 * 0.05 / 2)  # diffs 0, 0, 0, 0.1: sd 0.05, n 4
    rows = system_rows(store, [a, b, h], ["agreement", "edit_sim"], receiver, 64)
    assert rows[a.key]["metrics"]["agreement"]["mean"] == pytest.approx(0.65) and "edit_sim" not in rows[a.key]["metrics"]
    assert (rows[h.key]["fetched_layers"], rows[h.key]["recompute_fraction"]) == (L - 2, 0.25)
    assert rows[b.key]["recomputed_tokens"] > 0 and rows[a.key]["recomputed_tokens"] is None
    by_budget = equal_budget(store, [a, b, h], ["agreement"])
    assert by_budget["2"]["systems"] == {"plan": a.key, "cacheblend": b.key, "hybrid": h.key}
    assert by_budget["2"][f"{a.key} vs {b.key}"]["agreement"]["verdict"] == "loses"
    result = {"task": "lcc", "split": "x", "num_examples": 4, "seconds": 1.0, "systems": rows, "equal_budget": by_budget}
    text = markdown("a -> b", result, ["agreement"])
    assert "| plan:[2, 4) | 25% | 6 | 0.650 ± 0.127 |" in text
    assert "- k=2: plan:[2, 4) vs cacheblend:2: agreement -0.100 ± 0.000 (loses)" in text
    assert not math.isnan(paired(store, a.key, "missing", "agreement")["ci95"])


def test_the_gpu_step_defaults():
    args = load_script("gpu/real_quality.py").build_parser().parse_args([])
    assert (args.num_examples, args.seed, args.budget_s, args.tasks, args.device) == (256, 1, 240.0, "lcc", "cuda")
