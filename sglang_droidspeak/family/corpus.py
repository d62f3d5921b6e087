"""The micro family's corpus: the running interpreter's standard-library sources.

Every machine that runs Python has them, so nothing is downloaded. Files are assigned
to splits by a stable hash of their path relative to the stdlib root, so the split is
the same on every machine with the same Python version.

    split         share of files                  used for
    ------------  ------------------------------  -------------------------------
    base          60% of library, 30% of tests    base model pre-training
    lib           30% of library files            fine-tune B ("libwriter")
    test          63% of test files               fine-tune A ("tester")
    lib_heldout   10% of library files            evaluation (tasks/), never trained on
    test_heldout  7% of test files                evaluation (tasks/), never trained on

A file is a test file when a path component is ``test``/``tests`` or its name starts
with ``test_``. ``site-packages`` and non-UTF-8 files are skipped.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("base", "lib", "test", "lib_heldout", "test_heldout")
# Bump when the assignment of files to splits changes (it is part of the family's cache key).
SPLIT_VERSION = 2
# (base upper bound, heldout upper bound) of the hash bucket, for library / test files
_LIB_BOUNDS, _TEST_BOUNDS = (0.6, 0.7), (0.3, 0.37)


@dataclass(frozen=True)
class CorpusSplit:
    """Relative paths (sorted) of each split, under ``root``."""

    root: Path
    python_version: str
    base: tuple[str, ...]
    lib: tuple[str, ...]
    test: tuple[str, ...]
    lib_heldout: tuple[str, ...]
    test_heldout: tuple[str, ...]

    def files(self, split: str) -> tuple[str, ...]:
        if split not in SPLITS:
            raise ValueError(f"unknown corpus split {split!r}; expected one of {SPLITS}")
        return getattr(self, split)

    def read(self, rel_path: str) -> str:
        return (self.root / rel_path).read_text(encoding="utf-8")


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _bucket(rel_path: str) -> float:
    """A stable number in [0, 1) from the path (same on every machine)."""
    digest = hashlib.sha1(rel_path.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _is_test(rel_path: str) -> bool:
    parts = rel_path.split("/")
    return any(p in ("test", "tests") for p in parts[:-1]) or parts[-1].startswith("test_")


def _readable(path: Path) -> bool:
    try:
        path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return False
    return True


def split_corpus(root: Path | None = None, min_bytes: int = 512) -> CorpusSplit:
    """Assign every stdlib ``*.py`` file of at least ``min_bytes`` to one split."""
    root = root or stdlib_root()
    buckets: dict[str, list[str]] = {s: [] for s in SPLITS}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if "site-packages" in rel or path.stat().st_size < min_bytes or not _readable(path):
            continue
        u, is_test = _bucket(rel), _is_test(rel)
        base_end, heldout_end = _TEST_BOUNDS if is_test else _LIB_BOUNDS
        if u < base_end:
            buckets["base"].append(rel)
        elif u < heldout_end:
            buckets["test_heldout" if is_test else "lib_heldout"].append(rel)
        else:
            buckets["test" if is_test else "lib"].append(rel)
    version = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    return CorpusSplit(root, version, **{s: tuple(v) for s, v in buckets.items()})
