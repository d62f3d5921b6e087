"""``droidspeak quality-latency`` on tiny synthetic inputs: exact TTFT interpolation, the
equal-latency comparison, out-of-range budgets left out, and the CLI's three outputs.

Bench (32 layers, length 100; medians): off 100, reuse 500, 0:4 400, 0:8 300,
blend:0.125 450, blend:0.375 250. Full prefill 100 ms, so relative TTFT = ms / 100.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sglang_droidspeak.bench import quality_latency_compare as compare
from sglang_droidspeak.bench import quality_latency_map as qmap
from sglang_droidspeak.bench.quality_latency import build_study
from sglang_droidspeak.cli import main

TTFT = {"off": 100.0, "reuse": 500.0, "0:4": 400.0, "0:8": 300.0, "blend:0.125": 450.0, "blend:0.375": 250.0}


def bench(ttft=TTFT, length=100):
    samples = [{"length": length, "plan": plan, "repeat": r, "ttft_ms": ms + delta}
               for plan, ms in ttft.items() for r, delta in enumerate((-7.0, 0.0, 30.0))]  # median = ms
    samples += [{"length": 2 * length, "plan": "off", "repeat": 0, "ttft_ms": 1.0}]  # another length
    return {"date": "2026-11-29", "card": "FAKE GPU", "command": "droidspeak bench-prefill --fake",
            "model_note": "8B shapes", "num_layers": 32, "repeats": 3, "plans": list(ttft), "samples": samples}


def row(system, f, agreement, nll):
    return {"system": system, "recompute_fraction": f, "agreement": agreement, "target_acc": 0.5,
            "target_nll": nll, "edit_sim": 0.3}


QUALITY = {"date": "2026-11-28", "machine": "CPU", "command": "droidspeak quality --fake", "num_examples": 4,
           "config": {"sender": "s", "receiver": "r", "dataset": "lcc", "split": "x"}, "rows": [
               row("receiver", 1.0, 1.0, 4.0), row("sender", 0.0, 0.5, 5.0), row("plan:reuse-all", 0.0, 0.80, 4.5),
               row("plan:[0, 1)", 0.125, 0.90, 4.2), row("plan:[0, 2)", 0.25, 0.91, 4.1),
               row("plan:[0, 3)", 0.375, 0.95, 4.05), row("plan:[0, 8)", 1.0, 1.0, 4.0),
               row("cacheblend:1", 0.125, 0.86, 4.3), row("cacheblend:2", 0.25, 0.90, 4.2),
               row("cacheblend:3", 0.375, 0.94, 4.1), row("cacheblend:5", 0.625, 0.97, 4.05)]}


def study(ttft=TTFT):
    return build_study(QUALITY, bench(ttft), 100, "droidspeak quality-latency --test", "q.json", "b.json")


def by_system(items):
    return {x.system: x for x in items}


def test_latency_is_measured_or_interpolated_in_budget_and_never_extrapolated():
    points, left = by_system(study().points), by_system(study().left_out)
    assert {s: (p.ttft_ms, p.measured, p.source) for s, p in points.items()} == {
        "receiver": (100.0, True, "off"), "plan:reuse-all": (500.0, True, "reuse"),
        "plan:[0, 1)": (400.0, True, "0:4"), "plan:[0, 2)": (300.0, True, "0:8"),
        "plan:[0, 3)": (pytest.approx(300 - 200 / 6), False, "0:8 .. off"), "plan:[0, 8)": (100.0, True, "off"),
        "cacheblend:1": (450.0, True, "blend:0.125"), "cacheblend:2": (350.0, False, "blend:0.125 .. blend:0.375"),
        "cacheblend:3": (250.0, True, "blend:0.375")}
    assert points["cacheblend:2"].relative == pytest.approx(3.5)
    assert sorted(left) == ["cacheblend:5", "sender"]
    assert "not extrapolated" in left["cacheblend:5"].reason and "0.375 (blend:0.375)" in left["cacheblend:5"].reason


def test_equal_latency_interpolates_cacheblend_in_ttft():
    s = study()
    got = by_system(s.comparisons)
    assert sorted(got) == ["plan:[0, 1)", "plan:[0, 2)", "plan:[0, 3)"]
    # [0, 1) at 4.0: halfway between cacheblend:1 (4.5) and cacheblend:2 (3.5)
    assert got["plan:[0, 1)"].cacheblend["agreement"] == pytest.approx(0.88)
    assert got["plan:[0, 1)"].difference["agreement"] == pytest.approx(0.02)
    assert got["plan:[0, 1)"].difference["target_nll"] == pytest.approx(-0.05)
    # [0, 2) at 3.0: halfway between cacheblend:2 (3.5) and cacheblend:3 (2.5)
    assert got["plan:[0, 2)"].difference["agreement"] == pytest.approx(-0.01)
    # [0, 3) at 2.666..: 5/6 of the way from cacheblend:2 to cacheblend:3
    assert got["plan:[0, 3)"].cacheblend["agreement"] == pytest.approx(0.90 + 0.04 * 5 / 6)
    assert got["plan:[0, 3)"].cacheblend["target_nll"] == pytest.approx(4.2 - 0.1 * 5 / 6)
    assert not any(c.ambiguous for c in s.comparisons)
    outside = by_system(s.not_compared)["plan:[0, 8)"]
    assert "outside [2.500, 5.000]" in outside.reason
    assert [(v.metric, v.compared, v.better) for v in s.verdicts] == [("agreement", 3, 2), ("target_nll", 3, 3)]
    assert s.verdicts[0].text.startswith("not met") and s.verdicts[1].text.startswith("met")


def test_no_blend_rows_mean_no_cacheblend_curve_and_no_verdict():
    s = study({k: v for k, v in TTFT.items() if not k.startswith("blend")})
    assert not any(p.kind == qmap.CACHEBLEND for p in s.points) and s.comparisons == []
    assert {x.system for x in s.left_out} == {"sender", "cacheblend:1", "cacheblend:2", "cacheblend:3", "cacheblend:5"}
    assert all("no CacheBlend-style point" in x.reason for x in s.not_compared) and len(s.not_compared) == 4
    assert all(v.compared == 0 and "CacheBlend-style has no point" in v.text for v in s.verdicts)
    far = study({**TTFT, "blend:0.125": 5000.0, "blend:0.375": 4000.0})  # CacheBlend far slower: no overlap
    assert far.comparisons == [] and all("latency range" in v.text for v in far.verdicts)


def test_without_reuse_the_zero_budget_is_left_out():
    s = study({k: v for k, v in TTFT.items() if k != "reuse"})
    left = by_system(s.left_out)
    assert "plan:reuse-all" in left and "cacheblend:1" not in left
    assert by_system(s.points)["plan:[0, 1)"].source == "0:4"


def test_other_plans_and_a_missing_length():
    curves = qmap.bench_curves(bench({**TTFT, "4:8": 350.0, "0:4,8:12": 200.0, "blend:0.25@2": 300.0}), 100)
    assert [a.plan for a in curves.droidspeak] == ["reuse", "0:4", "0:8", "off"]
    assert [a.plan for a in curves.cacheblend] == ["reuse", "blend:0.125", "blend:0.375"]
    assert len(curves.ignored) == 3
    with pytest.raises(ValueError, match="no full prefill .* at length 7; lengths with one: \\[100, 200\\]"):
        qmap.bench_curves(bench(), 7)


def test_only_the_bench_first_config_counts():
    swept = bench()
    swept["configs"] = [{"pipelined": True, "throttle_gbps": None}, {"pipelined": False, "throttle_gbps": 10.0}]
    swept["samples"] += [{"length": 100, "plan": "0:4", "repeat": r, "ttft_ms": 9000.0, "pipelined": False,
                          "throttle_gbps": 10.0} for r in range(5)]
    assert qmap.medians_at(swept, 100)["0:4"] == 400.0


def test_a_ttft_crossed_twice_takes_cacheblends_best_and_says_so():
    def point(system, kind, relative, agreement, nll):
        return qmap.Point(system, kind, 0.0, relative, relative, True, "", {"agreement": agreement, "target_nll": nll})
    points = [point("plan:reuse-all", qmap.REUSE, 5.0, 0.80, 4.5), point("cacheblend:1", qmap.CACHEBLEND, 3.0, 0.90, 4.3),
              point("cacheblend:2", qmap.CACHEBLEND, 4.0, 0.95, 4.4)]
    quality, ambiguous = compare.cacheblend_at(points, 3.5)
    assert ambiguous and quality == {"agreement": pytest.approx(0.925), "target_nll": pytest.approx(4.35)}
    assert compare.cacheblend_at(points, 2.0) is None


def test_cli_writes_markdown_png_and_json(tmp_path):
    (tmp_path / "q.json").write_text(json.dumps(QUALITY))
    (tmp_path / "b.json").write_text(json.dumps(bench()))
    out = tmp_path / "out" / "ql"
    assert main(["quality-latency", "--quality", str(tmp_path / "q.json"), "--bench", str(tmp_path / "b.json"),
                 "--length", "100", "--out", f"{out}.json"]) == 0
    md = (tmp_path / "out" / "ql.md").read_text()
    assert "micro family (8 layers) on the CPU reference engine" in md and "FAKE GPU" in md
    assert "droidspeak bench-prefill --fake" in md and "droidspeak quality --fake" in md
    assert "| plan:[0, 3) | 0.375 | 266.7 | 2.667 | interpolated (0:8 .. off) |" in md
    assert "| plan:[0, 1) | 0.125 | 4.000 | 0.900 | 0.880 | +0.020 |" in md
    assert "- agreement: not met: strictly better at 2 of the 3 equal-latency point(s)" in md
    result = json.loads((tmp_path / "out" / "ql.json").read_text())
    assert result["verdicts"][1]["better"] == 3 and result["plot"] == "ql.png"
    assert (tmp_path / "out" / "ql.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="no full prefill"):
        main(["quality-latency", "--quality", str(tmp_path / "q.json"), "--bench", str(tmp_path / "b.json"),
              "--length", "5", "--out", str(out)])


def test_module_imports_no_sglang_torch_or_matplotlib():
    code = ("import sys, sglang_droidspeak.cli as c; c.build_parser(['quality-latency']); "
            "print(sorted(m for m in sys.modules if m in ('torch', 'sglang', 'matplotlib')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
