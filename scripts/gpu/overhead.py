"""No-overhead check: SGLang's own bench_serving against stock vs. plugin-on servers.

    bash scripts/gpu/overhead.sh           (on the device machine)

Three servers of the same bf16 micro-family model on one GPU, production settings
(CUDA graphs, overlap scheduler), no cross-model traffic:

    stock      plain SGLang (default radix cache)
    plugin     SGLANG_PLUGINS=droidspeak --radix-cache-backend droidspeak, no roles
    sender     the same plus a sender role (export + announce sockets, scheduler-loop hook)

`python -m sglang.bench_serving --dataset-name random-ids` (random token ids, no dataset
download) runs against each in turn after a discarded warm-up run each, the whole round
three times (A B C A B C A B C), so drift and noise show up. bench_serving imports HF
`datasets` unconditionally; the GPU machine lacks it, so a stand-in (bench_shims/) is put
on its PYTHONPATH. Results: $OUT/overhead.json and a table.

DS_OVERHEAD_MODEL=8b runs the same on a Llama-3.1-8B-shaped model with SGLang's dummy
weights (bench/prefill_model.py), 400 prompts a run: run 2 (2026-11-28) showed 20-30%
spread between rounds with the micro model, whose throughput is bound by SGLang's
scheduler and tokenizer on the CPU, too noisy to resolve 2%; an 8B model is GPU-bound.
The three 8B servers are started one after another (each healthy before the next), their
KV pools capped with --max-total-tokens so that they share the card.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from sglang_droidspeak.bench import prefill_model  # noqa: E402
from sglang_droidspeak.bench.servers import Server, wait_healthy  # noqa: E402

SIZE = os.environ.get("DS_OVERHEAD_MODEL", "micro")  # micro | 8b
MICRO = ".cache/gpu-models/libwriter"
COMMON = {"micro": ("--dtype", "bfloat16", "--mem-fraction-static", "0.8", "--max-total-tokens", "400000"),
          "8b": ("--dtype", "bfloat16", "--load-format", "dummy", "--mem-fraction-static", "0.85",
                 "--max-total-tokens", "131072", "--context-length", "4096")}[SIZE]
NUM_PROMPTS = {"micro": 1000, "8b": 400}[SIZE]
BENCH = ("--dataset-name", "random-ids", "--random-input-len", "1024", "--random-output-len", "256",
         "--random-range-ratio", "0.5", "--request-rate", "inf", "--seed", "1")


def bench(server: Server, out: Path, tag: str, model: str, num_prompts: int = NUM_PROMPTS) -> dict:
    path = out / f"bench-{tag}.jsonl"
    cmd = [sys.executable, "-m", "sglang.bench_serving", "--backend", "sglang", "--host", "127.0.0.1",
           "--port", str(server.port), "--tokenizer", model, "--model", model, "--output-file", str(path), *BENCH,
           "--num-prompts", str(num_prompts)]
    env = dict(os.environ)
    if importlib.util.find_spec("datasets") is None:  # bench_serving imports it unconditionally
        env["PYTHONPATH"] = f"{Path(__file__).parent / 'bench_shims'}:{env.get('PYTHONPATH', '')}"
    with open(out / f"bench-{tag}.log", "w") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=240, env=env)
    result = json.loads(path.read_text().splitlines()[-1])
    keys = ("request_throughput", "input_throughput", "output_throughput", "mean_ttft_ms", "mean_itl_ms",
            "completed")
    return {k: result.get(k) for k in keys}


def main() -> None:
    out = Path(os.environ.get("OUT", "/tmp/out"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/ds-work")
    work.mkdir(parents=True, exist_ok=True)
    sender = {"model": "sender", "export_bind": "tcp://127.0.0.1:5701", "announce_bind": "tcp://127.0.0.1:5702"}
    model = MICRO if SIZE == "micro" else str(prefill_model.write_model_dir(work / "llama-8b", Path(MICRO), 4096))
    specs = {"stock": (31100, False, None), "plugin": (31200, True, None), "sender": (31300, True, sender)}
    servers, rows, error = {}, [], None
    try:
        for name, (port, plugin, config) in specs.items():
            servers[name] = Server(name, model, port, work, plugin=plugin, config=config, extra=COMMON)
            if SIZE != "micro":  # 8B: one at a time, so their memory profiling cannot race
                wait_healthy([servers[name]], timeout=420)
        if SIZE == "micro":  # started together
            wait_healthy(list(servers.values()), timeout=420)
        for name, server in servers.items():  # warm-up: JIT and first-batch costs, discarded
            bench(server, work, f"{name}-warmup", model, num_prompts=100)
        for rnd in (1, 2, 3):
            for name, server in servers.items():
                row = {"round": rnd, "server": name, **bench(server, work, f"{name}-{rnd}", model)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    except Exception as exc:
        error = repr(exc)
        print("ERROR", error, flush=True)
    finally:
        for server in servers.values():
            server.stop()
    summary = {}
    for name in servers:
        mine = [r["output_throughput"] for r in rows if r["server"] == name and r["output_throughput"]]
        summary[name] = sum(mine) / len(mine) if mine else None
    ratios = {n: summary[n] / summary["stock"] for n in ("plugin", "sender") if summary.get(n) and summary.get("stock")}
    result = {"date": time.strftime("%Y-%m-%d"), "command": f"DS_OVERHEAD_MODEL={SIZE} bash scripts/gpu/overhead.sh",
              "model": SIZE, "num_prompts": NUM_PROMPTS, "bench_args": BENCH,
              "server_args": COMMON, "rows": rows, "mean_output_throughput": summary, "ratio_to_stock": ratios,
              "error": error}
    (out / "overhead.json").write_text(json.dumps(result, indent=1))
    subprocess.run(["tar", "czf", str(out / "overhead-logs.tar.gz"), "-C", str(work), "."], check=False)
    print("\n== output tok/s per round:", [(r["server"], round(r["output_throughput"] or 0)) for r in rows])
    print("== mean:", {k: round(v or 0) for k, v in summary.items()}, "ratio to stock:", ratios)


if __name__ == "__main__":
    main()
