#!/usr/bin/env bash
# Engine-native receiver on the lent GPU, 8B shapes: cold start, batching of 8 imports, and
# decode inter-token latency under 16K imports (none / async / blocking) in the same run.
# Here (CPU):   bash ../shared/device/stage.sh
# Device call:  carry [".device"], command `bash scripts/gpu/engine_receiver.sh`
#               (DS_BACKEND=triton for the triton backend; DS_HOL_IMPORTS=4 for fewer imports)
# Results: $OUT/engine-receiver-<backend>.json and a summary on stdout.
source scripts/gpu/device_env.sh || exit 1
python3 scripts/gpu/engine_receiver.py
