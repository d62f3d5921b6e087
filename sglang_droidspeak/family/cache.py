"""The on-disk cache of built families: look up, build once, publish atomically.

A family lives in ``<cache>/family-<hash>`` where ``<cache>`` is ``$DROIDSPEAK_CACHE``
or ``~/.cache/sglang_droidspeak`` and ``<hash>`` covers the FamilyConfig, the Python
version (it fixes the corpus) and the build format. A build writes into a sibling
``family-<hash>.tmp-*`` dir and renames it into place, so the final dir exists only when
complete. Builders of one hash serialise on ``family-<hash>.lock`` (flock); a temp dir
seen while holding that lock is left over from an interrupted build and is removed.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sglang_droidspeak.family.build import build_family
from sglang_droidspeak.family.config import FamilyConfig, config_hash
from sglang_droidspeak.family.manifest import has_manifest, read_manifest

CACHE_ENV = "DROIDSPEAK_CACHE"
# measured (docs/ROBUSTNESS.md): `droidspeak family` into an empty cache, 2-core CPU machine
FIRST_BUILD_TIME = "5 to 15 minutes on 2 cores: 5 when idle, 13 measured beside other jobs"


@dataclass(frozen=True)
class Family:
    """A built family at ``root``: one Hugging Face model dir per name, plus family.json."""

    root: Path
    manifest: dict = field(compare=False, hash=False, repr=False)

    @classmethod
    def load(cls, root: Path) -> Family:
        return cls(Path(root), read_manifest(Path(root)))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.manifest["names"])

    def model_path(self, name: str) -> Path:
        if name not in self.names:
            raise KeyError(f"no model {name!r} in the family; have {self.names}")
        return self.root / name


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "sglang_droidspeak"


def family_dir(config: FamilyConfig, cache_dir: Path | None = None) -> Path:
    return Path(cache_dir or default_cache_dir()) / f"family-{config_hash(config)}"


@contextmanager
def _build_lock(final_dir: Path) -> Iterator[None]:
    with open(final_dir.with_name(final_dir.name + ".lock"), "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def temp_dirs(final_dir: Path) -> list[Path]:
    """Build dirs of this family's hash (in progress or left by an interrupted build)."""
    return sorted(final_dir.parent.glob(final_dir.name + ".tmp-*"))


def ensure_family(config: FamilyConfig | None = None, cache_dir: Path | None = None,
                  progress: bool = True) -> Family:
    """The cached family for ``config`` (default config), built first if missing."""
    config = config or FamilyConfig()
    final_dir = family_dir(config, cache_dir)
    if has_manifest(final_dir):
        return Family.load(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(final_dir):
        if has_manifest(final_dir):  # another process built it while we waited
            return Family.load(final_dir)
        for stale in temp_dirs(final_dir) + [final_dir]:
            shutil.rmtree(stale, ignore_errors=True)
        if progress:
            print(f"droidspeak: building the micro model family (first use only, {FIRST_BUILD_TIME}; "
                  f"cached in {final_dir})", file=sys.stderr, flush=True)
        temp_name = f"{final_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        temp_dir = final_dir.with_name(temp_name)
        try:
            build_family(config, temp_dir, progress=progress)
            os.rename(temp_dir, final_dir)
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)
    return Family.load(final_dir)
