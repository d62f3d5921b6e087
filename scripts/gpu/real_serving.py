"""Real weights through SGLang: a fine-tune reuses the base's KV over long shared contexts (issue 16, item 6).

    bash scripts/gpu/session.sh start 540 real_family real_serving   # a session step, after real_family
    bash scripts/gpu/real_serving.sh [ARGS]                          # alone, on a machine where real_family ran
    python3 scripts/gpu/real_serving.py --dry-run [ARGS]             # here (CPU): build the prompts, print the plan

Inputs (made earlier on the same machine by scripts/gpu/real_family.sh, under
$DROIDSPEAK_REAL_DIR, default /tmp/ds-real): the HF dirs models/smollm2-base (a symlink to
the converted base) and models/smollm2-{lib-full,test-lora,docs-lora} (full weights,
LoRAs merged), and the profiles results/profiles/smollm2-base__smollm2-<ft>.yaml.

Servers (stock sglang 0.5.17 + the plugin, bf16, CUDA graphs and the overlap scheduler on,
``--skip-tokenizer-init``: token ids in and out, as scripts/gpu/engine_exactness.py), all
on one GPU, started together, data plane cuda_ipc:

    name               weights            role
    smollm2-base       base               sender: prefills each context, exports its KV (+ E)
    smollm2-lib-full   --receiver         receiver of smollm2-base; profiles_dir = the profiles
    smollm2-base-ctl   base               same-weights control receiver of smollm2-base

Prompts: ``--num-prompts`` lcc examples (tasks/datasets.py) from the held-out split of the
receiver's domain of the pinned Django corpus (real/corpus.py): ``--context-len`` tokens of a
held-out file (the shared context), then ``--query-len`` tokens ending at a target line.
Per prompt: the sender prefills the context; per receiver:

    own     its own full prefill of context + query (plan "off", a context it has not seen):
            the reference answer (``--new-tokens`` greedy tokens) and TTFT
    radix   plan "off" again after prefilling the context alone: its own prefix hit at the
            context boundary (the split a reused prefix has): the serving noise floor
    PLAN    each of ``--plans`` (the receiver's cache flushed before each): the context
            reused from the sender's KV, the query run by the receiver

``--plans`` (';' or ',' separated): ``auto`` = the plugin's own choice (the pair profile's
cheapest frontier point within ``--max-quality-drop``; none: it prefills normally and counts
``no_plan``), ``best`` = the profile's highest-quality frontier point recomputing at most
``--best-max-layers`` layers (default a third), ``reuse`` (full reuse), ``s:e`` groups,
``blend:R`` (CacheBlend-style token recompute), ``group:K`` / ``cacheblend:K`` (the profile's
group of K layers / the CacheBlend-style plan of the same budget: scripts/gpu/serving_latency.py,
which also pairs them at equal measured TTFT). The control receiver runs ``--control-plans``
(default ``reuse``): same weights, so its answer must equal its ``radix`` answer token for
token (the exactness check) and should equal ``own`` up to bf16 noise.

Per request: cached tokens (SGLang's meta_info), the receiver's DroidSpeak counter deltas
(/metrics: foreign hits, reused tokens, fallbacks by reason) and import split (fetch,
recompute, total ms), greedy tokens against ``own`` (exact match, first divergence), edit
similarity of the answers against ``own``'s (``edit_sim``: tasks.metrics.indel_ratio, the
InDel similarity LongBench's edit_sim uses, on the lcc answer line of each generation; not
edit_similarity itself, whose LongBench line choice would score two equal answers containing
'#' as 0), the same on the whole decoded generations (``gen_sim``), each answer's LongBench
edit_sim against the file's true next line (``task_edit_sim``, tasks.metrics.edit_similarity),
and TTFT (streaming /generate: the first chunk carrying a
token). Summary per plan: exact-match rate (Wilson 95% interval), mean similarities (normal
95% intervals), TTFT p50/p90 against ``own`` on the same prompts, fallbacks by reason.

Writes $OUT/real-serving.json (card, date, command, versions, backend, configs, per-plan
summary, every row) after every prompt, server logs and configs under $OUT/servers/, and
prints a table. Copy the JSON to docs/results/real-serving-<receiver>-<date>.json.
Expected on one H100: servers about 1-3 min to start (flashinfer's JIT on a fresh machine),
a warm-up prompt, then about 1-2 s per prompt; no prompt starts after ``--budget-s``.
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

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run from a checkout

from sglang_droidspeak.bench import prefill_model as pm  # noqa: E402
from sglang_droidspeak.bench.servers import argv_of, metric_lines, wait_healthy  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving_latency  # noqa: E402
from serving_measure import measure, record_error, versions, write  # noqa: E402
from serving_plans import CONTROL, HELDOUT, PREFIX, SENDER, build_prompts, load_pair_profile  # noqa: E402
from serving_plans import load_tokenizer, model_name, num_layers_of, prompt_record, resolve_plans, wire  # noqa: E402
from serving_requests import server_specs, start  # noqa: E402
from serving_summary import Scorer, summarize, table  # noqa: E402

WORK = Path(os.environ.get("DROIDSPEAK_REAL_DIR", "/tmp/ds-real"))
BACKENDS = ("flashinfer", "flashinfer-paged", "triton")
DEFAULT_PLANS = "auto,best,reuse,group:2,group:4,group:8,cacheblend:2,cacheblend:4,cacheblend:8,0:10,blend:0.3333"


# ---------------------------------------------------------------- arguments

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--receiver", default="smollm2-lib-full", help="the fine-tune that reuses the base's KV: "
      "smollm2-{lib-full,test-lora,docs-lora} (the prefix may be left out)")
    a("--profiles-dir", default=str(WORK / "results" / "profiles"),
      help="<sender>__<receiver>.yaml profiles (the receiver plugin's profiles_dir)")
    a("--num-prompts", type=int, default=64)
    a("--plans", default=DEFAULT_PLANS, help="receiver plans, ';' or ',' separated (see the docstring)")
    a("--best-max-layers", type=int, default=0, help="'best': at most this many recomputed layers (0: a third)")
    a("--max-quality-drop", type=float, default=0.05, help="the receiver plugin's max_quality_drop ('auto')")
    a("--control", action=argparse.BooleanOptionalAction, default=True,
      help="the same-weights control receiver (base -> base)")
    a("--control-plans", default="reuse")
    add_server_args(p)
    return p


def add_server_args(p: argparse.ArgumentParser) -> None:
    """The prompt, server and run arguments real_serving shares with guard_check (its own
    defaults: the caller's ``set_defaults`` changes them)."""
    a = p.add_argument
    a("--models-dir", default=str(WORK / "models"))
    a("--context-len", type=int, default=3072, help="shared context tokens per prompt")
    a("--query-len", type=int, default=32, help="the receiver's own suffix tokens per prompt")
    a("--new-tokens", type=int, default=32, help="greedy tokens per answer")
    a("--seed", type=int, default=0, help="example selection (tasks.build_task)")
    a("--backend", default="flashinfer", choices=BACKENDS,
      help="attention backend (flashinfer-paged: SGLANG_FLASHINFER_USE_PAGED=1, as engine_exactness)")
    a("--data-plane", default="cuda_ipc", choices=("cuda_ipc", "zmq"), help="one GPU: cuda_ipc or zmq")
    a("--max-total-tokens", type=int, default=16384, help="each server's KV pool (tokens)")
    a("--mem-fraction", type=float, default=0.9)
    a("--port-base", type=int, default=31500, help="sender HTTP port; receiver +1, control +2")
    a("--zmq-base", type=int, default=5950, help="sender export port; announce +1")
    a("--fetch-timeout", type=float, default=30.0)
    a("--announce-wait", type=float, default=0.5, help="seconds from the sender's prefill to the first plan request")
    a("--startup-timeout", type=float, default=480.0)
    a("--budget-s", type=float, default=240.0, help="start no prompt after this many seconds of measuring")
    a("--request-timeout", type=float, default=120.0)
    a("--out", default="", help="result JSON (default: under $OUT)")
    a("--work-dir", default="", help="server logs and configs (default $OUT/servers)")
    a("--tokenizer", default="", help="tokenizer.json (default: the receiver's; --dry-run falls back to the base's)")
    a("--dry-run", action="store_true", help="CPU: build the prompts, print the servers and plans; start nothing")


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_prompts < 1 or args.context_len < 16 or args.query_len < 1 or args.new_tokens < 1:
        raise SystemExit("--num-prompts, --query-len, --new-tokens must be >= 1 and --context-len >= 16")
    try:
        receiver = model_name(args.receiver)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    models_dir, profiles_dir = Path(args.models_dir), Path(args.profiles_dir)
    out_dir = Path(os.environ.get("OUT", "/tmp/out"))
    out_path = Path(args.out) if args.out else out_dir / "real-serving.json"
    work = Path(args.work_dir) if args.work_dir else out_dir / "servers"
    split = HELDOUT[receiver.removeprefix(PREFIX)]
    profile, profile_path = load_pair_profile(profiles_dir, receiver)
    num_layers = num_layers_of(models_dir, receiver, profile)
    try:
        plans = resolve_plans(args.plans, num_layers, profile, args.best_max_layers, args.max_quality_drop)
        control_plans = resolve_plans(args.control_plans, num_layers, None, args.best_max_layers,
                                      args.max_quality_drop) if args.control else []
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    specs = server_specs(args, receiver, models_dir, profiles_dir)
    step = " ".join(["bash scripts/gpu/real_serving.sh", *(argv if argv is not None else sys.argv[1:])])
    result: dict[str, Any] = {
        "date": dt.date.today().isoformat(), "command": step.strip(),
        "session_command": "bash scripts/gpu/session.sh start 540 real_family real_serving",
        "card": pm.card() if not args.dry_run else None, "versions": versions(),
        "backend": args.backend, "data_plane": args.data_plane, "args": vars(args),
        "sender": SENDER, "receiver": receiver, "control": CONTROL if args.control else None,
        "num_layers": num_layers, "plans": plans, "control_plans": control_plans,
        "profile": None if profile is None else {
            "path": str(profile_path), "dataset": profile.dataset, "metric": profile.metric,
            "receiver_quality": profile.receiver_quality, "full_reuse_quality": profile.full_reuse_quality,
            "frontier": [{"plan": wire(p.plan), "layers": p.num_recomputed_layers, "quality": round(p.quality, 4)}
                         for p in profile.frontier]},
        "droidspeak_config": {s["name"]: s["config"] for s in specs},
    }
    if profile is None:
        print(f"note: no profile at {profile_path}: 'auto' will prefill normally, 'best' is skipped", flush=True)
    if args.dry_run:
        return dry_run(args, receiver, models_dir, split, specs, plans, control_plans, result)
    for spec in specs:
        if not (Path(spec["model"]) / "config.json").is_file():
            raise SystemExit(f"{spec['model']}: no config.json (run the real_family step on this machine first)")
    work.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    servers = {s["name"]: start(s, work) for s in specs}  # one GPU, tiny model: all at once (as engine_exactness)
    result["server_args"] = argv_of(list(servers.values()))
    rows: list[dict] = []
    result["rows"] = rows
    try:
        tokenizer, tok_path = load_tokenizer(args, receiver, models_dir)
        examples = build_prompts(tokenizer, split, args)  # while the servers start
        scorer = Scorer(tokenizer)
        result["prompts"] = prompt_record(examples[:-1], split, args, tok_path)
        wait_healthy(list(servers.values()), timeout=args.startup_timeout)
        result["startup_s"] = round(time.perf_counter() - began, 1)
        measure(servers, receiver, plans, control_plans, examples, scorer, args, result, rows, out_path)
    except Exception as exc:
        record_error(result, servers, exc)
    finally:
        for name, server in servers.items():
            try:
                result.setdefault("metrics_end", {})[name] = metric_lines(server.metrics()) if server.alive() else None
            except Exception as exc:  # noqa: BLE001 - a dead server: its log says why
                result.setdefault("metrics_end", {})[name] = f"unreadable: {exc}"
            server.stop()
        result["summary"] = summarize(rows, args.context_len)
        result["equal_latency"] = {r: serving_latency.equal_latency(s) for r, s in result["summary"].items()}
        write(result, out_path)
    print(table(result["summary"]))
    print(serving_latency.latency_table(result["summary"]))
    print(f"written: {out_path} ({round(time.perf_counter() - began, 1)} s); error: {result.get('error')}")
    return 1 if result.get("error") else 0


def dry_run(args, receiver: str, models_dir: Path, split: str, specs: list[dict], plans: list[dict],
            control_plans: list[dict], result: dict) -> int:
    began = time.perf_counter()
    tokenizer, tok_path = load_tokenizer(args, receiver, models_dir)
    examples = build_prompts(tokenizer, split, args)
    prompts = prompt_record(examples[:-1], split, args, tok_path)
    lengths = {len(e.prompt_ids) for e in examples}
    print(f"prompts: {len(examples) - 1} lcc examples (+1 warm-up) from {split}, prompt lengths {sorted(lengths)}, "
          f"{len({e.source for e in examples})} files, built in {time.perf_counter() - began:.1f} s "
          f"(tokenizer {tok_path})")
    for e in examples[:3]:
        print(f"  {e.example_id}: target {e.target[:70]!r}")
    for spec in specs:
        print(f"server {spec['name']:18} port {spec['port']} model {spec['model']} backend {spec['backend']}"
              f"{' (paged)' if spec['env'] else ''}\n  config {json.dumps(spec['config'])}")
    for name, its in ((receiver, plans), (CONTROL, control_plans)):
        for p in its:
            print(f"plan {name:18} {p['label']:13} -> {p['value']}  {p['note']}")
    per_prompt = 1 + sum(3 + sum(p["value"] is not None for p in its) for its in (plans, control_plans) if its)
    print(f"requests: {per_prompt} per prompt, {per_prompt * (len(examples))} in all (with the warm-up); "
          f"extra args {' '.join(specs[0]['extra'])}")
    result["prompts"] = prompts
    print(json.dumps({k: result[k] for k in ("command", "receiver", "num_layers", "backend", "data_plane")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
