#!/usr/bin/env bash
# SGLang integration checks on the lent GPU (exactness, quality, fallbacks, metrics).
# Here (CPU):   bash ../shared/device/stage.sh && python3 scripts/gpu/prepare.py
# Device call:  carry [".device", ".cache/gpu-models"], command `bash scripts/gpu/integration.sh`
# Results: $OUT/integration.json and one server log per server under $OUT.
source scripts/gpu/device_env.sh || exit 1
python3 scripts/gpu/integration.py
