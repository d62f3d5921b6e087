"""Make SGLang 0.5.17's Python side importable on a CPU-only machine (tests, CI).

SGLang's wheel installs with ``--no-deps`` into its own folder (see
docs/SGLANG_INTEGRATION.md for the exact pip command); that folder is appended to
``sys.path`` (after site-packages, so it never shadows the machine's torch or numpy).

One wrinkle: SGLang imports ``torchvision.io.decode_jpeg`` at import time, and PyPI's
torchvision for x86_64 is a CUDA build whose C++ ops cannot load beside a CPU torch.
torchvision then fails in its own ``_meta_registrations`` ("operator torchvision::nms
does not exist"): it registers fake kernels for two ops that its missing library
would have defined. Defining just those two schemas (no kernels) lets torchvision's
pure-Python part import; calling them would still fail loudly. This is only done with
a CPU build of torch and before torchvision is imported.

Order matters: transformers decides at its own import whether torchvision exists, and
SGLang's import needs it to have decided "yes". So call ``prepare_cpu_sglang()`` before
anything imports transformers (for the test suite: at the top of tests/conftest.py);
once transformers is imported without it, SGLang cannot be imported in that process.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Optional

SGLANG_CPU_PATH_ENV = "DROIDSPEAK_SGLANG_CPU_PATH"
_NMS_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
_TORCHVISION_FAKE_REGISTERED_OPS = ("nms", "qnms")


class SGLangImportOrderError(RuntimeError):
    """transformers was imported before the CPU SGLang folder was put on sys.path."""


def default_cpu_sglang_path() -> Path:
    """``<repo>/.cache/sglang-cpu`` (git-ignored)."""
    return Path(__file__).resolve().parents[2] / ".cache" / "sglang-cpu"


def prepare_cpu_sglang(path: Optional[str] = None) -> bool:
    """Put the CPU SGLang folder on ``sys.path`` if needed; True when sglang is importable.

    Looks at ``path``, then ``$DROIDSPEAK_SGLANG_CPU_PATH``, then the default folder.
    Does nothing to ``sys.path`` when sglang is already importable. Raises
    ``SGLangImportOrderError`` when the folder is needed but transformers is already
    imported (see the module docstring).
    """
    if importlib.util.find_spec("sglang") is None:
        folder = Path(path or os.environ.get(SGLANG_CPU_PATH_ENV) or default_cpu_sglang_path())
        if not (folder / "sglang").is_dir():
            return False
        if "transformers" in sys.modules:
            raise SGLangImportOrderError(
                f"transformers was imported before {folder} was put on sys.path, so SGLang "
                "cannot import in this process: call prepare_cpu_sglang() first (tests/conftest.py)"
            )
        if str(folder) not in sys.path:
            sys.path.append(str(folder))
            importlib.invalidate_caches()
        if importlib.util.find_spec("sglang") is None:
            return False
    _define_torchvision_op_schemas()
    return True


def _define_torchvision_op_schemas() -> None:
    import torch

    if torch.version.cuda is not None or "torchvision" in sys.modules:
        return
    for op in _TORCHVISION_FAKE_REGISTERED_OPS:
        if not _torch_op_exists("torchvision", op):
            torch.library.define(f"torchvision::{op}", _NMS_SCHEMA)


def _torch_op_exists(namespace: str, op: str) -> bool:
    import torch

    try:
        getattr(getattr(torch.ops, namespace), op)
    except (AttributeError, RuntimeError):
        return False
    return True
