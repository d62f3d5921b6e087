"""KV and E caches of one sequence (batch size 1), as the reference engine holds them.

    PrefixKV      k[l], v[l]: [num_kv_heads, seq_len, head_dim] for every layer l; K is stored
                  after RoPE at positions 0..seq_len-1 (what HF caches and SGLang's pools hold).
    SenderCache   a sender's PrefixKV plus its E cache: e[l] = [seq_len, hidden_size], the
                  residual-stream hidden state entering layer l (e[0] = the embedding output).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import DynamicCache


class ReferenceEngineError(ValueError):
    """A call the reference engine refuses (shapes, plans, missing E), with the reason."""


def _num_bytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass(frozen=True)
class PrefixKV:
    """Per-layer K/V of a token prefix, positions 0..seq_len-1 (immutable; tensors are shared)."""

    k: tuple[Tensor, ...]
    v: tuple[Tensor, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", tuple(self.k))
        object.__setattr__(self, "v", tuple(self.v))
        if not self.k or len(self.k) != len(self.v):
            raise ReferenceEngineError(f"need one K and one V per layer, got {len(self.k)} K, {len(self.v)} V")
        shape = self.k[0].shape
        for layer, (k, v) in enumerate(zip(self.k, self.v)):
            if k.dim() != 3 or k.shape != shape or v.shape[:2] != shape[:2]:
                raise ReferenceEngineError(
                    f"layer {layer}: K {tuple(k.shape)} / V {tuple(v.shape)} do not match "
                    f"[num_kv_heads, seq_len, head_dim] = {tuple(shape)} of layer 0"
                )

    @property
    def num_layers(self) -> int:
        return len(self.k)

    @property
    def seq_len(self) -> int:
        return self.k[0].shape[1]

    @property
    def num_kv_heads(self) -> int:
        return self.k[0].shape[0]

    @property
    def head_dim(self) -> int:
        return self.k[0].shape[2]

    @property
    def dtype(self) -> torch.dtype:
        return self.k[0].dtype

    @property
    def device(self) -> torch.device:
        return self.k[0].device

    def num_bytes(self) -> int:
        return sum(_num_bytes(k) + _num_bytes(v) for k, v in zip(self.k, self.v))

    def layer_num_bytes(self, layer: int) -> int:
        return _num_bytes(self.k[layer]) + _num_bytes(self.v[layer])

    def slice(self, seq_len: int) -> PrefixKV:
        """The first ``seq_len`` tokens (views, no copy)."""
        if not 0 <= seq_len <= self.seq_len:
            raise ReferenceEngineError(f"cannot slice {seq_len} tokens from a {self.seq_len}-token prefix")
        return PrefixKV(tuple(k[:, :seq_len] for k in self.k), tuple(v[:, :seq_len] for v in self.v))

    def with_layers(self, replacements: Mapping[int, tuple[Tensor, Tensor]]) -> PrefixKV:
        """A copy whose layers in ``replacements`` take the given (k, v); the rest are shared."""
        k, v = list(self.k), list(self.v)
        for layer, (k_layer, v_layer) in replacements.items():
            k[layer], v[layer] = k_layer, v_layer
        return PrefixKV(tuple(k), tuple(v))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PrefixKV:
        return PrefixKV(tuple(k.to(device, dtype) for k in self.k), tuple(v.to(device, dtype) for v in self.v))

    def to_dynamic_cache(self) -> DynamicCache:
        """An HF DynamicCache (one plain DynamicLayer per layer, batch 1) holding these K/V."""
        return DynamicCache(ddp_cache_data=[(k[None], v[None]) for k, v in zip(self.k, self.v)])

    @classmethod
    def from_dynamic_cache(cls, cache: DynamicCache) -> PrefixKV:
        """Batch row 0 of every layer of an HF DynamicCache (full-attention layers only)."""
        if any(getattr(layer, "is_sliding", False) for layer in cache.layers):
            raise ReferenceEngineError("a sliding-window cache layer drops old tokens; build the cache without config")
        return cls(tuple(layer.keys[0] for layer in cache.layers), tuple(layer.values[0] for layer in cache.layers))

    @classmethod
    def concat(cls, parts: Iterable[PrefixKV]) -> PrefixKV:
        """Token-wise concatenation (positions continue from one part to the next)."""
        parts = list(parts)
        return cls(
            tuple(torch.cat(ks, dim=1) for ks in zip(*(p.k for p in parts))),
            tuple(torch.cat(vs, dim=1) for vs in zip(*(p.v for p in parts))),
        )


@dataclass(frozen=True)
class SenderCache:
    """What a sender exports for a prefix: KV of every layer and E at some layers.

    ``e[l]``: [seq_len, hidden_size], the hidden state entering layer l (``e[0]`` is the
    embedding output). A receiver recomputing a group [s, e) with s > 0 needs ``e[s]``.
    """

    kv: PrefixKV
    e: dict[int, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "e", dict(self.e))
        for layer, hidden in self.e.items():
            if not 0 <= layer < self.kv.num_layers:
                raise ReferenceEngineError(f"E_{layer} is outside layers [0, {self.kv.num_layers})")
            if hidden.dim() != 2 or hidden.shape[0] != self.kv.seq_len:
                raise ReferenceEngineError(
                    f"E_{layer} has shape {tuple(hidden.shape)}, expected [{self.kv.seq_len}, hidden_size]"
                )

    @property
    def seq_len(self) -> int:
        return self.kv.seq_len

    @property
    def e_layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.e))

    def e_num_bytes(self) -> int:
        return sum(_num_bytes(h) for h in self.e.values())

    def num_bytes(self) -> int:
        return self.kv.num_bytes() + self.e_num_bytes()

    def slice(self, seq_len: int) -> SenderCache:
        """The first ``seq_len`` tokens of KV and E (views, no copy)."""
        return SenderCache(self.kv.slice(seq_len), {l: h[:seq_len] for l, h in self.e.items()})

    def keep_e(self, layers: Iterable[int]) -> SenderCache:
        """Only the E layers listed (what a transfer for one plan ships); missing ones raise."""
        layers = tuple(layers)
        missing = [l for l in layers if l not in self.e]
        if missing:
            raise ReferenceEngineError(f"sender cache has no E for layers {missing} (has {list(self.e_layers)})")
        return SenderCache(self.kv, {l: self.e[l] for l in layers})
