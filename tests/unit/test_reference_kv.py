"""PrefixKV, SenderCache and the in-place HF cache layer."""

from __future__ import annotations

import pytest
import torch

from sglang_droidspeak.reference import PrefixKV, ReferenceEngineError, SenderCache
from sglang_droidspeak.reference.cache import cache_to_prefix, preallocated_cache


def make_kv(num_layers: int = 3, seq_len: int = 5, heads: int = 2, head_dim: int = 4, seed: int = 0) -> PrefixKV:
    g = torch.Generator().manual_seed(seed)
    k = [torch.randn(heads, seq_len, head_dim, generator=g) for _ in range(num_layers)]
    v = [torch.randn(heads, seq_len, head_dim, generator=g) for _ in range(num_layers)]
    return PrefixKV(k, v)


def test_prefix_kv_shape_properties_and_bytes():
    kv = make_kv()
    assert isinstance(kv.k, tuple) and (kv.num_layers, kv.seq_len, kv.num_kv_heads, kv.head_dim) == (3, 5, 2, 4)
    assert kv.num_bytes() == 3 * 2 * (2 * 5 * 4) * 4 and kv.layer_num_bytes(1) == 2 * 40 * 4


def test_prefix_kv_rejects_inconsistent_layers():
    kv = make_kv()
    with pytest.raises(ReferenceEngineError, match="layer 1"):
        PrefixKV((kv.k[0], kv.k[1][:, :4]), (kv.v[0], kv.v[1]))
    with pytest.raises(ReferenceEngineError, match="one K and one V"):
        PrefixKV(kv.k, kv.v[:2])


def test_slice_with_layers_and_concat():
    kv = make_kv()
    head, tail = kv.slice(2), PrefixKV([k[:, 2:] for k in kv.k], [v[:, 2:] for v in kv.v])
    assert head.seq_len == 2 and torch.equal(head.k[2], kv.k[2][:, :2])
    joined = PrefixKV.concat([head, tail])
    assert all(torch.equal(a, b) for a, b in zip(joined.v, kv.v))
    other = make_kv(seed=1)
    mixed = kv.with_layers({1: (other.k[1], other.v[1])})
    assert mixed.k[1] is other.k[1] and mixed.k[0] is kv.k[0] and kv.k[1] is not other.k[1]
    with pytest.raises(ReferenceEngineError, match="cannot slice 6"):
        kv.slice(6)


def test_dynamic_cache_round_trip():
    kv = make_kv()
    back = PrefixKV.from_dynamic_cache(kv.to_dynamic_cache())
    assert all(torch.equal(a, b) for a, b in zip(back.k + back.v, kv.k + kv.v))


def test_preallocated_cache_appends_in_place_and_grows():
    kv = make_kv(seq_len=3)
    cache = preallocated_cache(kv, num_new_tokens=1)
    new_k, new_v = torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4)
    keys, values = cache.update(new_k, new_v, layer_idx=0)
    assert keys.shape == (1, 2, 4, 4) and torch.equal(keys[0, :, 3:], new_k[0])
    assert torch.equal(values[0, :, :3], kv.v[0])
    more_k = torch.randn(1, 2, 5, 4)  # past the preallocated room: the buffer grows
    keys, _ = cache.update(more_k, more_k, layer_idx=0)
    assert keys.shape[2] == 9 and torch.equal(keys[0, :, 4:], more_k[0]) and torch.equal(keys[0, :, :3], kv.k[0])
    assert cache.get_seq_length(0) == 9 and cache.get_seq_length(1) == 3
    assert cache_to_prefix(preallocated_cache(kv, 0)).k[2].tolist() == kv.k[2].tolist()


def test_sender_cache_e_checks_slice_and_keep_e():
    kv = make_kv()
    e = {0: torch.randn(5, 8), 2: torch.randn(5, 8)}
    sender = SenderCache(kv, e)
    assert sender.e_layers == (0, 2) and sender.e_num_bytes() == 2 * 5 * 8 * 4
    assert sender.num_bytes() == kv.num_bytes() + sender.e_num_bytes()
    short = sender.slice(3)
    assert short.seq_len == 3 and torch.equal(short.e[2], e[2][:3])
    assert sender.keep_e([2]).e_layers == (2,)
    with pytest.raises(ReferenceEngineError, match=r"no E for layers \[1\]"):
        sender.keep_e([1])
    with pytest.raises(ReferenceEngineError, match="E_1 has shape"):
        SenderCache(kv, {1: torch.randn(4, 8)})
    with pytest.raises(ReferenceEngineError, match="outside"):
        SenderCache(kv, {3: torch.randn(5, 8)})
