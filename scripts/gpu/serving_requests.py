"""The servers of scripts/gpu/real_serving.py and the requests it sends them: launch specs,
streaming /generate with its TTFT, a plain prefill, and the DroidSpeak counters of /metrics."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from sglang_droidspeak.bench.servers import Server, metric_lines, post

from serving_plans import CONTROL, SENDER

PAGED_ENV = {"SGLANG_FLASHINFER_USE_PAGED": "1"}
META_KEYS = ("cached_tokens", "prompt_tokens", "completion_tokens", "e2e_latency", "queue_time",
             "forward_entry_time", "prefill_finished_time", "finish_reason",
             "droidspeak_system", "droidspeak_plan", "droidspeak_reason")  # the last three: response_info.py
COUNTERS = ("foreign_hits_total", "tokens_reused_total", "layers_recomputed_total", "fallbacks_total")


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
