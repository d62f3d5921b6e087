"""The CacheBlend-style baseline's own layer loop (blend.recompute_group) against the
reference engine: same weights, same E -> same K/V.

Uses SGLang's real MHATokenToKVPool on CPU for the writes and SGLang's own layer modules
(the HF tiny model's weights loaded into SGLang's model class, tests/unit/sglang_cpu_model.py).
"""

from __future__ import annotations

import pytest
import torch

from cpu_sglang import require_cpu_sglang

require_cpu_sglang("sglang.srt.mem_cache.memory_pool")

from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool  # noqa: E402

from sglang_droidspeak.reference import ReferenceModel  # noqa: E402
from sglang_droidspeak.reference.tiny import tiny_model  # noqa: E402
from sglang_droidspeak.sglang import blend as recompute  # noqa: E402
from sglang_droidspeak.sglang.blend import causal_attention, recompute_group  # noqa: E402
from sglang_cpu_model import sglang_model_from_hf  # noqa: E402

NUM_TOKENS = 12


def kv_pool(num_layers=4, head_num=2, head_dim=16):
    return MHATokenToKVPool(size=32, page_size=1, dtype=torch.float32, head_num=head_num,
                            head_dim=head_dim, layer_num=num_layers, device="cpu", enable_memory_saver=False)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("start,end", [(0, 4), (2, 4), (1, 2)])
def test_recomputed_kv_equals_reference_prefill(arch, start, end):
    model = tiny_model(arch, seed=3)
    ref = ReferenceModel(model)
    ids = torch.arange(5, 5 + NUM_TOKENS)
    sender = ref.prefill(ids, e_layers=[start])
    pool = kv_pool()
    slots = torch.arange(3, 3 + NUM_TOKENS)
    positions = torch.arange(NUM_TOKENS)
    recompute_group(sglang_model_from_hf(model).model.layers, start, end, sender.e[start], positions, slots, pool)
    for layer in range(4):
        k, v = pool.get_key_buffer(layer)[slots], pool.get_value_buffer(layer)[slots]  # [T, Hkv, D]
        if start <= layer < end:
            torch.testing.assert_close(k, sender.kv.k[layer].transpose(0, 1), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(v, sender.kv.v[layer].transpose(0, 1), atol=1e-5, rtol=1e-5)
        else:  # layers outside the group are never written
            assert torch.count_nonzero(k) == 0 and torch.count_nonzero(v) == 0


def test_e0_is_the_embedding_output():
    model = tiny_model("llama", seed=1)
    ids = torch.arange(NUM_TOKENS)
    sender = ReferenceModel(model).prefill(ids, e_layers=[0])
    torch.testing.assert_close(sender.e[0], model.model.embed_tokens(ids))


def test_blocked_attention_matches_one_block(monkeypatch):
    torch.manual_seed(0)
    q, k, v = torch.randn(11, 4 * 8), torch.randn(11, 2 * 8), torch.randn(11, 2 * 8)
    whole = causal_attention(q, k, v, 4, 2, 8, 0.3)
    monkeypatch.setattr(recompute, "QUERY_BLOCK", 4)
    blocked = causal_attention(q, k, v, 4, 2, 8, 0.3)
    torch.testing.assert_close(blocked, whole, atol=1e-6, rtol=1e-6)
    # the first token attends only to itself: its output is its own V (per kv group)
    torch.testing.assert_close(whole[0].view(4, 8)[0], v[0].view(2, 8)[0])
