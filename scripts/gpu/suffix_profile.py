"""Where the suffix forward's time goes: a short request over a long cached prefix.

    bash scripts/gpu/suffix_profile.sh [--gpu 1] [--backends triton,flashinfer]   (device machine)

Every receiver request of `droidspeak bench-prefill` ends with SGLang's own forward of a
16-token suffix over the (imported or cached) context; run 5 measured 43 ms of it at 16K
tokens with the triton backend, a large share of DroidSpeak's TTFT. This script measures
that forward on one stock 8B-shaped server (dummy bf16 weights, no plugin) per attention
backend, next to the full prefill of the same contexts, then records one 16K suffix
request with SGLang's profiler (/start_profile, /stop_profile) and sums its GPU kernels.

    row          what is timed (client side, median of 3 fresh contexts)
    prefill_ms   L tokens, nothing cached, 1 new token
    suffix_ms    the same L tokens cached (sent just before) + 16 new tokens, 1 new token

Results: $OUT/suffix-profile.json and a table; server logs under $OUT/work.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

from sglang_droidspeak.bench import prefill_model
from sglang_droidspeak.bench.kernel_profile import recording
from sglang_droidspeak.bench.prefill import SUFFIX_LEN
from sglang_droidspeak.bench.servers import Server, wait_healthy

MICRO = Path(".cache/gpu-models/libwriter")
VOCAB_LIMIT, REPEATS = 120000, 3  # ids below the 8B config's vocabulary (run 6 used these)
def random_ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(3, VOCAB_LIMIT) for _ in range(n)]


def timed(server: Server, ids: list[int]) -> float:
    start = time.perf_counter()
    server.generate({"input_ids": ids, "sampling_params": {"max_new_tokens": 1, "temperature": 0}})
    return (time.perf_counter() - start) * 1000


def measure(server: Server, length: int, rng: random.Random) -> dict:
    prefill, suffix = [], []
    for _ in range(REPEATS):
        ctx = random_ids(rng, length)
        prefill.append(timed(server, ctx))
        suffix.append(timed(server, ctx + random_ids(rng, SUFFIX_LEN)))
        prefill_model.flush(server)
    return {"length": length, "prefill_ms": statistics.median(prefill), "suffix_ms": statistics.median(suffix),
            "prefill_all_ms": prefill, "suffix_all_ms": suffix}


def profile_suffix(server: Server, length: int, rng: random.Random, trace_dir: Path) -> dict:
    ctx = random_ids(rng, length)
    timed(server, ctx)
    with recording(server, trace_dir, activities=("CPU", "GPU")) as rec:
        wall_ms = timed(server, ctx + random_ids(rng, SUFFIX_LEN))
    prefill_model.flush(server)
    return {"length": length, "wall_ms": wall_ms, **rec.summary}


def run_backend(backend: str, args, model: Path, work: Path) -> dict:
    extra = ("--dtype", "bfloat16", "--load-format", "dummy", "--mem-fraction-static", "0.85",
             "--context-length", str(max(args.lengths) + 64), "--max-total-tokens", str(2 * max(args.lengths) + 4096),
             "--base-gpu-id", str(args.gpu), "--attention-backend", backend)
    trace_dir = work / f"trace-{backend}"
    server = Server(f"stock-{backend}", str(model), args.port, work, plugin=False, extra=extra,
                    env={"SGLANG_TORCH_PROFILER_DIR": str(trace_dir)})
    rng, result = random.Random(0), {"backend": backend, "rows": []}
    try:  # a failure keeps what was measured, and the other backend still runs
        wait_healthy([server], args.startup_timeout)
        timed(server, random_ids(rng, 1024))  # first-request JIT
        timed(server, random_ids(rng, 1024) + [5] * SUFFIX_LEN)
        for n in args.lengths:
            row = measure(server, n, rng)
            result["rows"].append(row)
            print(f"{backend:>10} L={n:>6}: prefill {row['prefill_ms']:8.1f} ms, suffix {row['suffix_ms']:6.1f} ms",
                  flush=True)
        result["profile"] = profile_suffix(server, args.profile_length, rng, trace_dir)
    except Exception as exc:
        result.update(error=repr(exc), log_tail=server.tail(15))
    finally:
        server.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", type=int, default=0)
    parser.add_argument("--port", type=int, default=31500)
    parser.add_argument("--backends", default="triton,flashinfer")
    parser.add_argument("--lengths", default="4096,16384,32768")
    parser.add_argument("--profile-length", type=int, default=16384)
    parser.add_argument("--startup-timeout", type=float, default=600)
    args = parser.parse_args()
    args.lengths = [int(x) for x in args.lengths.split(",")]
    out = Path(os.environ.get("OUT", "/tmp/out"))
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    model = prefill_model.write_model_dir(work / "llama-8b", MICRO, max(args.lengths) + 64)
    result = {"date": time.strftime("%Y-%m-%d"), "card": prefill_model.card(),
              "command": "bash scripts/gpu/suffix_profile.sh " + " ".join(sys.argv[1:]),
              "suffix_len": SUFFIX_LEN, "backends": []}
    for backend in args.backends.split(","):
        result["backends"].append(run_backend(backend, args, model, work))
        (out / "suffix-profile.json").write_text(json.dumps(result, indent=1))
    for b in result["backends"]:
        prof = b.get("profile", {})
        print(f"== {b['backend']}: profiled {prof.get('wall_ms', 0):.1f} ms wall, kernels "
              f"{prof.get('total_kernel_ms', 0):.1f} ms, by kind {prof.get('by_kind_ms')}", flush=True)
        for name, ms in prof.get("top_kernels_ms", [])[:6]:
            print(f"   {ms:8.2f} ms  {name}")
        if "error" in b:
            print("   ERROR", b["error"])


if __name__ == "__main__":
    main()
