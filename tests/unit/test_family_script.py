"""scripts/build_family.py: options mirror FamilyConfig; a cached family is shown, not rebuilt."""

from __future__ import annotations

import dataclasses
import json

from script_module import load_script

from sglang_droidspeak.family import FamilyConfig, family_dir


def _load_script():
    return load_script("build_family.py")


def test_defaults_come_from_family_config():
    args = vars(_load_script().build_parser().parse_args([]))
    for field in dataclasses.fields(FamilyConfig):
        assert args[field.name] == field.default, field.name
    parser = _load_script().build_parser()
    parsed = parser.parse_args(["--max-train-files", "3", "--lr", "0.5",
                                "--tie-word-embeddings", "false"])
    assert parsed.max_train_files == 3 and parsed.lr == 0.5
    assert parsed.tie_word_embeddings is False
    assert parser.parse_args(["--max-train-files", "none"]).max_train_files is None


def test_main_prints_the_table_of_a_cached_family(tmp_path, capsys):
    config = FamilyConfig(seed=5)
    root = family_dir(config, tmp_path)
    root.mkdir(parents=True)
    row = {"lib_heldout": 50.0, "test_heldout": 80.0, "train_seen": 60.0, "train_unseen": 70.0}
    manifest = {"names": ["base"], "seconds": {"total": 12.5},
                "models": {"base": {"final_train_loss": 4.0}},
                "perplexity": {"base": row, "uniform": 2048}}
    (root / "family.json").write_text(json.dumps(manifest))
    assert _load_script().main(["--seed", "5", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert str(root) in out and "build took 12.5 s" in out
    assert "base" in out and "50.00" in out and "80.00" in out and "54.60" in out  # e^4
    assert "uniform" in out and "2048" in out
