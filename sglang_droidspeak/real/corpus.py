"""The real family's corpus: three domains of one pinned sdist, the same bytes on every machine.

The Django 5.2.8 source distribution (pins.DJANGO_SDIST, sha256-pinned) holds

    domain  files                          what it is
    lib     django/**/*.py                 library code
    test    tests/**/*.py                  the project's test suite
    docs    docs/**/*.txt                  prose documentation (reStructuredText)

Files under 512 bytes or not UTF-8 are skipped. Each domain is split by a stable hash of
the file's path: 90% ``<domain>`` (fine-tuning), 10% ``<domain>_heldout`` (evaluation,
profiles, quality study; never trained on). Unlike the micro family's stdlib corpus
(family/corpus.py, which reads the running Python and differs between machines), nothing
here depends on the machine. ``content_hash`` covers every split's paths and bytes and
goes into every result.

The object has the ``files(split)`` / ``read(path)`` interface of ``CorpusSplit``, so the
tasks (tasks/datasets.py) and the data helpers (family/data.py) take it as they are.
"""

from __future__ import annotations

import functools
import hashlib
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from sglang_droidspeak.real.pins import DJANGO_SDIST, artifact_path

DOMAINS = ("lib", "test", "docs")
REAL_SPLITS = tuple(s for d in DOMAINS for s in (d, f"{d}_heldout"))
HELDOUT_SHARE = 0.1
MIN_BYTES = 512
_DOMAIN_RULES = {"lib": ("django/", ".py"), "test": ("tests/", ".py"), "docs": ("docs/", ".txt")}


@dataclass(frozen=True)
class RealCorpus:
    """Texts of every split's files (paths relative to the sdist's top folder, sorted)."""

    source: str  # name==version of the sdist
    sdist_sha256: str
    splits: dict[str, tuple[str, ...]]
    texts: dict[str, str] = field(repr=False)

    def files(self, split: str) -> tuple[str, ...]:
        if split not in self.splits:
            raise ValueError(f"unknown corpus split {split!r}; expected one of {tuple(self.splits)}")
        return self.splits[split]

    def read(self, rel_path: str) -> str:
        return self.texts[rel_path]

    @functools.cached_property
    def split_hashes(self) -> dict[str, str]:
        """Per split: sha256 over its sorted (path, sha256 of the file) lines."""
        return {split: _hash_lines(f"{p}\t{hashlib.sha256(self.texts[p].encode()).hexdigest()}" for p in paths)
                for split, paths in self.splits.items()}

    @property
    def content_hash(self) -> str:
        return _hash_lines(f"{split}\t{digest}" for split, digest in sorted(self.split_hashes.items()))

    def describe(self) -> dict:
        """What results record about the data."""
        return {"source": self.source, "sdist_sha256": self.sdist_sha256, "content_hash": self.content_hash,
                "splits": {s: {"files": len(p), "chars": sum(len(self.texts[f]) for f in p),
                               "sha256": self.split_hashes[s]} for s, p in self.splits.items()}}


def _hash_lines(lines) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def bucket(rel_path: str) -> float:
    """A stable number in [0, 1) from the path."""
    return int.from_bytes(hashlib.sha1(rel_path.encode()).digest()[:8], "big") / 2**64


def domain_of(rel_path: str) -> str | None:
    for domain, (prefix, suffix) in _DOMAIN_RULES.items():
        if rel_path.startswith(prefix) and rel_path.endswith(suffix):
            return domain
    return None


def corpus_from_members(source: str, sdist_sha256: str, members: dict[str, bytes]) -> RealCorpus:
    """Split ``members`` ({path relative to the top folder: bytes}) into the domains."""
    splits: dict[str, list[str]] = {s: [] for s in REAL_SPLITS}
    texts = {}
    for rel in sorted(members):
        domain, data = domain_of(rel), members[rel]
        if domain is None or len(data) < MIN_BYTES:
            continue
        try:
            texts[rel] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        splits[f"{domain}_heldout" if bucket(rel) < HELDOUT_SHARE else domain].append(rel)
    return RealCorpus(source, sdist_sha256, {s: tuple(v) for s, v in splits.items()}, texts)


@functools.lru_cache(maxsize=2)
def load_real_corpus(sdist: Path | None = None) -> RealCorpus:
    """The corpus of the pinned sdist (default: the sha256-checked download)."""
    path = Path(sdist) if sdist else artifact_path(DJANGO_SDIST)
    members = {}
    with tarfile.open(path, "r:gz") as archive:
        for member in archive.getmembers():
            top, _, rel = member.name.partition("/")
            if member.isfile() and domain_of(rel) is not None:
                members[rel] = archive.extractfile(member).read()
    from sglang_droidspeak.real.pins import file_sha256

    return corpus_from_members(DJANGO_SDIST.requirement, file_sha256(path), members)
