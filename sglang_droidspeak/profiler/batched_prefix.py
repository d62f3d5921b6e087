"""Every system's prefix KV for a chunk of examples at once: the reference engine, batched.

A chunk is c examples whose contexts have the same length n. The sender prefills them
in one batched pass (KV of every layer, E where a system needs it); the receiver runs
its layers once per distinct group start s from E_s (s = 0: its own embeddings, which is
also its full prefill) up to the last layer any system needs from that start; plans,
CacheBlend-style and hybrid systems take their layers from those runs. Every number is
what the per-example reference gives (engine.py, cacheblend.py, hybrid.py), up to float
rounding: the same HF decoder layers and the same token-recompute arithmetic
(manual.py), with the examples on a batch axis.

    ChunkKV = list over layers of (k, v), each [c, num_kv_heads, n, head_dim]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from transformers import DynamicCache

from sglang_droidspeak.profiler.evaluate import cacheblend_tokens, hybrid_tokens
from sglang_droidspeak.profiler.systems import System
from sglang_droidspeak.reference import ReferenceModel
from sglang_droidspeak.reference.cacheblend import select_positions
from sglang_droidspeak.reference.manual import linear, mlp, project_qkv, rms_norm
from sglang_droidspeak.reference.parts import prefill_masks

ChunkKV = list[tuple[Tensor, Tensor]]
SELECT_LAYER = 1  # CacheBlend's selection layer (evaluate.cacheblend_tokens assumes it)


class ChunkRun(NamedTuple):
    kv: dict[int, tuple[Tensor, Tensor]]  # layer -> (k, v) [c, num_kv_heads, n, head_dim]
    e: dict[int, Tensor]  # layer -> [c, n, hidden_size], the hidden state entering the layer


@torch.inference_mode()
def run_layers(model: ReferenceModel, hidden: Tensor, start: int, end: int, capture: Iterable[int] = ()) -> ChunkRun:
    """Decoder layers [start, end) over c whole contexts (hidden: [c, n, hidden_size] entering
    ``start``); ``capture``: layers in [start, end] whose entering hidden state is kept."""
    x = hidden.to(model.device, model.dtype)  # [c, n, hidden_size]
    position_ids = torch.arange(x.shape[1], device=model.device).expand(x.shape[0], -1)  # [c, n]
    position_embeddings = model.parts.rotary_emb(x, position_ids)  # (cos, sin) [c, n, head_dim]
    windows = model.parts.sliding_windows
    masks = prefill_masks(model.config, x, position_ids, windows[start:end])
    cache, capture, kv, e = DynamicCache(), set(capture), {}, {}
    for layer in range(start, end):
        if layer in capture:
            e[layer] = x
        x = model.parts.layers[layer](x, attention_mask=masks[windows[layer]], position_embeddings=position_embeddings,
                                      position_ids=position_ids, past_key_values=cache, use_cache=True)
        kv[layer] = (cache.layers[layer].keys, cache.layers[layer].values)
    if end in capture:
        e[end] = x
    return ChunkRun(kv, e)


def _project(layer, hidden: Tensor, positions: Tensor, rotary_emb) -> tuple[Tensor, Tensor, Tensor]:
    """q [c, heads, t, hd]; k, v [c, kv_heads, t, hd] of hidden [c, t, hidden] at positions [c, t]."""
    cos, sin = rotary_emb(hidden, positions)  # [c, t, head_dim]
    return project_qkv(layer, rms_norm(hidden, layer.input_layernorm), cos[:, None], sin[:, None])


@torch.inference_mode()
def blend_after(model: ReferenceModel, base: ChunkKV, hidden: Tensor, select_layer: int, sender_v: Tensor,
                num_tokens: int) -> ChunkKV:
    """Token recompute from ``select_layer`` on (hybrid.py / cacheblend.py, keep_selection_kv).

    hidden: [c, n, hidden_size] entering select_layer; sender_v: [c, kv_heads, n, hd] there.
    """
    parts, (c, n) = model.parts, hidden.shape[:2]
    base = list(base)
    all_positions = torch.arange(n, device=hidden.device).expand(c, n)
    _, k_sel, v_sel = _project(parts.layers[select_layer], hidden, all_positions, parts.rotary_emb)
    base[select_layer] = (k_sel, v_sel)
    if num_tokens == 0:
        return base
    scores = (v_sel.float() - sender_v.float()).pow(2).sum(dim=(1, 3))  # [c, n]
    positions = select_positions(scores, num_tokens)  # [c, t]
    x = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))  # [c, t, hidden_size]
    visible = torch.arange(n, device=hidden.device)[None, None, :] <= positions[:, :, None]  # [c, t, n]
    for index in range(select_layer, model.num_layers):
        layer, window = parts.layers[index], parts.sliding_windows[index]
        q, k, v = _project(layer, x, positions, parts.rotary_emb)
        where = positions[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])  # [c, kv_heads, t, hd]
        k_cache, v_cache = base[index][0].clone().scatter_(2, where, k), base[index][1].clone().scatter_(2, where, v)
        group = q.shape[1] // k_cache.shape[1]
        keys, values = k_cache.repeat_interleave(group, dim=1), v_cache.repeat_interleave(group, dim=1)  # [c, heads, n, hd]
        scores = torch.matmul(q, keys.transpose(2, 3)) * layer.self_attn.scaling  # [c, heads, t, n]
        mask = visible if window is None else visible & (
            torch.arange(n, device=hidden.device)[None, None, :] > positions[:, :, None] - window)
        scores = scores.masked_fill(~mask[:, None], float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, values).transpose(1, 2).reshape(c, x.shape[1], -1)  # [c, t, heads * hd]
        h = x + linear(out, layer.self_attn.o_proj)
        x = h + mlp(layer, rms_norm(h, layer.post_attention_layernorm))
        base[index] = (k_cache, v_cache)
    return base


@torch.inference_mode()
def chunk_prefixes(sender: ReferenceModel, receiver: ReferenceModel, context_ids: Tensor,
                   systems: Sequence[System]) -> dict[str, ChunkKV]:
    """system key -> its prefix KV for the chunk (context_ids: [c, n]); "receiver" always included."""
    num_layers, n = receiver.num_layers, context_ids.shape[1]
    needs_e = {s.plan.groups[0].end for s in systems if s.kind == "hybrid"}
    ends: dict[int, int] = {0: num_layers}  # start -> last layer any system needs from that start
    for system in systems:
        for group in (system.plan.groups if system.plan is not None else ()):
            ends[group.start] = max(ends.get(group.start, 0), group.end)
    blends = [s for s in systems if s.kind == "cacheblend"]
    sender_e = sorted(s for s in ends if s > 0)
    sender_run = run_layers(sender, sender.parts.embed_tokens(context_ids), 0, num_layers, capture=sender_e)
    sender_kv = [sender_run.kv[l] for l in range(num_layers)]
    runs = {}
    for start, end in sorted(ends.items()):
        hidden = receiver.parts.embed_tokens(context_ids) if start == 0 else sender_run.e[start]  # [c, n, hidden]
        capture = {e for e in needs_e if start < e <= end} | ({SELECT_LAYER} if start == 0 and blends else set())
        runs[start] = run_layers(receiver, hidden, start, end, capture)
    out = {"receiver": [runs[0].kv[l] for l in range(num_layers)], "sender": sender_kv}
    for system in systems:
        if system.kind in ("plan", "hybrid"):
            prefix = list(sender_kv)
            for group in system.plan.groups:
                for layer in range(group.start, group.end):
                    prefix[layer] = runs[group.start].kv[layer]
            if system.kind == "hybrid":
                group = system.plan.groups[0]
                num_tokens = hybrid_tokens(receiver, system, n)
                if num_tokens:
                    prefix = blend_after(receiver, prefix, runs[group.start].e[group.end], group.end,
                                         sender_kv[group.end][1], num_tokens)
            out[system.key] = prefix
        elif system.kind == "cacheblend":
            prefix = [runs[0].kv[l] if l < SELECT_LAYER else sender_kv[l] for l in range(num_layers)]
            out[system.key] = blend_after(receiver, prefix, runs[0].e[SELECT_LAYER], SELECT_LAYER,
                                          sender_kv[SELECT_LAYER][1], cacheblend_tokens(receiver, system.cacheblend_layers, n))
    return out
