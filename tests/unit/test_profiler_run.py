"""The profiler end to end on tiny random models saved as HF dirs (seconds, no family build).

The tokenizer is a byte-level BPE trained here on a few stdlib files; the models are
random 4-layer Llamas whose vocabulary matches it. Same weights on both sides must give
every plan exactly the receiver's own answers; a perturbed receiver must not.
"""

from __future__ import annotations


import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from sglang_droidspeak.family.corpus import split_corpus
from sglang_droidspeak.plan import LayerPlan, load_profile
from sglang_droidspeak.profiler.evaluate import PairEvaluator
from sglang_droidspeak.profiler.runner import ProfileConfig, run_profile
from sglang_droidspeak.profiler.search import candidate_plans
from sglang_droidspeak.profiler.store import ResultStore
from sglang_droidspeak.profiler.systems import RECEIVER, SENDER, plan_system
from sglang_droidspeak.reference import ReferenceModel
from sglang_droidspeak.reference.tiny import perturbed_copy, tiny_model
from sglang_droidspeak.tasks import build_task

VOCAB = 300
SMALL = dict(context_len=96, query_len=8)


@pytest.fixture(scope="module")
def tokenizer():
    corpus = split_corpus()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([corpus.read(f) for f in corpus.base[:20]], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("models")
    sender = tiny_model("llama", seed=0, vocab_size=VOCAB, num_layers=4)
    dirs = {}
    for name, model in (("a", sender), ("a_twin", sender), ("b", perturbed_copy(sender, 0.5))):
        model.config.architectures = ["LlamaForCausalLM"]
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        dirs[name] = root / name
    return dirs


def _examples(tokenizer, n=3):
    return build_task("lcc", tokenizer, num_examples=n, seed=0, **SMALL)


def test_same_weights_every_plan_answers_like_the_receiver(tmp_path, tokenizer):
    model = ReferenceModel(tiny_model("llama", seed=0, vocab_size=VOCAB, num_layers=4))
    examples = _examples(tokenizer)
    systems = [RECEIVER, SENDER] + [plan_system(p) for p in candidate_plans(4)]
    store = ResultStore(tmp_path / "s.jsonl", {"t": 1})
    PairEvaluator(model, model, tokenizer, "lcc", examples, max_new_tokens=12).run(systems, store, progress=False)
    assert len(store) == len(systems) * len(examples)
    for s in systems:
        for i in range(len(examples)):
            rec, ref = store.get(s.key, i), store.get("receiver", i)
            assert (rec.answer, rec.metrics) == (ref.answer, ref.metrics), s.key
            assert rec.metrics["agreement"] == 1.0


def test_resume_skips_finished_work(tmp_path, tokenizer, monkeypatch):
    model = ReferenceModel(tiny_model("llama", seed=0, vocab_size=VOCAB, num_layers=4))
    evaluator = PairEvaluator(model, model, tokenizer, "lcc", _examples(tokenizer, 2), max_new_tokens=4)
    systems = [RECEIVER, plan_system(LayerPlan.full_reuse(4))]
    evaluator.run(systems, ResultStore(tmp_path / "r.jsonl", {"t": 1}), progress=False)
    calls = []
    monkeypatch.setattr(model, "generate", lambda *a, **k: calls.append(1) or [])
    evaluator.run(systems, ResultStore(tmp_path / "r.jsonl", {"t": 1}), progress=False)
    assert calls == []


def test_run_profile_writes_a_valid_profile_and_plots(tmp_path, model_dirs):
    config = ProfileConfig(sender=str(model_dirs["a"]), receiver=str(model_dirs["b"]), num_examples=3,
                           out_dir=str(tmp_path / "profiles"), work_dir=str(tmp_path / "work"),
                           progress=False, granularity=2, metric="agreement", max_new_tokens=6, **SMALL)
    result = run_profile(config)
    assert result.path.name == "a__b.yaml" and load_profile(result.path) == result.profile
    assert all(p.stat().st_size > 1000 for p in result.plots) and len(result.plots) == 3
    profile = result.profile
    assert profile.receiver_quality == 1.0  # agreement of the receiver with itself
    assert profile.frontier[0].plan.is_full_reuse and profile.frontier[0].quality < 1.0  # weights differ
    assert result.scores[LayerPlan.full_prefill(4)] == 1.0
    qualities = [p.quality for p in profile.frontier]
    assert qualities == sorted(qualities) and len(set(qualities)) == len(qualities)
    assert len(profile.sensitivity) == 4
    # a second run reads every score from the work file
    work = list((tmp_path / "work").glob("*.jsonl"))
    assert len(work) == 1 and len(work[0].read_text().splitlines()) == 1 + 3 * (2 + len(candidate_plans(4, 2)))


def test_incompatible_pair_is_refused(tmp_path, model_dirs, tokenizer):
    other = tmp_path / "other"
    tiny_model("llama", seed=0, vocab_size=VOCAB, num_layers=3).save_pretrained(other)
    tokenizer.save_pretrained(other)
    config = ProfileConfig(sender=str(model_dirs["a"]), receiver=str(other), out_dir=str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="num_layers"):
        run_profile(config)
