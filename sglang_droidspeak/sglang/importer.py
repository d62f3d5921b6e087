"""Receiver side: what an import needs of the served model, and its two small steps.

An import turns a REMOTE hit into local DERIVED KV. Its life (asynchronous, advanced by
the scheduler loop) is in import_job.py and import_queue.py, its start and end in
runtime_imports.py; this module holds the pieces they share:

    piece           what
    ModelParts      the served model's pools, allocator, request pool and EngineForward
                    (engine_forward.py), which runs DroidSpeak plans and BlendPlans alike
    allocate        n KV slots for the prefix, evicting first when short;
                    ImportFailed("no_memory") when they are not free even then
    fetch_request   the FetchRequest of one import (E layers, reused layers)

The receiver's sink: import_receiver.py; ``ImportFailed``: transfer/errors.py.
"""

from __future__ import annotations

import uuid
from typing import Any, NamedTuple

import torch

from sglang_droidspeak.transfer.errors import ImportFailed  # noqa: F401 - re-exported
from sglang_droidspeak.transfer.frames import FetchRequest


class ModelParts(NamedTuple):
    """What the importer and exporter need of the served model (SGLang objects, duck-typed)."""

    kv_pool: Any  # MHATokenToKVPool
    allocator: Any  # token_to_kv_pool_allocator
    hidden_size: int
    dtype: torch.dtype
    device: Any
    engine: Any = None  # EngineForward: layer slices through the model's own forward
    req_to_token_pool: Any = None  # ReqToTokenPool: rows for the engine's forwards


def allocate(parts: ModelParts, tree: Any, num_tokens: int):
    from sglang.srt.mem_cache.base_prefix_cache import EvictParams

    slots = parts.allocator.alloc(num_tokens)
    if slots is None:
        tree.evict(EvictParams(num_tokens=num_tokens))
        slots = parts.allocator.alloc(num_tokens)
    if slots is None:
        raise ImportFailed("no_memory", f"{num_tokens} KV slots not free after eviction")
    return slots


def fetch_request(sender: str, receiver: str, fingerprint: str, token_ids, kv_layers, e_layers) -> FetchRequest:
    """The FetchRequest of one import (no deadline: the plane sets its own)."""
    return FetchRequest(uuid.uuid4().hex, sender, receiver, fingerprint, tuple(int(t) for t in token_ids),
                        tuple(kv_layers), tuple(e_layers), 0)
