"""Import a REMOTE hit under a BlendPlan (the CacheBlend-style baseline): importer.py's
steps with full reuse, then selective token recompute (blend.py).

    step         what happens                                         k = plan.num_tokens(n)
    1 allocate   n slots (evicting if needed)                         -
    2 select a   the receiver's V at select_layer over all n tokens   only 0 < k < n; before the
                 (its layers 0..S-1, no KV writes)                    fetch when pipelined
    3 fetch      K/V of every layer (no E) -> written into the slots  always
    4 select b   token 0 + top-(k-1) squared V deviations vs the      only 0 < k < n
                 sender's V at S (now in the slots)
    5 recompute  the k tokens through every layer over the mixed K/V  k == n: all layers over
                 (blend.blend_layers)                                 all tokens (own prefill);
                                                                      k == 0: nothing (reuse)
    6 insert     the slots under the plan's derived namespace         -
Any failure frees the slots before raising (pool accounting unchanged; the runtime
falls back to a normal prefill), exactly as ``importer.import_prefix``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Callable, Optional

import torch

from sglang_droidspeak.plan.blend_plan import BlendPlan
from sglang_droidspeak.plan.layer_plan import LayerPlan
from sglang_droidspeak.sglang.blend import blend_layers, receiver_v, select_positions
from sglang_droidspeak.sglang.import_receiver import _Receiver
from sglang_droidspeak.sglang.import_streams import ImportStreams
from sglang_droidspeak.sglang.importer import Filled, ImportResult, ModelParts, import_into_slots
from sglang_droidspeak.sglang.recompute import prefix_inputs, recompute_group
from sglang_droidspeak.transfer.frames import FetchRequest


class _Blend:
    """Steps 2, 4 and 5 for one prefix (``ids``, ``positions``: [n]; ``slots``: [n])."""

    def __init__(self, parts: ModelParts, plan: BlendPlan, ids, positions, slots, streams: ImportStreams):
        self.parts, self.plan, self.streams = parts, plan, streams
        self.ids, self.positions, self.slots = ids, positions, slots
        self.num_tokens = plan.num_tokens(ids.shape[0])
        self.selecting = 0 < self.num_tokens < ids.shape[0]
        self.v_receiver: Optional[torch.Tensor] = None  # [n, kv_size]

    def select_first(self) -> None:
        """Step 2: needs nothing from the sender."""
        if self.selecting and self.v_receiver is None:
            with self.streams.timed_recompute():
                self.v_receiver = receiver_v(self.parts.layers, self.parts.embed(self.ids), self.positions,
                                             self.plan.select_layer)

    def recompute(self) -> None:
        """Steps 4 and 5, once every sender K/V row is in the slots."""
        self.select_first()
        parts, num_layers = self.parts, self.plan.num_layers
        with self.streams.timed_recompute():
            if self.num_tokens == self.ids.shape[0]:  # every token: the receiver's own prefill
                recompute_group(parts.layers, 0, num_layers, parts.embed(self.ids), self.positions, self.slots,
                                parts.kv_pool)
            elif self.selecting:
                v_sender = parts.kv_pool.get_value_buffer(self.plan.select_layer)[self.slots]  # [n, Hkv, D]
                chosen = select_positions(self.v_receiver, v_sender, self.num_tokens)  # [k]
                blend_layers(parts.layers, num_layers, parts.embed(self.ids[chosen]), chosen, self.slots,
                             parts.kv_pool)


def import_blend(parts: ModelParts, tree: Any, fetch: Callable, *, sender: str, receiver: str,
                 fingerprint: str, token_ids, plan: BlendPlan, namespace: str,
                 pipelined: bool = True) -> ImportResult:
    """Steps 1-6 of the module table; ``fetch(request, on_chunk)`` raises on failure.
    Allocation, insert and the failure path are ``importer.import_into_slots``."""
    num_layers = plan.num_layers

    def fill(slots, streams: ImportStreams) -> Filled:
        request = FetchRequest(uuid.uuid4().hex, sender, receiver, fingerprint, tuple(token_ids),
                               tuple(range(num_layers)), (), 0)
        ids, positions = prefix_inputs(token_ids, parts.device)
        state = _Receiver(parts, LayerPlan.full_reuse(num_layers), slots, (), (), streams)
        blend = _Blend(parts, plan, ids, positions, slots, streams)
        streams.start()
        if pipelined:
            blend.select_first()  # queued on the compute stream; overlaps the fetch
        sent = time.perf_counter()
        fetch(request, state)
        fetched = time.perf_counter()
        state.check_complete()
        streams.wait_all()
        blend.recompute()
        streams.synchronize()
        return Filled(state, sent, fetched, time.perf_counter())

    return import_into_slots(parts, tree, token_ids, namespace, pipelined, plan.num_recomputed_layers, fill)
