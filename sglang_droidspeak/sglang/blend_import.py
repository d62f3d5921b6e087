"""A REMOTE hit under a BlendPlan (the CacheBlend-style baseline): full reuse, then
selective token recompute (blend.py), as two steps of an import job (import_job.py).

    step         what happens                                         k = plan.num_tokens(n)
    fetch        K/V of every layer (no E) -> written into the slots  always
    select a     the receiver's V at select_layer over all n tokens   only 0 < k < n; launched
                 (its layers 0..S-1, no KV writes)                    at once when pipelined
    select b     token 0 + top-(k-1) squared V deviations vs the      only 0 < k < n
                 sender's V at S (now in the slots)
    recompute    the k tokens through every layer over the mixed K/V  k == n: all layers over
                 (blend.blend_layers)                                 all tokens (own prefill);
                                                                      k == 0: nothing (reuse)
Allocation, insert and fallbacks are the job's, exactly as for DroidSpeak plans.
"""

from __future__ import annotations

from typing import Optional

import torch

from sglang_droidspeak.plan.blend_plan import BlendPlan
from sglang_droidspeak.sglang.blend import blend_layers, receiver_v, recompute_group, select_positions
from sglang_droidspeak.sglang.import_streams import ImportStreams
from sglang_droidspeak.sglang.importer import ModelParts


class Blend:
    """Selection and recompute for one prefix (``ids``, ``positions``: [n]; ``slots``: [n])."""

    def __init__(self, parts: ModelParts, plan: BlendPlan, ids, positions, slots, streams: ImportStreams):
        self.parts, self.plan, self.streams = parts, plan, streams
        self.ids, self.positions, self.slots = ids, positions, slots
        self.num_tokens = plan.num_tokens(ids.shape[0])
        self.selecting = 0 < self.num_tokens < ids.shape[0]
        self.v_receiver: Optional[torch.Tensor] = None  # [n, kv_size]

    def select_first(self) -> None:
        """Select a: needs nothing from the sender."""
        if self.selecting and self.v_receiver is None:
            self.v_receiver = receiver_v(self.parts.layers, self.parts.embed(self.ids), self.positions,
                                         self.plan.select_layer)

    def recompute(self) -> None:
        """Select b and recompute, once every sender K/V row is in the slots."""
        self.select_first()
        parts, num_layers = self.parts, self.plan.num_layers
        if self.num_tokens == self.ids.shape[0]:  # every token: the receiver's own prefill
            recompute_group(parts.layers, 0, num_layers, parts.embed(self.ids), self.positions, self.slots,
                            parts.kv_pool)
        elif self.selecting:
            v_sender = parts.kv_pool.get_value_buffer(self.plan.select_layer)[self.slots]  # [n, Hkv, D]
            chosen = select_positions(self.v_receiver, v_sender, self.num_tokens)  # [k]
            blend_layers(parts.layers, num_layers, parts.embed(self.ids[chosen]), chosen, self.slots,
                         parts.kv_pool)
