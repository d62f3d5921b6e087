"""A REMOTE hit under a BlendPlan (the CacheBlend-style baseline): full reuse, then
selective token recompute through the engine (blend.py), as steps of an import job
(import_job.py, launched by import_queue.py on the lane's blend engine):

    step         what happens                                         k = plan.num_tokens(n)
    fetch        K/V of every layer (no E) -> written into the slots  always
    select a     the receiver's layers [0, S) over all n tokens at    only 0 < k < n; launched
                 scratch slots, then layer S's V projection of E_S    at once when pipelined
    select b     token 0 + top-(k-1) squared V deviations vs the      only 0 < k < n; after
                 sender's V at S (now in the slots); the positions    the fetch
                 are copied to the host (the batch needs them there)
    recompute    the k tokens through every layer, one segment per    once the positions are
                 run of consecutive positions, over the mixed K/V     on the host; k == n: all
                                                                      tokens (own prefill);
                                                                      k == 0: nothing (reuse)

Slots held: the import's n (the job's) and, while 0 < k < n, n scratch slots for select a
(``release``, called when the job is finished or abandoned, once its launches are done).
Allocation, insert and fallbacks are the job's, exactly as for DroidSpeak plans.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from sglang_droidspeak.plan.blend_plan import BlendPlan
from sglang_droidspeak.sglang.blend import hkvd_select, receiver_v, recompute_tokens
from sglang_droidspeak.sglang.import_job import PoolRow, record_event
from sglang_droidspeak.sglang.importer import ModelParts, allocate


class Blend:
    """Selection and recompute for one prefix: ``ids`` [n] at ``slots`` [n], the job's ``row``.

    Allocating the scratch slots may raise ImportFailed("no_memory") (nothing then held).
    """

    def __init__(self, parts: ModelParts, plan: BlendPlan, ids, slots, row: PoolRow, tree: Any):
        self.parts, self.plan, self.ids, self.slots, self.row = parts, plan, ids, slots, row
        n = int(ids.shape[0])
        self.num_tokens = plan.num_tokens(n)
        self.selecting = 0 < self.num_tokens < n
        self.scratch = allocate(parts, tree, n) if self.selecting else None  # [n] slots for select a
        self.v_receiver: Optional[torch.Tensor] = None  # [n, Hkv, D]
        self.positions: Optional[torch.Tensor] = None  # [k] on the host once ``chosen_ready``
        self._chosen_event: Any = None

    def launch(self, step: str, engine: Any, streams: Any) -> None:
        """One of import_job.BLEND_STEPS on the current stream; 'choose' first waits for
        every copy of the fetch (``streams``: the job's ImportStreams)."""
        if step == "select":
            self.select_first(engine)
        elif step == "choose":
            streams.wait_all()
            self.choose(engine)
        else:
            self.recompute(engine)

    def select_first(self, engine: Any) -> None:
        """Select a: needs nothing from the sender."""
        if self.selecting and self.v_receiver is None:
            self.v_receiver = receiver_v(engine, self.parts.kv_pool, self.ids, self.scratch, self.row.req_pool_idx,
                                         self.plan.select_layer)

    def choose(self, engine: Any) -> None:
        """Select b, once every sender K/V row is in the slots: the positions, on their way
        to the host (``chosen_ready``)."""
        n = int(self.ids.shape[0])
        if not self.selecting:
            self.positions = torch.arange(n if self.num_tokens == n else 0)
            return
        self.select_first(engine)
        v_sender = self.parts.kv_pool.get_value_buffer(self.plan.select_layer)[self.slots]  # [n, Hkv, D]
        chosen = hkvd_select(self.v_receiver, v_sender, self.num_tokens)  # [k] on the device
        self.positions = _to_host(chosen)
        if chosen.is_cuda:
            self._chosen_event = record_event(torch.cuda.current_stream())

    def chosen_ready(self) -> bool:
        return self.positions is not None and (self._chosen_event is None or self._chosen_event.query())

    def recompute(self, engine: Any) -> None:
        """The chosen tokens through every layer (nothing when k == 0)."""
        positions = self.positions.tolist()
        if positions:
            recompute_tokens(engine, self.ids, self.slots, self.row.req_pool_idx, positions, self.plan.num_layers)

    def release(self) -> None:
        """Free the scratch slots (the caller knows select a has run)."""
        if self.scratch is not None:
            self.parts.allocator.free(self.scratch)
            self.scratch = None


def _to_host(positions: torch.Tensor) -> torch.Tensor:
    """A host copy of ``positions`` [k]: pinned and asynchronous from a GPU."""
    if not positions.is_cuda:
        return positions.clone()
    host = torch.empty(positions.shape, dtype=positions.dtype, pin_memory=True)
    host.copy_(positions, non_blocking=True)
    return host
