#!/usr/bin/env bash
# The pytest GPU tests (marker `gpu`; CI skips them) on the lent GPU: the CUDA IPC data
# plane between two processes (tests/gpu/) and the reference engine on CUDA.
# Device call:  carry [".device", ".cache/gpu-models"], command `bash scripts/gpu/gpu_tests.sh`
#               (or as a step of scripts/gpu/session.sh)
# Results: $OUT/gpu-tests.log and $OUT/gpu-tests.xml (JUnit).
source scripts/gpu/device_env.sh || exit 1
python3 -m pytest tests/gpu tests/unit/test_reference_gpu.py -m gpu -q -p no:cacheprovider \
  --junitxml "$OUT/gpu-tests.xml" 2>&1 | tee "$OUT/gpu-tests.log"
