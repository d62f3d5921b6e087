"""scripts/gpu/suffix_profile.py's trace summary on a tiny hand-made chrome trace (the GPU
script itself runs only on the device machine)."""

import gzip
import json

import pytest
from script_module import load_script


def load():
    return load_script("gpu/suffix_profile.py")


def test_kernel_summary_sums_gpu_kernels_by_name_and_kind(tmp_path):
    sp = load()
    events = [{"cat": "kernel", "name": "_fwd_kernel", "dur": 1500.0},
              {"cat": "kernel", "name": "_fwd_kernel", "dur": 500.0},
              {"cat": "kernel", "name": "nvjet_tst_128x64", "dur": 250.0},
              {"cat": "kernel", "name": "rmsnorm_kernel", "dur": 125.0},
              {"cat": "cpu_op", "name": "aten::mm", "dur": 9999.0},  # not a GPU kernel
              {"cat": "kernel", "name": "no_duration"}]
    path = tmp_path / "t.trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    summary = sp.kernel_summary(str(path), top=2)
    assert summary["total_kernel_ms"] == pytest.approx(2.375)
    assert summary["by_kind_ms"] == {"attention": 2.0, "gemm": 0.25, "other": 0.125}
    assert summary["top_kernels_ms"] == [["_fwd_kernel", 2.0], ["nvjet_tst_128x64", 0.25]]


def test_kind_of_names():
    sp = load()
    assert [sp.kind_of(n) for n in ("BatchPrefillWithPagedKVCacheKernel", "sm90_xmma_gemm_bf16", "act_and_mul")] \
        == ["attention", "gemm", "other"]
