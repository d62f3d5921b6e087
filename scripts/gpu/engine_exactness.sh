#!/usr/bin/env bash
# Engine-native receiver exactness on the lent GPU: 4 architectures x {triton, flashinfer},
# every plan against the receiver's own full prefill (scripts/gpu/engine_exactness.py).
# Here (CPU):   bash ../shared/device/stage.sh
# Device call:  carry [".device"], command `bash scripts/gpu/engine_exactness.sh`
#               (DS_ARCHS=llama3,gemma2 DS_BACKENDS=triton narrow it down)
# Results: $OUT/engine-exactness.json and a table on stdout.
source scripts/gpu/device_env.sh || exit 1
python3 scripts/gpu/engine_exactness.py
