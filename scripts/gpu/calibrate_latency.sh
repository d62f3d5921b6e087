#!/usr/bin/env bash
# Calibrate the online policy's latency model on the lent GPU (micro family, bf16).
# Here (CPU):   bash ../shared/device/stage.sh && python3 scripts/gpu/prepare.py
# Device call:  carry [".device", ".cache/gpu-models"], command `bash scripts/gpu/calibrate_latency.sh`
# Results: $OUT/latency_model.json (the `latency_model:` mapping for DROIDSPEAK_CONFIG).
source scripts/gpu/device_env.sh || exit 1
export PYTHONPATH=/tmp/sglang-site:$(pwd):${PYTHONPATH:-}
python3 scripts/gpu/calibrate_latency.py
