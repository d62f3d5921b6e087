"""The reference engine and the batched profiler on the real SmolLM2-135M (30 layers, 9 q / 3 kv
heads, tied embeddings): base -> base must lose nothing under any plan (exactness)."""

from __future__ import annotations

import pytest
import torch
from real_model import real_base_dir

from sglang_droidspeak.plan import LayerPlan
from sglang_droidspeak.profiler.batched import BatchedPlanScorer
from sglang_droidspeak.profiler.loading import load_model
from sglang_droidspeak.profiler.store import ResultStore
from sglang_droidspeak.profiler.systems import RECEIVER, SENDER, plan_system

pytestmark = pytest.mark.real
PLANS = [LayerPlan.full_reuse(30), LayerPlan.full_prefill(30), LayerPlan.contiguous(30, 0, 10),
         LayerPlan.contiguous(30, 10, 20), LayerPlan.contiguous(30, 28, 30), LayerPlan(30, ((0, 15), (16, 30)))]


@pytest.fixture(scope="module")
def base():
    from sglang_droidspeak.real.corpus import load_real_corpus
    from sglang_droidspeak.tasks import build_task

    model = load_model(str(real_base_dir()))
    examples = build_task("lcc", model.tokenizer, split="lib_heldout", num_examples=1, context_len=48, query_len=8,
                          corpus=load_real_corpus())
    return model, examples


def test_the_engine_rebuilds_the_receivers_own_kv_from_its_own_e_exactly(base):
    model, examples = base
    engine = model.model
    assert (engine.num_layers, engine.config.num_attention_heads, engine.config.num_key_value_heads) == (30, 9, 3)
    context = torch.tensor(examples[0].context_ids)
    sender = engine.prefill(context, e_layers=[10, 16, 28])
    for plan in PLANS:
        kv = engine.build_receiver_cache(sender, plan, context)
        assert all(torch.equal(a, b) for a, b in zip(kv.k + kv.v, sender.kv.k + sender.kv.v)), str(plan)


def test_base_to_base_every_plan_scores_like_the_receiver(base, tmp_path):
    model, examples = base
    store = ResultStore(tmp_path / "s.jsonl", {"t": 1})
    systems = [RECEIVER, SENDER] + [plan_system(p) for p in PLANS]
    BatchedPlanScorer(model.model, model.model, model.tokenizer, "lcc", examples, batch_size=4,
                      max_new_tokens=12).run(systems, store, progress=False)
    want = store.get("receiver", 0).metrics
    for system in systems:
        got = store.get(system.key, 0).metrics
        assert (got["agreement"], got["target_acc"]) == (1.0, want["target_acc"]), system.key
        assert got["target_nll"] == pytest.approx(want["target_nll"], abs=1e-5), system.key
