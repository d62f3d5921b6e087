"""Test helper: present an HF decoder layer with SGLang's Llama-layer API (CPU, fp32).

SGLang's model classes need its distributed state and CUDA kernels, so CPU tests of
``sglang.recompute`` drive HF layers through this adapter instead. The adapter only
re-packages HF's own modules (fused-add RMSNorm call convention, packed qkv_proj,
flattened-head rotary); the math under test is ``recompute_group``'s loop.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb


class FusedAddNorm:
    """SGLang's RMSNorm call convention: norm(x) or norm(x, residual) -> (norm(x + r), x + r)."""

    def __init__(self, norm):
        self.norm = norm

    def __call__(self, x, residual=None):
        if residual is None:
            return self.norm(x)
        total = x + residual
        return self.norm(total), total


class FlatRotary:
    """SGLang's rotary_emb(positions, q, k) on [T, H*D] tensors, via HF's rotary module."""

    def __init__(self, hf_rotary, num_q_heads: int, num_kv_heads: int, head_dim: int):
        self.hf_rotary, self.shape = hf_rotary, (num_q_heads, num_kv_heads, head_dim)

    def __call__(self, positions, q, k):
        hq, hkv, d = self.shape
        t = q.shape[0]
        q4 = q.view(t, hq, d).transpose(0, 1)[None]  # [1, Hq, T, D]
        k4 = k.view(t, hkv, d).transpose(0, 1)[None]  # [1, Hkv, T, D]
        cos, sin = self.hf_rotary(q4, positions[None])  # [1, T, D]
        q4, k4 = apply_rotary_pos_emb(q4, k4, cos, sin)
        return q4[0].transpose(0, 1).reshape(t, hq * d), k4[0].transpose(0, 1).reshape(t, hkv * d)


def sglang_shaped_layers(model) -> list[SimpleNamespace]:
    """One SGLang-shaped view per decoder layer of an HF Llama/Qwen2/Mistral CausalLM."""
    config = model.config
    hq, hkv = config.num_attention_heads, config.num_key_value_heads
    d = getattr(config, "head_dim", None) or config.hidden_size // hq
    rotary = FlatRotary(model.model.rotary_emb, hq, hkv, d)
    layers = []
    for i, hf in enumerate(model.model.layers):
        a = hf.self_attn
        attn = SimpleNamespace(
            layer_id=i, tp_q_head_num=hq, tp_k_head_num=hkv, tp_v_head_num=hkv,
            qk_head_dim=d, v_head_dim=d, scaling=a.scaling)
        self_attn = SimpleNamespace(
            qkv_proj=lambda h, a=a: (torch.cat([a.q_proj(h), a.k_proj(h), a.v_proj(h)], dim=-1), None),
            q_size=hq * d, kv_size=hkv * d, rotary_emb=rotary,
            o_proj=lambda x, a=a: (a.o_proj(x), None), attn=attn)
        layers.append(SimpleNamespace(
            input_layernorm=FusedAddNorm(hf.input_layernorm),
            post_attention_layernorm=FusedAddNorm(hf.post_attention_layernorm),
            mlp=hf.mlp, self_attn=self_attn))
    return layers
