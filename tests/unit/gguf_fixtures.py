"""A tiny random Llama written as a llama.cpp-style GGUF (and a wheel holding it), for the converter tests.

The writer applies llama.cpp's q/k row permutation and stores the embedding as Q8_0, as
llama.cpp's converter and quantizer do, so reading it back exercises every step of
sglang_droidspeak.real.gguf_model on a model that takes milliseconds.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from tokenizers.pre_tokenizers import ByteLevel
from transformers import LlamaConfig, LlamaForCausalLM

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "Ġ a", "i n", "Ġt h", "r e"]


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    vocab = len(SPECIALS) + 256 + len(MERGES)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
                         rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def llama_cpp_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (what the converter undoes)."""
    return weight.reshape(num_heads, 2, weight.shape[0] // num_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def tokens() -> list[str]:
    merged = ["".join(m.split(" ")) for m in MERGES]
    return SPECIALS + sorted(ByteLevel.alphabet()) + merged


def write_gguf(model: LlamaForCausalLM, path: Path) -> Path:
    import gguf

    c = model.config
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_vocab_size(c.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens())
    writer.add_token_types([3] * len(SPECIALS) + [1] * (c.vocab_size - len(SPECIALS)))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template("{{ messages }}")
    for name, tensor in _gguf_tensors(model).items():
        if name == "token_embd.weight":
            quantized = gguf.quantize(tensor, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, quantized, raw_shape=quantized.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _gguf_tensors(model: LlamaForCausalLM) -> dict[str, np.ndarray]:
    c = model.config
    state = {k: v.detach().float().numpy().copy() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": state["model.embed_tokens.weight"], "output_norm.weight": state["model.norm.weight"]}
    parts = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for layer in range(c.num_hidden_layers):
        for hf, gg in parts.items():
            weight = state[f"model.layers.{layer}.{hf}.weight"]
            if gg == "attn_q":
                weight = llama_cpp_permute(weight, c.num_attention_heads)
            elif gg == "attn_k":
                weight = llama_cpp_permute(weight, c.num_key_value_heads)
            out[f"blk.{layer}.{gg}.weight"] = weight
    return out


def write_wheel(gguf_path: Path, wheel_path: Path, member: str) -> Path:
    with zipfile.ZipFile(wheel_path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(gguf_path, member)
    return wheel_path
