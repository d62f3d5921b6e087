#!/usr/bin/env bash
# No-overhead benchmark on the lent GPU (bench_serving: stock vs plugin on).
# Here (CPU):   bash ../shared/device/stage.sh && python3 scripts/gpu/prepare.py
# Device call:  carry [".device", ".cache/gpu-models"], command `bash scripts/gpu/overhead.sh`
# Results: $OUT/overhead.json, bench logs and server logs under $OUT.
source scripts/gpu/device_env.sh || exit 1
python3 scripts/gpu/overhead.py
