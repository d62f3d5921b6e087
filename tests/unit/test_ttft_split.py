"""bench/ttft_split.py: a receiver request's TTFT split into client, server, import, sched
and forward from SGLang's meta_info, and the ceiling a perfect import could reach."""

import pytest

from sglang_droidspeak.bench import ttft_split as ts


def sample(plan, ttft_ms, e2e, queue, entry, finished, total_ms=None, length=16):
    meta = {"e2e_latency": e2e, "queue_time": queue, "forward_entry_time": entry, "prefill_finished_time": finished}
    return {"length": length, "plan": plan, "ttft_ms": ttft_ms, "meta": meta, "total_ms": total_ms}


def test_split_names_every_part():
    one = ts.split(sample("0:8", 180.0, 0.175, 0.150, 100.000, 100.020, total_ms=140.0))
    assert one.length == 16 and one.plan == "0:8"
    assert one.client == pytest.approx(5.0)  # 180 - 175
    assert one.server == pytest.approx(5.0)  # 175 - 150 - 20
    assert (one.import_ms, one.sched, one.forward) == (140.0, pytest.approx(10.0), pytest.approx(20.0))
    parts = one.client + one.server + one.import_ms + one.sched + one.forward
    assert parts == pytest.approx(one.ttft_ms)


def test_full_prefill_has_no_import_and_old_samples_are_skipped():
    full = ts.split(sample("off", 530.0, 0.525, 0.001, 10.0, 10.520))
    assert (full.import_ms, full.sched) == (0.0, pytest.approx(1.0))
    assert ts.split({"length": 16, "plan": "off", "ttft_ms": 1.0, "meta": {"e2e_latency": 0.001}}) is None


def test_medians_and_ceiling():
    samples = [sample("off", 530.0, 0.525, 0.001, 10.0, 10.520), sample("off", 540.0, 0.535, 0.001, 20.0, 20.530),
               sample("0:8", 180.0, 0.175, 0.150, 100.0, 100.020, total_ms=140.0)]
    full, ds = ts.median_splits(samples)
    assert (full.plan, full.ttft_ms, full.forward) == ("off", 535.0, pytest.approx(525.0))
    assert full.client == pytest.approx(5.0) and full.server == pytest.approx(4.0)
    # (5 + 4 + 525) / (5 + 4 + 525 / 4 + 20) = 534 / 160.25
    assert ts.ceiling(full, ds, 8, 32) == pytest.approx(534 / 160.25)


def test_markdown_section_rows_and_ceiling_column():
    samples = [sample("off", 530.0, 0.525, 0.001, 10.0, 10.520),
               sample("0:8", 180.0, 0.175, 0.150, 100.0, 100.020, total_ms=140.0),
               sample("reuse", 50.0, 0.045, 0.030, 200.0, 200.010, total_ms=25.0)]
    text = ts.markdown_section(samples, "off", {"off": 32, "0:8": 8, "reuse": 0}.get)
    rows = [line for line in text.splitlines() if line.startswith("| 16 ")]
    assert rows[0] == "| 16 | off | 530.0 | 5.0 | 4.0 | 0.0 | 1.0 | 520.0 | - |"
    assert rows[1] == "| 16 | 0:8 | 180.0 | 5.0 | 5.0 | 140.0 | 10.0 | 20.0 | 3.33x |"  # 529 / 159
    assert rows[2].endswith(f"| {529 / 19:.2f}x |")
    assert ts.markdown_section([{"length": 1, "plan": "off", "ttft_ms": 1.0}], "off", lambda p: 32) == ""
