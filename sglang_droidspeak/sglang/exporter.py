"""Sender side: answer a FetchRequest from the local tree, KV pool and E pool.

Runs on the scheduler thread (``FetchServer.poll`` from the scheduler-loop hook), so
the tree is never touched concurrently and the exported slots cannot be evicted while
they are read. Only the exact requested prefix is served, from NATIVE KV (derived KV
only when ``allow_derived_export``); anything else is a FetchError and the receiver
falls back to its own prefill.

    order of the stream        E of each requested layer, then K and V of each reused
                               layer, each cut into blocks of at most ``block_tokens``
    cuda_ipc plane (offer_id)  E as above; K/V are copied on the GPU into the receiver's
                               offered pool by ``ipc`` (ipc_export.py), not streamed
    nccl plane (channel_id)    NcclSendStart, then E and K/V on the pair channel by
                               ``nccl`` (nccl_export.py), then FetchDone(0)

E comes from ``compute_e`` rather than from a store filled during prefill: a capture
hook inside the decoder layer produced wrong rows on the GPU under SGLang's default
breakable prefill CUDA graphs (2026-11-28, docs/results/gpu-integration-2026-11-28.md),
so the sender recomputes layers [0, s) for the prefix when a receiver asks for E_s.
"""

from __future__ import annotations

from array import array
from typing import Any, Callable, Iterator, Optional

from sglang_droidspeak.sglang.ipc_export import IpcExporter
from sglang_droidspeak.sglang.nccl_export import NcclExporter
from sglang_droidspeak.transfer.frames import FetchDone, FetchError, FetchRequest, LayerChunk, Message
from sglang_droidspeak.transfer.frames_nccl import NcclSendStart, tensor_order

BLOCK_TOKENS = 4096


EComputer = Callable[[list, tuple], dict]  # (token_ids, layers) -> {layer: [n, hidden]}


def _check(request: FetchRequest, model: str, fingerprint: str, num_layers: int) -> Optional[FetchError]:
    rid = request.request_id
    if request.fingerprint != fingerprint:
        return FetchError(rid, "fingerprint_mismatch", f"{model} has fingerprint {fingerprint[:16]}")
    if request.sender_model != model:
        return FetchError(rid, "bad_request", f"this server serves {model!r}, not {request.sender_model!r}")
    layers = request.reused_layers + request.e_layers
    if any(layer >= num_layers for layer in layers):
        return FetchError(rid, "bad_request", f"layer out of range [0, {num_layers})")
    return None


def _check_ipc(request: FetchRequest, ipc: Optional[IpcExporter]) -> Optional[FetchError]:
    if not request.offer_id:
        return None
    if ipc is None:
        return FetchError(request.request_id, "ipc_unavailable", "this sender's data_plane is zmq")
    return ipc.refusal(request)


def _check_nccl(request: FetchRequest, nccl: Optional[NcclExporter]) -> Optional[FetchError]:
    if not request.channel_id:
        return None
    if nccl is None:
        return FetchError(request.request_id, "nccl_unavailable", "this sender's data_plane is not nccl")
    return nccl.refusal(request)


def export_messages(request: FetchRequest, *, model: str, fingerprint: str, tree: Any,
                    kv_pool: Any, compute_e: EComputer, num_layers: int,
                    block_tokens: int = BLOCK_TOKENS, ipc: Optional[IpcExporter] = None,
                    nccl: Optional[NcclExporter] = None) -> Iterator[Message]:
    """The answer to ``request``: LayerChunks then FetchDone, or a single FetchError.

    E is computed on demand by ``compute_e`` (this model's layers [0, s) over the prefix,
    from its own embeddings; no KV is written), not read from a capture pool. A request
    with ``offer_id`` has its K/V copied by ``ipc`` (None: refused, ipc_unavailable); one
    with ``channel_id`` gets E and K/V on that channel by ``nccl`` (None: nccl_unavailable).
    """
    error = _check(request, model, fingerprint, num_layers) or _check_ipc(request, ipc) \
        or _check_nccl(request, nccl)
    if error is not None:
        yield error
        return
    rid, num_tokens = request.request_id, len(request.token_ids)
    match = tree.match_for_export(array("q", request.token_ids), request.receiver_model)
    if match is None or len(match.match.device_indices) < num_tokens:
        have = 0 if match is None else len(match.match.device_indices)
        yield FetchError(rid, "evicted", f"holds {have} of {num_tokens} prefix tokens")
        return
    slots = match.match.device_indices[:num_tokens]  # [num_tokens]
    num_chunks = 0
    e = compute_e(list(request.token_ids), request.e_layers) if request.e_layers else {}
    if request.channel_id:
        yield NcclSendStart(rid, request.channel_id, len(tensor_order(request)))
        yield nccl.send(request, slots, e) or FetchDone(rid, 0)
        return
    for layer in request.e_layers:
        for start in range(0, num_tokens, block_tokens):
            yield LayerChunk.from_tensor(rid, "e", layer, start, e[layer][start:start + block_tokens])
            num_chunks += 1
    if request.offer_id:
        yield ipc.copy(request, slots) or FetchDone(rid, num_chunks)
        return
    blocks = [(start, slots[start:start + block_tokens].to(kv_pool.device))  # once, not per layer
              for start in range(0, num_tokens, block_tokens)]
    for layer in request.reused_layers:
        for start, block in blocks:
            yield LayerChunk.from_tensor(rid, "k", layer, start, kv_pool.get_key_buffer(layer)[block])
            yield LayerChunk.from_tensor(rid, "v", layer, start, kv_pool.get_value_buffer(layer)[block])
            num_chunks += 2
    yield FetchDone(rid, num_chunks)
