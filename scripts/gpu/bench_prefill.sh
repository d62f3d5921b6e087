#!/usr/bin/env bash
# Prefill benchmark on the lent GPU (issue 6, deliverable 1): receiver TTFT against context
# length for full prefill, full KV reuse, DroidSpeak plans and the CacheBlend-style baseline
# (blend:R, at the budgets of 0:4 and 0:8 by default), on a Llama-3.1-8B-shaped model with
# SGLang's random dummy weights (two 8B servers on one card).
# Here (CPU):   bash ../shared/device/stage.sh   (the SGLang bundle in .device/)
# Device call:  carry [".device", ".cache/gpu-models"], command `bash scripts/gpu/bench_prefill.sh`
#               (extra args pass through, e.g. `bash scripts/gpu/bench_prefill.sh --lengths 16384,32768`)
# Results: $OUT/bench-prefill-DATE.{json,md} (the .png too if matplotlib is there; else run
# `droidspeak bench-prefill --replot docs/results/bench-prefill-DATE.json` here), server logs
# under $OUT/work. The JSON is rewritten after every length, so a run cut short keeps its rows.
source scripts/gpu/device_env.sh || exit 1
python3 -m sglang_droidspeak.cli bench-prefill --out "$OUT/bench-prefill-$(date +%F).json" \
  --work-dir "$OUT/work" --tokenizer-from .cache/gpu-models/libwriter "$@"
