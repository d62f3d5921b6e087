"""The batched quality study gives PairEvaluator's per-example scores and answers."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_profiler_run import VOCAB, _examples, tokenizer  # noqa: F401 (fixture)

from sglang_droidspeak.plan import LayerPlan
from sglang_droidspeak.profiler.batched_prefix import chunk_prefixes
from sglang_droidspeak.profiler.batched_study import BatchedStudy
from sglang_droidspeak.profiler.evaluate import PairEvaluator, system_prefix_kv
from sglang_droidspeak.profiler.store import ResultStore
from sglang_droidspeak.profiler.systems import RECEIVER, SENDER, cacheblend_system, hybrid_system, plan_system
from sglang_droidspeak.reference import ReferenceModel
from sglang_droidspeak.reference.tiny import perturbed_copy, tiny_model

torch.set_num_threads(1)
L = 4
SYSTEMS = [RECEIVER, SENDER, plan_system(LayerPlan.full_reuse(L)), plan_system(LayerPlan.contiguous(L, 1, 3)),
           plan_system(LayerPlan(L, ((0, 1), (2, 4)))), cacheblend_system(2), cacheblend_system(3),
           hybrid_system(L, 1, 2, 1), hybrid_system(L, 0, 2, 1), hybrid_system(L, 2, 3, 0)]


@pytest.fixture(scope="module")
def pair():
    sender = tiny_model("llama", seed=0, vocab_size=VOCAB, num_layers=L)
    return ReferenceModel(sender), ReferenceModel(perturbed_copy(sender, 0.5))


def test_chunk_prefixes_equal_the_per_example_reference(pair, tokenizer):
    sender, receiver = pair
    examples = _examples(tokenizer, 3)
    context = torch.tensor([e.context_ids for e in examples])  # [3, n]
    prefixes = chunk_prefixes(sender, receiver, context, SYSTEMS)
    for j in range(3):
        cache = sender.prefill(context[j], e_layers=range(1, L))
        for system in SYSTEMS:
            want = system_prefix_kv(receiver, system, context[j], cache)
            got = prefixes[system.key]
            assert all(torch.allclose(k[j], wk, atol=1e-5) and torch.allclose(v[j], wv, atol=1e-5)
                       for (k, v), wk, wv in zip(got, want.k, want.v)), (j, system.key)


@pytest.mark.parametrize("chunk, rows, cut", [(2, 7, 0), (3, 64, 0), (3, 2, 3)])
def test_scores_and_answers_equal_the_evaluators(pair, tokenizer, tmp_path, chunk, rows, cut):
    sender, receiver = pair
    examples = _examples(tokenizer, 3)
    if cut:  # example 1 with a shorter query: a bucket of its own
        examples[1] = dataclasses.replace(examples[1], query_ids=examples[1].query_ids[cut:])
    slow, fast = ResultStore(tmp_path / "slow.jsonl", {"t": 1}), ResultStore(tmp_path / "fast.jsonl", {"t": 1})
    PairEvaluator(sender, receiver, tokenizer, "lcc", examples, max_new_tokens=8).run(SYSTEMS, slow, progress=False)
    BatchedStudy(sender, receiver, tokenizer, "lcc", examples, examples_per_chunk=chunk, rows_per_batch=rows,
                 max_new_tokens=8).run(SYSTEMS, fast, progress=False)
    assert len(fast) == len(slow) == len(SYSTEMS) * 3
    lengths, differ = set(), 0
    for s in SYSTEMS:
        for i in range(3):
            a, b = slow.get(s.key, i), fast.get(s.key, i)
            assert a.answer == b.answer, (s.key, i)
            assert set(a.metrics) == set(b.metrics) == {"edit_sim", "agreement", "target_acc", "target_nll"}
            for metric in ("edit_sim", "agreement", "target_acc"):
                assert a.metrics[metric] == b.metrics[metric], (s.key, i, metric)
            assert b.metrics["target_nll"] == pytest.approx(a.metrics["target_nll"], abs=1e-4), (s.key, i)
            lengths.add(len(a.answer))
            differ += a.metrics["agreement"] < 1.0
    assert differ > 0 and len(lengths) > 1  # real differences, and answers of several lengths (stops per row)
