"""The micro family's corpus: the running interpreter's standard-library sources.

Every machine that runs Python has them, so nothing is downloaded. Files are assigned
to splits by a stable hash of their path relative to the stdlib root, so the split is
the same on every machine with the same Python version.

    split      source files                               used for
    ---------  -----------------------------------------  --------------------------------
    base       60% of library files + 30% of test files   base model pre-training
    lib        the other library files                    fine-tune B ("library writer")
    test       the other test files                       fine-tune A ("test writer")
    *_heldout  10% of lib / test, never trained on        evaluation sets (tasks/)

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
        if u < (0.3 if is_test else 0.6):
            buckets["base"].append(rel)
        elif u < (0.37 if is_test else 0.64):
            buckets["test_heldout" if is_test else "lib_heldout"].append(rel)
        else:
            buckets["test" if is_test else "lib"].append(rel)
    version = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    return CorpusSplit(root, version, **{s: tuple(v) for s, v in buckets.items()})
