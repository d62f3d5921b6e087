"""A decoder layer written out from raw weights, over any subset of token positions.

HF's layers run a whole contiguous span of tokens; CacheBlend must recompute a scattered
subset whose attention reads a mixed cache. This module computes one Llama/Qwen2/Mistral
layer explicitly (no HF attention or decoder forward; HF's rotary_emb gives cos/sin):

    x_norm = RMSNorm_in(x)                                   x: [t, hidden]
    q, k, v = x_norm Wq (+bq), x_norm Wk (+bk), x_norm Wv (+bv)
    q, k = q_norm(q), k_norm(k)                              only if the layer has them
    q, k = RoPE(q, positions), RoPE(k, positions)
    K, V = context K/V with rows `positions` replaced by k, v
    attn = softmax(q K^T * scale + causal/sliding mask by position) V   (GQA: K/V heads repeated)
    h = x + attn Wo (+bo)
    out = h + W_down (act(W_gate RMSNorm_post(h)) * W_up RMSNorm_post(h))
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sglang_droidspeak.reference.parts import ModelParts


class ManualLayerOutput(NamedTuple):
    hidden: Tensor  # [t, hidden_size] leaving the layer, for the computed tokens
    k: Tensor  # [num_kv_heads, t, head_dim] new K (after RoPE) of the computed tokens
    v: Tensor  # [num_kv_heads, t, head_dim]
    k_cache: Tensor  # [num_kv_heads, n_keys, head_dim] the K the attention read
    v_cache: Tensor  # [num_kv_heads, n_keys, head_dim]


class ManualLoopResult(NamedTuple):
    k: dict[int, Tensor]  # layer -> [num_kv_heads, n, head_dim]
    v: dict[int, Tensor]
    e: dict[int, Tensor]  # layer -> [n, hidden_size], hidden state entering the layer
    hidden: Tensor  # [n, hidden_size] leaving the last layer


def rms_norm(x: Tensor, norm: nn.Module) -> Tensor:
    """HF RMSNorm: normalise in float32, cast back, then scale. x: [..., dim]."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * x32.to(x.dtype)


def linear(x: Tensor, proj: nn.Linear) -> Tensor:
    return F.linear(x, proj.weight, proj.bias)


def rope_tables(rotary_emb: nn.Module, positions: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """(cos, sin), each [t, head_dim], from the model's own rotary embedding."""
    cos, sin = rotary_emb(like[None], positions[None])  # [1, t, head_dim]
    return cos[0], sin[0]


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [heads, t, head_dim]; cos/sin: [t, head_dim] (rotate-half convention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def project_qkv(layer: nn.Module, x_norm: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q: [..., num_heads, t, head_dim]; k, v: [..., num_kv_heads, t, head_dim]; q and k rotated.

    x_norm: [..., t, hidden_size] (leading axes: a batch, as profiler/batched_prefix.py uses);
    cos, sin broadcast against [..., heads, t, head_dim].
    """
    attn = layer.self_attn
    lead, head_dim = x_norm.shape[:-1], attn.head_dim
    q = linear(x_norm, attn.q_proj).view(*lead, -1, head_dim)  # [..., t, num_heads, head_dim]
    k = linear(x_norm, attn.k_proj).view(*lead, -1, head_dim)  # [..., t, num_kv_heads, head_dim]
    v = linear(x_norm, attn.v_proj).view(*lead, -1, head_dim)
    if getattr(attn, "q_norm", None) is not None:
        q, k = rms_norm(q, attn.q_norm), rms_norm(k, attn.k_norm)
    q, k, v = q.transpose(-3, -2), k.transpose(-3, -2), v.transpose(-3, -2)  # heads first
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def attend(
    q: Tensor,
    q_positions: Tensor,
    k: Tensor,
    v: Tensor,
    k_positions: Tensor,
    scaling: float,
    sliding_window: int | None = None,
) -> Tensor:
    """Softmax attention of queries over keys, masked by position. Returns [t_q, num_heads * head_dim].

    q: [num_heads, t_q, head_dim]; k, v: [num_kv_heads, t_k, head_dim]; positions: [t_q], [t_k].
    A key is visible when k_pos <= q_pos (and k_pos > q_pos - sliding_window).
    """
    group = q.shape[0] // k.shape[0]
    k = k.repeat_interleave(group, dim=0)  # [num_heads, t_k, head_dim]
    v = v.repeat_interleave(group, dim=0)
    scores = torch.matmul(q, k.transpose(1, 2)) * scaling  # [num_heads, t_q, t_k]
    visible = k_positions[None, :] <= q_positions[:, None]  # [t_q, t_k]
    if sliding_window is not None:
        visible &= k_positions[None, :] > q_positions[:, None] - sliding_window
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(probs, v)  # [num_heads, t_q, head_dim]
    return out.transpose(0, 1).reshape(q.shape[1], -1)


def mlp(layer: nn.Module, x: Tensor) -> Tensor:
    """Gated MLP: down(act(gate(x)) * up(x)). x: [t, hidden_size]."""
    m = layer.mlp
    return linear(m.act_fn(linear(x, m.gate_proj)) * linear(x, m.up_proj), m.down_proj)


def layer_forward(
    parts: ModelParts,
    layer_idx: int,
    hidden: Tensor,
    positions: Tensor,
    k_context: Tensor | None = None,
    v_context: Tensor | None = None,
) -> ManualLayerOutput:
    """One decoder layer for the tokens at ``positions`` (hidden: [t, hidden_size]).

    With k_context/v_context ([num_kv_heads, n, head_dim], positions 0..n-1) the new K/V are
    written into copies at ``positions`` and the attention reads all n keys. Without them the
    computed tokens attend only to each other.
    """
    layer = parts.layers[layer_idx]
    cos, sin = rope_tables(parts.rotary_emb, positions, hidden)
    q, k, v = project_qkv(layer, rms_norm(hidden, layer.input_layernorm), cos, sin)
    if k_context is None:
        k_cache, v_cache, k_positions = k, v, positions
    else:
        k_cache, v_cache = k_context.clone(), v_context.clone()
        k_cache[:, positions], v_cache[:, positions] = k, v
        k_positions = torch.arange(k_cache.shape[1], device=hidden.device)
    attn = layer.self_attn
    out = attend(q, positions, k_cache, v_cache, k_positions, attn.scaling, parts.sliding_windows[layer_idx])
    h = hidden + linear(out, attn.o_proj)  # [t, hidden_size]
    h = h + mlp(layer, rms_norm(h, layer.post_attention_layernorm))
    return ManualLayerOutput(h, k, v, k_cache, v_cache)


@torch.inference_mode()
def manual_layers(parts: ModelParts, hidden: Tensor, start: int, end: int) -> ManualLoopResult:
    """Layers [start, end) over a whole context at positions 0..n-1 (hidden: E_start, [n, hidden])."""
    positions = torch.arange(hidden.shape[0], device=hidden.device)
    k, v, e = {}, {}, {}
    for layer_idx in range(start, end):
        e[layer_idx] = hidden
        out = layer_forward(parts, layer_idx, hidden, positions)
        k[layer_idx], v[layer_idx], hidden = out.k, out.v, out.hidden
    return ManualLoopResult(k, v, e, hidden)


@torch.inference_mode()
def manual_logits(parts: ModelParts, hidden: Tensor) -> Tensor:
    """lm_head(norm(hidden)) in float32: [t, vocab_size]."""
    return linear(rms_norm(hidden, parts.norm), parts.lm_head).float()
