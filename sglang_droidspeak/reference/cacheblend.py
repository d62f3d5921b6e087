"""CacheBlend-style baseline (Yao et al., EuroSys '25) for cross-model reuse.

Start from the sender's KV for every layer. Pick the ``num_recompute_tokens`` tokens whose
V deviates most, at ``select_layer``, between the receiver's own recomputation (its layers
0..select_layer over all tokens) and the sender's V (CacheBlend's HKVD selection: squared
L2 over heads and head_dim). Token 0 (BOS / attention sink) is always selected and counts
toward the budget. Then, in every layer, recompute only the selected tokens' hidden states
and K/V; their attention reads the mixed cache (sender K/V for the other tokens) under the
causal mask by position.

``keep_selection_kv=True`` is the variant of CacheBlend's vLLM code: layers
0..select_layer keep the receiver's full recomputation (it was computed for the selection
anyway) and only later layers blend. Then num_recompute_tokens == 0 still recomputes
layers 0..select_layer in full; in the default mode it is full reuse.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from sglang_droidspeak.reference.engine import ReferenceModel
from sglang_droidspeak.reference.kv import PrefixKV, ReferenceEngineError, SenderCache
from sglang_droidspeak.reference.manual import layer_forward, project_qkv, rms_norm, rope_tables
from sglang_droidspeak.reference.parts import as_token_ids


class Selection(NamedTuple):
    positions: Tensor  # [k] long, sorted: the tokens to recompute
    full_kv: dict[int, tuple[Tensor, Tensor]]  # layer -> receiver (k, v) [kv_heads, n, hd], layers 0..select_layer
    hidden: Tensor | None  # [n, hidden_size] entering select_layer (None when not computed)


@torch.inference_mode()
def hkvd_scores(
    receiver: ReferenceModel, hidden: Tensor, select_layer: int, sender_v: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token squared V deviation at ``select_layer``: (scores [n], receiver K, receiver V)."""
    layer = receiver.parts.layers[select_layer]
    positions = torch.arange(hidden.shape[0], device=hidden.device)
    cos, sin = rope_tables(receiver.parts.rotary_emb, positions, hidden)
    _, k, v = project_qkv(layer, rms_norm(hidden, layer.input_layernorm), cos, sin)  # [kv_heads, n, hd]
    scores = (v.float() - sender_v.float()).pow(2).sum(dim=(0, 2))  # [n]
    return scores, k, v


def select_positions(scores: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Token 0 plus the top-(k-1) scores, sorted ([..., k] long); every position when k >= n.

    scores: [..., n] (not modified).
    """
    n = scores.shape[-1]
    if num_tokens >= n:
        return torch.arange(n, device=scores.device).expand(*scores.shape[:-1], n)
    scores = scores.clone()
    scores[..., 0] = float("inf")  # always recompute token 0
    return torch.topk(scores, num_tokens, dim=-1).indices.sort(dim=-1).values


@torch.inference_mode()
def select_tokens(
    receiver: ReferenceModel, sender: SenderCache, input_ids: Tensor, num_recompute_tokens: int, select_layer: int
) -> Selection:
    """Token 0 plus the top-(k-1) HKVD tokens at ``select_layer`` (all tokens when k >= n)."""
    run = receiver.run_layers(receiver.embed(input_ids), 0, select_layer)
    scores, k_sel, v_sel = hkvd_scores(receiver, run.hidden, select_layer, sender.kv.v[select_layer])
    full_kv = {l: (run.k[l], run.v[l]) for l in run.k}
    full_kv[select_layer] = (k_sel, v_sel)
    return Selection(select_positions(scores, num_recompute_tokens), full_kv, run.hidden)


@torch.inference_mode()
def cacheblend_receiver_cache(
    receiver: ReferenceModel,
    sender: SenderCache,
    input_ids,
    num_recompute_tokens: int,
    select_layer: int = 1,
    keep_selection_kv: bool = False,
) -> PrefixKV:
    """The receiver's prefix cache under CacheBlend-style selective token recomputation."""
    input_ids = as_token_ids(input_ids, receiver.device, "input_ids")
    n, num_layers = sender.seq_len, receiver.num_layers
    receiver.check_kv(sender.kv, "sender KV")
    if input_ids.numel() != n:
        raise ReferenceEngineError(f"{input_ids.numel()} input_ids for a {n}-token sender cache")
    if not 0 <= num_recompute_tokens <= n:
        raise ReferenceEngineError(f"num_recompute_tokens must be in [0, {n}], got {num_recompute_tokens}")
    if not 0 <= select_layer < num_layers:
        raise ReferenceEngineError(f"select_layer must be in [0, {num_layers}), got {select_layer}")
    if num_recompute_tokens == 0 and not keep_selection_kv:
        return sender.kv
    if num_recompute_tokens == n and not keep_selection_kv:
        selection = Selection(torch.arange(n, device=receiver.device), {}, None)  # no selection pass needed
    else:
        selection = select_tokens(receiver, sender, input_ids, num_recompute_tokens, select_layer)
    if keep_selection_kv:
        base = sender.kv.with_layers(selection.full_kv)
        if selection.positions.numel() == 0:
            return base
        hidden, start = selection.hidden[selection.positions], select_layer
    else:
        base, start = sender.kv, 0
        hidden = receiver.embed(input_ids[selection.positions])  # [k, hidden_size]
    return blend_layers(receiver, base, hidden, selection.positions, start)


@torch.inference_mode()
def blend_layers(receiver: ReferenceModel, base: PrefixKV, hidden: Tensor, positions: Tensor, start: int) -> PrefixKV:
    """Recompute the tokens at ``positions`` through layers [start, L) over ``base``'s K/V.

    hidden: [k, hidden_size] entering layer ``start`` for those tokens.
    """
    replacements = {}
    for layer in range(start, receiver.num_layers):
        out = layer_forward(receiver.parts, layer, hidden, positions, base.k[layer], base.v[layer])
        replacements[layer] = (out.k_cache, out.v_cache)
        hidden = out.hidden
    return base.with_layers(replacements)
