"""LayerChunks of one fetch, shared by the planes that stream some rows on the fetch socket
(zmq: E and K/V; cuda_ipc: E). Blocks of at most ``block_tokens`` rows, E first."""

from __future__ import annotations

from typing import Any, Iterator

import torch

from sglang_droidspeak.transfer.frames import FetchRequest, LayerChunk

BLOCK_TOKENS = 4096


def e_chunks(request: FetchRequest, e: dict, block_tokens: int = BLOCK_TOKENS) -> Iterator[LayerChunk]:
    """E of each requested layer (``e``: layer -> [n, hidden]) in row blocks."""
    for layer in request.e_layers:
        for start in range(0, len(request.token_ids), block_tokens):
            yield LayerChunk.from_tensor(request.request_id, "e", layer, start, e[layer][start:start + block_tokens])


def kv_chunks(request: FetchRequest, slots: torch.Tensor, kv_pool: Any,
              block_tokens: int = BLOCK_TOKENS) -> Iterator[LayerChunk]:
    """K and V of each reused layer at ``slots`` [n], in row blocks ([rows, heads, dim] each)."""
    blocks = [(start, slots[start:start + block_tokens].to(kv_pool.device))  # once, not per layer
              for start in range(0, len(request.token_ids), block_tokens)]
    for layer in request.reused_layers:
        for start, block in blocks:
            yield LayerChunk.from_tensor(request.request_id, "k", layer, start, kv_pool.get_key_buffer(layer)[block])
            yield LayerChunk.from_tensor(request.request_id, "v", layer, start, kv_pool.get_value_buffer(layer)[block])
