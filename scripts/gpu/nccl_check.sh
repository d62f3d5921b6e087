#!/usr/bin/env bash
# The nccl data plane on two GPUs (issue 4, deliverable 3): first the pytest check of a
# real PyNcclCommunicator pair (tests/gpu/test_nccl_gpu.py), then `droidspeak bench-prefill
# --data-plane nccl` with the sender on GPU 0 and the receiver on GPU 1 (--gpus 0,1: each
# server's --base-gpu-id). E and K/V then move GPU to GPU on a per-pair NCCL channel that
# the receiver opens through a TCPStore it hosts on 127.0.0.1 (settings nccl_host).
# Needs a machine with >= 2 GPUs (kind nvidia-h200-x2).
# Here (CPU):   bash ../shared/device/stage.sh   (the SGLang bundle in .device/)
# Device call:  kind nvidia-h200-x2, carry [".device", ".cache/gpu-models"],
#               command `bash scripts/gpu/nccl_check.sh` (extra args go to bench-prefill,
#               e.g. `bash scripts/gpu/nccl_check.sh --lengths 4096,16384 --plans reuse,0:8`)
# Results: $OUT/nccl-gpu-test.{log,xml}, $OUT/bench-prefill-nccl-DATE.{json,md}, server logs
# under $OUT/work (grep them for "NCCL channel" and "falls back": a run where every fetch
# fell back to zmq or to prefill is a failed check even if the bench completes).
source scripts/gpu/device_env.sh || exit 1
GPUS=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)
[ "$GPUS" -ge 2 ] || { echo "nccl_check needs 2 GPUs, found $GPUS"; exit 1; }
python3 -m pytest tests/gpu/test_nccl_gpu.py -m gpu -q -p no:cacheprovider \
  --junitxml "$OUT/nccl-gpu-test.xml" 2>&1 | tee "$OUT/nccl-gpu-test.log"
python3 -m sglang_droidspeak.cli bench-prefill --data-plane nccl --gpus 0,1 --mem-fraction 0.85 \
  --lengths 1024,4096,16384 --plans reuse,0:8 --repeats 3 \
  --out "$OUT/bench-prefill-nccl-$(date +%F).json" --work-dir "$OUT/work" \
  --tokenizer-from .cache/gpu-models/libwriter "$@"
grep -h "droidspeak_fallbacks_total\|droidspeak_bytes_total" "$OUT"/bench-prefill-nccl-*.json | head -20 || true
