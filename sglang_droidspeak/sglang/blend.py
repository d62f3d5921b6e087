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
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from sglang_droidspeak.sglang.recompute import QUERY_BLOCK, layer_qkv, recompute_group, write_kv


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
