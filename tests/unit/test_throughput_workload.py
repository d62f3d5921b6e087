"""bench-throughput's pure parts: the seeded workload, percentiles, SLO math, the CLI spellings."""

from __future__ import annotations

import math
import random

import pytest

from sglang_droidspeak.bench import workload as wl
from sglang_droidspeak.bench.load_driver import RequestRecord, parse_targets, url_for
from sglang_droidspeak.bench.throughput_stats import (
    PointSummary, hit_warnings, max_qps_meeting_slo, percentile, summarize)
from sglang_droidspeak.cli import build_parser, normalize_argv

MIX = "coder>tester:1,coder>tester>reviewer:1"


def spec(**kw) -> wl.WorkloadSpec:
    return wl.WorkloadSpec(wl.parse_mix(MIX), **{"min_context_len": 4096, "max_context_len": 16384, **kw})


def test_sessions_are_seeded_poisson_and_exact():
    sessions = wl.make_sessions(spec(), qps=2.0, num_sessions=4, seed=0)
    rng, clock = random.Random(0), 0.0  # the same draws, in the documented order
    for s in sessions:
        clock += rng.expovariate(2.0)
        agents = rng.choices(wl.parse_mix(MIX), [1.0, 1.0])[0].agents
        context_len = wl.log_uniform_int(rng, 4096, 16384)
        suffixes = tuple(rng.randint(32, 128) for _ in agents)
        assert (s.arrival_s, s.agents, s.context_len, s.suffix_lens, s.max_new_tokens) == (
            clock, agents, context_len, suffixes, 64)
    chain, pair = ("coder", "tester", "reviewer"), ("coder", "tester")
    assert [s.agents for s in sessions] == [chain, chain, pair, chain]
    assert sessions[0].arrival_s == 1.8606071110652234 / 2 and sessions[0].suffix_lens == (65, 97, 94)
    assert [s.context_len for s in sessions] == [7338, 6237, 4968, 16098]
    assert [s.session_id for s in sessions] == [0, 1, 2, 3]
    assert sessions == wl.make_sessions(spec(), 2.0, 4, seed=0) != wl.make_sessions(spec(), 2.0, 4, seed=1)


def test_same_seed_other_qps_scales_arrivals_only():
    slow, fast = (wl.make_sessions(spec(), q, 6, seed=3) for q in (1.0, 4.0))
    assert [s.arrival_s / 4 for s in slow] == pytest.approx([s.arrival_s for s in fast], rel=1e-12)
    assert [(s.context_len, s.agents, s.suffix_lens) for s in slow] == [
        (s.context_len, s.agents, s.suffix_lens) for s in fast]


def test_token_ids_share_the_context_and_depend_on_salt():
    session = wl.Session(0, 0.5, 10, ("coder", "tester", "reviewer"), (2, 3, 4), 8)
    ids = wl.session_token_ids(session, seed=0, salt="off@1")
    assert [len(x) for x in ids] == [12, 13, 14]
    assert ids[0][:10] == ids[1][:10] == ids[2][:10] and ids[0][10:] != ids[1][10:12]
    assert all(wl.VOCAB_LOW <= t < wl.VOCAB_HIGH for x in ids for t in x)
    assert ids == wl.session_token_ids(session, 0, "off@1") and ids != wl.session_token_ids(session, 0, "reuse@1")


def test_parse_mix_and_bounds():
    assert wl.parse_mix("a>b, a>b>c:2.5") == (wl.Pipeline(("a", "b"), 1.0), wl.Pipeline(("a", "b", "c"), 2.5))
    assert wl.models_of(wl.parse_mix("coder>tester,coder>reviewer>tester")) == ["coder", "tester", "reviewer"]
    for bad in ("a>>b", "a>b:0", "a>b:x", ""):
        with pytest.raises(ValueError):
            wl.parse_mix(bad)
    with pytest.raises(ValueError, match="context"):
        wl.make_sessions(spec(min_context_len=20000), 1.0, 1, 0)
    rng = random.Random(5)
    assert all(4096 <= wl.log_uniform_int(rng, 4096, 16384) <= 16384 for _ in range(2000))
    assert wl.log_uniform_int(rng, 7, 7) == 7


def test_percentile_exact():
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.5
    assert percentile([10.0, 20.0, 30.0, 40.0, 50.0], 90) == 46.0
    assert percentile([1.0, 2.0], 0) == 1.0 and percentile([1.0, 2.0], 100) == 2.0
    assert percentile([1.0, 2.0, math.inf], 90) == math.inf and percentile([1.0, 2.0, math.inf], 50) == 2.0
    assert percentile([math.inf, math.inf], 50) == math.inf
    with pytest.raises(ValueError):
        percentile([], 50)


def rec(step: int, ttft: float | None, gaps=(), e2e=100.0, cached=None, error=None, context_len=64) -> RequestRecord:
    return RequestRecord(0, step, "m", "0:8", context_len, context_len + 8, 0.0, ttft, e2e, tuple(gaps),
                         len(gaps) + 1, cached, error)


def test_summarize_exact():
    records = [rec(0, 100.0, (10.0, 20.0), e2e=200.0, cached=0), rec(1, 300.0, (30.0,), e2e=400.0, cached=63),
               rec(1, 200.0, (), e2e=300.0, cached=5), rec(2, None, e2e=50.0, error="HTTP 500: boom")]
    p = summarize(records, "0:8", 2.0, 2, wall_s=4.0, slo_ttft_ms=250.0, slo_percentile=50)
    assert p == PointSummary("0:8", 2.0, 2, 4, 1, 4.0, 1.0, 200.0, 200.0, 280.0, 298.0, 50, 250.0, 250.0, True,
                             20.0, 300.0, 380.0, 0.5, 1, 3)
    p90 = summarize(records, "0:8", 2.0, 2, 4.0, 250.0, 90)
    assert (p90.ttft_slo_ms, p90.slo_met) == (math.inf, False)  # the failure is in the top 10 %
    with pytest.raises(ValueError):
        summarize([], "off", 1.0, 1, 1.0, 1.0, 90)


def point(system: str, qps: float, met: bool, hits: int = 0, receivers: int = 0) -> PointSummary:
    return PointSummary(system, qps, 1, 1, 0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 90, 1.0, 1.0, met, None, 1.0, 1.0, 1.0,
                        hits, receivers)


def test_max_qps_meeting_slo_and_warnings():
    points = [point("off", 1, True), point("off", 4, False), point("off", 2, True), point("off", 8, True),
              point("reuse", 1, True, 2, 2), point("reuse", 2, True, 1, 2), point("0:8", 1, False)]
    assert max_qps_meeting_slo(points, "off") == 2  # 8 passes, but 4 below it does not
    assert max_qps_meeting_slo(points, "reuse") == 2
    assert max_qps_meeting_slo(points, "0:8") is None and max_qps_meeting_slo(points, "auto") is None
    assert hit_warnings(points + [point("off", 16, True, 1, 3)]) == [
        "reuse @ 2: 1 of 2 receiver requests fell back to prefill",
        "off @ 16: 1 receiver requests reused the context"]


def test_targets():
    assert parse_targets("http://r:8000/") == {"": "http://r:8000"}
    both = parse_targets("coder=http://a:1, tester=http://b:2/")
    assert both == {"coder": "http://a:1", "tester": "http://b:2"} and url_for(both, "tester") == "http://b:2"
    with pytest.raises(ValueError, match="reviewer"):
        url_for(both, "reviewer")
    with pytest.raises(ValueError):
        parse_targets("coder=")


def test_bench_spellings():
    assert normalize_argv(["bench", "throughput", "--qps", "1"]) == ["bench-throughput", "--qps", "1"]
    assert normalize_argv(["bench", "prefill"]) == ["bench-prefill"]
    assert normalize_argv(["bench-prefill", "bench"]) == ["bench-prefill", "bench"]
    args = build_parser(["bench", "throughput"]).parse_args(normalize_argv(["bench", "throughput", "--qps", "3"]))
    assert (args.command, args.qps, args.num_sessions, args.slo_percentile) == ("bench-throughput", "3", 16, 90.0)


def test_module_imports_no_sglang_or_torch():
    import subprocess
    import sys
    code = ("import sys, sglang_droidspeak.cli as c; c.build_parser(['bench', 'throughput']); "
            "import sglang_droidspeak.bench.throughput, sglang_droidspeak.bench.throughput_servers; "
            "print(sorted(m for m in sys.modules if m in ('torch', 'sglang', 'matplotlib')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_sessions_per_point_grow_with_qps_under_arrival_s():
    from sglang_droidspeak.bench.throughput import ThroughputConfig, sessions_at
    from sglang_droidspeak.bench.throughput_report import sessions_note

    burst = ThroughputConfig(num_sessions=12)
    steady = ThroughputConfig(num_sessions=12, arrival_s=10.0)
    assert [sessions_at(burst, q) for q in (0.5, 1, 8)] == [12, 12, 12]
    assert [sessions_at(steady, q) for q in (0.5, 1, 1.25, 2, 3.3, 8)] == [12, 12, 13, 20, 33, 80]
    assert sessions_note({"num_sessions": 12, "arrival_s": 0.0}) == "12 sessions"
    assert sessions_note({"num_sessions": 12, "arrival_s": 10.0}) == "max(12, QPS x 10 s) sessions"
    assert sessions_note({"num_sessions": 12}) == "12 sessions"  # results written before --arrival-s


def test_negative_arrival_s_is_refused(tmp_path, capsys):
    from sglang_droidspeak.cli import main
    with pytest.raises(SystemExit) as info:  # argparse (config_cli: floats >= 0): the usage and status 2
        main(["bench-throughput", "--url", "http://127.0.0.1:9", "--arrival-s", "-1", "--out",
              str(tmp_path / "x.json")])
    assert info.value.code == 2
    assert capsys.readouterr().err.endswith("error: argument --arrival-s: must be >= 0, got -1\n")
