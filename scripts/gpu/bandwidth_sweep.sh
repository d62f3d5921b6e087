#!/usr/bin/env bash
# Bandwidth sweep on the lent GPU (issue 4, DroidSpeak Fig. 20): receiver TTFT at 8192 and
# 16384 tokens for full prefill, full reuse and plan 0:8, with the sender's stream paced to
# 10, 25 and 100 Gbit/s and the receiver's import pipelined and serial ("load everything,
# then compute"), all in one result.
# One call runs all rates on ONE pair of 8B servers: the sender allows request rates
# (allow_request_throttle) and each timed request names its rate and pipelining in
# custom_params (droidspeak_link_gbps, droidspeak_pipelined), so the ~2.7 min server start
# is paid once, not once per (rate, mode).
# Here (CPU):   bash ../shared/device/stage.sh   (the SGLang bundle in .device/)
# Device call:  carry [".device", ".cache/gpu-models"], command `bash scripts/gpu/bandwidth_sweep.sh`
#               (rates 10,25,100 x pipelined on,off: 6 configs; about 8-9 min, estimated,
#               not yet measured; if it runs short of the 10-minute call, add `--repeats 2`)
# Other rates:  bash scripts/gpu/bandwidth_sweep.sh 10,40   (a first argument not starting with '-')
# Extra args pass through (e.g. `bash scripts/gpu/bandwidth_sweep.sh --data-plane cuda_ipc`).
# Results: $OUT/bandwidth-sweep-<rates>-DATE.{json,md,png} and -sweep.png (TTFT vs link);
# server logs under $OUT/work/servers.
# Note: the host ZMQ path measured 0.56 GB/s (4.7 Gbit/s) on the H200 machine
# (docs/BENCHMARKS.md), below every rate here; where the path is slower than the throttle
# the throttle changes nothing, and the sweep shows the path's own rate. `--data-plane
# cuda_ipc` paces the sender's GPU copy instead (transfer/planes/cuda_ipc/sender.py), which is faster than 100 Gbit/s.
source scripts/gpu/device_env.sh || exit 1
RATES=10,25,100
if [[ $# -gt 0 && $1 != -* ]]; then
  RATES=$1
  shift
fi
python3 -m sglang_droidspeak.cli bench-prefill --lengths 8192,16384 --plans reuse,0:8 \
  --pipelined on,off --throttle-gbps "$RATES" --repeats 3 --warmup 1 \
  --out "$OUT/bandwidth-sweep-${RATES//,/-}-$(date +%F).json" \
  --work-dir "$OUT/work" --tokenizer-from .cache/gpu-models/libwriter "$@"
