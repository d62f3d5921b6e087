"""SGLang plugin entry point (group ``sglang.srt.plugins``, name ``droidspeak``).

SGLang calls ``load()`` in every process (launcher, scheduler, workers). It registers
the radix-cache backend ``droidspeak`` (select it with
``SGLANG_PLUGINS=droidspeak ... --radix-cache-backend droidspeak``) and, when the
settings (``$DROIDSPEAK_CONFIG``, see ``sglang.settings``) make this server a sender or
a receiver, two hooks:

    hook      target (managers.scheduler.Scheduler.)   why
    AFTER     process_input_requests                   answer fetches; start imports for new
                                                       requests and advance running ones
    AROUND    get_new_batch_prefill                    advance imports, then leave requests
                                                       whose import runs out of the batch
                                                       (HiCache's prefetch pattern)
    AROUND    is_fully_idle                            not idle while an import runs or an
                                                       export waits for its E (both hold slots)

A server with neither role gets no hooks at all, only the tagged tree. E is computed on
demand by the sender at export time (see ``sglang.exporter``), so no hook runs inside
the model's forward. SGLang's own code is not patched (patches/README.md).
Import-safe: importing this module imports nothing from SGLang.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional

from sglang_droidspeak.sglang.settings import DroidSpeakSettings, PlanLookup, load_settings

if TYPE_CHECKING:
    from sglang_droidspeak.sglang.radix_cache import DroidSpeakRadixCache

BACKEND_NAME = "droidspeak"
SCHEDULER = "sglang.srt.managers.scheduler.Scheduler"
TICK_TARGET = f"{SCHEDULER}.process_input_requests"
PREFILL_TARGET = f"{SCHEDULER}.get_new_batch_prefill"
IDLE_TARGET = f"{SCHEDULER}.is_fully_idle"
HOOK_TARGETS = (TICK_TARGET, PREFILL_TARGET, IDLE_TARGET)
logger = logging.getLogger(__name__)


def load() -> None:
    """Register the ``droidspeak`` radix-cache backend and the hooks its roles need (idempotent)."""
    from sglang.srt.mem_cache.registry import get_radix_cache_factory, register_radix_cache_backend

    if get_radix_cache_factory(BACKEND_NAME) is None:
        register_radix_cache_backend(BACKEND_NAME, build_droidspeak_cache)
        register_hooks(load_settings())


def register_hooks(settings: DroidSpeakSettings) -> list[str]:
    """Register the hooks for this server's roles; returns the targets hooked."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    if not (settings.export_bind or settings.peers):
        return []
    HookRegistry.register(TICK_TARGET, scheduler_tick_hook, HookType.AFTER)
    HookRegistry.register(PREFILL_TARGET, new_batch_prefill_hook, HookType.AROUND)
    HookRegistry.register(IDLE_TARGET, fully_idle_hook, HookType.AROUND)
    return list(HOOK_TARGETS)


def _runtime(scheduler: Any) -> Any:
    return getattr(getattr(scheduler, "tree_cache", None), "runtime", None)


def scheduler_tick_hook(result: Any, scheduler: Any, *args: Any, **kwargs: Any) -> Any:
    runtime = _runtime(scheduler)
    if runtime is not None:
        runtime.on_scheduler_tick(scheduler)
    return result


def new_batch_prefill_hook(original: Any, scheduler: Any, *args: Any, **kwargs: Any) -> Any:
    """SGLang's prefill batch, formed without the requests whose import still runs."""
    runtime = _runtime(scheduler)
    if runtime is None:
        return original(scheduler, *args, **kwargs)
    runtime.imports.tick(scheduler)
    parked = [req for req in scheduler.waiting_queue if runtime.imports.is_parked(req)]
    if not parked:
        return original(scheduler, *args, **kwargs)
    scheduler.waiting_queue = [req for req in scheduler.waiting_queue if not runtime.imports.is_parked(req)]
    try:
        return original(scheduler, *args, **kwargs)
    finally:  # SGLang rebinds waiting_queue to what it did not schedule; ours go back in front
        scheduler.waiting_queue = parked + scheduler.waiting_queue


def fully_idle_hook(original: Any, scheduler: Any, *args: Any, **kwargs: Any) -> bool:
    runtime = _runtime(scheduler)
    if runtime is not None and runtime.busy():
        return False
    return original(scheduler, *args, **kwargs)


def build_droidspeak_cache(
    ctx: Any,
    settings: Optional[DroidSpeakSettings] = None,
    plan_lookup: Optional[PlanLookup] = None,
) -> "DroidSpeakRadixCache":
    """Factory for ``register_radix_cache_backend``: ``ctx`` is a TreeCacheBuildContext."""
    from sglang_droidspeak.sglang.radix_cache import DroidSpeakRadixCache
    from sglang_droidspeak.sglang.runtime_factory import build_runtime, num_model_layers

    unsupported = [
        flag
        for flag in ("is_hybrid_swa", "is_hybrid_ssm", "enable_hierarchical_cache", "is_dsa")
        if getattr(ctx, flag, False)
    ]
    if unsupported:
        raise ValueError(
            f"--radix-cache-backend {BACKEND_NAME} supports plain MHA models only; got {unsupported}"
        )
    settings = settings or load_settings()
    model = settings.model or _served_model_name(ctx)
    cache = DroidSpeakRadixCache(
        ctx.params,
        model=model,
        plan_lookup=plan_lookup or settings.plan_lookup(),
        allow_derived_export=settings.allow_derived_export,
        min_foreign_tokens=settings.min_foreign_tokens,
        num_layers=num_model_layers(ctx),
        runtime=build_runtime(ctx, settings, model),
    )
    logger.info("droidspeak radix cache for model %r (%d inline plans, runtime %s)", model,
                len(settings.plans), "on" if cache.runtime is not None else "off")
    if cache.runtime is not None:
        from sglang_droidspeak.sglang.runtime_e import warm_up

        warm_up(cache.runtime.parts, cache, cache.num_layers, settings.import_chunk_tokens)
    return cache


def _served_model_name(ctx: Any) -> str:
    name = getattr(ctx.server_args, "served_model_name", None)
    return name or ctx.model_config.model_path
