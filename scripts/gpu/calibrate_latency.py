"""Calibrate the online policy's prefill-latency model (plan/latency.py) on the GPU.

    bash scripts/gpu/calibrate_latency.sh       (device; after scripts/gpu/prepare.py)

Starts a sender (tester) and a receiver (libwriter) of the micro family and measures:
- full-prefill TTFT for random contexts of several lengths (receiver, plan "off", cold):
  a least-squares line over layer-tokens gives ms_per_layer_token and ms_fixed;
- the link: bytes moved / fetch seconds of full-reuse imports (the receiver's
  droidspeak_bytes_moved_total and droidspeak_fetch_seconds from /metrics). The fetch
  histogram times the whole import (transfer, host staging, slot writes), so this is the
  effective bandwidth of today's ZMQ path, a lower bound on the link itself.
KV and E bytes per token come from the model config. Writes $OUT/latency_model.json, the
`latency_model:` mapping the plugin settings take, and prints it.

On an H200 the micro family's prefill is flat over 256-1536 tokens (2026-11-28: the fit's
slope came out negative; fixed costs dominate a 128-wide, 8-layer model), so the slope is
clamped at MIN_MS_PER_LAYER_TOKEN and ``flat`` is recorded: recompute then costs next to
nothing and the policy may recompute whatever the SLO allows. The 8B-shaped constants come
from a bench-prefill run instead: ``python -m sglang_droidspeak.bench.calibrate RESULT.json``.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time
from pathlib import Path

from sglang_droidspeak.bench.servers import Server, metric_sum, wait_healthy  # noqa: E402

from sglang_droidspeak.plan.latency import PrefillLatencyModel  # noqa: E402

MODELS = Path(".cache/gpu-models")
LENGTHS = (256, 512, 1024, 1536)
MIN_MS_PER_LAYER_TOKEN = 1e-6
COMMON = ("--dtype", "bfloat16", "--mem-fraction-static", "0.8", "--max-total-tokens", "65536")


def ttft_ms(server: Server, ids: list[int], plan: str) -> float:
    start = time.perf_counter()
    server.generate({"input_ids": ids, "sampling_params": {"max_new_tokens": 1, "temperature": 0,
                                                            "custom_params": {"droidspeak_plan": plan}}})
    return 1e3 * (time.perf_counter() - start)


def main() -> None:
    out = Path(os.environ.get("OUT", "/tmp/out"))
    work = Path("/tmp/ds-calib")
    work.mkdir(parents=True, exist_ok=True)
    config = json.loads((MODELS / "libwriter" / "config.json").read_text())
    num_layers = config["num_hidden_layers"]
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    a = Server("tester", str(MODELS / "tester"), 30901, work, plugin=True, extra=COMMON, config={
        "model": "tester", "export_bind": "tcp://127.0.0.1:5901", "announce_bind": "tcp://127.0.0.1:5902"})
    b = Server("libwriter", str(MODELS / "libwriter"), 30902, work, plugin=True, extra=COMMON, config={
        "model": "libwriter", "min_foreign_tokens": 16, "profiles_dir": "profiles",
        "peers": [{"model": "tester", "fetch": "tcp://127.0.0.1:5901", "announce": "tcp://127.0.0.1:5902"}]})
    rng, samples, result = random.Random(0), [], {}
    try:
        wait_healthy([a, b], timeout=480)
        ttft_ms(b, [rng.randrange(3, 2000) for _ in range(64)], "off")  # warm-up
        for n in LENGTHS:
            times = [ttft_ms(b, [rng.randrange(3, 2000) for _ in range(n)], "off") for _ in range(3)]
            samples.append((n * num_layers, statistics.median(times)))
        for n in LENGTHS:  # full-reuse imports measure the link
            ctx = [rng.randrange(3, 2000) for _ in range(n)]
            a.generate({"input_ids": ctx, "sampling_params": {"max_new_tokens": 1}})
            time.sleep(0.5)
            ttft_ms(b, ctx + [5, 6, 7, 8], "reuse")
        metrics = b.metrics()
        moved = metric_sum(metrics, "sglang:droidspeak_bytes_moved_total", direction="in")
        seconds = metric_sum(metrics, "sglang:droidspeak_fetch_seconds_sum")
        link_gbps = 8 * moved / seconds / 1e9 if seconds > 0 else 1.0
        dtype_bytes = 2  # bf16
        base = PrefillLatencyModel(1.0, 0.0, 2 * config["num_key_value_heads"] * head_dim * dtype_bytes,
                                   config["hidden_size"] * dtype_bytes, link_gbps, pipelined=False)
        result.update(date=time.strftime("%Y-%m-%d"), command="bash scripts/gpu/calibrate_latency.sh",
                      samples_layer_tokens_ms=samples, bytes_in=moved, fetch_seconds=seconds)
        model = base.fit(samples, MIN_MS_PER_LAYER_TOKEN)
        result.update(latency_model=model.to_dict(), flat=model.ms_per_layer_token == MIN_MS_PER_LAYER_TOKEN)
    except Exception as exc:
        result["error"] = repr(exc)
    finally:
        a.stop()
        b.stop()
    (out / "latency_model.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
