"""Receiver side of the CacheBlend-style baseline: HKVD token selection and blended layers.

The same math as ``reference/cacheblend.py`` (default mode, not ``keep_selection_kv``),
over the served model's own SGLang layer submodules (as ``recompute.py``) and the KV pool:

    step        what                                                    reads / writes
    select      the receiver's layers 0..S-1 over all n tokens (no KV   E_0 -> E_S; V at S
                writes), its V at layer S, squared deviation from the   sender V at S (pool)
                sender's V summed over heads and head_dim; token 0
                plus the top-(k-1) tokens, sorted by position
    blend       for every layer l: the k selected tokens' hidden state  writes K/V of the k
                -> q, k, v; their K/V replace the sender's at their     selected slots;
                slots; their queries attend over the prefix's K/V now   reads all n slots
                in the pool (mixed) under the causal mask by position

    tensor                 shape
    positions (selected)   [k] int64, sorted
    v_receiver, v_sender   [n, num_kv_heads * head_dim]
    k_cache, v_cache       [n, num_kv_heads, head_dim]   the layer's K/V in the pool
    q (selected)           [k, num_q_heads * head_dim]

The last layer's attention output and MLP are skipped: nothing reads them. Imports no SGLang.

This baseline still runs its own torch-SDPA attention over the layers' submodules
(Llama-shaped layers: input/post-attention norms, packed qkv_proj, rotary_emb, o_proj,
mlp), not SGLang's attention backend: its selected tokens attend causally *by position*
over a prefix they are scattered in, which an EXTEND batch cannot express without a
custom mask. DroidSpeak plans run through the engine (engine_forward.py).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

QUERY_BLOCK = 4096  # longer prefixes attend block by block (bounded mask memory)


@torch.no_grad()
def receiver_v(layers: Sequence[Any], e_0, positions, select_layer: int):
    """The receiver's V at ``select_layer`` over the whole prefix: [n, kv_size] (no KV writes)."""
    e_select = recompute_group(layers, 0, select_layer, e_0, positions, None, None)  # [n, hidden]
    layer = layers[select_layer]
    attn = layer.self_attn
    qkv, _ = attn.qkv_proj(layer.input_layernorm(e_select))
    return qkv.split([attn.q_size, attn.kv_size, attn.kv_size], dim=-1)[2]  # [n, kv_size]


@torch.no_grad()
def select_positions(v_receiver, v_sender, num_tokens: int):
    """Token 0 plus the ``num_tokens - 1`` largest squared V deviations: [num_tokens] sorted.

    v_receiver: [n, kv_size]; v_sender: [n, num_kv_heads, head_dim] (the pool's rows).
    """
    num_rows = v_receiver.shape[0]
    diff = v_receiver.float() - v_sender.reshape(num_rows, -1).float()  # [n, kv_size]
    scores = diff.pow(2).sum(dim=-1)  # [n]
    scores[0] = float("inf")  # always recompute token 0
    return torch.topk(scores, num_tokens).indices.sort().values


def mixed_attention(q, q_positions, k_cache, v_cache, radix: Any):
    """Queries of the selected tokens over the whole prefix, causal by position: [k, Hq*D].

    q: [k, Hq*D]; q_positions: [k] sorted; k_cache, v_cache: [n, Hkv, D].
    """
    num_q_heads, head_dim = radix.tp_q_head_num, radix.qk_head_dim
    group = num_q_heads // radix.tp_k_head_num
    q4 = q.view(-1, num_q_heads, head_dim).transpose(0, 1).unsqueeze(0)  # [1, Hq, k, D]
    k4 = k_cache.to(q.dtype).transpose(0, 1).repeat_interleave(group, dim=0).unsqueeze(0)  # [1, Hq, n, D]
    v4 = v_cache.to(q.dtype).transpose(0, 1).repeat_interleave(group, dim=0).unsqueeze(0)
    blocks = []
    for start in range(0, q4.shape[2], QUERY_BLOCK):
        rows = q_positions[start:start + QUERY_BLOCK]  # [B]
        num_keys = k4.shape[2]
        mask = torch.arange(num_keys, device=q.device).unsqueeze(0) <= rows.unsqueeze(1)  # [B, n]
        blocks.append(F.scaled_dot_product_attention(
            q4[:, :, start:start + QUERY_BLOCK], k4, v4, attn_mask=mask, scale=radix.scaling))
    out = torch.cat(blocks, dim=2)  # [1, Hq, k, D]
    return out.squeeze(0).transpose(0, 1).reshape(q.shape[0], num_q_heads * head_dim)


def _blend_layer(layer: Any, positions, hidden_states, residual, slots, kv_pool, last: bool):
    """One layer for the selected tokens: their K/V into the pool, then attention over the
    mixed K/V of all ``slots``; returns (hidden, residual) of the selected tokens."""
    q, k, v, residual = layer_qkv(layer, positions, hidden_states, residual)
    attn = layer.self_attn
    radix = attn.attn
    write_kv(kv_pool, radix.layer_id, slots[positions], k, v)
    if last:  # nothing reads the last layer's output
        return hidden_states, residual
    k_cache = kv_pool.get_key_buffer(radix.layer_id)[slots]  # [n, Hkv, D], mixed
    v_cache = kv_pool.get_value_buffer(radix.layer_id)[slots]
    out = mixed_attention(q, positions, k_cache, v_cache, radix)
    hidden_states, _ = attn.o_proj(out)
    hidden_states, residual = layer.post_attention_layernorm(hidden_states, residual)
    return layer.mlp(hidden_states), residual


@torch.no_grad()
def blend_layers(layers: Sequence[Any], num_layers: int, e_selected, positions, slots, kv_pool) -> None:
    """Recompute the selected tokens through every layer over the pool's (sender) K/V.

    e_selected: [k, hidden], the receiver's embeddings of the selected tokens; positions:
    [k] sorted; slots: [n], the prefix's slots, already holding the sender's K/V.
    """
    hidden_states, residual = e_selected, None
    for layer_id in range(num_layers):
        hidden_states, residual = _blend_layer(layers[layer_id], positions, hidden_states, residual, slots,
                                               kv_pool, last=layer_id == num_layers - 1)


# ---- the layer loop both steps use (E entering a layer, K/V of the chosen tokens) ----

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
