"""Tiny random CausalLMs of the supported kinds, for tests and smoke runs (no downloads).

Weights are drawn wide enough (``initializer_range``) for peaked logits, and RMSNorm
weights and all biases (Qwen2 has q/k/v biases) are randomised too, so every parameter
kind affects the output. ``perturbed_copy`` makes a "fine-tune" of a model: same
architecture, every weight moved by relative noise.
"""

from __future__ import annotations

import copy

import torch
import transformers
from transformers import PreTrainedModel

_KINDS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),  # sliding windows on every other layer
}
# Llama-shaped layers (input norm, attention, post-attention norm, MLP): what the
# reference engine's manual loop and token-recompute baseline drive; gemma2 (four norms per
# layer) runs through HF's own layers and SGLang's model class only.
ARCHITECTURES = tuple(kind for kind in _KINDS if kind != "gemma2")


def tiny_config(
    arch: str,
    num_layers: int = 4,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = 128,
    intermediate_size: int = 128,
    sliding_window: int | None = None,
    initializer_range: float = 0.1,
):
    if arch not in _KINDS:
        raise ValueError(f"unknown arch {arch!r}; one of {tuple(_KINDS)}")
    config_cls = getattr(transformers, _KINDS[arch][0])
    extra = {"sliding_window": sliding_window} if arch == "mistral" else {}
    if arch == "gemma2":  # no soft caps (SGLang's torch_native attention has none); SGLang reads hidden_act
        extra = {"sliding_window": sliding_window or 4096, "attn_logit_softcapping": None,
                 "final_logit_softcapping": None, "query_pre_attn_scalar": hidden_size // num_heads,
                 "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh",
                 "tie_word_embeddings": True}
    return config_cls(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,  # Qwen3's config defaults to 128
        max_position_embeddings=4096,
        initializer_range=initializer_range,
        **{"tie_word_embeddings": False, **extra},
    )


def tiny_model(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32, **config_kwargs) -> PreTrainedModel:
    """A randomly initialised model (eval mode) of ``arch``; the same seed gives the same weights."""
    config = tiny_config(arch, **config_kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, _KINDS[arch][1])(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, config.initializer_range)
            elif "norm" in name:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
    return model.to(dtype).eval()


def perturbed_copy(model: PreTrainedModel, relative_noise: float, seed: int = 1) -> PreTrainedModel:
    """A deep copy whose every parameter p becomes p + relative_noise * std(p) * N(0, 1)."""
    twin = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in twin.parameters():
            noise = torch.randn(param.shape, generator=generator).to(param.device, param.dtype)
            scale = param.float().std().item() if param.numel() > 1 else 1.0
            param.add_(relative_noise * scale * noise)
    return twin
