"""Build a DroidSpeakRuntime from SGLang's TreeCacheBuildContext, or explain why not.

The runtime (fetch, export, E capture) needs: a role in the settings, TP = 1, a Llama-,
Qwen2- or Mistral-shaped model without sliding windows or logit caps, an unquantized KV
pool and a model fingerprint. Without a role it is simply not built; otherwise an
unmet requirement is logged and the server runs with the tagged tree only, so every
request prefills normally.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

import torch

from sglang_droidspeak.identity.fingerprint import fingerprint_model_dir
from sglang_droidspeak.sglang.importer import ModelParts
from sglang_droidspeak.sglang.metrics import make_metrics
from sglang_droidspeak.sglang.settings import DroidSpeakSettings

SUPPORTED_ARCHS = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
logger = logging.getLogger(__name__)


def num_model_layers(ctx: Any) -> Optional[int]:
    config = getattr(getattr(ctx, "model_config", None), "hf_text_config", None)
    return getattr(config, "num_hidden_layers", None)


def _unsupported(ctx: Any, model: Any, kv_pool: Any) -> Optional[str]:
    if getattr(ctx, "tp_size", 1) != 1:
        return f"tensor parallelism {ctx.tp_size} (only TP=1 is supported)"
    if type(model).__name__ not in SUPPORTED_ARCHS:
        return f"architecture {type(model).__name__} (supported: {SUPPORTED_ARCHS})"
    attn = model.model.layers[0].self_attn.attn
    if getattr(attn, "sliding_window_size", -1) not in (-1, None) or getattr(attn, "logit_cap", 0):
        return "sliding-window attention or logit capping"
    if getattr(kv_pool, "store_dtype", None) != getattr(kv_pool, "dtype", None):
        return f"quantized KV cache ({kv_pool.dtype})"
    return None


def _model_parts(ctx: Any) -> tuple[ModelParts, Any]:
    runner = ctx.tp_worker.model_runner
    model, kv_pool = runner.model, runner.token_to_kv_pool
    device = kv_pool.get_key_buffer(0).device
    parts = ModelParts(model.model.layers, model.model.embed_tokens, kv_pool,
                       ctx.params.token_to_kv_pool_allocator,
                       ctx.model_config.hf_text_config.hidden_size, runner.dtype, device)
    return parts, model


def build_runtime(ctx: Any, settings: DroidSpeakSettings, model_name: str):
    """The runtime for this scheduler process, or None (no role, or unsupported: logged)."""
    from sglang_droidspeak.sglang.runtime import DroidSpeakRuntime

    if not (settings.export_bind or settings.announce_bind or settings.peers):
        return None
    parts, model = _model_parts(ctx)
    reason = _unsupported(ctx, model, parts.kv_pool)
    if reason is not None:
        logger.warning("droidspeak: cross-model reuse off for %r: %s", model_name, reason)
        return None
    num_layers = num_model_layers(ctx)
    fingerprint = fingerprint_model_dir(ctx.model_config.model_path).digest
    metrics = make_metrics(model_name, enabled=bool(getattr(ctx.params, "enable_metrics", False)))
    runtime = DroidSpeakRuntime(settings, model_name, fingerprint, parts, num_layers, metrics, settings.secret())
    warm_up(runtime)
    return runtime


WARMUP_TOKENS = 32


def warm_up(runtime: Any) -> None:
    """Run the recompute path once on a few tokens (no KV written), so that the first real
    import does not pay its kernels' first launch (run 4 on an H200: 825 ms for the first
    import's recompute, 2-160 ms for the next). A failure is logged, never raised."""
    began = time.perf_counter()
    try:
        runtime.compute_e(list(range(WARMUP_TOKENS)), (max(1, runtime.num_layers - 1),))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001 - a warm-up must not stop the server
        logger.warning("droidspeak: recompute warm-up failed (the first import pays it): %r", exc)
        return
    logger.info("droidspeak: recompute path warmed up in %.1f ms", 1e3 * (time.perf_counter() - began))
