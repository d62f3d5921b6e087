#!/usr/bin/env bash
# Profile of SGLang's 16-token suffix forward over a long cached prefix (issue 6: where the
# 16K target's time goes), per attention backend, on one stock 8B-shaped server.
# Here (CPU):   bash ../shared/device/stage.sh && python3 scripts/gpu/prepare.py
# Device call:  carry [".device", ".cache/gpu-models"], command `bash scripts/gpu/suffix_profile.sh`
#               (args pass through: --gpu 1 --backends triton,flashinfer --lengths 4096,16384,32768;
#               flashinfer's first start JIT-compiles for about 3 min)
# Results: $OUT/suffix-profile.json, server logs and the raw traces under $OUT/work.
source scripts/gpu/device_env.sh || exit 1
python3 scripts/gpu/suffix_profile.py "$@"
