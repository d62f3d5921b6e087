"""Load a file under scripts/ as a module, for tests of scripts that are not in the package."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def load_script(relative: str, name: str = "") -> ModuleType:
    """``scripts/<relative>`` as a fresh module; its folder is on sys.path while it loads
    (scripts/gpu/integration.py imports its sibling checks.py)."""
    path = SCRIPTS / relative
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(name or path.stem + "_script", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(path.parent))
