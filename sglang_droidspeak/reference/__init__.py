"""DroidSpeak on Hugging Face transformers models: the golden reference and profiler engine.

    kv          PrefixKV (per-layer K/V), SenderCache (KV + E cache), ReferenceEngineError
    parts       the HF modules the engine drives (Llama / Qwen2 / Mistral layout)
    engine      ReferenceModel: prefill, build_receiver_cache, extend, generate
    manual      one decoder layer from raw weights over any token subset (CacheBlend, tests)
    cacheblend  CacheBlend-style selective token recomputation baseline
    hybrid      a DroidSpeak group, then CacheBlend-style token recompute in the layers after it
    budget      recompute cost in layer-tokens (DroidSpeak vs CacheBlend at equal compute)
"""

from sglang_droidspeak.reference.budget import (
    RecomputeCost,
    cacheblend_cost,
    cacheblend_tokens_for_cost,
    droidspeak_cost,
    hybrid_cost,
    hybrid_tokens_for_cost,
    kv_projection_fraction,
)
from sglang_droidspeak.reference.cacheblend import cacheblend_receiver_cache
from sglang_droidspeak.reference.engine import ExtendResult, LayerRunResult, ReferenceModel
from sglang_droidspeak.reference.hybrid import hybrid_receiver_cache
from sglang_droidspeak.reference.kv import PrefixKV, ReferenceEngineError, SenderCache

__all__ = [
    "ExtendResult",
    "LayerRunResult",
    "PrefixKV",
    "RecomputeCost",
    "ReferenceEngineError",
    "ReferenceModel",
    "SenderCache",
    "cacheblend_cost",
    "cacheblend_receiver_cache",
    "cacheblend_tokens_for_cost",
    "droidspeak_cost",
    "hybrid_cost",
    "hybrid_receiver_cache",
    "hybrid_tokens_for_cost",
    "kv_projection_fraction",
]
