"""Receiver side: turn a REMOTE hit into local DERIVED KV (fetch, write, recompute, insert).

    step                      what happens                                on failure
    1 allocate                n = prefix_len slots (evicting if needed)   ImportFailed("no_memory")
    2 fetch                   E_s for each group with s > 0, K/V of       ImportFailed(<FetchError
                              every reused layer -> written into slots    code> | "timeout" | ...)
                              (cuda_ipc plane: the sender writes K/V
                              into the slots itself, ipc_import.py;
                              nccl plane: both on a pair channel,
                              nccl_import.py)
    3 recompute               each group [s, e) from E_s (own embeddings   (exception -> "internal")
                              at s = 0), writing this model's K/V
    4 insert                  the slots under the derived namespace;      -
                              duplicates of an existing node are freed
Any failure waits for the GPU, then frees the slots before raising, so the pool
accounting is unchanged and the caller prefills the request normally.

Steps 2 and 3 overlap when ``pipelined`` (the default): a group starts as soon as its
E_s has landed (groups at s = 0 before the fetch), while chunks keep arriving and are
copied on a side stream. The ordering table, and why SGLang's layer-transfer counters
are not used: import_pipeline.py; the streams and events: import_streams.py.
Chunks of each (what, layer) must arrive in token order (the exporter's order), so a
key is complete exactly when its rows reach the prefix length; the chunk writer and
its bounds checks (``_Receiver``, ``ImportFailed``): import_receiver.py.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from array import array
from typing import Any, Callable, NamedTuple, Optional

import torch

from sglang_droidspeak.plan.blend_plan import BlendPlan
from sglang_droidspeak.plan.layer_plan import LayerGroup, LayerPlan
from sglang_droidspeak.sglang.import_pipeline import GroupLauncher, ImportTimings
from sglang_droidspeak.sglang.import_receiver import ImportFailed, _Receiver  # also imported from here
from sglang_droidspeak.sglang.import_streams import ImportStreams
from sglang_droidspeak.sglang.recompute import prefix_inputs, recompute_group
from sglang_droidspeak.transfer.frames import FetchRequest

DEBUG_ENV = "DROIDSPEAK_DEBUG_COMPARE"  # =1: also fetch what is recomputed and log the differences
logger = logging.getLogger(__name__)


class ImportResult(NamedTuple):
    num_tokens: int
    num_bytes_in: int
    num_recomputed_layers: int
    timings: Optional[ImportTimings] = None


class ModelParts(NamedTuple):
    """What the importer needs of the served model (SGLang objects, duck-typed)."""

    layers: Any  # decoder layers, indexable by layer id
    embed: Callable[[torch.Tensor], torch.Tensor]  # [T] ids -> [T, hidden] (E_0)
    kv_pool: Any  # MHATokenToKVPool
    allocator: Any  # token_to_kv_pool_allocator
    hidden_size: int
    dtype: torch.dtype
    device: Any


def allocate(parts: ModelParts, tree: Any, num_tokens: int):
    from sglang.srt.mem_cache.base_prefix_cache import EvictParams

    slots = parts.allocator.alloc(num_tokens)
    if slots is None:
        tree.evict(EvictParams(num_tokens=num_tokens))
        slots = parts.allocator.alloc(num_tokens)
    if slots is None:
        raise ImportFailed("no_memory", f"{num_tokens} KV slots not free after eviction")
    return slots


class Filled(NamedTuple):
    """What a fill step returns once the slots hold the final KV and both streams are idle."""

    state: _Receiver
    sent: float  # time.perf_counter() when the fetch began
    fetched: float  # ... when it returned
    drained: float  # ... when every copy and recompute had finished


def import_into_slots(parts: ModelParts, tree: Any, token_ids, namespace: str, pipelined: bool,
                      num_recomputed_layers: int, fill: Callable[[Any, ImportStreams], Filled]) -> ImportResult:
    """Steps 1 and 4 around ``fill(slots, streams)`` (steps 2-3, any plan kind): allocate,
    then insert under ``namespace`` (duplicates of an existing node are freed). Any failure
    waits for the GPU, frees the slots and re-raises."""
    from sglang.srt.mem_cache.base_prefix_cache import InsertParams
    from sglang.srt.mem_cache.radix_cache import RadixKey

    began = time.perf_counter()
    slots = allocate(parts, tree, len(token_ids))
    streams = ImportStreams(parts.device, pipelined)
    try:
        filled = fill(slots, streams)
        result = tree.insert(InsertParams(key=RadixKey(array("q", token_ids), namespace),
                                          value=slots.to(torch.int64, copy=True)))  # as cache_finished_req
    except BaseException:
        try:
            streams.synchronize()  # no launched copy or group may still write the slots we free
        finally:
            parts.allocator.free(slots)
        raise
    if result.prefix_len > 0:
        parts.allocator.free(slots[: result.prefix_len])  # already in the tree
    timings = ImportTimings(1e3 * (filled.fetched - filled.sent), streams.recompute_ms(),
                            1e3 * (filled.drained - filled.fetched), 1e3 * (time.perf_counter() - began), pipelined)
    return ImportResult(len(token_ids), filled.state.num_bytes, num_recomputed_layers, timings)


def import_prefix(parts: ModelParts, tree: Any, fetch: Callable, *, sender: str, receiver: str,
                  fingerprint: str, token_ids, plan: LayerPlan, namespace: str,
                  pipelined: bool = True) -> ImportResult:
    """Steps 1-4 of the module table; ``fetch(request, on_chunk)`` raises on failure.

    A ``BlendPlan`` (the CacheBlend-style baseline) is imported by ``blend_import``."""
    if isinstance(plan, BlendPlan):
        from sglang_droidspeak.sglang.blend_import import import_blend
        return import_blend(parts, tree, fetch, sender=sender, receiver=receiver, fingerprint=fingerprint,
                            token_ids=token_ids, plan=plan, namespace=namespace, pipelined=pipelined)
    debug = os.environ.get(DEBUG_ENV) == "1"
    num_layers = plan.num_layers
    e_layers = tuple(range(num_layers)) if debug else plan.e_layers()
    kv_layers = tuple(range(num_layers)) if debug else plan.reused_layers()

    def fill(slots, streams: ImportStreams) -> Filled:
        request = FetchRequest(uuid.uuid4().hex, sender, receiver, fingerprint, tuple(token_ids),
                               kv_layers, e_layers, 0)
        ids, positions = prefix_inputs(token_ids, parts.device)  # before any launch: a blocking copy
        trace: Optional[dict] = {} if debug else None
        state = _Receiver(parts, plan, slots, e_layers, plan.recomputed_layers() if debug else (), streams)

        def run_group(group: LayerGroup) -> None:
            streams.wait(("e", group.start))
            e_start = parts.embed(ids) if group.start == 0 else state.e[group.start]  # [n, hidden]
            with streams.timed_recompute():
                recompute_group(parts.layers, group.start, group.end, e_start, positions, slots, parts.kv_pool, trace)

        launcher = GroupLauncher(plan, run_group, pipelined)
        state.on_e_ready = launcher.e_ready
        streams.start()
        launcher.start()
        sent = time.perf_counter()
        fetch(request, state)
        fetched = time.perf_counter()
        state.check_complete()
        launcher.finish()
        streams.wait_all()
        streams.synchronize()
        drained = time.perf_counter()
        if debug:
            _log_debug(parts, plan, slots, state, trace)
        return Filled(state, sent, fetched, drained)

    return import_into_slots(parts, tree, token_ids, namespace, pipelined, plan.num_recomputed_layers, fill)


def _log_debug(parts: ModelParts, plan: LayerPlan, slots, state: _Receiver, trace: dict) -> None:
    """Max |ours - sender's| per recomputed layer for K, V and E (same weights: ~bf16 noise)."""
    rows = []
    for layer in plan.recomputed_layers():
        dk = (parts.kv_pool.get_key_buffer(layer)[slots].float() - state.debug_kv[("k", layer)].float()).abs().max()
        dv = (parts.kv_pool.get_value_buffer(layer)[slots].float() - state.debug_kv[("v", layer)].float()).abs().max()
        de = (trace[layer].float() - state.e[layer].float()).abs().max() if layer in state.e else float("nan")
        rows.append(f"L{layer} dK={float(dk):.3g} dV={float(dv):.3g} dE={float(de):.3g}")
    logger.warning("droidspeak-debug plan %s: %s", plan, "; ".join(rows))
