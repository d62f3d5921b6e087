#!/usr/bin/env bash
# Bandwidth sweep on the lent GPU (issue 4, DroidSpeak Fig. 20): receiver TTFT at 8192 and
# 16384 tokens for full prefill, full reuse and plan 0:8, with the sender's ZMQ stream
# paced to 10, 25 and 100 Gbit/s (setting throttle_gbps) and the receiver's import
# pipelined and serial ("load everything, then compute"), all in one result.
# Here (CPU):   bash ../shared/device/stage.sh   (the SGLang bundle in .device/)
# Device call:  carry [".device", ".cache/gpu-models"], command `bash scripts/gpu/bandwidth_sweep.sh`
#               One server pair per (rate, mode): 6 pairs of 8B servers. To fit a 10-minute
#               call, run one rate per call and merge:
#                 bash scripts/gpu/bandwidth_sweep.sh 10     (then 25, then 100)
#                 droidspeak bench-prefill --replot A.json,B.json,C.json --out docs/results/bandwidth-sweep-DATE.json
# Extra args after the rates pass through (e.g. `bash scripts/gpu/bandwidth_sweep.sh 10 --repeats 2`).
# Results: $OUT/bandwidth-sweep-<rates>-DATE.{json,md,png} and -sweep.png (TTFT vs link);
# server logs under $OUT/work/config-<i>.
# Note: the host ZMQ path measured 0.56 GB/s (4.7 Gbit/s) on the H200 machine
# (docs/BENCHMARKS.md), below every rate here; where the path is slower than the throttle
# the throttle changes nothing, and the sweep shows the path's own rate. `... 10 --data-plane
# cuda_ipc` paces the sender's GPU copy instead (ipc_export.py), which is faster than 100 Gbit/s.
source scripts/gpu/device_env.sh || exit 1
RATES="${1:-10,25,100}"
shift || true
python3 -m sglang_droidspeak.cli bench-prefill --lengths 8192,16384 --plans reuse,0:8 \
  --pipelined on,off --throttle-gbps "$RATES" --repeats 3 --warmup 1 \
  --out "$OUT/bandwidth-sweep-${RATES//,/-}-$(date +%F).json" \
  --work-dir "$OUT/work" --tokenizer-from .cache/gpu-models/libwriter "$@"
