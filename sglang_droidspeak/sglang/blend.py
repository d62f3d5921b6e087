"""Receiver side of the CacheBlend-style baseline, through the engine (engine_forward.py).

The same math as ``reference/cacheblend.py`` (default mode, not ``keep_selection_kv``),
run by the served model's own ``forward_split_prefill`` and the server's attention
backend, so it has the engine's kernels and every architecture the engine runs:

    step        what                                                  reads / writes
    select a    the receiver's layers [0, S) over all n tokens at     writes n scratch slots
                scratch slots (one segment), then layer S's V         (layers 0..S-1)
                projection of E_S (``v_projection``)
    select b    squared V deviation from the sender's V at S, summed  the import's slots at S
                over heads and head_dim; token 0 plus the top-(k-1)
                (reference ``select_positions``), sorted by position
    recompute   the k selected tokens through every layer: masked     writes their K/V at
                groups of many tokens where the backend takes a       their slots; reads all
                custom mask (blend_mask.py: triton, paged
                flashinfer), else one EXTEND segment per run of
                consecutive positions (below: torch_native, and
                sliding-window models on any backend)

The runs path, the selected tokens as an EXTEND batch with no custom mask (n = 10, k = 6).
Each run re-reads its whole prefix (a 25% selection of 16K scattered over ~3000 runs reads
~100 GB of K/V per layer), which is why masked groups come first where a backend takes them:

    selected positions   0 1 2 . . 5 6 . . 9
    runs [a, b)          [0, 3)    [5, 7)  [9, 10)
    segment              EngineSegment(ids[a:b], slots[0:b], prefix_len=a), from layer 0
    attends at layer l   slots[0:b] at l: the sender's K/V, except the selected slots < b,
                         whose K/V this forward saved at layer l before reading them

Exactness needs every selected token's K/V of layer l in the pool before any query of
layer l reads the prefix (CacheBlend: recomputed K/V replace the sender's, then the
queries attend over the mixed pool). One forward saves all segments' K/V (its
``out_cache_loc``) in each attention call; a backend that saves before it reads the
prefix is then exact. Runs split into several forwards in position order stay exact: a
later forward's runs read earlier forwards' slots, done through every layer, and no run
reads a later one. ``forward_groups`` splits them so that one forward holds at most
``max_segments`` runs (the backends size per-request buffers by the request pool) and
about ``KV_INDEX_BUDGET`` K/V index entries (triton and flashinfer list every segment's
prefix slots: sum of b over its runs, which grows as runs x n).

All segments share one request-pool row: segment i writes ``req_to_token[row, :b_i] =
slots[:b_i]``, a prefix of one slot array, so the row holds ``slots[:max b]`` whatever the
order, and a backend reading ``req_to_token[row, :seq_len_i]`` sees segment i's slots.

Where SGLang 0.5.17 saves the extend's K/V relative to reading the prefix
(sglang/srt/layers/attention/, line numbers of the installed files):

    backend, path              saves K/V (forward_extend)   reads the prefix            blend
    torch_native               298-301                      _run_sdpa_forward_extend    exact
                                                            139-141, called at 312
    triton                     1285-1293 ("Save KV cache    extend_attention_fwd 1411   exact
                               first")                      (prefix via kv_indices)
    flashinfer, paged-only     1285-1295                    paged .forward 1300         exact
    (SGLANG_FLASHINFER_USE_PAGED; use_ragged, 959-963)
    flashinfer, ragged         1386-1393, after the         paged .forward_return_lse   stale: runs on a
    (the default)              attention                    1375 (o2)                   paged-only twin

On ragged flashinfer the blend runs on a twin of the engine (its own backend instance and
workspace) with ``use_paged`` set: the instance attribute that SGLANG_FLASHINFER_USE_PAGED
sets at start-up (flashinfer_backend.py 418), read per forward at 962. Any other backend
is refused (``blend_unsupported``: fallback reason ``blend_unsupported``).

    tensor                    shape
    ids                       [n] int64          the prefix's tokens
    slots, scratch            [n] int64          KV slots (the import's; the selection's)
    v_receiver, v_sender      [n, Hkv, D]        V at select_layer
    positions                 [k] int64, sorted  the selected tokens
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Optional, Sequence

import torch

from sglang_droidspeak.sglang import attention_mask
from sglang_droidspeak.sglang.blend_mask import recompute_masked
from sglang_droidspeak.sglang.engine_forward import EngineSegment

logger = logging.getLogger(__name__)
SAVES_FIRST = ("torch_native", "triton")  # backends that save an extend's K/V before reading its prefix
KV_INDEX_BUDGET = 1 << 24  # sum of b over one forward's runs: the backends' K/V index arrays (16M entries)


def runs(positions: Sequence[int]) -> list[tuple[int, int]]:
    """Maximal runs [a, b) of consecutive positions (sorted, distinct ints)."""
    spans: list[tuple[int, int]] = []
    for p in positions:
        if spans and spans[-1][1] == p:
            spans[-1] = (spans[-1][0], p + 1)
        else:
            spans.append((p, p + 1))
    return spans


def run_segments(ids, slots, spans: Sequence[tuple[int, int]]) -> list[EngineSegment]:
    """One segment per run: tokens [a, b) over slots [0, b), from layer 0."""
    return [EngineSegment(ids[a:b], slots[:b], a) for a, b in spans]


def forward_groups(spans: Sequence[tuple[int, int]], max_segments: int,
                   max_kv: int = KV_INDEX_BUDGET) -> list[list[tuple[int, int]]]:
    """Consecutive runs per forward, in position order: at most ``max_segments`` runs and,
    beyond a group's first run, at most ``max_kv`` K/V entries (the sum of their b)."""
    groups: list[list[tuple[int, int]]] = []
    kv = 0
    for a, b in spans:
        if not groups or len(groups[-1]) >= max_segments or kv + b > max_kv:
            groups.append([])
            kv = 0
        groups[-1].append((a, b))
        kv += b
    return groups


def _saves_first(engine: Any) -> bool:
    name = engine.backend_name
    return name in SAVES_FIRST or (name == "flashinfer" and bool(getattr(engine.backend, "use_paged", False)))


def blend_unsupported(engine: Any) -> Optional[str]:
    """Why BlendPlans cannot run on ``engine`` (None: they can, maybe on a twin)."""
    if _saves_first(engine) or (engine.backend_name == "flashinfer" and engine.new_backend is not None):
        return None
    return (f"attention backend {engine.backend_name!r} reads a prefix's K/V before saving the extend's, "
            "and no paged-only flashinfer twin can be made: scattered token recompute would read stale K/V")


def exact_engine(engine: Any) -> Any:
    """``engine`` itself where its backend saves first, else a paged-only flashinfer twin."""
    if _saves_first(engine):
        return engine
    reason = blend_unsupported(engine)
    if reason is not None:
        raise RuntimeError(reason)
    twin = engine.twin()
    twin.backend.use_paged = True  # this instance only: the server's backend stays ragged
    return twin


def receiver_v(engine: Any, kv_pool: Any, ids, scratch, row: int, select_layer: int) -> torch.Tensor:
    """Select a: the receiver's V at ``select_layer`` S over all n tokens, [n, Hkv, D].

    Layers [0, S) run at ``scratch`` (never the import's slots, where the sender's K/V land
    meanwhile); V at S is layer S's V projection of E_S (``v_projection``), so the selection
    costs S layers and one projection, as the reference counts it. A layer without the
    usual ``input_layernorm`` + ``self_attn.qkv_proj`` runs whole at ``scratch`` instead and
    its V rows are copied out (one more layer's compute, the same V).
    """
    project = v_projection(engine.model, select_layer)
    if project is None or select_layer == 0:
        engine.run([EngineSegment(ids, scratch)], [row], 0, select_layer + 1)
        return kv_pool.get_value_buffer(select_layer)[scratch].clone()  # [n, Hkv, D]
    e = engine.run([EngineSegment(ids, scratch)], [row], 0, select_layer, capture=(select_layer,))[select_layer]
    return project(e.to(engine.dtype)).view(len(ids), *kv_pool.get_value_buffer(select_layer).shape[1:])


def v_projection(model: Any, layer_id: int):
    """E [n, hidden] -> V [n, Hkv * D] of decoder layer ``layer_id`` of an SGLang model whose
    layers normalise their input with ``input_layernorm`` and project with a packed
    ``self_attn.qkv_proj`` (q_size, kv_size columns; Llama, Qwen2/3, Mistral, Gemma 2 ...);
    None for any other shape. V has no rotary embedding and no q/k norm."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or not 0 <= layer_id < len(layers):
        return None
    layer = layers[layer_id]
    attn = getattr(layer, "self_attn", None)
    norm, qkv = getattr(layer, "input_layernorm", None), getattr(attn, "qkv_proj", None)
    q_size, kv_size = getattr(attn, "q_size", None), getattr(attn, "kv_size", None)
    if norm is None or qkv is None or not q_size or not kv_size:
        return None

    def project(e: torch.Tensor) -> torch.Tensor:
        packed, _ = qkv(norm(e))  # [n, q_size + 2 * kv_size]
        return packed[:, q_size + kv_size:q_size + 2 * kv_size]  # [n, kv_size]

    return project


def hkvd_select(v_receiver, v_sender, num_tokens: int) -> torch.Tensor:
    """Select b: token 0 plus the top-(k-1) squared V deviations, [k] sorted (on their device).

    v_receiver, v_sender: [n, Hkv, D]; the score of a token sums heads and head_dim.
    """
    # the golden reference's own rule; imported here, as it imports transformers (cpu_import.py)
    from sglang_droidspeak.reference.cacheblend import select_positions

    scores = (v_receiver.float() - v_sender.float()).pow(2).sum(dim=(1, 2))  # [n]
    return select_positions(scores, num_tokens)


def recompute_tokens(engine: Any, ids, slots, row: int, positions: Sequence[int], num_layers: int,
                     max_kv: Optional[int] = None) -> None:
    """The tokens at ``positions`` (sorted ints) through every layer over the pool's K/V at
    ``slots``; their K/V replace what those slots held. Masked groups (blend_mask.py) where
    the backend takes a custom mask (attention_mask.py), else one forward per
    ``forward_groups`` group of runs (the engine's ``max_segments``; ``max_kv``, default
    KV_INDEX_BUDGET): sliding-window models and torch_native."""
    why_not = attention_mask.unsupported(engine)
    _say_path(engine.backend_name, why_not)
    if why_not is None:
        recompute_masked(engine, ids, slots, row, positions, num_layers)
        return
    for group in forward_groups(runs(positions), engine.max_segments, max_kv or KV_INDEX_BUDGET):
        engine.run(run_segments(ids, slots, group), [row] * len(group), 0, num_layers)


@functools.lru_cache(maxsize=None)
def _say_path(backend_name: str, why_not: Optional[str]) -> None:
    """Log once per process and path which way token recompute runs."""
    if why_not is None:
        logger.info("DroidSpeak token recompute: masked groups on %s (blend_mask.py)", backend_name)
    else:
        logger.info("DroidSpeak token recompute: one segment per run on %s (%s)", backend_name, why_not)
