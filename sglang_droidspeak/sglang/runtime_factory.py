"""Build a DroidSpeakRuntime from SGLang's TreeCacheBuildContext, or explain why not.

The runtime (fetch, export, E on demand) needs: a role in the settings, a model whose
layer slices the engine can run (``engine_forward.engine_unsupported``: the model's
``forward_split_prefill``, TP = PP = 1, an attention backend among flashinfer, triton,
torch_native), an unquantized KV pool and a model fingerprint. Without a role it is
simply not built; otherwise an unmet requirement is logged (and counted as the fallback
reason ``unsupported``) and the server runs with the tagged tree only, so every request
prefills normally.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from sglang_droidspeak.identity.fingerprint import fingerprint_model_dir
from sglang_droidspeak.sglang.engine_forward import EngineForward, engine_unsupported
from sglang_droidspeak.sglang.importer import ModelParts
from sglang_droidspeak.sglang.metrics import make_metrics
from sglang_droidspeak.sglang.quality_guard import build_guard
from sglang_droidspeak.sglang.settings import DroidSpeakSettings

logger = logging.getLogger(__name__)


def num_model_layers(ctx: Any) -> Optional[int]:
    config = getattr(getattr(ctx, "model_config", None), "hf_text_config", None)
    return getattr(config, "num_hidden_layers", None)


def _unsupported(ctx: Any, runner: Any) -> Optional[str]:
    server_args = runner.server_args
    paged = bool(getattr(getattr(runner, "attn_backend", None), "use_paged", False))  # FlashInferAttnBackend
    reason = engine_unsupported(runner.model, server_args.attention_backend, getattr(ctx, "tp_size", 1),
                                getattr(server_args, "pp_size", 1), flashinfer_paged=paged)
    if reason is not None:
        return reason
    kv_pool = runner.token_to_kv_pool
    if getattr(kv_pool, "store_dtype", None) != getattr(kv_pool, "dtype", None):
        return f"quantized KV cache ({kv_pool.dtype})"
    if getattr(runner, "use_mla_backend", False):
        return "MLA attention (no per-layer K/V rows to move)"
    return None


def _model_parts(ctx: Any, runner: Any) -> ModelParts:
    kv_pool = runner.token_to_kv_pool
    device = kv_pool.get_key_buffer(0).device
    return ModelParts(kv_pool, ctx.params.token_to_kv_pool_allocator,
                      ctx.model_config.hf_text_config.hidden_size, runner.dtype, device,
                      EngineForward.from_model_runner(runner), runner.req_to_token_pool)


def build_runtime(ctx: Any, settings: DroidSpeakSettings, model_name: str):
    """The runtime for this scheduler process, or None (no role, or unsupported: logged)."""
    from sglang_droidspeak.sglang.runtime import DroidSpeakRuntime

    if not (settings.export_bind or settings.announce_bind or settings.peers):
        return None
    runner = ctx.tp_worker.model_runner
    reason = _unsupported(ctx, runner)
    metrics = make_metrics(model_name, enabled=bool(getattr(ctx.params, "enable_metrics", False)))
    if reason is not None:
        logger.warning("droidspeak: cross-model reuse off for %r: %s", model_name, reason)
        metrics.record_fallback("unsupported")
        return None
    try:
        fingerprint = fingerprint_model_dir(ctx.model_config.model_path).digest
    except (OSError, ValueError) as exc:  # e.g. no tokenizer files: never share, never crash the server
        logger.warning("droidspeak: cross-model reuse off for %r: cannot fingerprint the model: %s", model_name, exc)
        metrics.record_fallback("unsupported")
        return None
    runtime = DroidSpeakRuntime(settings, model_name, fingerprint, _model_parts(ctx, runner), num_model_layers(ctx),
                                metrics, settings.secret())
    runtime.set_guard(build_guard(settings, model_name, metrics, ctx.server_args))  # None unless guard_fraction > 0
    return runtime
