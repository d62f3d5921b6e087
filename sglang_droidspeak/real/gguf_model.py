"""A llama-architecture GGUF file -> a Hugging Face LlamaForCausalLM config and float32 state dict.

Only the ``gguf`` package (pure Python + numpy) reads and dequantizes the file; neither
transformers' GGUF loader (it wants accelerate, and differs between transformers 5.12 and
5.17) nor llama.cpp is involved, so every machine makes the same bytes.

    GGUF tensor                 HF parameter
    token_embd.weight           model.embed_tokens.weight          (lm_head tied when output.weight is absent)
    blk.N.attn_norm.weight      model.layers.N.input_layernorm.weight
    blk.N.attn_{q,k,v}.weight   model.layers.N.self_attn.{q,k,v}_proj.weight  (q, k: llama.cpp's RoPE permutation undone)
    blk.N.attn_output.weight    model.layers.N.self_attn.o_proj.weight
    blk.N.ffn_norm.weight       model.layers.N.post_attention_layernorm.weight
    blk.N.ffn_{gate,up,down}    model.layers.N.mlp.{gate,up,down}_proj.weight
    output_norm.weight          model.norm.weight
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


class GGUFConversionError(ValueError):
    """The GGUF file is not a llama model this converter understands (the message says why)."""


def field_value(reader: Any, key: str, default: Any = None) -> Any:
    """A metadata value of a ``gguf.GGUFReader`` (scalars, strings, lists of either)."""
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise GGUFConversionError(f"GGUF metadata has no {key!r}")
        return default
    return field.contents()


def hf_name(gguf_name: str) -> str:
    """The HF parameter name of a GGUF tensor name (GGUFConversionError when unknown)."""
    stem, _, suffix = gguf_name.rpartition(".")
    if stem.startswith("blk."):
        _, layer, part = stem.split(".", 2)
        if part in _LAYER_NAMES:
            return f"model.layers.{int(layer)}.{_LAYER_NAMES[part]}.{suffix}"
    elif stem in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[stem]}.{suffix}"
    raise GGUFConversionError(f"unknown GGUF tensor {gguf_name!r}")


def unpermute_rope(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: [out, in] with out = num_heads * head_dim.

    llama.cpp stores each head's rows as (pair, half) interleaved; HF keeps (half, pair).
    """
    out_dim = weight.shape[0]
    head_half = out_dim // num_heads // 2
    return weight.reshape(num_heads, head_half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def llama_config(reader: Any) -> dict[str, Any]:
    """The HF LlamaConfig fields (a plain dict; no quantization_config) from the GGUF metadata."""
    arch = field_value(reader, "general.architecture")
    if arch != "llama":
        raise GGUFConversionError(f"general.architecture is {arch!r}; only 'llama' is converted")
    get = lambda key, default=None: field_value(reader, f"llama.{key}", default)  # noqa: E731
    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = int(get("rope.dimension_count", hidden // heads))
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    names = {t.name for t in reader.tensors}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(get("vocab_size", len(tokens))),
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "max_position_embeddings": int(get("context_length")),
        "rms_norm_eps": float(np.float32(get("attention.layer_norm_rms_epsilon"))),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": int(field_value(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(field_value(reader, "tokenizer.ggml.eos_token_id")),
        "pad_token_id": int(field_value(reader, "tokenizer.ggml.padding_token_id",
                                        field_value(reader, "tokenizer.ggml.eos_token_id"))),
        "torch_dtype": "float32",
    }


def gguf_state_dict(reader: Any, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every tensor dequantized to float32 under its HF name (tied lm_head not duplicated)."""
    from gguf import dequantize

    state = {}
    for tensor in reader.tensors:
        name = hf_name(tensor.name)
        weight = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)  # [out, in] or [n]
        expected = tuple(int(d) for d in reversed(tensor.shape))
        if weight.shape != expected:
            weight = weight.reshape(expected)
        if name.endswith("q_proj.weight"):
            weight = unpermute_rope(weight, config["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            weight = unpermute_rope(weight, config["num_key_value_heads"])
        state[name] = torch.from_numpy(np.array(weight, dtype=np.float32, order="C", copy=True))
    expected_layers = config["num_hidden_layers"] * len(_LAYER_NAMES)
    found_layers = sum(1 for n in state if n.startswith("model.layers."))
    if found_layers != expected_layers:
        raise GGUFConversionError(f"{found_layers} layer tensors, expected {expected_layers}")
    return state


def read_gguf(path: Path) -> Any:
    from gguf import GGUFReader

    return GGUFReader(str(path))
