"""Tiny real builds of the micro family: determinism, manifest, Hugging Face loading."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from sglang_droidspeak.family import (
    EOS_TOKEN, MODEL_NAMES, FamilyConfig, build_family, ensure_family,
)

TINY = FamilyConfig(
    vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
    seq_len=64, short_seq_len=32, batch_size=2, base_steps=6, base_long_steps=2,
    finetune_steps=4, finetune_long_steps=2, lr=1e-2, finetune_lr=1e-2, warmup_steps=1,
    tokenizer_train_chars=20_000, max_train_files=3, eval_windows=2, eval_stream_tokens=2000,
    num_threads=1,
)
HF_FILES = ("config.json", "model.safetensors", "generation_config.json",
            "tokenizer.json", "tokenizer_config.json")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """The same TINY family twice: once by build_family, once through the cache."""
    direct = tmp_path_factory.mktemp("direct")
    build_family(TINY, direct, progress=False)
    cached = ensure_family(TINY, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)
    return direct, cached.root


def test_same_config_gives_identical_bytes(built):
    first, second = built
    for name in MODEL_NAMES:
        for file_name in ("model.safetensors", "tokenizer.json", "config.json"):
            assert (first / name / file_name).read_bytes() == \
                (second / name / file_name).read_bytes(), (name, file_name)


def test_every_model_dir_is_a_complete_hf_dir(built):
    root = built[0]
    for name in MODEL_NAMES:
        assert sorted(p.name for p in (root / name).iterdir()) == sorted(HF_FILES)


def test_fine_tunes_start_from_base_and_move_away(built):
    root = built[0]
    weights = {name: load_file(root / name / "model.safetensors") for name in MODEL_NAMES}
    assert weights["base"].keys() == weights["tester"].keys() == weights["libwriter"].keys()
    key = "model.layers.0.self_attn.q_proj.weight"
    assert weights["base"][key].dtype == torch.float32
    assert not torch.equal(weights["base"][key], weights["tester"][key])
    assert not torch.equal(weights["tester"][key], weights["libwriter"][key])
    # a few small steps: still close to the base they started from
    drift = (weights["tester"][key] - weights["base"][key]).norm() / weights["base"][key].norm()
    assert 0 < drift < 1


def test_manifest_perplexities_finite_and_below_uniform(built):
    manifest = json.loads((built[0] / "family.json").read_text())
    assert manifest["names"] == list(MODEL_NAMES)
    assert manifest["config"] == TINY.to_dict()
    uniform = manifest["perplexity"]["uniform"]
    assert uniform == manifest["vocab_size"] <= TINY.vocab_size
    for name in MODEL_NAMES:
        for split in ("lib_heldout", "test_heldout", "train_seen", "train_unseen"):
            value = manifest["perplexity"][name][split]
            assert math.isfinite(value) and 1 < value < uniform, (name, split, value)
        steps = TINY.base_steps if name == "base" else TINY.finetune_steps
        assert manifest["models"][name]["steps"] == steps
    assert manifest["corpus"]["base"]["files_used"] <= TINY.max_train_files
    assert manifest["corpus"]["lib_heldout"]["tokens_used"] >= TINY.eval_stream_tokens


def test_loads_with_auto_classes(built):
    model_dir = built[0] / "libwriter"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    text = "def add(a, b):\n    return a + b\n"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.eos_token == tokenizer.bos_token == EOS_TOKEN
    assert tokenizer.eos_token_id == model.config.eos_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits  # [1, len(ids), vocab]
    assert logits.shape == (1, len(ids), model.config.vocab_size)
    assert torch.isfinite(logits).all()
