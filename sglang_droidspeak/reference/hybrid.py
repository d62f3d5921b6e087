"""Hybrid recompute: a DroidSpeak group, then CacheBlend-style token recompute after it.

    layers     0 .. s-1      s .. e-1              e                      e+1 .. L-1
    KV         sender's      receiver's, run from  receiver's (all        sender's, except the
                             the sender's E_s      tokens: selection)     selected tokens

The group [s, e) gives the receiver's own hidden state entering layer e (up to the
sender's E_s). From it the receiver projects V at layer e for every token, picks the
``num_recompute_tokens`` tokens whose V deviates most from the sender's (CacheBlend's
HKVD, token 0 always in), and recomputes those tokens through layers e..L-1 over the
mixed cache. Layer e keeps the full projection it computed (CacheBlend's vLLM mode,
``keep_selection_kv=True``), so CacheBlend in that mode is the hybrid with group [0, 1).

With ``num_recompute_tokens == 0`` (or e == L) there is no selection pass: the plan alone.
Cost in layer-tokens: budget.hybrid_cost.
"""

from __future__ import annotations

import torch

from sglang_droidspeak.reference.cacheblend import blend_layers, hkvd_scores, select_positions
from sglang_droidspeak.reference.engine import ReferenceModel
from sglang_droidspeak.reference.kv import PrefixKV, ReferenceEngineError, SenderCache
from sglang_droidspeak.reference.parts import as_token_ids


@torch.inference_mode()
def hybrid_receiver_cache(receiver: ReferenceModel, sender: SenderCache, input_ids, start: int, end: int,
                          num_recompute_tokens: int) -> PrefixKV:
    """The receiver's prefix cache: group [start, end) from E_start, then token recompute after it."""
    input_ids = as_token_ids(input_ids, receiver.device, "input_ids")
    n, num_layers = sender.seq_len, receiver.num_layers
    receiver.check_kv(sender.kv, "sender KV")
    if input_ids.numel() != n:
        raise ReferenceEngineError(f"{input_ids.numel()} input_ids for a {n}-token sender cache")
    if not 0 <= start < end <= num_layers:
        raise ReferenceEngineError(f"group [{start}, {end}) is empty or outside [0, {num_layers}]")
    if not 0 <= num_recompute_tokens <= n:
        raise ReferenceEngineError(f"num_recompute_tokens must be in [0, {n}], got {num_recompute_tokens}")
    if start > 0 and start not in sender.e:
        raise ReferenceEngineError(f"the group starts at {start}; the sender cache has no E_{start}")
    hidden = receiver.embed(input_ids) if start == 0 else sender.e[start]  # [n, hidden_size]
    run = receiver.run_layers(hidden, start, end)
    base = sender.kv.with_layers({l: (run.k[l], run.v[l]) for l in run.k})
    if num_recompute_tokens == 0 or end == num_layers:
        return base
    scores, k_sel, v_sel = hkvd_scores(receiver, run.hidden, end, sender.kv.v[end])  # scores: [n]
    base = base.with_layers({end: (k_sel, v_sel)})
    positions = select_positions(scores, num_recompute_tokens)
    return blend_layers(receiver, base, run.hidden[positions], positions, end)

