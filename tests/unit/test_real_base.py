"""The GGUF -> Hugging Face conversion and the tokenizer rebuilt from GGUF metadata.

A tiny random Llama written as a llama.cpp GGUF (gguf_fixtures.py) checks every step in
milliseconds; the tests marked ``real`` check the pinned SmolLM2-135M-Instruct itself.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gguf_fixtures import llama_cpp_permute, tiny_llama, write_gguf, write_wheel
from real_model import real_base_dir
from tokenizers import decoders
from transformers import AutoModelForCausalLM, AutoTokenizer

from sglang_droidspeak.real.base import BASE_WEIGHTS_SHA256, ensure_base
from sglang_droidspeak.real.gguf_model import GGUFConversionError, hf_name, read_gguf, unpermute_rope
from sglang_droidspeak.real.gguf_tokenizer import ROUND_TRIP_TEXT, build_tokenizer, check_tokenizer
from sglang_droidspeak.real.pins import SMOLLM2_GGUF_MEMBER, PinnedArtifact, file_sha256


def test_tensor_names_map_to_hf_and_an_unknown_one_is_refused():
    assert hf_name("blk.3.attn_q.weight") == "model.layers.3.self_attn.q_proj.weight"
    assert hf_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_name("output_norm.weight") == "model.norm.weight"
    with pytest.raises(GGUFConversionError, match="unknown GGUF tensor 'blk.0.attn_qkv.weight'"):
        hf_name("blk.0.attn_qkv.weight")


@pytest.mark.parametrize("num_heads", [1, 3, 4])
def test_unpermute_undoes_llama_cpps_rope_permutation_exactly(num_heads):
    weight = np.arange(num_heads * 8 * 5, dtype=np.float32).reshape(num_heads * 8, 5)
    permuted = llama_cpp_permute(weight, num_heads)
    assert not np.array_equal(permuted, weight)
    assert np.array_equal(unpermute_rope(permuted, num_heads), weight)


def test_pinned_artifact_names_a_bad_field():
    with pytest.raises(ValueError, match="sha256: must be 64 lowercase hex digits"):
        PinnedArtifact("x==1", "x.whl", "abc", False, 1)
    with pytest.raises(ValueError, match="requirement: must be an exact pin"):
        PinnedArtifact("x>=1", "x.whl", "0" * 64, False, 1)


@pytest.fixture(scope="module")
def tiny_converted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    model = tiny_llama()
    wheel = write_wheel(write_gguf(model, folder / "tiny.gguf"), folder / "tiny.whl", SMOLLM2_GGUF_MEMBER)
    return model, ensure_base(root=folder / "real", wheel=wheel, progress=False), folder / "tiny.gguf"


def test_a_converted_gguf_loads_as_the_same_llama(tiny_converted):
    import gguf

    model, path, gguf_path = tiny_converted
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    converted = AutoModelForCausalLM.from_pretrained(path).eval()
    want, got = model.state_dict(), converted.state_dict()
    for name, tensor in want.items():
        if name in ("model.embed_tokens.weight", "lm_head.weight"):  # stored as Q8_0
            q8 = gguf.dequantize(gguf.quantize(tensor.numpy(), gguf.GGMLQuantizationType.Q8_0),
                                 gguf.GGMLQuantizationType.Q8_0)
            assert torch.equal(got[name], torch.from_numpy(q8)), name
        else:
            assert torch.equal(got[name], tensor), name
    record = json.loads((path / "conversion.json").read_text())
    assert record["weights_sha256"] == file_sha256(path / "model.safetensors")
    assert record["gguf_sha256"] == file_sha256(gguf_path)


def test_the_tokenizer_from_gguf_metadata_is_byte_level_with_eos_im_end(tiny_converted):
    _, path, gguf_path = tiny_converted
    backend = build_tokenizer(read_gguf(gguf_path))
    check_tokenizer(backend)
    assert backend.encode("x 2024").tokens == ["x", "Ġ", "2", "0", "2", "4"]  # digits one by one
    hf = AutoTokenizer.from_pretrained(path)
    check_tokenizer(hf)
    assert (hf.eos_token_id, hf.bos_token_id, hf.pad_token_id) == (2, 1, 2)
    assert hf.decode(hf.encode(ROUND_TRIP_TEXT, add_special_tokens=False)) == ROUND_TRIP_TEXT


def test_check_tokenizer_refuses_a_wrong_eos_and_a_decoder_that_is_not_byte_level(tiny_converted):
    _, path, _ = tiny_converted
    hf = AutoTokenizer.from_pretrained(path)
    hf.eos_token = "<|im_start|>"  # what transformers 5.12.1 and 5.17 build from the GGUF
    with pytest.raises(ValueError, match=r"eos is '<\|im_start\|>' id 1, expected '<\|im_end\|>' id 2"):
        check_tokenizer(hf)
    backend = AutoTokenizer.from_pretrained(path).backend_tokenizer
    backend.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.ByteLevel()])
    with pytest.raises(ValueError, match="not ByteLevel"):
        check_tokenizer(backend)


@pytest.mark.real
def test_the_real_base_is_smollm2_135m_with_pinned_weights_and_a_right_tokenizer():
    path = real_base_dir()
    config = json.loads((path / "config.json").read_text())
    shape = {k: config[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
                                    "head_dim", "vocab_size", "tie_word_embeddings")}
    assert shape == {"num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3,
                     "head_dim": 64, "vocab_size": 49152, "tie_word_embeddings": True}
    assert json.loads((path / "conversion.json").read_text())["weights_sha256"] == BASE_WEIGHTS_SHA256
    tokenizer = AutoTokenizer.from_pretrained(path)
    check_tokenizer(tokenizer)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert tokenizer.encode("def f(x):\n    return 12", add_special_tokens=False) == [
        1604, 275, 24, 104, 727, 472, 1003, 216, 33, 34]
