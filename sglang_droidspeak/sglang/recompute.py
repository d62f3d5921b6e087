"""Receiver side: run decoder layers [start, end) over a foreign prefix, starting from E_start.

The loop is ``LlamaDecoderLayer.forward`` written out over the layer's own submodules
(SGLang's Llama, Qwen2 and Mistral layers share this shape), with the attention call
replaced by a causal SDPA over the prefix itself. That keeps the auxiliary prefill outside
SGLang's ForwardBatch, attention-backend metadata, CUDA graphs and overlap scheduler:
it only reads weights and writes the receiver's own K/V for layers [start, end) into the
prefix's slots.

    tensor                 shape
    e_start                [num_tokens, hidden_size]   E entering layer `start`
    positions              [num_tokens]                0 .. num_tokens-1
    slots                  [num_tokens]                KV slots of the prefix
    q (per layer)          [num_tokens, num_q_heads * head_dim]
    k, v (per layer)       [num_tokens, num_kv_heads * head_dim]

This module imports no SGLang: ``layers`` are duck-typed (see ``recompute_group``).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

QUERY_BLOCK = 4096  # longer prefixes attend block by block (bounded mask memory)


def causal_attention(q, k, v, num_q_heads: int, num_kv_heads: int, head_dim: int, scaling: float):
    """Causal GQA attention of a prefix over itself: [T, Hq*D] x [T, Hkv*D] -> [T, Hq*D]."""
    num_tokens = q.shape[0]
    q4 = q.view(num_tokens, num_q_heads, head_dim).transpose(0, 1).unsqueeze(0)  # [1, Hq, T, D]
    k4 = k.view(num_tokens, num_kv_heads, head_dim).transpose(0, 1).unsqueeze(0)  # [1, Hkv, T, D]
    v4 = v.view(num_tokens, num_kv_heads, head_dim).transpose(0, 1).unsqueeze(0)
    gqa = num_q_heads != num_kv_heads
    if num_tokens <= QUERY_BLOCK:
        out = F.scaled_dot_product_attention(q4, k4, v4, is_causal=True, scale=scaling, enable_gqa=gqa)
    else:
        if gqa:  # masked SDPA with enable_gqa may fall back to the math kernel (a [B, T] score
            # matrix per head); expanded K/V keep the memory-efficient kernel
            k4 = k4.repeat_interleave(num_q_heads // num_kv_heads, dim=1)  # [1, Hq, T, D]
            v4 = v4.repeat_interleave(num_q_heads // num_kv_heads, dim=1)
        blocks = []
        for start in range(0, num_tokens, QUERY_BLOCK):
            end = min(start + QUERY_BLOCK, num_tokens)
            rows = torch.arange(start, end, device=q.device).unsqueeze(1)  # [B, 1]
            mask = torch.arange(end, device=q.device).unsqueeze(0) <= rows  # [B, end]
            blocks.append(F.scaled_dot_product_attention(
                q4[:, :, start:end], k4[:, :, :end], v4[:, :, :end], attn_mask=mask, scale=scaling))
        out = torch.cat(blocks, dim=2)  # [1, Hq, T, D]
    return out.squeeze(0).transpose(0, 1).reshape(num_tokens, num_q_heads * head_dim)


def prefix_inputs(token_ids, device) -> tuple:
    """(ids, positions) of a prefix that starts at position 0: two [n] int64 tensors."""
    ids = torch.tensor(list(token_ids), dtype=torch.int64, device=device)  # [n]
    return ids, torch.arange(ids.shape[0], dtype=torch.int64, device=device)  # [n]


def write_kv(kv_pool: Any, layer_id: int, slots, k, v) -> None:
    """Store one layer's K/V rows at ``slots`` (plain indexing: any dtype-matching pool)."""
    for buffer, value in ((kv_pool.get_key_buffer(layer_id), k), (kv_pool.get_value_buffer(layer_id), v)):
        buffer[slots] = value.reshape(-1, *buffer.shape[1:]).to(buffer.dtype)  # [T, H, D]


def layer_qkv(layer: Any, positions, hidden_states, residual):
    """A decoder layer's input norm, QKV projection and rotary: (q, k, v, residual);
    q [T, Hq * D], k and v [T, Hkv * D]."""
    if residual is None:
        residual = hidden_states
        hidden_states = layer.input_layernorm(hidden_states)
    else:
        hidden_states, residual = layer.input_layernorm(hidden_states, residual)
    attn = layer.self_attn
    qkv, _ = attn.qkv_proj(hidden_states)
    q, k, v = qkv.split([attn.q_size, attn.kv_size, attn.kv_size], dim=-1)
    q, k = attn.rotary_emb(positions, q, k)
    return q, k, v, residual


def _layer_forward(layer: Any, positions, hidden_states, residual, slots, kv_pool):
    """One decoder layer over the prefix; writes its K/V at ``slots``; returns (h, residual)."""
    q, k, v, residual = layer_qkv(layer, positions, hidden_states, residual)
    attn = layer.self_attn
    radix = attn.attn
    if kv_pool is not None:
        write_kv(kv_pool, radix.layer_id, slots, k, v)
    out = causal_attention(q, k, v, radix.tp_q_head_num, radix.tp_k_head_num,
                           radix.qk_head_dim, radix.scaling)
    hidden_states, _ = attn.o_proj(out)
    hidden_states, residual = layer.post_attention_layernorm(hidden_states, residual)
    return layer.mlp(hidden_states), residual


@torch.no_grad()
def recompute_group(layers: Sequence[Any], start: int, end: int, e_start, positions, slots, kv_pool,
                    trace: Optional[dict] = None):
    """Run ``layers[start:end]`` from ``e_start``, writing each layer's K/V at ``slots``.

    A layer needs ``input_layernorm``, ``post_attention_layernorm``, ``mlp`` and
    ``self_attn`` with ``qkv_proj``, ``q_size``, ``kv_size``, ``rotary_emb(positions, q, k)``,
    ``o_proj`` and ``attn`` (SGLang's RadixAttention: head counts, head dims, ``scaling``).
    ``kv_pool=None`` writes nothing. Returns E entering layer ``end`` ([T, hidden]);
    ``trace`` (a dict) also receives E entering each layer of the group.
    """
    hidden_states, residual = e_start, None
    for layer_id in range(start, end):
        if trace is not None:  # E entering each layer, for debugging against the sender's
            trace[layer_id] = (hidden_states if residual is None else hidden_states + residual).clone()
        hidden_states, residual = _layer_forward(layers[layer_id], positions, hidden_states, residual, slots, kv_pool)
    return hidden_states if residual is None else hidden_states + residual
