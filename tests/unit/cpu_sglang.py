"""Test-module guard: skip the module unless SGLang's CPU install imports here.

    from cpu_sglang import require_cpu_sglang
    require_cpu_sglang()          # at module level, before any ``sglang`` import

scripts/install_cpu.sh fills the CPU SGLang folder; ``prepare_cpu_sglang`` puts it on
sys.path (sglang_droidspeak/sglang/cpu_import.py). Where it cannot (e.g. transformers was
imported first) or SGLang's tree is missing, the module is skipped with the reason.
"""

from __future__ import annotations

import pytest

from sglang_droidspeak.sglang.cpu_import import SGLangImportOrderError, prepare_cpu_sglang


def require_cpu_sglang(module: str = "sglang.srt.mem_cache.radix_cache") -> None:
    try:
        prepare_cpu_sglang()
    except SGLangImportOrderError as exc:
        pytest.skip(str(exc), allow_module_level=True)
    pytest.importorskip(module)
