"""bench/kernel_profile.py's trace summary (suffix_profile.py's and bench-prefill's
--profile-plans) on tiny hand-made chrome traces (the profiler itself runs only on the
device machine)."""

import gzip
import json

import pytest

from sglang_droidspeak.bench import kernel_profile as kp


def test_kernel_summary_sums_gpu_kernels_by_name_and_kind(tmp_path):
    events = [{"cat": "kernel", "name": "_fwd_kernel", "ts": 0.0, "dur": 1500.0},
              {"cat": "kernel", "name": "_fwd_kernel", "ts": 4000.0, "dur": 500.0},
              {"cat": "kernel", "name": "nvjet_tst_128x64", "ts": 1000.0, "dur": 250.0},  # inside the first
              {"cat": "kernel", "name": "rmsnorm_kernel", "ts": 1400.0, "dur": 125.0},  # ends 25 us after it
              {"cat": "cpu_op", "name": "aten::mm", "dur": 9999.0},  # not a GPU kernel
              {"cat": "kernel", "name": "no_duration"}]
    path = tmp_path / "t.trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    summary = kp.kernel_summary(str(path), top=2)
    assert summary["total_kernel_ms"] == pytest.approx(2.375)
    assert summary["by_kind_ms"] == {"attention": 2.0, "gemm": 0.25, "other": 0.125}
    assert summary["top_kernels_ms"] == [["_fwd_kernel", 2.0], ["nvjet_tst_128x64", 0.25]]
    assert summary["num_kernels"] == 4
    assert summary["span_ms"] == pytest.approx(4.5)  # 0 .. 4500 us
    assert summary["busy_ms"] == pytest.approx(1.525 + 0.5)  # [0, 1525) and [4000, 4500)
    assert summary["idle_ms"] == pytest.approx(4.5 - 2.025)


def test_busy_ms_is_the_union_of_intervals():
    assert kp.busy_ms([]) == 0.0
    assert kp.busy_ms([(0, 1000), (500, 1500), (3000, 3500), (3100, 3200)]) == pytest.approx(2.0)
    assert kp.busy_ms([(2000, 3000), (0, 1000)]) == pytest.approx(2.0)  # unsorted input


def test_kind_of_names():
    assert [kp.kind_of(n) for n in ("BatchPrefillWithPagedKVCacheKernel", "sm90_xmma_gemm_bf16", "act_and_mul")] \
        == ["attention", "gemm", "other"]


def test_largest_gaps_are_idle_stretches_longest_first():
    intervals = [(100, 200), (150, 300), (1300, 1400), (1400, 1500), (3500, 3600)]
    assert kp.largest_gaps(intervals) == [[1.4, 2.0], [0.2, 1.0]]  # after 1500 us; after 300 us
    assert kp.largest_gaps(intervals, top=1) == [[1.4, 2.0]]
    assert kp.largest_gaps([(0, 10)]) == []


def test_one_line_and_markdown_section_name_the_numbers():
    summary = {"total_kernel_ms": 12.5, "busy_ms": 10.0, "span_ms": 14.0, "idle_ms": 4.0, "num_kernels": 7,
               "by_kind_ms": {"gemm": 8.0, "attention": 4.5}}
    assert kp.one_line(summary) == ("kernels 12.5 ms (attention 4.5, gemm 8.0), GPU busy 10.0 of 14.0 ms span "
                                    "(idle 4.0), 7 kernels")
    assert kp.one_line({"error": "x"}) == "no profile (x)"
    table = kp.markdown_section([{"length": 16, "plan": "0:8", "ttft_ms": 20.0, "profile": summary},
                                 {"length": 16, "plan": "off", "profile": {"error": "no trace"}}])
    assert "| 16 | 0:8 | 20.0 | 12.5 | 4.5 | 8.0 | 0.0 | 10.0 | 14.0 | 4.0 | 7 |" in table
    assert "| 16 | off | - | no trace |" in table


def test_finished_trace_waits_for_a_whole_file(tmp_path):
    import threading

    events = {"traceEvents": [{"cat": "kernel", "name": "nvjet", "ts": 0.0, "dur": 1000.0}]}
    whole = gzip.compress(json.dumps(events).encode())
    path = tmp_path / "1-TP-0.trace.json.gz"
    path.write_bytes(whole[: len(whole) // 2])  # the profiler is still writing it
    threading.Timer(1.5, path.write_bytes, args=(whole,)).start()
    trace, summary = kp.finished_trace(tmp_path, set(), wait_s=10)
    assert trace == str(path) and summary["total_kernel_ms"] == 1.0


def test_finished_trace_ignores_old_files_and_gives_up(tmp_path):
    old = tmp_path / "old.trace.json"
    old.write_text(json.dumps({"traceEvents": []}))
    trace, summary = kp.finished_trace(tmp_path, {str(old)}, wait_s=1)
    assert trace is None and summary["error"].startswith("no whole trace under")
