"""SGLang plugin entry point (group ``sglang.srt.plugins``, name ``droidspeak``).

SGLang calls ``load()`` in every process (launcher, scheduler, workers). It registers
the radix-cache backend ``droidspeak``; select it with
``SGLANG_PLUGINS=droidspeak ... --radix-cache-backend droidspeak``. Settings come from
the YAML file named by ``$DROIDSPEAK_CONFIG`` (``sglang.settings``).

Import-safe: importing this module imports nothing from SGLang; ``load()`` and the
factory import it lazily.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional

from sglang_droidspeak.sglang.settings import DroidSpeakSettings, PlanLookup, load_settings

if TYPE_CHECKING:
    from sglang_droidspeak.sglang.radix_cache import DroidSpeakRadixCache

BACKEND_NAME = "droidspeak"
logger = logging.getLogger(__name__)


def load() -> None:
    """Register the ``droidspeak`` radix-cache backend (idempotent)."""
    from sglang.srt.mem_cache.registry import get_radix_cache_factory, register_radix_cache_backend

    if get_radix_cache_factory(BACKEND_NAME) is None:
        register_radix_cache_backend(BACKEND_NAME, build_droidspeak_cache)


def build_droidspeak_cache(
    ctx: Any,
    settings: Optional[DroidSpeakSettings] = None,
    plan_lookup: Optional[PlanLookup] = None,
) -> "DroidSpeakRadixCache":
    """Factory for ``register_radix_cache_backend``: ``ctx`` is a TreeCacheBuildContext."""
    from sglang_droidspeak.sglang.radix_cache import DroidSpeakRadixCache

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
    )
    logger.info("droidspeak radix cache for model %r (%d inline plans)", model, len(settings.plans))
    return cache


def _served_model_name(ctx: Any) -> str:
    name = getattr(ctx.server_args, "served_model_name", None)
    return name or ctx.model_config.model_path
