"""The batched, teacher-forced scorer gives PairEvaluator's teacher-forced scores for every plan."""

from __future__ import annotations

import math

import pytest
import torch
from test_profiler_run import SMALL, VOCAB, _examples, model_dirs, tokenizer  # noqa: F401 (fixtures)

from sglang_droidspeak.plan import LayerPlan
from sglang_droidspeak.profiler.batched import BatchedPlanScorer, composed_prefix, shared_recompute
from sglang_droidspeak.profiler.evaluate import PairEvaluator
from sglang_droidspeak.profiler.runner import ProfileConfig, run_profile
from sglang_droidspeak.profiler.search import candidate_plans
from sglang_droidspeak.profiler.store import ResultStore
from sglang_droidspeak.profiler.systems import RECEIVER, SENDER, cacheblend_system, plan_system
from sglang_droidspeak.reference import ReferenceModel
from sglang_droidspeak.reference.tiny import perturbed_copy, tiny_model


@pytest.fixture(scope="module")
def pair():
    sender = tiny_model("llama", seed=0, vocab_size=VOCAB, num_layers=4)
    return ReferenceModel(sender), ReferenceModel(perturbed_copy(sender, 0.5))


def test_composed_prefixes_equal_the_engines_receiver_cache(pair, tokenizer):
    sender, receiver = pair
    context = torch.tensor(_examples(tokenizer, 1)[0].context_ids)
    cache = sender.prefill(context, e_layers=range(1, 4))
    runs = shared_recompute(receiver, cache, context, range(4))
    for plan in candidate_plans(4):
        want, got = receiver.build_receiver_cache(cache, plan, context), composed_prefix(cache, plan, runs)
        assert all(torch.equal(a, b) for a, b in zip(want.k + want.v, got.k + got.v)), str(plan)


def test_batched_scores_equal_the_evaluators_teacher_forced_scores(pair, tokenizer, tmp_path):
    sender, receiver = pair
    examples = _examples(tokenizer, 3)
    systems = [RECEIVER, SENDER] + [plan_system(p) for p in candidate_plans(4)]
    slow, fast = ResultStore(tmp_path / "slow.jsonl", {"t": 1}), ResultStore(tmp_path / "fast.jsonl", {"t": 1})
    PairEvaluator(sender, receiver, tokenizer, "lcc", examples, max_new_tokens=8).run(systems, slow, progress=False)
    BatchedPlanScorer(sender, receiver, tokenizer, "lcc", examples, batch_size=5, max_new_tokens=8).run(
        systems, fast, progress=False)
    assert len(fast) == len(slow) == len(systems) * 3
    differ = 0
    for s in systems:
        for i in range(3):
            a, b = slow.get(s.key, i).metrics, fast.get(s.key, i).metrics
            assert (a["agreement"], a["target_acc"]) == (b["agreement"], b["target_acc"]), s.key
            assert math.isclose(a["target_nll"], b["target_nll"], rel_tol=1e-5), s.key
            differ += a["agreement"] < 1.0
    assert differ > 0  # the pair differs: the check compares real numbers, not all-ones


def test_cacheblend_rows_equal_the_evaluators_and_a_budget_below_the_selection_pass_is_refused(
        pair, tokenizer, tmp_path):
    sender, receiver = pair
    examples = _examples(tokenizer, 2)
    systems = [cacheblend_system(2), cacheblend_system(3)]
    slow, fast = ResultStore(tmp_path / "slow.jsonl", {"t": 1}), ResultStore(tmp_path / "fast.jsonl", {"t": 1})
    PairEvaluator(sender, receiver, tokenizer, "lcc", examples, max_new_tokens=8).run(systems, slow, progress=False)
    scorer = BatchedPlanScorer(sender, receiver, tokenizer, "lcc", examples, max_new_tokens=8)
    scorer.run(systems, fast, progress=False)
    for s in systems:
        for i in range(2):
            a, b = slow.get(s.key, i).metrics, fast.get(s.key, i).metrics
            assert (a["agreement"], a["target_acc"]) == (b["agreement"], b["target_acc"]), s.key
            assert math.isclose(a["target_nll"], b["target_nll"], rel_tol=1e-5), s.key
    with pytest.raises(ValueError, match="cacheblend:1: the budget does not cover CacheBlend's selection pass"):
        scorer.run([cacheblend_system(1)], ResultStore(tmp_path / "x.jsonl", {"t": 1}), progress=False)


def test_run_profile_without_generation_matches_with_it(tmp_path, model_dirs):  # noqa: F811
    common = dict(sender=str(model_dirs["a"]), receiver=str(model_dirs["b"]), num_examples=3, progress=False,
                  plots=False, granularity=2, metric="agreement", max_new_tokens=6, **SMALL)
    slow = run_profile(ProfileConfig(out_dir=str(tmp_path / "p1"), work_dir=str(tmp_path / "w1"), **common))
    fast = run_profile(ProfileConfig(out_dir=str(tmp_path / "p2"), work_dir=str(tmp_path / "w2"), generate=False,
                                     batch_size=4, cacheblend_budgets="2,3", **common))
    assert fast.scores == slow.scores and slow.baselines == {}
    assert set(fast.baselines) == {"cacheblend:2", "cacheblend:3"}
    assert all(0.0 <= q <= 1.0 for q in fast.baselines.values())
    with pytest.raises(ValueError, match="cacheblend_budgets: must be comma-separated whole numbers"):
        ProfileConfig(sender="a", receiver="b", cacheblend_budgets="4,x")
    assert fast.profile.frontier == slow.profile.frontier
    with pytest.raises(ValueError, match="metric: without generation it must be one of agreement, target_acc"):
        ProfileConfig(sender="a", receiver="b", generate=False, metric="edit_sim")
    with pytest.raises(ValueError, match="split: corpus 'django' has splits"):
        ProfileConfig(sender="a", receiver="b", corpus="django", split="base")
    assert LayerPlan.full_reuse(4) in fast.scores
