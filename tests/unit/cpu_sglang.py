"""Test-module guard: SGLang's CPU install must import here, or the run fails.

    from cpu_sglang import require_cpu_sglang
    require_cpu_sglang()          # at module level, before any ``sglang`` import

scripts/install_cpu.sh fills the CPU SGLang folder; ``prepare_cpu_sglang`` puts it on
sys.path (sglang_droidspeak/sglang/cpu_import.py). A missing or broken SGLang is a
failure that shows the import error, so SGLang-backed tests never vanish from a run that
still looks green. A machine that has no SGLang on purpose sets
``DROIDSPEAK_SKIP_SGLANG_TESTS=1``: those modules are then skipped with the reason. CI
never sets it.
"""

from __future__ import annotations

import importlib
import os

import pytest

from sglang_droidspeak.sglang.cpu_import import SGLangImportOrderError, prepare_cpu_sglang

SKIP_ENV = "DROIDSPEAK_SKIP_SGLANG_TESTS"


def skip_requested() -> bool:
    return os.environ.get(SKIP_ENV, "") not in ("", "0")


def require_cpu_sglang(module: str = "sglang.srt.mem_cache.radix_cache", *, at_module_level: bool = True) -> None:
    """Import ``module`` from SGLang; fail (or skip, when asked to) with the import error."""
    try:
        prepare_cpu_sglang()
        importlib.import_module(module)
    except (ImportError, SGLangImportOrderError, ValueError, RuntimeError) as exc:
        reason = f"SGLang's {module} does not import: {type(exc).__name__}: {exc}"
        if skip_requested():
            pytest.skip(f"{reason} ({SKIP_ENV} is set)", allow_module_level=at_module_level)
        pytest.fail(
            f"{reason}\nRun `bash scripts/install_cpu.sh`; on a machine without SGLang on purpose, "
            f"set {SKIP_ENV}=1 to skip these tests.",
            pytrace=False,
        )
