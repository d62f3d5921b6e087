"""The pieces of an HF decoder-only CausalLM the reference engine drives directly.

Supported (transformers 5.x): ``LlamaForCausalLM``, ``Qwen2ForCausalLM``,
``MistralForCausalLM``, and any model with the same layout:

    model.model.embed_tokens   nn.Embedding
    model.model.layers[l]      decoder layer: (hidden, attention_mask, position_embeddings,
                               position_ids, past_key_values, use_cache) -> hidden
    model.model.rotary_emb     (x, position_ids [1, t]) -> (cos, sin) [1, t, head_dim]
    model.model.norm           final RMSNorm
    model.lm_head              nn.Linear
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from sglang_droidspeak.reference.kv import ReferenceEngineError

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
_LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclass(frozen=True)
class ModelParts:
    """Handles on one CausalLM's modules (no copies) and its per-layer attention windows."""

    embed_tokens: nn.Embedding
    layers: tuple[nn.Module, ...]
    rotary_emb: nn.Module
    norm: nn.Module
    lm_head: nn.Linear
    sliding_windows: tuple[int | None, ...]  # per layer; None = full causal attention

    @property
    def num_layers(self) -> int:
        return len(self.layers)


def model_parts(model: PreTrainedModel) -> ModelParts:
    backbone = getattr(model, "model", None)
    names = ("embed_tokens", "layers", "rotary_emb", "norm")
    if backbone is None or not all(hasattr(backbone, n) for n in names) or not hasattr(model, "lm_head"):
        raise ReferenceEngineError(
            f"{type(model).__name__} lacks the model.{{{', '.join(names)}}} + lm_head layout of "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    layers = tuple(backbone.layers[: model.config.num_hidden_layers])
    return ModelParts(
        embed_tokens=backbone.embed_tokens,
        layers=layers,
        rotary_emb=backbone.rotary_emb,
        norm=backbone.norm,
        lm_head=model.lm_head,
        sliding_windows=sliding_windows(model.config, len(layers)),
    )


def sliding_windows(config, num_layers: int) -> tuple[int | None, ...]:
    """Per-layer sliding window as the HF model masks it (Qwen2: layer_types; Mistral: all layers)."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None:
        return (window,) * num_layers
    unknown = sorted(set(layer_types) - set(_LAYER_TYPES))
    if unknown:
        raise ReferenceEngineError(f"unsupported layer types {unknown}; the engine knows {_LAYER_TYPES}")
    return tuple(window if t == "sliding_attention" else None for t in layer_types[:num_layers])


def prefill_masks(config, hidden: Tensor, position_ids: Tensor, windows: Sequence[int | None]) -> dict:
    """HF attention masks for a cache-free pass over positions 0..t-1, one per distinct window.

    hidden: [1, t, hidden_size]; position_ids: [1, t]. A mask may be None (SDPA's is_causal path).
    """
    masks = {}
    for window in set(windows):
        make = create_causal_mask if window is None else create_sliding_window_causal_mask
        masks[window] = make(
            config=config, inputs_embeds=hidden, attention_mask=None, past_key_values=None, position_ids=position_ids
        )
    return masks


def as_token_ids(ids, device: torch.device, what: str, allow_empty: bool = False) -> Tensor:
    """A 1-D LongTensor [n] on ``device`` from a tensor or a list of ints."""
    ids = torch.as_tensor(ids, device=device)
    if ids.numel() == 0 and not allow_empty:
        raise ReferenceEngineError(f"{what} is empty; at least one token is required")
    if ids.dim() != 1 or (ids.numel() and ids.dtype not in (torch.int64, torch.int32)):
        raise ReferenceEngineError(f"{what} must be a 1-D integer tensor [n], got {ids.dtype} {tuple(ids.shape)}")
    return ids.long()
