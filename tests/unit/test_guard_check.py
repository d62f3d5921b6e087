"""scripts/gpu/guard_check.py and guard_expect.py on CPU: the expectation rows, the server configs
(parsed by the plugin's own settings loader), one receiver's run against a made-up server, and
the dry run. The guard tripping inside a real receiver (SGLang's Req and tree, imports over ZMQ)
is tests/unit/test_quality_guard_cpu.py's test_a_lying_profile_trips_the_guard_and_the_pair_prefills_normally.
"""

from __future__ import annotations

import copy
import types

import pytest
import yaml
from script_module import SCRIPTS, load_script

from sglang_droidspeak.plan.layer_plan import LayerPlan
from sglang_droidspeak.sglang.quality_guard import profile_bound
from sglang_droidspeak.sglang.settings import load_settings
from sglang_droidspeak.sglang.settings_fields import PairPlan

gc = load_script("gpu/guard_check.py")
ge = gc.ge
LIAR = "smollm2-docs-lora"
REUSED = {"droidspeak_system": ["droidspeak"], "droidspeak_plan": ["reuse-all"], "droidspeak_reason": ["static plan"]}
GUARDED = {"droidspeak_system": ["full_prefill"], "droidspeak_plan": ["none"], "droidspeak_reason": ["quality_guard"]}
TRIP = f"[2026-12-07 10:00:00] droidspeak: quality guard tripped for smollm2-base -> {LIAR}: live agreement 0.800"
ON = "[2026-12-07 09:59:00] droidspeak: quality guard on: 1 of reused greedy requests re-run at http://x (priority {})"


def cfg(role="liar", phase="no-priority"):
    return ge.expected("smollm2-base", 6, 0.01, role, phase)


def counts(checked=4, failed=0, trips=1, agreement=0.8):
    n = checked
    return {"guard_checks_total{sender=smollm2-base,outcome=checked}": checked,
            "guard_checks_total{sender=smollm2-base,outcome=failed}": failed,
            "guard_trips_total{sender=smollm2-base}": trips, "foreign_hits_total{origin=remote}": n,
            "guard_agreement_sum{sender=smollm2-base}": agreement * n, "guard_agreement_count{sender=smollm2-base}": n}


def liar_record(served=4, priority="None", **kw) -> dict:
    requests = [{"meta": dict(REUSED) if i < served else {}, "counters": {}} for i in range(6)]
    requests.append({"meta": dict(GUARDED), "counters": {"foreign_hits_total{origin=remote}": 0.0}})
    return {"requests": requests, "delta": counts(**kw), "log_lines": [ON.format(priority), TRIP]}


def failing(rows):
    return [r["check"] for r in rows if not r["pass"]]


def test_the_liar_rows_pass_and_each_can_fail():
    assert failing(ge.evaluate("liar", liar_record(), cfg(), LIAR)) == []
    low = ge.LOWEST_PRIORITY
    assert failing(ge.evaluate("liar", liar_record(priority=low), cfg(phase="priority"), LIAR)) == []
    assert failing(ge.evaluate("liar", liar_record(), cfg(phase="priority"), LIAR)) == [
        "shadow priority (guard on line)"]
    assert failing(ge.evaluate("liar", liar_record(trips=0, agreement=0.97), cfg(), LIAR)) == [
        "trips", "live agreement mean"]
    assert failing(ge.evaluate("liar", liar_record(served=3, checked=3, failed=1), cfg(), LIAR)) == [
        "served over foreign KV", "checks scored", "checks failed or dropped"]
    rec = liar_record()
    rec["requests"][-1] = {"meta": dict(REUSED), "counters": {"foreign_hits_total{origin=remote}": 1.0}}
    rec["log_lines"] = rec["log_lines"][:1]
    assert failing(ge.evaluate("liar", rec, cfg(), LIAR)) == [
        "trip warning in the log", "extra request: not reused", "extra request: foreign hits",
        "extra request: meta_info reason"]
    got = {r["check"]: r["got"] for r in ge.evaluate("liar", liar_record(), cfg(), LIAR)}
    assert got["live agreement mean"] == 0.8 and got["shadow priority (guard on line)"] == ["None"]
    assert ge.all_pass({"p": {LIAR: {"expect": ge.evaluate("liar", liar_record(), cfg(), LIAR)}}})
    assert ge.liar_note(0.8527, 0.94) == "0.087 below the trip line 0.940: it should trip"
    assert ge.liar_note(0.9365, 0.94).startswith("not clearly below") and ge.liar_note(None, 0.94).startswith("no ")
    assert not ge.all_pass({}) and "FAIL" in ge.table({"p": {LIAR: {"expect": ge.evaluate("liar", rec, cfg(), LIAR)}}})


def test_the_control_rows():
    rec = liar_record(served=6, trips=0, checked=7, agreement=0.99)
    rec["requests"][-1]["meta"], rec["log_lines"] = dict(REUSED), [ON.format("None")]
    assert failing(ge.evaluate("control", rec, cfg("control"), gc.sp.CONTROL)) == []
    rec["delta"] = counts(checked=7, trips=1, agreement=0.9)
    assert failing(ge.evaluate("control", rec, cfg("control"), gc.sp.CONTROL)) == [
        "trips", "live agreement mean (noise floor)"]
    with pytest.raises(ValueError, match="role"):
        ge.rules("sender", cfg())


def test_configs_parse_with_the_plugins_loader(tmp_path):
    args = gc.build_parser().parse_args([])
    assert (args.liar, args.context_len, args.new_tokens, args.max_total_tokens, args.backend, args.data_plane) == (
        LIAR, 1024, 32, 8192, "flashinfer", "cuda_ipc")
    specs = gc.guard_specs(args, LIAR, tmp_path, 30)
    assert [s["name"] for s in specs] == ["smollm2-base", LIAR, "smollm2-base-ctl"]
    trip_below = cfg()["trip_below"]
    for spec in specs[1:]:
        path = tmp_path / f"{spec['name']}.yaml"
        path.write_text(yaml.safe_dump(spec["config"]))
        s = load_settings(str(path))
        assert s.plans == (PairPlan("smollm2-base", spec["name"], LayerPlan(30, ())),) and s.profiles_dir is None
        assert (s.guard_fraction, s.guard_min_checks, s.guard_window, s.guard_margin, s.guard_min_output_tokens,
                s.max_quality_drop) == (1.0, 4, 8, 0.05, 8, 0.01)
        assert [p.model for p in s.peers] == ["smollm2-base"] and s.data_plane == "cuda_ipc"
        # the guard's own bound for the inline plan, minus the margin: the rows' trip line
        assert profile_bound(s, spec["name"])("smollm2-base", "reuse-all") - s.guard_margin == pytest.approx(trip_below)
    assert trip_below == 0.94 and "--enable-priority-scheduling" in ge.with_priority(specs[1])["extra"]
    assert "--enable-priority-scheduling" not in specs[1]["extra"]


class FakeLiar:
    """/metrics and the log of a receiver whose guard scores every reused request 0.8 and trips at 4."""

    def __init__(self, tmp_path):
        self.name, self.log_path, self.n, self.flushes = LIAR, tmp_path / "liar.log", 0, 0
        self.log_path.write_text(ON.format("None") + "\n")

    def metrics(self):
        lab = 'model="m",sender="smollm2-base"'
        return "\n".join([f'sglang:droidspeak_guard_checks_total{{{lab},outcome="checked"}} {self.n}',
                          f"sglang:droidspeak_guard_trips_total{{{lab}}} {int(self.n >= 4)}",
                          f"sglang:droidspeak_guard_agreement_sum{{{lab}}} {0.8 * self.n}",
                          f"sglang:droidspeak_guard_agreement_count{{{lab}}} {self.n}",
                          f'sglang:droidspeak_foreign_hits_total{{model="m",origin="remote"}} {self.n}'])

    def generate(self, server, ids, plan, new_tokens, timeout):
        assert server is self and plan == "auto" and self.flushes
        reused = self.n < 4
        if reused:
            self.n += 1
            if self.n == 4:
                self.log_path.write_text(self.log_path.read_text() + TRIP + "\n")
        meta = dict(REUSED) if reused else dict(GUARDED) if self.n >= 4 else {}
        return {"ids": [7] * new_tokens, "cached": 0, "e2e_ms": 1.0, "meta": meta}


def test_run_receiver_waits_for_each_check_then_sends_the_extra_request(tmp_path, monkeypatch):
    fake = FakeLiar(tmp_path)
    monkeypatch.setattr(gc.sr, "generate", fake.generate)
    monkeypatch.setattr(gc.pm, "flush", lambda server: setattr(fake, "flushes", fake.flushes + 1))
    args = types.SimpleNamespace(new_tokens=32, request_timeout=1.0, check_timeout=0.5, requests=6)
    rec = gc.run_receiver(fake, [[1] * 10] * 7, args, expect_trip=True)
    assert fake.flushes == 7 and rec["waits_met"] == [True] * 5  # 4 checks, then the trip before the extra one
    assert [ge.reused(r["meta"]) for r in rec["requests"]] == [True] * 4 + [False] * 3
    assert failing(ge.evaluate("liar", rec, cfg(), LIAR)) == []
    assert rec["delta"]["guard_trips_total{sender=smollm2-base}"] == 1


def test_dry_run_prints_prompts_configs_and_expectations(monkeypatch, capsys):
    from real_model import real_base_dir
    from test_real_serving import _synthetic_corpus

    import sglang_droidspeak.real.corpus as corpus_module

    real_base_dir()  # the dry run's tokenizer (every variant carries the base's)
    monkeypatch.setattr(corpus_module, "load_real_corpus", _synthetic_corpus)
    argv = ["--dry-run", "--liar", "lib-full", "--context-len", "64", "--query-len", "32",
            "--profiles-dir", str(SCRIPTS.parent / "profiles"), "--models-dir", "/nonexistent"]
    assert gc.main(copy.copy(argv)) == 0
    out = capsys.readouterr().out
    assert '"context_len": 64, "prompt_lens": [96, 92, 88, 84, 80, 76, 72]' in out
    assert "parsed: plans [('smollm2-base', 'smollm2-lib-full', 'reuse-all')] guard_fraction 1.0" in out
    assert "parsed: plans [('smollm2-base', 'smollm2-base-ctl', 'reuse-all')] guard_fraction 1.0" in out
    assert "the liar + --enable-priority-scheduling --default-priority-value 0" in out
    # lib-full (the synthetic corpus has lib files only): its committed profile's full reuse keeps the promise
    assert '"agreement": 0.9639, "note": "not clearly below the trip line 0.940: it may not trip' in out
    assert out.count("\nexpect ") == 10 + 7 + 10
    assert "expect priority     liar     shadow priority (guard on line)    [-9223372036854775808]" in out
    assert "expect no-priority  control  live agreement mean (noise floor)  >= 0.940" in out
    for bad in (["--liar", "base"], ["--requests", "3"], ["--query-len", "24"]):
        with pytest.raises(SystemExit):
            gc.main(["--dry-run", *bad])
