#!/usr/bin/env bash
# Engine-native receiver exactness on the lent GPU: 4 architectures x {triton, flashinfer,
# flashinfer-paged}, every plan against the receiver's own full prefill (scripts/gpu/engine_exactness.py).
# Here (CPU):   bash ../shared/device/stage.sh; mkdir -p .cache/gpu-tok && cp TOKENIZER_DIR/tokenizer*.json .cache/gpu-tok/
#               (any tokenizer: ids go in raw; scripts/gpu/prepare.py makes .cache/gpu-models/libwriter)
# Device call:  carry [".device", ".cache/gpu-tok"], command `bash scripts/gpu/engine_exactness.sh [ARCHS [BACKENDS]]`
#               (e.g. `... gemma2 triton,flashinfer,flashinfer-paged`; or DS_ARCHS / DS_BACKENDS)
# Results: $OUT/engine-exactness.json and a table on stdout.
[ -n "${1:-}" ] && export DS_ARCHS=$1
[ -n "${2:-}" ] && export DS_BACKENDS=$2
source scripts/gpu/device_env.sh || exit 1
python3 scripts/gpu/engine_exactness.py
