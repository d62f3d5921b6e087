"""manual.py (a decoder layer from raw weights) against HF, and E capture / recompute against it."""

from __future__ import annotations

import pytest
import torch

from sglang_droidspeak.plan.layer_plan import LayerPlan
from sglang_droidspeak.reference import ReferenceModel
from sglang_droidspeak.reference.manual import attend, layer_forward, manual_layers, manual_logits
from sglang_droidspeak.reference.tiny import ARCHITECTURES, perturbed_copy, tiny_model

torch.set_num_threads(1)  # tiny models: threads only add contention on a shared CPU

NUM_LAYERS = 5
CONTEXT_LEN = 20
ATOL = 1e-5


def build(arch: str) -> ReferenceModel:
    window = 6 if arch == "mistral" else None
    return ReferenceModel(tiny_model(arch, seed=0, num_layers=NUM_LAYERS, sliding_window=window))


def context_ids() -> torch.Tensor:
    return torch.randint(0, 128, (CONTEXT_LEN,), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_manual_loop_matches_hf_forward_logits_and_hidden_states(arch):
    ref = build(arch)
    ids = context_ids()
    loop = manual_layers(ref.parts, ref.embed(ids), 0, NUM_LAYERS)
    with torch.no_grad():
        out = ref.model(ids[None], output_hidden_states=True)
    torch.testing.assert_close(manual_logits(ref.parts, loop.hidden), out.logits[0], atol=ATOL, rtol=0)
    for layer in range(NUM_LAYERS):  # HF's hidden_states[l] is the state entering layer l
        torch.testing.assert_close(loop.e[layer], out.hidden_states[layer][0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_e_capture_matches_embeddings_and_manual_loop(arch):
    ref = build(arch)
    ids = context_ids()
    sender = ref.prefill(ids, e_layers=range(NUM_LAYERS))
    assert torch.equal(sender.e[0], ref.model.get_input_embeddings()(ids))
    loop = manual_layers(ref.parts, sender.e[0], 0, NUM_LAYERS)
    for layer in range(NUM_LAYERS):
        torch.testing.assert_close(sender.e[layer], loop.e[layer], atol=ATOL, rtol=0)
        torch.testing.assert_close(sender.kv.k[layer], loop.k[layer], atol=ATOL, rtol=0)
        torch.testing.assert_close(sender.kv.v[layer], loop.v[layer], atol=ATOL, rtol=0)
    assert (sender.e[2] - sender.e[1]).abs().max() > 1e-2  # layers do change the state


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("start,end", [(0, 2), (1, 3), (2, 5), (4, 5)])
def test_recomputed_layers_match_manual_loop_from_sender_e(arch, start, end):
    receiver = build(arch)
    sender = ReferenceModel(perturbed_copy(receiver.model, relative_noise=0.3))
    ids = context_ids()
    sender_cache = sender.prefill(ids, e_layers=[start])
    kv = receiver.build_receiver_cache(sender_cache, LayerPlan.contiguous(NUM_LAYERS, start, end), ids)
    origin = receiver.embed(ids) if start == 0 else sender_cache.e[start]
    loop = manual_layers(receiver.parts, origin, start, end)
    for layer in range(NUM_LAYERS):
        if start <= layer < end:
            torch.testing.assert_close(kv.k[layer], loop.k[layer], atol=ATOL, rtol=0)
            torch.testing.assert_close(kv.v[layer], loop.v[layer], atol=ATOL, rtol=0)
        else:
            assert torch.equal(kv.k[layer], sender_cache.kv.k[layer])
            assert torch.equal(kv.v[layer], sender_cache.kv.v[layer])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_token_subset_over_full_context_matches_full_layer(arch):
    """Recomputing a scattered subset against the true K/V gives the full layer's rows."""
    ref = build(arch)
    ids = context_ids()
    full = manual_layers(ref.parts, ref.embed(ids), 0, 3)
    positions = torch.tensor([0, 4, 5, 11, 19])
    layer = 2
    out = layer_forward(ref.parts, layer, full.e[layer][positions], positions, full.k[layer], full.v[layer])
    torch.testing.assert_close(out.hidden, full.hidden[positions], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.k_cache, full.k[layer], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.k, full.k[layer][:, positions], atol=ATOL, rtol=0)


def test_subset_attention_reads_context_rows_it_did_not_compute():
    ref = build("llama")
    ids = context_ids()
    full = manual_layers(ref.parts, ref.embed(ids), 0, 1)
    positions = torch.tensor([7])
    zeros = torch.zeros_like(full.k[0])
    with_context = layer_forward(ref.parts, 0, full.e[0][positions], positions, full.k[0], full.v[0])
    without = layer_forward(ref.parts, 0, full.e[0][positions], positions, zeros, zeros)
    assert (with_context.hidden - without.hidden).abs().max() > 1e-3
    assert torch.equal(without.k_cache[:, 8:], zeros[:, 8:])  # rows not recomputed stay as given


def test_attend_masks_future_and_outside_window():
    q = torch.randn(2, 1, 4)  # [num_heads, t_q, head_dim]
    k = torch.randn(1, 5, 4)  # [num_kv_heads, t_k, head_dim]; GQA group of 2
    v = torch.arange(5.0).view(1, 5, 1).expand(1, 5, 4)  # value of key j = j
    q_pos, k_pos = torch.tensor([2]), torch.arange(5)
    out = attend(q, q_pos, k, v, k_pos, scaling=0.0)  # uniform over visible keys 0, 1, 2
    torch.testing.assert_close(out, torch.full((1, 8), 1.0))
    out = attend(q, q_pos, k, v, k_pos, scaling=0.0, sliding_window=2)  # keys 1, 2
    torch.testing.assert_close(out, torch.full((1, 8), 1.5))
