"""The real family's pinned corpus: domains, held-out split, content hashes."""

from __future__ import annotations

import pytest
from real_model import real_base_dir

from sglang_droidspeak.real.corpus import REAL_SPLITS, bucket, corpus_from_members, domain_of


def _members() -> dict[str, bytes]:
    code = b"def f(x):\n    return x\n" * 40  # 920 bytes
    return {
        "django/db/models.py": code, "django/tiny.py": b"x = 1\n", "tests/test_a.py": code,
        "docs/intro.txt": b"Prose " * 100, "docs/conf.py": code, "setup.py": code,
        "tests/latin1.py": b"\xe9" * 600, "django/locale/fr.po": code,
    }


def test_files_go_to_their_domain_and_small_or_binary_files_are_skipped():
    corpus = corpus_from_members("django==0", "0" * 64, _members())
    kept = {p: s for s in REAL_SPLITS for p in corpus.files(s)}
    assert sorted(kept) == ["django/db/models.py", "docs/intro.txt", "tests/test_a.py"]
    for path, split in kept.items():
        assert split.split("_")[0] == domain_of(path)
        assert split.endswith("_heldout") == (bucket(path) < 0.1)
    assert domain_of("docs/conf.py") is None and domain_of("setup.py") is None
    with pytest.raises(ValueError, match="unknown corpus split 'base'"):
        corpus.files("base")


def test_the_content_hash_follows_the_bytes_and_nothing_else():
    a = corpus_from_members("django==0", "0" * 64, _members())
    b = corpus_from_members("django==0", "1" * 64, dict(reversed(list(_members().items()))))
    assert a.content_hash == b.content_hash
    changed = dict(_members(), **{"tests/test_a.py": _members()["tests/test_a.py"] + b"#"})
    c = corpus_from_members("django==0", "0" * 64, changed)
    assert c.content_hash != a.content_hash
    assert [s for s in REAL_SPLITS if a.split_hashes[s] != c.split_hashes[s]] == [
        "test_heldout" if bucket("tests/test_a.py") < 0.1 else "test"]


@pytest.mark.real
def test_the_pinned_sdist_gives_the_same_corpus_on_every_machine():
    from sglang_droidspeak.real.corpus import load_real_corpus

    real_base_dir()  # fails or skips with the fetch command when the downloads are missing
    corpus = load_real_corpus()
    sizes = {s: len(corpus.files(s)) for s in REAL_SPLITS}
    assert sizes == {"lib": 585, "lib_heldout": 68, "test": 987, "test_heldout": 131, "docs": 480, "docs_heldout": 62}
    assert corpus.content_hash == "1651359f52f8dc42956ed91a9ab4f9355accf31c6fd98761f1ffaac79165dbc6"
