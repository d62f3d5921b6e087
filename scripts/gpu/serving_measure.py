"""How scripts/gpu/real_serving.py measures: every prompt on every receiver (own, radix, each
plan; a failed request is noted, not fatal), and its result record (versions, the JSON it
rewrites after every prompt)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Optional

from sglang_droidspeak.bench import prefill_model as pm
from sglang_droidspeak.bench import sweep_report as sweep
from sglang_droidspeak.bench.servers import Server

from serving_plans import CONTROL, SENDER
from serving_requests import counter_delta, counters, generate, prefill
from serving_summary import OWN, RADIX, Scorer, summarize

ROOT = Path(__file__).resolve().parents[2]  # versions(): its git commit


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


def record_error(result: dict, servers: dict, exc: Exception) -> None:
    """``exc`` as the result's error, printed with the log tail of every server that died."""
    result["error"] = f"{type(exc).__name__}: {exc}"
    print("ERROR", result["error"], flush=True)
    for s in servers.values():
        if not s.alive():
            print(f"--- {s.name} died:\n{s.tail(40)}", flush=True)


# ---------------------------------------------------------------- the result

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
