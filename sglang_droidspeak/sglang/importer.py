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
Any failure frees the slots before raising, so the pool accounting is unchanged and the
caller prefills the request normally.
"""

from __future__ import annotations

import logging
import os
import uuid
from array import array
from typing import Any, Callable, NamedTuple, Optional

import torch

from sglang_droidspeak.plan.layer_plan import LayerPlan
from sglang_droidspeak.sglang.recompute import prefix_inputs, recompute_group
from sglang_droidspeak.transfer.frames import FetchRequest, LayerChunk

DEBUG_ENV = "DROIDSPEAK_DEBUG_COMPARE"  # =1: also fetch what is recomputed and log the differences
logger = logging.getLogger(__name__)


class ImportFailed(RuntimeError):
    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class ImportResult(NamedTuple):
    num_tokens: int
    num_bytes_in: int
    num_recomputed_layers: int


class ModelParts(NamedTuple):
    """What the importer needs of the served model (SGLang objects, duck-typed)."""

    layers: Any  # decoder layers, indexable by layer id
    embed: Callable[[torch.Tensor], torch.Tensor]  # [T] ids -> [T, hidden] (E_0)
    kv_pool: Any  # MHATokenToKVPool
    allocator: Any  # token_to_kv_pool_allocator
    hidden_size: int
    dtype: torch.dtype
    device: Any


class _Receiver:
    """Writes arriving chunks into the prefix's slots and E buffers, checking every bound."""

    def __init__(self, parts: ModelParts, plan: LayerPlan, slots, e_layers, debug_layers=()):
        self.parts, self.slots, self.num_tokens = parts, slots, slots.shape[0]
        self.reused = set(plan.reused_layers())
        self.debug_kv: dict[tuple[str, int], torch.Tensor] = {}  # recomputed layers, sender's K/V
        self.debug_layers = set(debug_layers)
        self.e = {l: torch.empty(self.num_tokens, parts.hidden_size, dtype=parts.dtype, device=parts.device)
                  for l in e_layers}  # layer -> [n, hidden]
        self.rows: dict[tuple[str, int], int] = {}
        self.num_bytes = 0

    def __call__(self, chunk: LayerChunk) -> None:
        rows = chunk.shape[0]
        if chunk.token_start + rows > self.num_tokens:
            raise ImportFailed("protocol", f"chunk rows [{chunk.token_start}, +{rows}) beyond {self.num_tokens}")
        tensor = chunk.to_tensor(self.parts.device)
        end = chunk.token_start + rows
        if chunk.what == "e":
            target = self.e.get(chunk.layer)
            if target is None or tuple(tensor.shape[1:]) != tuple(target.shape[1:]):
                raise ImportFailed("protocol", f"unexpected E chunk for layer {chunk.layer} {chunk.shape}")
            target[chunk.token_start:end] = tensor.to(target.dtype)
        else:
            if chunk.layer in self.debug_layers:
                self._keep_debug(chunk, tensor)
                return
            if chunk.layer not in self.reused:
                raise ImportFailed("protocol", f"unexpected {chunk.what} chunk for layer {chunk.layer}")
            pool = self.parts.kv_pool
            buffer = (pool.get_key_buffer if chunk.what == "k" else pool.get_value_buffer)(chunk.layer)
            if tuple(tensor.shape[1:]) != tuple(buffer.shape[1:]) or tensor.dtype != buffer.dtype:
                raise ImportFailed("protocol", f"{chunk.what} chunk {chunk.shape} {chunk.dtype} does not "
                                   f"fit the pool's {tuple(buffer.shape[1:])} {buffer.dtype}")
            buffer[self.slots[chunk.token_start:end]] = tensor
        key = (chunk.what, chunk.layer)
        self.rows[key] = self.rows.get(key, 0) + rows
        self.num_bytes += len(chunk.data)

    def _keep_debug(self, chunk: LayerChunk, tensor: torch.Tensor) -> None:
        key = (chunk.what, chunk.layer)
        if key not in self.debug_kv:
            self.debug_kv[key] = torch.empty(self.num_tokens, *tensor.shape[1:], dtype=tensor.dtype,
                                             device=tensor.device)
        self.debug_kv[key][chunk.token_start:chunk.token_start + chunk.shape[0]] = tensor

    def note_copied(self, layers) -> None:
        """The cuda_ipc plane wrote K/V of ``layers`` straight into our slots (ipc_import.py)."""
        for layer in layers:
            if layer not in self.reused:
                raise ImportFailed("protocol", f"IPC copy of layer {layer}, which the plan recomputes")
            self.rows[("k", layer)] = self.rows[("v", layer)] = self.num_tokens

    def take_whole(self, what: str, layer: int, tensor: torch.Tensor) -> None:
        """The nccl plane received all rows of one tensor: E [n, hidden] or K/V [n, heads, dim]."""
        if what == "e":
            self.e[layer][:] = tensor.to(self.e[layer].dtype)
        else:
            if layer not in self.reused:
                raise ImportFailed("protocol", f"NCCL {what} of layer {layer}, which the plan recomputes")
            pool = self.parts.kv_pool
            (pool.get_key_buffer if what == "k" else pool.get_value_buffer)(layer)[self.slots] = tensor
        self.rows[(what, layer)] = self.num_tokens
        self.num_bytes += tensor.numel() * tensor.element_size()

    def check_complete(self) -> None:
        expected = [("e", l) for l in self.e] + [(w, l) for l in self.reused for w in ("k", "v")]
        short = [key for key in expected if self.rows.get(key, 0) != self.num_tokens]
        if short:
            raise ImportFailed("protocol", f"incomplete transfer for {short[:4]}")


def allocate(parts: ModelParts, tree: Any, num_tokens: int):
    from sglang.srt.mem_cache.base_prefix_cache import EvictParams

    slots = parts.allocator.alloc(num_tokens)
    if slots is None:
        tree.evict(EvictParams(num_tokens=num_tokens))
        slots = parts.allocator.alloc(num_tokens)
    if slots is None:
        raise ImportFailed("no_memory", f"{num_tokens} KV slots not free after eviction")
    return slots


def import_prefix(parts: ModelParts, tree: Any, fetch: Callable, *, sender: str, receiver: str,
                  fingerprint: str, token_ids, plan: LayerPlan, namespace: str) -> ImportResult:
    """Steps 1-4 of the module table; ``fetch(request, on_chunk)`` raises on failure."""
    from sglang.srt.mem_cache.base_prefix_cache import InsertParams
    from sglang.srt.mem_cache.radix_cache import RadixKey

    num_tokens = len(token_ids)
    slots = allocate(parts, tree, num_tokens)
    try:
        debug = os.environ.get(DEBUG_ENV) == "1"
        num_layers = plan.num_layers
        e_layers = tuple(range(num_layers)) if debug else plan.e_layers()
        kv_layers = tuple(range(num_layers)) if debug else plan.reused_layers()
        request = FetchRequest(uuid.uuid4().hex, sender, receiver, fingerprint, tuple(token_ids),
                               kv_layers, e_layers, 0)
        receiver_state = _Receiver(parts, plan, slots, e_layers, plan.recomputed_layers() if debug else ())
        fetch(request, receiver_state)
        receiver_state.check_complete()
        ids, positions = prefix_inputs(token_ids, parts.device)
        trace: Optional[dict] = {} if debug else None
        for group in plan.groups:
            e_start = parts.embed(ids) if group.start == 0 else receiver_state.e[group.start]
            recompute_group(parts.layers, group.start, group.end, e_start, positions, slots, parts.kv_pool, trace)
        if debug:
            _log_debug(parts, plan, slots, receiver_state, trace)
        result = tree.insert(InsertParams(key=RadixKey(array("q", token_ids), namespace),
                                          value=slots.to(torch.int64, copy=True)))  # as cache_finished_req
    except BaseException:
        parts.allocator.free(slots)
        raise
    if result.prefix_len > 0:
        parts.allocator.free(slots[: result.prefix_len])  # already in the tree
    return ImportResult(num_tokens, receiver_state.num_bytes, plan.num_recomputed_layers)


def _log_debug(parts: ModelParts, plan: LayerPlan, slots, state: _Receiver, trace: dict) -> None:
    """Max |ours - sender's| per recomputed layer for K, V and E (same weights: ~bf16 noise)."""
    rows = []
    for layer in plan.recomputed_layers():
        dk = (parts.kv_pool.get_key_buffer(layer)[slots].float() - state.debug_kv[("k", layer)].float()).abs().max()
        dv = (parts.kv_pool.get_value_buffer(layer)[slots].float() - state.debug_kv[("v", layer)].float()).abs().max()
        de = (trace[layer].float() - state.e[layer].float()).abs().max() if layer in state.e else float("nan")
        rows.append(f"L{layer} dK={float(dk):.3g} dV={float(dv):.3g} dE={float(de):.3g}")
    logger.warning("droidspeak-debug plan %s: %s", plan, "; ".join(rows))
