"""A fresh clone just works: check on every example config, the README, the first family build."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from sglang_droidspeak.cli import main
from sglang_droidspeak.cluster import check_machine
from sglang_droidspeak.family import build as family_build
from sglang_droidspeak.family import cache as family_cache
from sglang_droidspeak.family.manifest import write_manifest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


@pytest.fixture
def fresh_clone(tmp_path, monkeypatch):
    """A directory with the repository's examples and profiles and nothing else (no models)."""
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DROIDSPEAK_SECRET", raising=False)
    monkeypatch.setattr(check_machine, "visible_gpu_count", lambda: 0)
    return tmp_path


def test_check_passes_every_example_config_on_a_fresh_clone(fresh_clone, capsys):
    assert len(EXAMPLES) == 3
    assert main(["check", *(f"examples/{p.name}" for p in EXAMPLES)]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("== ")] == [f"== examples/{p.name}" for p in EXAMPLES]
    assert ("not here: examples/cluster-two-gpu.yaml: models[1].path: .cache/gpu-models/libwriter is not on this "
            "machine; create it with python3 scripts/gpu/prepare.py (builds the micro family first)") in out
    assert "warning: transfer.secret_env: $DROIDSPEAK_SECRET is not set" in out
    assert "error:" not in out and "Traceback" not in out


def test_a_config_error_in_one_of_several_files_fails_the_check(fresh_clone, capsys):
    (fresh_clone / "examples" / "bad.yaml").write_text("router: {host: 127.0.0.1, port: 8000}\nmodels: []\n")
    assert main(["check", "examples/cluster-one-gpu.yaml", "examples/bad.yaml"]) == 1
    assert "error: examples/bad.yaml:2: models: must be a non-empty list, got []" in capsys.readouterr().out


def test_the_readme_names_nothing_outside_the_repository():
    readme = (REPO / "README.md").read_text()
    assert not re.search(r"\.\./|/work/|shared/device", readme)
    for path in re.findall(r"`((?:docs|scripts|examples|profiles|sglang_droidspeak|tests)/[\w./-]+)`", readme):
        assert (REPO / path.rstrip("/")).exists() or "*" in path, path


def test_the_first_family_build_says_what_it_does(tmp_path, monkeypatch, capsys):
    def fake_build(config, out_dir, progress=True):
        clock = family_build._Clock(report=progress)
        clock.lap("tokenizer")
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_manifest(Path(out_dir), {"names": ["base"], "seconds": {"total": 0.0}})
    monkeypatch.setattr(family_cache, "build_family", fake_build)
    family_cache.ensure_family(cache_dir=tmp_path)
    err = capsys.readouterr().err
    assert err.startswith("droidspeak: building the micro model family (first use only, 5 to 15 minutes on 2 cores")
    assert "\nfamily: tokenizer done in 0 s (0 s so far)\n" in err
    family_cache.ensure_family(cache_dir=tmp_path)  # cached: silent
    assert capsys.readouterr().err == ""
