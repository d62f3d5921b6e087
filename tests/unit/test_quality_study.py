"""``droidspeak quality`` end to end on tiny models: rows per system with 95% intervals."""

from __future__ import annotations

import argparse
import json

import pytest
from test_profiler_run import SMALL, model_dirs, tokenizer  # noqa: F401 (fixtures)

from sglang_droidspeak.profiler import quality_study
from sglang_droidspeak.profiler.quality_study import QualityConfig, ci95_half_width
from sglang_droidspeak.profiler.runner import ProfileConfig, run_profile


def test_ci95_is_the_normal_interval_of_the_mean():
    assert ci95_half_width([1.0]) == 0.0
    assert ci95_half_width([0.0, 2.0]) == pytest.approx(1.96 * (2.0 ** 0.5) / (2 ** 0.5))
    with pytest.raises(ValueError, match="split: corpus 'django' has splits"):
        QualityConfig(corpus="django", split="base")


def test_the_study_writes_rows_with_intervals(tmp_path, model_dirs, monkeypatch):  # noqa: F811
    monkeypatch.setenv("DROIDSPEAK_CACHE", str(tmp_path / "cache"))
    profiles = tmp_path / "profiles"
    run_profile(ProfileConfig(sender=str(model_dirs["a"]), receiver=str(model_dirs["b"]), num_examples=2,
                              out_dir=str(profiles), work_dir=str(tmp_path / "w"), progress=False, plots=False,
                              granularity=2, max_new_tokens=6, generate=False, **SMALL))
    args = argparse.Namespace(**vars(QualityConfig(
        sender=str(model_dirs["a"]), receiver=str(model_dirs["b"]), num_examples=3, profiles_dir=str(profiles),
        docs_dir=str(tmp_path / "docs"), **SMALL)))
    assert quality_study.run(args) == 0
    result = json.loads((tmp_path / "docs" / "results" / "quality-a__b-lcc.json").read_text())
    rows = {r["system"]: r for r in result["rows"]}
    assert {"receiver", "sender", "plan:reuse-all"} <= set(rows)
    assert rows["receiver"]["agreement"] == 1.0 and rows["receiver"]["ci95"]["agreement"] == 0.0
    assert all(set(r["ci95"]) == {"edit_sim", "agreement", "target_acc", "target_nll"} for r in rows.values())
    assert " ± " in (tmp_path / "docs" / "quality-a__b-lcc.md").read_text()
