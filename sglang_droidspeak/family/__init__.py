"""The project's own micro model family: a base Llama and two fine-tunes, built on CPU.

    from sglang_droidspeak.family import ensure_family
    family = ensure_family()                 # cached under ~/.cache/sglang_droidspeak
    path = family.model_path("libwriter")    # a Hugging Face model dir

Models: ``base`` (stdlib ``base`` split), ``tester`` (fine-tuned on stdlib tests),
``libwriter`` (fine-tuned on other library modules). See build.py and config.py.
"""

from __future__ import annotations

from sglang_droidspeak.family.build import build_family
from sglang_droidspeak.family.cache import Family, default_cache_dir, ensure_family, family_dir
from sglang_droidspeak.family.config import (
    BASE, EOS_TOKEN, LIBWRITER, MODEL_NAMES, TESTER, FamilyConfig, config_hash,
)

__all__ = [
    "BASE", "EOS_TOKEN", "LIBWRITER", "MODEL_NAMES", "TESTER", "Family", "FamilyConfig",
    "build_family", "config_hash", "default_cache_dir", "ensure_family", "family_dir",
]
