"""When each recompute group of an import runs, and what the import's time was spent on.

Pipelined (setting ``pipelined: true``, the default), in the order things happen:

    event on the CPU            CPU (scheduler thread)          copy stream        compute stream
    slots allocated             launch groups with s = 0        wait(compute)      recompute [0, e)
    E_s chunk arrives           pin, launch its copy            H2D, write E rows  (busy or idle)
    last E_s chunk written      mark(e, s); launch group [s,e)  event (e, s)       wait (e, s);
                                                                                   recompute [s, e)
    K/V chunk of reused l       pin, launch its copy            H2D, scatter into  -
                                                                the prefix's slots
    last chunk of K or V of l   mark(k|v, l)                    event (k|v, l)     -
    FetchDone                   check every key complete        -                  wait all events
    GPU idle (synchronize)      insert into the tree; the       -                  the request's own
                                request's extend runs later                        extend (suffix)

Not pipelined ("load everything, then compute"): every chunk is copied and written on
the compute stream as it arrives; after FetchDone all groups run in plan order.

A group reads only E_s and the K/V it writes itself (each recompute layer attends over
the prefix's own fresh K/V, ``recompute.causal_attention``), so no group waits on a
reused layer: the per-layer K/V events fence only the end of the import.

SGLang's layer-transfer counters (``LayerDoneCounter`` in managers/cache_controller.py,
waited on by ``MHATokenToKVPool.get_key_buffer`` through ``layer_transfer_counter
.wait_until(layer)``) do not fit this import, for three reasons:
1. The counter is HiCache's: one instance, registered on the KV pool by the cache
   controller, its producer advanced by ``start_loading`` and its consumer set per batch
   from ``batch.hicache_consumer_index``, which the scheduler fills only with
   ``--enable-hierarchical-cache``. Without HiCache the consumer stays -1 and
   ``wait_until`` returns at once; registering a counter of our own on the pool would
   gate every batch's attention (other requests' too) on our events, and with HiCache on
   it would replace the controller's.
2. The import runs inside ``match_prefix``, while the request still waits in the queue;
   it must end in a success (insert) or a fallback (slots freed, normal prefill) before
   ``match_prefix`` returns, and the fallback needs every chunk checked. So the request's
   forward can never start while our K/V is still arriving over the network: only the
   last H2D copies could overlap it, and those take microseconds per chunk.
3. SGLang's forward runs on the overlap scheduler's forward stream, not the scheduler
   thread's stream that the import uses; the runtime synchronizes the device after the
   import (``_order_after_forward``), which a per-layer wait inside the forward would
   have to replace.
What pipelining buys here is the overlap of the network receive (CPU) with the
recompute (GPU) and the H2D copies (copy engine), which is where the time goes.
Imports no SGLang.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from sglang_droidspeak.plan.layer_plan import LayerGroup, LayerPlan


class ImportTimings(NamedTuple):
    """Milliseconds of one import (pipelined: recompute overlaps fetch and drain)."""

    fetch_ms: float  # request sent -> FetchDone (transfer; not pipelined: + host->device writes)
    recompute_ms: float  # the recompute groups on the GPU (CUDA events; CPU: wall time)
    drain_ms: float  # FetchDone -> GPU idle (not pipelined: all of the recompute)
    total_ms: float  # allocate -> inserted
    pipelined: bool

    def log_text(self) -> str:
        mode = "pipelined" if self.pipelined else "serial"
        return (f"{self.total_ms:.1f} ms: fetch {self.fetch_ms:.1f}, recompute {self.recompute_ms:.1f}, "
                f"drain {self.drain_ms:.1f}, {mode}")


class GroupLauncher:
    """Runs each group of ``plan`` exactly once, as soon as its input is on the device.

    ``run_group(group)`` launches one group's recompute. Pipelined: groups with start 0 at
    ``start()``, a group with start s when ``e_ready(s)``; ``finish()`` runs what is left
    (all groups, in plan order, when not pipelined). ``launched`` lists group starts in
    launch order.
    """

    def __init__(self, plan: LayerPlan, run_group: Callable[[LayerGroup], None], pipelined: bool):
        self.by_start = {group.start: group for group in plan.groups}
        self.run_group, self.pipelined = run_group, pipelined
        self.launched: list[int] = []

    def start(self) -> None:
        if self.pipelined and 0 in self.by_start:
            self._launch(0)

    def e_ready(self, layer: int) -> None:
        if self.pipelined and layer in self.by_start and layer not in self.launched:
            self._launch(layer)

    def finish(self) -> None:
        for start in sorted(self.by_start):
            if start not in self.launched:
                self._launch(start)

    def _launch(self, start: int) -> None:
        self.launched.append(start)
        self.run_group(self.by_start[start])
