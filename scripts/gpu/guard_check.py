"""The live quality guard on real weights through SGLang (issue 16 item 5; docs/GPU_PLAN.md).

Here (CPU):  bash ../shared/device/stage.sh; bash scripts/install_cpu.sh; python3 scripts/gpu/stage_real.py
             (rehearse: python3 scripts/gpu/guard_check.py --dry-run [ARGS]: prompts, configs, expectations)
Device calls, each within the warm window of the previous one:
  1. carry [".device"], command `source .device/sglang-env.sh .device/sglang-0.5.17-site.tar.xz`
  2. carry [".device-smol/part1"], command `bash scripts/gpu/real_stage.sh part1`
  3. carry [".device-smol/part2"], command
     `bash scripts/gpu/real_stage.sh part2 && bash scripts/gpu/session.sh start 540 real_family guard_check`
     (with real_serving too: `... start 540 real_family real_serving guard_check`)
  4. `bash scripts/gpu/session.sh wait 540` until `all steps done`
Beside a session already running real_family (own ports 31520-31522, ZMQ 5970-5971):
  `DS_SESSION=guard bash scripts/gpu/session.sh start 540 await_session:ds-session+900 guard_check`,
  then `DS_SESSION=guard bash scripts/gpu/session.sh wait 540`
Alone (real family already there): `bash scripts/gpu/guard_check.sh [--liar smollm2-test-lora] ...`;
  as a session step, '+' separates the args: guard_check:--liar+smollm2-test-lora

Servers (serving_requests.server_specs: bf16, one GPU, cuda_ipc, a small --max-total-tokens), started
together: smollm2-base, the sender of one held-out context; ``--liar`` and smollm2-base-ctl (the
sender's weights), both with an inline full-reuse plan from it (``guard_specs``), no profiles,
``--max-quality-drop`` (bound 1 - it) and guard_expect.GUARD. The liar's promise is one full reuse
cannot keep (its profile: 0.853 for docs-lora, 0.936 for test-lora): it must trip; the control not.
Phase "no-priority", then phase "priority": the liar alone, restarted with PRIORITY_ARGS. The
requests and the expectations: scripts/gpu/guard_expect.py.

Writes $OUT/guard-check.json (configs, prompts, every request's droidspeak meta_info keys and
counter deltas, metric deltas and "quality guard" log lines per receiver, PASS/FAIL rows) after
each phase, server logs under $OUT/servers/ (the restarted liar's: servers/priority/); prints the
rows; exit 1 on any FAIL. Expected on one H100: 1-3 min to start, about 1-2 min per phase; no
phase starts after ``--budget-s``. Copy the JSON to docs/results/guard-check-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import guard_expect as ge  # noqa: E402
import real_serving as rs  # noqa: E402  (also puts the checkout on sys.path)
import serving_measure as sm  # noqa: E402
import serving_plans as sp  # noqa: E402
import serving_requests as sr  # noqa: E402

from sglang_droidspeak.bench import prefill_model as pm  # noqa: E402
from sglang_droidspeak.bench.servers import argv_of, wait_healthy  # noqa: E402

GUARD, PHASES, CUT, PRIORITY_ARGS = ge.GUARD, ge.PHASES, ge.CUT, ge.PRIORITY_ARGS
SAMPLES = sr.COUNTERS + ge.GUARD_SAMPLES
SESSION = "bash scripts/gpu/session.sh start 540 real_family guard_check"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--liar", default="smollm2-docs-lora", help="the lying receiver (serving_plans.model_name)")
    p.add_argument("--max-quality-drop", type=float, default=0.01, help="both receivers' promise: bound 1 - this")
    p.add_argument("--requests", type=int, default=6, help="greedy requests per receiver before the extra one")
    p.add_argument("--check-timeout", type=float, default=45.0, help="seconds to wait for one shadow check")
    p.add_argument("--profiles-dir", default="", help="read only: the liar's measured full-reuse agreement "
                   "(default: $DROIDSPEAK_REAL_DIR/results/profiles, else the committed profiles/)")
    rs.add_server_args(p)
    p.set_defaults(context_len=1024, query_len=48, max_total_tokens=8192, port_base=31520, zmq_base=5970,
                   budget_s=300.0, num_prompts=1, control=True)
    return p


def guard_specs(args, liar: str, models_dir: Path, num_layers: int) -> list[dict]:
    """real_serving's sender, liar (as its receiver) and control, the receivers' configs made
    guard configs: an inline full-reuse plan from the sender, no profiles, ``GUARD``."""
    specs = sr.server_specs(args, liar, models_dir, Path("."))
    for spec in specs[1:]:
        config = spec["config"]
        config.pop("profiles_dir", None)
        config.update(max_quality_drop=args.max_quality_drop, plans=[
            {"sender": sp.SENDER, "receiver": config["model"], "num_layers": num_layers, "groups": []}], **GUARD)
    return specs


def cfg_of(args, role: str, phase: str) -> dict:  # guard_expect.rules' cfg
    return ge.expected(sp.SENDER, args.requests, args.max_quality_drop, role, phase)


def wait_until(server, start: dict, done, timeout: float) -> bool:
    """Poll ``server``'s counters until ``done(delta since start)`` or ``timeout`` seconds."""
    deadline = time.perf_counter() + timeout
    while not done(sr.counter_delta(start, sr.counters(server.metrics(), SAMPLES))):
        if time.perf_counter() > deadline:
            return False
        time.sleep(0.2)
    return True


def run_receiver(server, prompts: list[list[int]], args, expect_trip: bool) -> dict:
    """Each prompt on a flushed cache; after each reused one, wait for its shadow check (or the
    trip); the last one once the trip is in (liar) or right away (control)."""
    start, rows, eligible, waits = sr.counters(server.metrics(), SAMPLES), [], 0, []
    checks = lambda d: ge.sample(d, "guard_checks_total", sender=sp.SENDER)  # noqa: E731
    trips = lambda d: ge.sample(d, "guard_trips_total", sender=sp.SENDER)  # noqa: E731
    for i, ids in enumerate(prompts):
        if i == len(prompts) - 1 and expect_trip:
            waits.append(wait_until(server, start, lambda d: trips(d) >= 1, args.check_timeout))
        pm.flush(server)
        before = sr.counters(server.metrics(), SAMPLES)
        got = sr.generate(server, ids, "auto", args.new_tokens, args.request_timeout)
        rows.append({"receiver": server.name, "request": i, "prompt_len": len(ids), "cached": got["cached"],
                     "output_len": len(got["ids"]), "e2e_ms": got["e2e_ms"],
                     "meta": {k: v for k, v in got["meta"].items() if k.startswith("droidspeak")},
                     "counters": sr.counter_delta(before, sr.counters(server.metrics(), SAMPLES))})
        if i < len(prompts) - 1 and ge.reused(got["meta"]) and len(got["ids"]) >= GUARD["guard_min_output_tokens"]:
            eligible += 1
            waits.append(wait_until(server, start, lambda d: checks(d) >= eligible or trips(d) >= 1,
                                    args.check_timeout))
    lines = [ln for ln in server.log_path.read_text(errors="replace").splitlines() if "quality guard" in ln]
    return {"requests": rows, "waits_met": waits, "log_lines": lines,
            "delta": sr.counter_delta(start, sr.counters(server.metrics(), SAMPLES))}


def run_phase(phase: str, sender, receivers: dict, warm, prompts: list[list[int]], args) -> dict:
    """Warm-up (a forced plan: never checked), the context on the sender, every receiver's run."""
    pm.flush(sender)
    sr.prefill(sender, list(warm.context_ids), args.request_timeout)
    time.sleep(args.announce_wait)
    for server in receivers.values():
        sr.generate(server, list(warm.prompt_ids), "reuse", args.new_tokens, args.request_timeout)
        pm.flush(server)
    pm.flush(sender)
    sr.prefill(sender, prompts[0][:args.context_len], args.request_timeout)
    time.sleep(args.announce_wait)
    out = {}
    for role, server in receivers.items():
        rec = run_receiver(server, prompts, args, role == "liar")
        rec["expect"] = ge.evaluate(role, rec, cfg_of(args, role, phase), server.name)
        out[server.name] = rec
        print(f"[{time.strftime('%X')}] {phase} {server.name}: "
              f"{sum(r['pass'] for r in rec['expect'])}/{len(rec['expect'])} rows pass", flush=True)
    return out


def measure(servers: dict, specs: list[dict], liar: str, warm, prompts: list[list[int]], args, result: dict,
            work: Path, out_path: Path) -> None:
    t0 = time.perf_counter()
    for phase in PHASES:
        if time.perf_counter() - t0 > args.budget_s:
            result["cut_short"] = f"--budget-s {args.budget_s}: phase {phase} not run"
            break
        if phase == "priority":
            servers[liar].stop()
            (work / phase).mkdir(parents=True, exist_ok=True)
            servers[liar] = sr.start(ge.with_priority(specs[1]), work / phase)
            wait_healthy([servers[liar]], timeout=args.startup_timeout)
            result["server_args"][phase] = argv_of([servers[liar]])
        if not all(s.alive() for s in servers.values()):
            raise RuntimeError("a server died")  # main prints its log's tail
        receivers = {role: servers[liar if role == "liar" else sp.CONTROL] for role in ge.ROLES[phase]}
        result["phases"][phase] = run_phase(phase, servers[sp.SENDER], receivers, warm, prompts, args)
        sm.write(result, out_path)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        liar = sp.model_name(args.liar)
    except ValueError as exc:
        raise SystemExit(str(exc).replace("--receiver", "--liar")) from None
    if args.requests < GUARD["guard_min_checks"] or args.query_len <= CUT * args.requests or args.context_len < 16:
        raise SystemExit(f"need --requests >= {GUARD['guard_min_checks']}, --query-len > {CUT} x it, "
                         "--context-len >= 16")
    models_dir, out_dir = Path(args.models_dir), Path(os.environ.get("OUT", "/tmp/out"))
    out_path, work = Path(args.out or out_dir / "guard-check.json"), Path(args.work_dir or out_dir / "servers")
    profiles = Path(args.profiles_dir) if args.profiles_dir else next(
        (d for d in (rs.WORK / "results" / "profiles", rs.ROOT / "profiles") if d.is_dir()), rs.ROOT / "profiles")
    profile, profile_path = sp.load_pair_profile(profiles, liar)
    measured = {"profile": str(profile_path), "agreement": profile and round(profile.full_reuse_quality, 4)}
    measured["note"] = ge.liar_note(measured["agreement"], cfg_of(args, "liar", PHASES[0])["trip_below"])
    print(f"{liar}'s full-reuse agreement: {json.dumps(measured)}", flush=True)
    num_layers = sp.num_layers_of(models_dir, liar, profile)
    specs = guard_specs(args, liar, models_dir, num_layers)
    step = " ".join(["bash scripts/gpu/guard_check.sh", *(argv if argv is not None else sys.argv[1:])])
    result: dict[str, Any] = {
        "date": dt.date.today().isoformat(), "command": step.strip(), "session_command": SESSION,
        "card": None if args.dry_run else pm.card(), "versions": sm.versions(), "args": vars(args),
        "sender": sp.SENDER, "liar": liar, "control": sp.CONTROL, "num_layers": num_layers, "guard": GUARD,
        "liar_full_reuse_agreement": measured,
        "droidspeak_config": {s["name"]: s["config"] for s in specs}, "priority_args": PRIORITY_ARGS,
        "expected": {f"{role}/{phase}": cfg_of(args, role, phase) for phase in PHASES for role in ge.ROLES[phase]},
        "phases": {}}
    if args.dry_run:
        return dry_run(args, liar, models_dir, specs, result)
    if any(not (Path(s["model"]) / "config.json").is_file() for s in specs):
        raise SystemExit(f"{[s['model'] for s in specs]}: a config.json is missing (run real_family here first)")
    work.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    servers = {s["name"]: sr.start(s, work) for s in specs}
    result["server_args"] = argv_of(list(servers.values()))
    try:
        examples, prompts, result["prompts"] = load_prompts(args, liar, models_dir)  # while the servers start
        wait_healthy(list(servers.values()), timeout=args.startup_timeout)
        result["startup_s"] = round(time.perf_counter() - began, 1)
        measure(servers, specs, liar, examples[-1], prompts, args, result, work, out_path)
    except Exception as exc:
        sm.record_error(result, servers, exc)
    finally:
        for server in servers.values():
            server.stop()
        sm.write(result, out_path)
    print(ge.table(result["phases"]))
    ok = ge.all_pass(result["phases"]) and not result.get("error") and "cut_short" not in result
    print(f"written: {out_path} ({time.perf_counter() - began:.0f} s): {'PASS' if ok else 'FAIL'}, "
          f"error {result.get('error')}")
    return 0 if ok else 1


def load_prompts(args, liar: str, models_dir: Path) -> tuple[list, list[list[int]], dict]:
    """The liar's held-out lcc examples (the first: the requests' context; the last: the warm-up),
    the requests (guard_expect.requests_of) and their record."""
    tokenizer, tok_path = sp.load_tokenizer(args, liar, models_dir)
    examples = sp.build_prompts(tokenizer, sp.HELDOUT[liar.removeprefix(sp.PREFIX)], args)
    prompts = ge.requests_of(examples[0], args.query_len, args.requests)
    return examples, prompts, {"task": "lcc", "example": examples[0].example_id, "warm_up": examples[-1].example_id,
                               "context_len": len(examples[0].context_ids), "prompt_lens": [len(x) for x in prompts],
                               "seed": args.seed, "tokenizer": str(tok_path)}


def dry_run(args, liar: str, models_dir: Path, specs: list[dict], result: dict) -> int:
    from sglang_droidspeak.sglang.settings import parse_settings

    _, _, result["prompts"] = load_prompts(args, liar, models_dir)
    print("prompts: " + json.dumps(result["prompts"]))
    for spec in specs:
        settings = parse_settings(spec["config"], where=spec["name"])  # the plugin's own loader
        plans = [(p.sender, p.receiver, str(p.plan)) for p in settings.plans]
        print(f"server {spec['name']:18} port {spec['port']} model {spec['model']}\n  config "
              f"{json.dumps(spec['config'])}\n  parsed: plans {plans} guard_fraction {settings.guard_fraction}")
    print(f"extra args {' '.join(specs[0]['extra'])}; phase priority: the liar + {' '.join(PRIORITY_ARGS)}")
    for phase, role in ((phase, role) for phase in PHASES for role in ge.ROLES[phase]):
        for check, expect, _, _ in ge.rules(role, cfg_of(args, role, phase)):
            print(f"expect {phase:12} {role:8} {check:34} {expect}")
    print(json.dumps({k: result[k] for k in ("command", "liar", "num_layers", "guard")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
