"""An HF Cache over a PrefixKV that appends in place, for extend and greedy decoding.

HF's DynamicLayer grows by ``torch.cat`` on every step, copying the whole prefix each
decoded token; on an 800-token context that dominated decode time on CPU. This layer
preallocates room for the tokens to come and writes them into the buffer; ``keys`` and
``values`` are views of the filled part, so the HF model reads them unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicLayer

from sglang_droidspeak.reference.kv import PrefixKV


class PreallocatedLayer(DynamicLayer):
    """One layer's K/V in a [1, num_kv_heads, capacity, head_dim] buffer (full attention)."""

    def __init__(self, k: Tensor, v: Tensor, capacity: int):
        super().__init__()
        heads, seq_len, head_dim = k.shape  # k, v: [num_kv_heads, seq_len, head_dim]
        capacity = max(capacity, seq_len)
        self.dtype, self.device = k.dtype, k.device
        self._k_buffer = k.new_empty(1, heads, capacity, head_dim)
        self._v_buffer = v.new_empty(1, heads, capacity, v.shape[-1])
        self._k_buffer[0, :, :seq_len] = k
        self._v_buffer[0, :, :seq_len] = v
        self.length = seq_len
        self.is_initialized = True
        self._set_views()

    @classmethod
    def from_buffers(cls, k_buffer: Tensor, v_buffer: Tensor, length: int) -> "PreallocatedLayer":
        """A layer over filled buffers [batch, num_kv_heads, capacity, head_dim] (the first
        ``length`` tokens hold K/V); a batch of several rows runs batched extends."""
        layer = cls.__new__(cls)
        DynamicLayer.__init__(layer)
        layer.dtype, layer.device = k_buffer.dtype, k_buffer.device
        layer._k_buffer, layer._v_buffer, layer.length = k_buffer, v_buffer, length
        layer.is_initialized = True
        layer._set_views()
        return layer

    def _set_views(self) -> None:
        self.keys = self._k_buffer[:, :, : self.length]  # [1, num_kv_heads, length, head_dim]
        self.values = self._v_buffer[:, :, : self.length]

    def _grow(self, needed: int) -> None:
        extra = max(needed, self._k_buffer.shape[2])  # at least double

        def grown(buffer: Tensor) -> Tensor:
            return torch.cat([buffer, buffer.new_empty(*buffer.shape[:2], extra, buffer.shape[3])], dim=2)

        self._k_buffer, self._v_buffer = grown(self._k_buffer), grown(self._v_buffer)

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        """Append [1, num_kv_heads, t, head_dim] new K/V; return the whole filled K/V."""
        end = self.length + key_states.shape[-2]
        if end > self._k_buffer.shape[2]:
            self._grow(end - self._k_buffer.shape[2])
        self._k_buffer[:, :, self.length : end] = key_states
        self._v_buffer[:, :, self.length : end] = value_states
        self.length = end
        self._set_views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length


def preallocated_cache(prefix: PrefixKV, num_new_tokens: int) -> Cache:
    """An HF Cache holding ``prefix`` (copied) with room for ``num_new_tokens`` more per layer."""
    capacity = prefix.seq_len + num_new_tokens
    return Cache(layers=[PreallocatedLayer(k, v, capacity) for k, v in zip(prefix.k, prefix.v)])


def cache_to_prefix(cache: Cache) -> PrefixKV:
    """The filled K/V of every layer (views of the buffers, batch row 0)."""
    return PrefixKV(tuple(layer.keys[0] for layer in cache.layers), tuple(layer.values[0] for layer in cache.layers))
