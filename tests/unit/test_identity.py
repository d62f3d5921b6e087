"""Fingerprints: equal for fine-tunes of one base, refused with the differing field named."""

import json

import pytest
from transformers import LlamaConfig, MistralConfig

from sglang_droidspeak.identity import (
    IncompatibleModels,
    ModelFingerprint,
    check_compatible,
    fingerprint_from_config,
    fingerprint_model_dir,
    tokenizer_hash,
)

TOKENIZER = json.dumps({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}, "added_tokens": []})


def _llama(**overrides):
    kwargs = dict(num_hidden_layers=4, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                  vocab_size=128, architectures=["LlamaForCausalLM"])
    return LlamaConfig(**{**kwargs, **overrides})


def test_fingerprint_fields_from_config():
    fp = fingerprint_from_config(_llama(), TOKENIZER)
    assert (fp.architecture, fp.model_type, fp.num_layers, fp.hidden_size) == ("LlamaForCausalLM", "llama", 4, 64)
    assert (fp.num_attention_heads, fp.num_kv_heads, fp.head_dim, fp.vocab_size) == (4, 2, 16, 128)
    assert (fp.rope_theta, fp.rope_scaling) == (10000.0, "null")
    assert len(fp.digest) == 16


def test_config_object_and_dict_agree():
    cfg = _llama(rope_theta=500000.0)
    assert fingerprint_from_config(cfg, TOKENIZER) == fingerprint_from_config(cfg.to_dict(), TOKENIZER)


def test_tokenizer_hash_ignores_key_order_but_not_content():
    reordered = json.dumps(json.loads(TOKENIZER), sort_keys=True, indent=2)
    assert tokenizer_hash(reordered) == tokenizer_hash(TOKENIZER)
    changed = TOKENIZER.replace('"b": 1', '"c": 1')
    assert tokenizer_hash(changed) != tokenizer_hash(TOKENIZER)


@pytest.mark.parametrize("field,overrides", [
    ("num_layers", dict(num_hidden_layers=5)),
    ("num_kv_heads", dict(num_key_value_heads=4)),
    ("vocab_size", dict(vocab_size=129)),
    ("rope_theta", dict(rope_theta=1e6)),
])
def test_mismatch_names_the_field(field, overrides):
    a = fingerprint_from_config(_llama(), TOKENIZER)
    b = fingerprint_from_config(_llama(**overrides), TOKENIZER)
    with pytest.raises(IncompatibleModels, match=field):
        check_compatible(a, b)


def test_architecture_and_tokenizer_mismatch_refused():
    a = fingerprint_from_config(_llama(), TOKENIZER)
    mistral = MistralConfig(num_hidden_layers=4, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                            vocab_size=128, architectures=["MistralForCausalLM"])
    with pytest.raises(IncompatibleModels, match="architecture"):
        check_compatible(a, fingerprint_from_config(mistral, TOKENIZER))
    with pytest.raises(IncompatibleModels, match="tokenizer_hash"):
        check_compatible(a, fingerprint_from_config(_llama(), TOKENIZER.replace('"b"', '"z"')))
    check_compatible(a, fingerprint_from_config(_llama(), TOKENIZER))  # equal: no error


def test_round_trip_and_bad_dict():
    fp = fingerprint_from_config(_llama(), TOKENIZER)
    assert ModelFingerprint.from_dict(fp.to_dict()) == fp
    with pytest.raises(ValueError, match="missing field.*num_layers"):
        ModelFingerprint.from_dict({k: v for k, v in fp.to_dict().items() if k != "num_layers"})
    with pytest.raises(ValueError, match="hidden_size: expected int"):
        ModelFingerprint.from_dict({**fp.to_dict(), "hidden_size": "64"})


def test_model_dir(tmp_path):
    (tmp_path / "config.json").write_text(_llama().to_json_string())
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        fingerprint_model_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text(TOKENIZER)
    assert fingerprint_model_dir(tmp_path) == fingerprint_from_config(_llama(), TOKENIZER)
