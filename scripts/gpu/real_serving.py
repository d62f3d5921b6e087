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
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run from a checkout

from sglang_droidspeak.bench import prefill_model as pm  # noqa: E402
from sglang_droidspeak.bench import sweep_report as sweep  # noqa: E402
from sglang_droidspeak.bench.servers import Server, argv_of, metric_lines, post, wait_healthy  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving_latency  # noqa: E402
from serving_summary import OWN, RADIX, Scorer, summarize, table  # noqa: E402

WORK = Path(os.environ.get("DROIDSPEAK_REAL_DIR", "/tmp/ds-real"))
# the receiver's own held-out domain, as scripts/gpu/real_family.py profiles it
HELDOUT = {"base": "lib_heldout", "lib-full": "lib_heldout", "test-lora": "test_heldout", "docs-lora": "docs_heldout"}
PREFIX = "smollm2-"
SENDER = "smollm2-base"
CONTROL = "smollm2-base-ctl"
BACKENDS = ("flashinfer", "flashinfer-paged", "triton")
PAGED_ENV = {"SGLANG_FLASHINFER_USE_PAGED": "1"}
DEFAULT_PLANS = "auto,best,reuse,group:2,group:4,group:8,cacheblend:2,cacheblend:4,cacheblend:8,0:10,blend:0.3333"
META_KEYS = ("cached_tokens", "prompt_tokens", "completion_tokens", "e2e_latency", "queue_time",
             "forward_entry_time", "prefill_finished_time", "finish_reason",
             "droidspeak_system", "droidspeak_plan", "droidspeak_reason")  # the last three: response_info.py
COUNTERS = ("foreign_hits_total", "tokens_reused_total", "layers_recomputed_total", "fallbacks_total")


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


def model_name(name: str) -> str:
    """'lib-full' or 'smollm2-lib-full' -> 'smollm2-lib-full' (ValueError for other names)."""
    short = name.removeprefix(PREFIX)
    if short not in HELDOUT or short == "base":
        raise ValueError(f"--receiver must be one of {[PREFIX + k for k in HELDOUT if k != 'base']}, got {name!r}")
    return PREFIX + short


def split_list(text: str) -> list[str]:
    """';' separated if there is one (plans with several groups: '0:2,6:8;reuse'), else ','."""
    return [p.strip() for p in (text.split(";") if ";" in text else text.split(",")) if p.strip()]


# ---------------------------------------------------------------- plans

def wire(plan) -> str:
    """A LayerPlan as its droidspeak_plan value: 'reuse' or 's:e,s:e'."""
    return ",".join(f"{g.start}:{g.end}" for g in plan.groups) if plan.groups else "reuse"


def best_point(profile, max_layers: int):
    """The frontier point of highest quality recomputing at most ``max_layers`` layers
    (ties: fewer layers), or None."""
    points = [p for p in profile.frontier if p.num_recomputed_layers <= max_layers]
    return max(points, key=lambda p: (p.quality, -p.num_recomputed_layers)) if points else None


def resolve_plans(text: str, num_layers: int, profile, best_max_layers: int, max_quality_drop: float) -> list[dict]:
    """Each of ``text``'s plans as {label, value (droidspeak_plan), note}; 'auto' stays 'auto'
    (the plugin chooses; its expected choice goes in the note); 'best' without a profile or a
    point is dropped with a note (value None). ValueError names a plan the plugin would refuse."""
    from sglang_droidspeak.sglang.request_plan import parse_plan_choice

    out, max_layers = [], best_max_layers or num_layers // 3
    for label in dict.fromkeys(split_list(text)):
        if label == "auto":
            point = profile.cheapest_within(max_quality_drop) if profile else None
            note = (f"plugin: cheapest frontier point within drop {max_quality_drop}: " +
                    (f"{wire(point.plan)} (quality {point.quality:.4f}, drop {point.quality_drop:.4f})" if point
                     else "none (it prefills normally, fallback no_plan)")) if profile else "no profile: no_plan"
            out.append({"label": label, "value": "auto", "note": note,
                        "expected": wire(point.plan) if point else None})
        elif label == "best":
            point = best_point(profile, max_layers) if profile else None
            if point is None:
                out.append({"label": label, "value": None, "note": "no profile" if profile is None else
                            f"no frontier point with <= {max_layers} layers"})
            else:
                out.append({"label": label, "value": wire(point.plan), "note": (
                    f"profile's best with <= {max_layers} layers: quality {point.quality:.4f} "
                    f"(receiver {profile.receiver_quality:.4f}, full reuse {profile.full_reuse_quality:.4f})")})
        elif label.startswith(("group:", "cacheblend:")):
            out.append(serving_latency.budget_plan(label, profile, num_layers, wire))
        else:
            try:
                choice = parse_plan_choice(label, num_layers)
            except ValueError as exc:
                raise ValueError(f"--plans: {exc}") from None
            if choice is None or choice == "off":
                raise ValueError(f"--plans: {label!r} is not a reuse plan (own prefill is always measured)")
            out.append({"label": label, "value": label, "note": ""})
    return out


# ---------------------------------------------------------------- servers

def server_specs(args, receiver: str, models_dir: Path, profiles_dir: Path) -> list[dict]:
    """Sender, receiver and (with --control) the control receiver: name, model dir, port,
    plugin config, extra launch args and env, as bench.servers.Server takes them."""
    export, announce = f"tcp://127.0.0.1:{args.zmq_base}", f"tcp://127.0.0.1:{args.zmq_base + 1}"
    peers = [{"model": SENDER, "fetch": export, "announce": announce}]
    extra = ("--dtype", "bfloat16", "--skip-tokenizer-init", "--mem-fraction-static", str(args.mem_fraction),
             "--max-total-tokens", str(args.max_total_tokens), "--cuda-graph-max-bs-decode", "4",
             "--cuda-graph-max-bs-prefill", "512", "--log-level", "info")
    env = PAGED_ENV if args.backend == "flashinfer-paged" else {}
    receiver_cfg = {"model": receiver, "data_plane": args.data_plane, "fetch_timeout_s": args.fetch_timeout,
                    "min_foreign_tokens": 16, "profiles_dir": str(profiles_dir),
                    "max_quality_drop": args.max_quality_drop, "peers": peers}
    specs = [
        {"name": SENDER, "model": str(models_dir / SENDER), "port": args.port_base,
         "config": {"model": SENDER, "export_bind": export, "announce_bind": announce, "data_plane": args.data_plane}},
        {"name": receiver, "model": str(models_dir / receiver), "port": args.port_base + 1, "config": receiver_cfg},
    ]
    if args.control:
        specs.append({"name": CONTROL, "model": str(models_dir / SENDER), "port": args.port_base + 2,
                      "config": {"model": CONTROL, "data_plane": args.data_plane, "fetch_timeout_s": args.fetch_timeout,
                                 "min_foreign_tokens": 16, "peers": peers}})
    for spec in specs:
        spec.update(extra=extra, env=env, backend=args.backend.removesuffix("-paged"))
    return specs


def start(spec: dict, work: Path) -> Server:
    return Server(spec["name"], spec["model"], spec["port"], work, plugin=True, config=spec["config"],
                  extra=spec["extra"], env=spec["env"], backend=spec["backend"])


# ---------------------------------------------------------------- requests

def read_stream(lines: Iterable[bytes], clock: Callable[[], float]) -> dict:
    """SGLang's streaming /generate answer (``data: {json}`` lines, ``data: [DONE]``) ->
    {ids, meta, first_token_at}. Chunks carry output_ids cumulatively (SGLang's default) or
    as deltas (--incremental-streaming-output): told apart by meta_info.completion_tokens."""
    ids: list[int] = []
    meta: dict = {}
    first = None
    for raw in lines:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            break
        chunk = json.loads(payload)
        if "error" in chunk:
            raise RuntimeError(f"error chunk: {json.dumps(chunk['error'])[:300]}")
        meta = chunk.get("meta_info") or meta
        got = list(chunk.get("output_ids") or [])
        total = meta.get("completion_tokens")
        ids = got if total is None or len(got) >= total else ids + got  # cumulative ids never fall short
        if first is None and ids:
            first = clock()
    return {"ids": ids, "meta": meta, "first_token_at": first}


def generate(server: Server, ids: list[int], plan: str, new_tokens: int, timeout: float) -> dict:
    """One streaming greedy request: {ids, cached, ttft_ms, e2e_ms, meta}."""
    body = {"input_ids": ids, "stream": True, "sampling_params": {
        "max_new_tokens": new_tokens, "temperature": 0, "custom_params": {"droidspeak_plan": plan}}}
    req = urllib.request.Request(server.url + "/generate", json.dumps(body).encode(),
                                 {"content-type": "application/json"})
    start_t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=timeout) as r:
        got = read_stream(r, time.perf_counter)
    end_t = time.perf_counter()
    meta = {k: got["meta"][k] for k in META_KEYS if k in got["meta"]}
    first = got["first_token_at"]
    return {"ids": got["ids"], "cached": meta.get("cached_tokens"), "meta": meta,
            "ttft_ms": None if first is None else round((first - start_t) * 1e3, 3),
            "e2e_ms": round((end_t - start_t) * 1e3, 3)}


def prefill(server: Server, ids: list[int], timeout: float, plan: Optional[str] = None) -> None:
    """Cache ``ids`` on ``server`` (one greedy token); ``plan``: its droidspeak_plan ("off": no import)."""
    params: dict[str, Any] = {"max_new_tokens": 1, "temperature": 0}
    if plan is not None:
        params["custom_params"] = {"droidspeak_plan": plan}
    post(server.url + "/generate", {"input_ids": ids, "sampling_params": params}, timeout)


def counters(text: str, names: Iterable[str] = COUNTERS) -> dict[str, float]:
    """The DroidSpeak samples ``names`` of a /metrics text: 'name{label=...}' (model label dropped) -> value."""
    out: dict[str, float] = {}
    for line in metric_lines(text):
        m = re.match(r'^sglang:droidspeak_(\w+?)(\{[^}]*\})?\s+(\S+)$', line.strip())
        if not m or m.group(1) not in names:
            continue
        labels = [kv for kv in re.findall(r'(\w+)="([^"]*)"', m.group(2) or "") if kv[0] != "model"]
        key = m.group(1) + ("{" + ",".join(f"{k}={v}" for k, v in labels) + "}" if labels else "")
        out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


def counter_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in sorted(after.items()) if v - before.get(k, 0.0)}


# ---------------------------------------------------------------- prompts

def build_prompts(tokenizer, split: str, args) -> list:
    """``--num-prompts`` + 1 lcc examples (the last one is the warm-up)."""
    from sglang_droidspeak.real.corpus import load_real_corpus
    from sglang_droidspeak.tasks import build_task

    return build_task("lcc", tokenizer, split=split, num_examples=args.num_prompts + 1, context_len=args.context_len,
                      query_len=args.query_len, seed=args.seed, corpus=load_real_corpus())


def load_tokenizer(args, receiver: str, models_dir: Path):
    from tokenizers import Tokenizer

    path = Path(args.tokenizer) if args.tokenizer else models_dir / receiver / "tokenizer.json"
    if not path.is_file() and args.dry_run and not args.tokenizer:
        from sglang_droidspeak.real.base import base_dir
        path = base_dir() / "tokenizer.json"  # every variant carries the base's tokenizer files
    return Tokenizer.from_file(str(path)), path


def load_pair_profile(profiles_dir: Path, receiver: str):
    from sglang_droidspeak.plan.profile_io import load_profile, profile_filename

    path = profiles_dir / profile_filename(SENDER, receiver)
    return (load_profile(path), path) if path.is_file() else (None, path)


def num_layers_of(models_dir: Path, receiver: str, profile) -> int:
    config = models_dir / receiver / "config.json"
    if config.is_file():
        return int(json.loads(config.read_text())["num_hidden_layers"])
    if profile is not None:
        return profile.num_layers
    from sglang_droidspeak.real.base import base_dir
    return int(json.loads((base_dir() / "config.json").read_text())["num_hidden_layers"])


# ---------------------------------------------------------------- measuring

def run_receiver(server: Server, name: str, plans: list[dict], ex, index: int, scorer: Scorer, args,
                 sender_done_at: float) -> list[dict]:
    """own, radix and every plan for one prompt on one receiver (its cache flushed around each)."""
    ctx, prompt, target = list(ex.context_ids), list(ex.prompt_ids), ex.target
    t = args.request_timeout
    rows = []

    def row(plan: str, value: Optional[str], got: dict, **extra) -> dict:
        """One request's record; its token ids only where they differ from ``own``'s (kept small)."""
        r = {"receiver": name, "prompt": index, "plan": plan, "value": value, "cached": got["cached"],
             "ttft_ms": got["ttft_ms"], "e2e_ms": got["e2e_ms"], "meta": got["meta"], **extra}
        if plan == OWN or not r["exact"]:
            r["ids"] = got["ids"]
        rows.append(r)
        return r

    own = generate(server, prompt, "off", args.new_tokens, t)
    own_answer, own_text = scorer.answer(own["ids"]), scorer.text(own["ids"])
    row(OWN, "off", own, **scorer.compare(own["ids"], own["ids"], own_answer, own_text, target))
    pm.flush(server)
    prefill(server, ctx, t, "off")  # its own copy of the context, alone: the boundary a reused prefix has
    radix = generate(server, prompt, "off", args.new_tokens, t)
    row(RADIX, "off", radix, **scorer.compare(radix["ids"], own["ids"], own_answer, own_text, target))
    pm.flush(server)
    wait = args.announce_wait - (time.perf_counter() - sender_done_at)
    if wait > 0:
        time.sleep(wait)  # the sender's announcement crosses PUB/SUB
    for plan in plans:
        if plan["value"] is None:
            continue
        text0 = server.metrics()
        before, stages0 = counters(text0), sweep.stage_sums(text0, name)
        try:
            got = generate(server, prompt, plan["value"], args.new_tokens, t)
        except Exception as exc:  # one failed request must not cost the prompt's other plans
            rows.append({"receiver": name, "prompt": index, "plan": plan["label"], "value": plan["value"],
                         "error": f"{type(exc).__name__}: {exc}"[:400]})
            pm.flush(server)
            continue
        text1 = server.metrics()
        scores = scorer.compare(got["ids"], own["ids"], own_answer, own_text, target)
        row(plan["label"], plan["value"], got, **scores, exact_radix=got["ids"] == radix["ids"],
            counters=counter_delta(before, counters(text1)),
            **{"import": sweep.stage_ms(stages0, sweep.stage_sums(text1, name))})
        pm.flush(server)
    return rows


def versions() -> dict:
    from importlib import metadata

    out = {}
    for dist in ("sglang", "sglang-kernel", "sgl-kernel", "flashinfer-python", "torch", "transformers", "tokenizers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        out["repo_commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                            text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        out["repo_commit"] = None
    return out


def dumps(result: dict) -> str:
    """``result`` as JSON: indented, except ``rows``: one compact line per row."""
    items = [f" {json.dumps(k)}: " + json.dumps(v, indent=1).replace("\n", "\n ")
             for k, v in result.items() if k != "rows"]
    if "rows" in result:
        rows = ",\n".join("  " + json.dumps(r, separators=(",", ":")) for r in result["rows"])
        items.append(' "rows": [' + (f"\n{rows}\n ]" if rows else "]"))
    return "{\n" + ",\n".join(items) + "\n}\n" if items else "{}\n"


def write(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(dumps(result))
    tmp.replace(path)


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


def record_error(result: dict, servers: dict, exc: Exception) -> None:
    """``exc`` as the result's error, printed with the log tail of every server that died."""
    result["error"] = f"{type(exc).__name__}: {exc}"
    print("ERROR", result["error"], flush=True)
    for s in servers.values():
        if not s.alive():
            print(f"--- {s.name} died:\n{s.tail(40)}", flush=True)


def prompt_record(examples: list, split: str, args, tok_path: Path) -> dict:
    return {"task": "lcc", "split": split, "num": len(examples), "context_len": args.context_len,
            "query_len": args.query_len, "new_tokens": args.new_tokens, "seed": args.seed, "tokenizer": str(tok_path),
            "files": len({e.source for e in examples}), "examples": [e.example_id for e in examples]}


def measure(servers: dict, receiver: str, plans: list[dict], control_plans: list[dict], examples: list,
            scorer: Scorer, args, result: dict, rows: list, out_path: Path) -> None:
    sender, result["rows"] = servers[SENDER], rows
    receivers = [(receiver, plans)] + ([(CONTROL, control_plans)] if CONTROL in servers else [])

    def one_prompt(index: int, ex) -> list[dict]:
        prefill(sender, list(ex.context_ids), args.request_timeout)
        done_at, got = time.perf_counter(), []
        for name, its_plans in receivers:
            got += run_receiver(servers[name], name, its_plans, ex, index, scorer, args, done_at)
        pm.flush(sender)
        return got

    t0 = time.perf_counter()
    one_prompt(-1, examples[-1])  # warm-up: first-use kernels and import paths; not recorded
    result["warmup_s"] = round(time.perf_counter() - t0, 1)
    print(f"[{time.strftime('%X')}] warm-up {result['warmup_s']} s", flush=True)
    t0, failures = time.perf_counter(), 0
    for index, ex in enumerate(examples[:-1]):
        if time.perf_counter() - t0 > args.budget_s:
            result["cut_short"] = f"--budget-s {args.budget_s}: {index} of {len(examples) - 1} prompts"
            break
        dead = [s.name for s in servers.values() if not s.alive()]
        if dead:
            raise RuntimeError(f"server(s) died: {dead}")
        try:
            rows += one_prompt(index, ex)
            failures = 0
        except Exception as exc:  # a failed own/radix request or flush: note it, go on to the next prompt
            failures += 1
            error = f"{type(exc).__name__}: {exc}"[:400]
            result.setdefault("prompt_errors", []).append({"prompt": index, "error": error})
            print(f"prompt {index}: {error}", flush=True)
            if failures >= 3:
                raise RuntimeError("3 prompts in a row failed") from exc
            for server in servers.values():
                pm.flush(server)
            continue
        result["measure_s"] = round(time.perf_counter() - t0, 1)
        result["summary"] = summarize(rows, args.context_len)
        write(result, out_path)
        if index % 8 == 7:
            print(f"[{time.strftime('%X')}] {index + 1} prompts, {result['measure_s']} s", flush=True)


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
