"""Engine-native receiver on one GPU, 8B shapes: cold start, batching, head-of-line blocking.

    bash scripts/gpu/engine_receiver.sh      (on the device machine; OUT gets the JSON)

Two Llama-3.1-8B-shaped servers (--load-format dummy, bf16, CUDA graphs and the overlap
scheduler on, ``--attention-backend`` $DS_BACKEND, default flashinfer), data plane
cuda_ipc: sender ``a`` and receiver ``b`` (plugin, requests force their plan).

    phase     what is measured (client-side wall times)
    cold      the first 16K import (plan 0:8) after b is healthy, then 3 warm ones and
              2 full prefills (plan off) of fresh 16K contexts
    batching  8 imports of fresh 4K contexts one at a time (sum of TTFTs), then 8 more
              sent together (first send -> last answer)
    hol       32 streaming decodes on b (ignore_eos) while 16K imports arrive once a
              second: inter-token latency p50/p99 with no imports and with imports in
              each mode (custom_params droidspeak_import_mode): async (yields to decodes:
              import_busy_token_layers per tick), overlap (whole chunks on a second
              stream, beside the decode steps), eager (async, whole chunks: run 7's
              async), blocking (the old synchronous path), in the same run; the contexts
              are prefilled on a before each window. Windows: none, overlap, async,
              blocking (DS_HOL_WINDOWS, comma-separated, picks others)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sglang_droidspeak.bench import prefill_model as pm
from sglang_droidspeak.bench.servers import Server, post, wait_healthy

BACKEND = os.environ.get("DS_BACKEND", "flashinfer")
VOCAB, SUFFIX = 120000, 16
HOL_IMPORTS = int(os.environ.get("DS_HOL_IMPORTS", "6"))  # imports per window, one a second
# measured windows in order (DS_HOL_WINDOWS=none,async,overlap,eager,blocking,async for run 8's and eager)
WINDOWS = tuple(os.environ.get("DS_HOL_WINDOWS", "none,overlap,async,blocking").split(","))
NUM_DECODES = 32


def start(work: Path) -> tuple[Server, Server]:
    model = work / "llama-8b"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text(json.dumps(pm.LLAMA_31_8B))
    for tok in Path(".cache/gpu-tok").glob("tokenizer*.json"):  # fingerprinted; ids go in raw
        shutil.copyfile(tok, model / tok.name)
    common = ("--dtype", "bfloat16", "--load-format", "dummy", "--skip-tokenizer-init", "--log-level", "info",
              "--context-length", "40000")
    a = Server("a", str(model), 30800, work, plugin=True, backend=BACKEND, config={
        "model": "a", "export_bind": "tcp://127.0.0.1:5951", "announce_bind": "tcp://127.0.0.1:5952",
        "data_plane": "cuda_ipc"}, extra=common + ("--mem-fraction-static", "0.4", "--max-total-tokens", "110000"))
    wait_healthy([a], 600)  # one at a time: the two servers' memory profiling must not race
    b = Server("b", str(model), 30801, work, plugin=True, backend=BACKEND, config={
        "model": "b", "data_plane": "cuda_ipc", "fetch_timeout_s": 60.0, "min_foreign_tokens": 16,
        "peers": [{"model": "a", "fetch": "tcp://127.0.0.1:5951", "announce": "tcp://127.0.0.1:5952"}]},
        extra=common + ("--mem-fraction-static", "0.85", "--max-total-tokens", "200000"))
    wait_healthy([b], 600)
    return a, b


def ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(3, VOCAB) for _ in range(n)]


def prefill(server: Server, ctx: list) -> None:
    post(server.url + "/generate", {"input_ids": ctx, "sampling_params": {"max_new_tokens": 1}}, 600)


def ask(server: Server, ctx: list, plan: str, rng: random.Random, **custom) -> dict:
    """One request (context + suffix, one new token); its wall time and cached tokens."""
    body = {"input_ids": ctx + ids(rng, SUFFIX), "sampling_params": {
        "max_new_tokens": 1, "custom_params": {"droidspeak_plan": plan, **custom}}}
    began = time.perf_counter()
    meta = post(server.url + "/generate", body, 600)["meta_info"]
    return {"ms": 1e3 * (time.perf_counter() - began), "cached": meta.get("cached_tokens")}


def imported(a: Server, b: Server, rng: random.Random, length: int, plan: str = "0:8", **custom) -> dict:
    ctx = ids(rng, length)
    prefill(a, ctx)
    time.sleep(0.3)  # the announcement
    return ask(b, ctx, plan, rng, **custom)


def phase_cold(a: Server, b: Server, rng: random.Random) -> dict:
    cold = imported(a, b, rng, 16384)
    warm = [imported(a, b, rng, 16384) for _ in range(3)]
    full = [ask(b, ids(rng, 16384), "off", rng) for _ in range(2)]
    median = statistics.median(w["ms"] for w in warm)
    return {"cold": cold, "warm": warm, "full_prefill": full, "cold_over_warm": cold["ms"] / median}


def phase_batching(a: Server, b: Server, rng: random.Random) -> dict:
    single = [imported(a, b, rng, 4096) for _ in range(8)]
    contexts = [ids(rng, 4096) for _ in range(8)]
    for ctx in contexts:
        prefill(a, ctx)
    time.sleep(0.5)
    began = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda ctx: ask(b, ctx, "0:8", random.Random(len(ctx))), contexts))
    wall = 1e3 * (time.perf_counter() - began)
    total = sum(s["ms"] for s in single)
    return {"single": single, "together": together, "together_wall_ms": wall, "single_sum_ms": total,
            "ratio": wall / total, "all_reused": all((x["cached"] or 0) >= 4095 for x in single + together)}


def stream_decode(server: Server, prompt: list, new_tokens: int, times: list) -> None:
    """Stream one decode, appending each chunk's arrival time to ``times``."""
    import urllib.request

    body = {"input_ids": prompt, "stream": True, "sampling_params": {
        "max_new_tokens": new_tokens, "ignore_eos": True, "temperature": 0}}
    req = urllib.request.Request(server.url + "/generate", json.dumps(body).encode(),
                                 {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            if line.startswith(b"data:") and b"[DONE]" not in line:
                times.append(time.perf_counter())


def window(a: Server, b: Server, rng: random.Random, mode: str) -> dict:
    """32 decodes; from 2 s in, one 16K import a second (mode none/async/overlap/eager/blocking)."""
    contexts = [] if mode == "none" else [ids(rng, 16384) for _ in range(HOL_IMPORTS)]
    for ctx in contexts:
        prefill(a, ctx)
    streams = [[] for _ in range(NUM_DECODES)]
    threads = [threading.Thread(target=stream_decode, args=(b, ids(rng, 128), 1200, t)) for t in streams]
    for t in threads:
        t.start()
    time.sleep(2.0)
    began, answers = time.perf_counter(), []
    custom = {} if mode == "none" else {"droidspeak_import_mode": mode}
    for i, ctx in enumerate(contexts):
        time.sleep(max(0.0, began + i - time.perf_counter()))
        answers.append(ask(b, ctx, "0:8", rng, **custom))
    end = max(time.perf_counter(), began + HOL_IMPORTS)
    for t in threads:
        t.join()
    gaps = [1e3 * (y - x) for s in streams for x, y in zip(s, s[1:]) if began <= y <= end]
    worst = max(((y - x, x - began) for s in streams for x, y in zip(s, s[1:]) if began <= y <= end), default=None)
    gaps.sort()
    pct = lambda p: gaps[min(len(gaps) - 1, int(p * len(gaps)))] if gaps else float("nan")  # noqa: E731
    return {"mode": mode, "num_gaps": len(gaps), "itl_p50_ms": pct(0.5), "itl_p99_ms": pct(0.99),
            "itl_max_ms": gaps[-1] if gaps else None, "worst_gap_starts_s": worst and worst[1], "imports": answers}


def phase_hol(a: Server, b: Server, rng: random.Random) -> dict:
    """A discarded warm-up window first: the first 16K-context request joining running
    decodes stalled every decode for 70 s once (2026-12-06, H100; SGLang's own kernels'
    first use under that mix, not the import), which must not land in a measured window."""
    warmup = window(a, b, rng, "blocking")
    rows = [window(a, b, rng, mode) for mode in WINDOWS]
    base = rows[0]["itl_p99_ms"]
    return {"warmup": warmup, "windows": rows, "p99_over_none": [(r["mode"], r["itl_p99_ms"] / base) for r in rows]}


def main() -> None:
    out = Path(os.environ.get("OUT", "/tmp/out"))
    work = out / "work"  # server logs come back with the results
    work.mkdir(parents=True, exist_ok=True)
    result = {"date": time.strftime("%Y-%m-%d"), "card": pm.card(), "attention_backend": BACKEND,
              "command": f"DS_BACKEND={BACKEND} bash scripts/gpu/engine_receiver.sh", "model": pm.MODEL_NOTE}
    servers, rng = (), random.Random(0)
    try:
        servers = start(work)
        for name, phase in (("cold", phase_cold), ("batching", phase_batching), ("hol", phase_hol)):
            try:
                result[name] = phase(*servers, rng)
                print(f"[{time.strftime('%X')}] {name}: done", flush=True)
            except Exception as exc:  # one phase's failure must not hide the others
                result[name] = {"error": repr(exc), "log": servers[1].tail(30)}
                print("ERROR", name, repr(exc), flush=True)
    except Exception as exc:
        result["error"] = repr(exc)
        print("ERROR", repr(exc), flush=True)
    finally:
        for server in servers:
            server.stop()
        (out / f"engine-receiver-{BACKEND}.json").write_text(json.dumps(result, indent=1))
    summarize(result)


def summarize(r: dict) -> None:
    cold, batch, hol = r.get("cold", {}), r.get("batching", {}), r.get("hol", {})
    print(f"\n== {r['card']} backend {r['attention_backend']}")
    if "cold" in cold:
        print(f"cold 16K import {cold['cold']['ms']:.0f} ms, warm {[round(w['ms']) for w in cold['warm']]}, "
              f"ratio {cold['cold_over_warm']:.2f}; full prefill {[round(f['ms']) for f in cold['full_prefill']]}")
    if "ratio" in batch:
        print(f"batching 8x4K: together {batch['together_wall_ms']:.0f} ms vs sum {batch['single_sum_ms']:.0f} ms "
              f"= {batch['ratio']:.2f}, all reused {batch['all_reused']}")
    for w in hol.get("windows", []):
        print(f"hol {w['mode']:8}: ITL p50 {w['itl_p50_ms']:.1f} p99 {w['itl_p99_ms']:.1f} max {w['itl_max_ms']} "
              f"ms ({w['num_gaps']} gaps), imports {[round(x['ms']) for x in w['imports']]}")
    print("p99 over none:", hol.get("p99_over_none"), "errors:", {k: v.get("error") for k, v in
                                                                  (("cold", cold), ("batching", batch), ("hol", hol))})


if __name__ == "__main__":
    main()
