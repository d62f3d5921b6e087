"""The family cache: hashing, reuse without rebuild, atomic publish, leftover temp dirs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sglang_droidspeak.family import FamilyConfig, config_hash, ensure_family, family_dir
from sglang_droidspeak.family import cache as cache_module
from sglang_droidspeak.family.cache import Family, temp_dirs

CONFIG = FamilyConfig(seed=7)


def _fake_build(calls: list[Path]):
    """Stands in for build_family: records the out dir, writes a model file + manifest."""

    def build(config, out_dir, progress=True):
        calls.append(Path(out_dir))
        (out_dir / "base").mkdir(parents=True)
        (out_dir / "base" / "model.safetensors").write_bytes(b"weights")
        (out_dir / "family.json").write_text(json.dumps({"names": ["base"], "seed": config.seed}))

    return build


@pytest.fixture
def calls(monkeypatch) -> list[Path]:
    recorded: list[Path] = []
    monkeypatch.setattr(cache_module, "build_family", _fake_build(recorded))
    return recorded


def test_family_dir_hash_follows_config(tmp_path, monkeypatch):
    assert family_dir(CONFIG, tmp_path) == tmp_path / f"family-{config_hash(CONFIG)}"
    assert config_hash(CONFIG) == config_hash(FamilyConfig(seed=7))
    assert config_hash(CONFIG) != config_hash(FamilyConfig(seed=8))
    assert config_hash(CONFIG) != config_hash(FamilyConfig(seed=7, finetune_steps=201))
    monkeypatch.setenv("DROIDSPEAK_CACHE", str(tmp_path / "env"))
    assert family_dir(CONFIG).parent == tmp_path / "env"


def test_second_call_reuses_the_cache(tmp_path, calls):
    first = ensure_family(CONFIG, cache_dir=tmp_path, progress=False)
    weights = first.model_path("base") / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    second = ensure_family(CONFIG, cache_dir=tmp_path, progress=False)
    assert len(calls) == 1
    assert second == first and second.root == family_dir(CONFIG, tmp_path)
    assert weights.stat().st_mtime_ns == mtime
    assert second.manifest == {"names": ["base"], "seed": 7}
    # built into a temp sibling, then renamed into place
    assert calls[0].parent == tmp_path and calls[0].name.startswith(second.root.name + ".tmp-")
    assert temp_dirs(second.root) == []


def test_leftover_temp_dir_is_removed_and_never_used(tmp_path, calls):
    final = family_dir(CONFIG, tmp_path)
    leftover = final.with_name(final.name + ".tmp-12345-deadbeef")
    (leftover / "base").mkdir(parents=True)
    (leftover / "family.json").write_text("{half written")
    family = ensure_family(CONFIG, cache_dir=tmp_path, progress=False)
    assert len(calls) == 1 and calls[0] != leftover
    assert not leftover.exists()
    assert family.manifest["seed"] == 7


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    def failing_build(config, out_dir, progress=True):
        (out_dir / "base").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module, "build_family", failing_build)
    with pytest.raises(KeyboardInterrupt):
        ensure_family(CONFIG, cache_dir=tmp_path, progress=False)
    final = family_dir(CONFIG, tmp_path)
    assert not final.exists() and temp_dirs(final) == []


def test_model_path_rejects_unknown_names(tmp_path):
    family = Family(tmp_path, {"names": ["base", "tester"]})
    assert family.names == ("base", "tester")
    assert family.model_path("tester") == tmp_path / "tester"
    with pytest.raises(KeyError):
        family.model_path("libwriter")
