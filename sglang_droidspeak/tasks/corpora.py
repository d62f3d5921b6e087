"""The corpora tasks are cut from, by name.

    stdlib   the running Python's standard library (family/corpus.py): the micro family's
             data; differs between Python builds, so only for the micro family and tests
    django   the pinned Django 5.2.8 sdist (real/corpus.py): the real family's data, the
             same bytes on every machine (its content hash goes into results)
"""

from __future__ import annotations

from typing import Any

from sglang_droidspeak.family.corpus import SPLITS as STDLIB_SPLITS
from sglang_droidspeak.real.corpus import REAL_SPLITS

CORPUS_SPLITS = {"stdlib": STDLIB_SPLITS, "django": REAL_SPLITS}
CORPORA = tuple(CORPUS_SPLITS)
ALL_SPLITS = tuple(dict.fromkeys(s for splits in CORPUS_SPLITS.values() for s in splits))


def split_problem(corpus: str, split: str) -> str:
    """Why ``split`` is not a split of ``corpus``, or ""."""
    if corpus not in CORPUS_SPLITS:
        return f"corpus: must be one of {', '.join(CORPORA)}, got {corpus!r}"
    if split not in CORPUS_SPLITS[corpus]:
        return f"split: corpus {corpus!r} has splits {', '.join(CORPUS_SPLITS[corpus])}, got {split!r}"
    return ""


def load_corpus(name: str) -> Any:
    """The corpus object (``files(split)``, ``read(path)``) of ``name``."""
    if name == "django":
        from sglang_droidspeak.real.corpus import load_real_corpus

        return load_real_corpus()
    if name == "stdlib":
        from sglang_droidspeak.family.corpus import split_corpus

        return split_corpus()
    raise ValueError(f"unknown corpus {name!r}; known: {', '.join(CORPORA)}")


def corpus_identity(name: str, corpus: Any) -> str:
    """What results record about the data: the content hash, or the Python version for stdlib."""
    return corpus.content_hash if hasattr(corpus, "content_hash") else f"stdlib-{corpus.python_version}"
