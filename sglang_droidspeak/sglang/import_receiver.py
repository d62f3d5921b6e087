"""The receiver's sink for arriving KV: writes each chunk into the prefix's slots or E buffers.

    call                          from                    checks / effect
    _Receiver(chunk)              ZMQ fetch (per chunk)   rows in token order, within the prefix;
                                                          E shape, K/V shape and dtype vs the pool;
                                                          layer reused by the plan (K/V) or an
                                                          E layer; writes on the copy stream
    put(what, layer, t)           a plane with whole      all rows of E [n, hidden] or K/V at once
                                  tensors (nccl)
    landed(what, layer)           a plane that writes     layer reused (K/V); all rows complete
                                  the slots / E itself    (the plane wrote them in place)
                                  (cuda_ipc, nixl)
    check_complete()              import_queue            every expected (what, layer) has n rows
These are the ``KvSink`` contract of the data planes (transfer/planes/base.py). Every
violation raises ``ImportFailed("protocol", ...)``; the job fails and frees the slots.
A key's last rows record its event (``streams.mark``); a complete E_s calls ``on_e_ready(s)``
(the job's ``e_landed``, import_job.py). Imports no SGLang.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

import torch

from sglang_droidspeak.plan.layer_plan import LayerPlan
from sglang_droidspeak.sglang.import_streams import ImportStreams
from sglang_droidspeak.transfer.errors import ImportFailed  # noqa: F401 - re-exported
from sglang_droidspeak.transfer.frames import LayerChunk

if TYPE_CHECKING:
    from sglang_droidspeak.sglang.importer import ModelParts


class _Receiver:
    """Writes arriving chunks into the prefix's slots and E buffers, checking every bound.

    Writes go through ``streams`` (the copy stream when pipelined); when a key's last
    rows are written its event is recorded, and a complete E_s calls ``on_e_ready(s)``.
    """

    def __init__(self, parts: ModelParts, plan: LayerPlan, slots, e_layers,
                 streams: Optional[ImportStreams] = None, on_e_ready: Callable[[int], None] = lambda layer: None):
        self.parts, self.slots, self.num_tokens = parts, slots, slots.shape[0]
        self.streams = streams or ImportStreams(parts.device, pipelined=False)
        self.on_e_ready = on_e_ready
        self.reused = set(plan.reused_layers())
        self.e = {l: torch.empty(self.num_tokens, parts.hidden_size, dtype=parts.dtype, device=parts.device)
                  for l in e_layers}  # layer -> [n, hidden]
        self.rows: dict[tuple[str, int], int] = {}
        self.num_bytes = 0

    def __call__(self, chunk: LayerChunk) -> None:
        rows, key = chunk.shape[0], (chunk.what, chunk.layer)
        if chunk.token_start != self.rows.get(key, 0) or chunk.token_start + rows > self.num_tokens:
            raise ImportFailed("protocol", f"{chunk.what} chunk rows [{chunk.token_start}, +{rows}) of layer "
                               f"{chunk.layer}: out of order or beyond {self.num_tokens}")
        tensor = self.streams.to_device(chunk)
        with self.streams.copying():
            self._write(chunk, tensor)
        self.rows[key] = chunk.token_start + rows
        self.num_bytes += len(chunk.data)
        if self.rows[key] == self.num_tokens:
            self.streams.mark(key)
            if chunk.what == "e":
                self.on_e_ready(chunk.layer)

    def _write(self, chunk: LayerChunk, tensor: torch.Tensor) -> None:
        end = chunk.token_start + chunk.shape[0]
        if chunk.what == "e":
            target = self.e.get(chunk.layer)
            if target is None or tuple(tensor.shape[1:]) != tuple(target.shape[1:]):
                raise ImportFailed("protocol", f"unexpected E chunk for layer {chunk.layer} {chunk.shape}")
            target[chunk.token_start:end] = tensor.to(target.dtype)
        else:
            if chunk.layer not in self.reused:
                raise ImportFailed("protocol", f"unexpected {chunk.what} chunk for layer {chunk.layer}")
            pool = self.parts.kv_pool
            buffer = (pool.get_key_buffer if chunk.what == "k" else pool.get_value_buffer)(chunk.layer)
            if tuple(tensor.shape[1:]) != tuple(buffer.shape[1:]) or tensor.dtype != buffer.dtype:
                raise ImportFailed("protocol", f"{chunk.what} chunk {chunk.shape} {chunk.dtype} does not "
                                   f"fit the pool's {tuple(buffer.shape[1:])} {buffer.dtype}")
            buffer[self.slots[chunk.token_start:end]] = tensor  # [rows, heads, head_dim]

    def put(self, what: str, layer: int, tensor: torch.Tensor) -> None:
        """All rows of one tensor at once: E [n, hidden] or K/V [n, heads, dim].

        Written on the copy stream like a chunk (pipelined: never queued behind the
        recompute on the compute stream), then ``landed``."""
        self._expect(what, layer)
        with self.streams.copying():
            if what == "e":
                self.e[layer][:] = tensor.to(self.e[layer].dtype)
            else:
                pool = self.parts.kv_pool
                (pool.get_key_buffer if what == "k" else pool.get_value_buffer)(layer)[self.slots] = tensor
        self.landed(what, layer)

    def landed(self, what: str, layer: int) -> None:
        """All rows of (what, layer) are in place (in our slots, or ``e[layer]``): record its
        event; a complete E_s launches group s (``on_e_ready``), which waits for it only."""
        self._expect(what, layer)
        self.rows[(what, layer)] = self.num_tokens
        if what == "e":
            self.num_bytes += self.e[layer].numel() * self.e[layer].element_size()
        else:
            buffer = self.parts.kv_pool.get_key_buffer(layer)
            self.num_bytes += self.num_tokens * buffer[0].numel() * buffer.element_size()  # K or V rows
        self.streams.mark((what, layer))
        if what == "e":
            self.on_e_ready(layer)

    def _expect(self, what: str, layer: int) -> None:
        if (what == "e" and layer not in self.e) or (what in ("k", "v") and layer not in self.reused) \
                or what not in ("k", "v", "e"):
            raise ImportFailed("protocol", f"{what} of layer {layer}, which the plan does not fetch")

    def check_complete(self) -> None:
        expected = [("e", l) for l in self.e] + [(w, l) for l in self.reused for w in ("k", "v")]
        short = [key for key in expected if self.rows.get(key, 0) != self.num_tokens]
        if short:
            raise ImportFailed("protocol", f"incomplete transfer for {short[:4]}")
