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
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from sglang_droidspeak.bench.servers import Server, wait_healthy  # noqa: E402

MODEL = ".cache/gpu-models/libwriter"
COMMON = ("--dtype", "bfloat16", "--mem-fraction-static", "0.8", "--max-total-tokens", "400000")
BENCH = ("--dataset-name", "random-ids", "--random-input-len", "1024", "--random-output-len", "256",
         "--random-range-ratio", "0.5", "--request-rate", "inf", "--seed", "1")


def bench(server: Server, out: Path, tag: str, num_prompts: int = 1000) -> dict:
    path = out / f"bench-{tag}.jsonl"
    cmd = [sys.executable, "-m", "sglang.bench_serving", "--backend", "sglang", "--host", "127.0.0.1",
           "--port", str(server.port), "--tokenizer", MODEL, "--model", MODEL, "--output-file", str(path), *BENCH,
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
    servers = {"stock": Server("stock", MODEL, 31100, work, plugin=False, extra=COMMON),
               "plugin": Server("plugin", MODEL, 31200, work, plugin=True, extra=COMMON),
               "sender": Server("sender", MODEL, 31300, work, plugin=True, config=sender, extra=COMMON)}
    rows, error = [], None
    try:
        wait_healthy(list(servers.values()), timeout=420)
        for name, server in servers.items():  # warm-up: JIT and first-batch costs, discarded
            bench(server, work, f"{name}-warmup", num_prompts=100)
        for rnd in (1, 2, 3):
            for name, server in servers.items():
                row = {"round": rnd, "server": name, **bench(server, work, f"{name}-{rnd}")}
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
    result = {"date": time.strftime("%Y-%m-%d"), "command": "bash scripts/gpu/overhead.sh", "bench_args": BENCH,
              "server_args": COMMON, "rows": rows, "mean_output_throughput": summary, "ratio_to_stock": ratios,
              "error": error}
    (out / "overhead.json").write_text(json.dumps(result, indent=1))
    subprocess.run(["tar", "czf", str(out / "overhead-logs.tar.gz"), "-C", str(work), "."], check=False)
    print("\n== output tok/s per round:", [(r["server"], round(r["output_throughput"] or 0)) for r in rows])
    print("== mean:", {k: round(v or 0) for k, v in summary.items()}, "ratio to stock:", ratios)


if __name__ == "__main__":
    main()
