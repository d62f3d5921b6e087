"""The reference engine on a CUDA device (fp32 and bf16); skipped where no GPU is present."""

from __future__ import annotations

import pytest
import torch

from sglang_droidspeak.plan.layer_plan import LayerPlan
from sglang_droidspeak.reference import ReferenceModel, cacheblend_receiver_cache
from sglang_droidspeak.reference.manual import manual_layers
from sglang_droidspeak.reference.tiny import ARCHITECTURES, perturbed_copy, tiny_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

NUM_LAYERS = 4
CONTEXT_LEN = 40
SUFFIX_LEN = 5


def on_cuda(arch: str, dtype: torch.dtype, noise: float = 0.0) -> tuple[ReferenceModel, ReferenceModel]:
    window = 16 if arch == "mistral" else None
    model = tiny_model(arch, num_layers=NUM_LAYERS, sliding_window=window)
    twin = perturbed_copy(model, noise) if noise else model
    return ReferenceModel(model.to("cuda", dtype)), ReferenceModel(twin.to("cuda", dtype))


def ids_on_cuda() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 128, (CONTEXT_LEN + SUFFIX_LEN,), generator=torch.Generator().manual_seed(2)).cuda()
    return ids[:CONTEXT_LEN], ids[CONTEXT_LEN:]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_fp32_prefill_extend_and_full_prefill_plan_match_hf(arch):
    receiver, sender = on_cuda(arch, torch.float32, noise=0.3)
    context, suffix = ids_on_cuda()
    with torch.no_grad():
        expected = receiver.model(torch.cat([context, suffix])[None]).logits[0, CONTEXT_LEN:].float()
    own = receiver.prefill(context)
    torch.testing.assert_close(receiver.extend(own.kv, suffix).logits, expected, atol=1e-4, rtol=0)
    sender_cache = sender.prefill(context, e_layers=[1])
    full = receiver.build_receiver_cache(sender_cache, LayerPlan.full_prefill(NUM_LAYERS), context)
    torch.testing.assert_close(receiver.extend(full, suffix).logits, expected, atol=1e-4, rtol=0)
    group = receiver.build_receiver_cache(sender_cache, LayerPlan.contiguous(NUM_LAYERS, 1, 3), context)
    loop = manual_layers(receiver.parts, sender_cache.e[1], 1, 3)
    torch.testing.assert_close(group.k[2], loop.k[2], atol=1e-4, rtol=0)
    blended = cacheblend_receiver_cache(receiver, sender_cache, context, CONTEXT_LEN)
    torch.testing.assert_close(receiver.extend(blended, suffix).logits, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_bf16_same_weights_plans_reproduce_own_prefill(arch):
    receiver, sender = on_cuda(arch, torch.bfloat16)
    context, suffix = ids_on_cuda()
    sender_cache = sender.prefill(context, e_layers=range(NUM_LAYERS))
    assert sender_cache.kv.dtype == torch.bfloat16 and sender_cache.e[2].dtype == torch.bfloat16
    own = receiver.prefill(context).kv
    expected = receiver.extend(own, suffix).logits
    tokens = receiver.generate(own, suffix, max_new_tokens=6)
    plans = (
        LayerPlan.full_reuse(NUM_LAYERS),
        LayerPlan.contiguous(NUM_LAYERS, 2, 4),
        LayerPlan(NUM_LAYERS, ((0, 1), (2, 3))),
    )
    for plan in plans:
        kv = receiver.build_receiver_cache(sender_cache, plan, context)
        torch.testing.assert_close(receiver.extend(kv, suffix).logits, expected, atol=2e-2, rtol=0, msg=str(plan))
        assert receiver.generate(kv, suffix, max_new_tokens=6) == tokens, plan
    kv = cacheblend_receiver_cache(receiver, sender_cache, context, 7)
    torch.testing.assert_close(receiver.extend(kv, suffix).logits, expected, atol=5e-2, rtol=0)
