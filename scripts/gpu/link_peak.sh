#!/usr/bin/env bash
# The links' peaks (GPU-to-GPU copy, NCCL send/recv, pinned host copies, ZMQ over TCP
# loopback), to set the data planes' achieved bandwidth against (issue 4's must-show).
# Device call:  kind nvidia-h200-x2 (one GPU gives the host rows only), carry [".device"],
#               command `bash scripts/gpu/link_peak.sh` (args pass through: --size-mb 1024 --repeats 10)
# Results: $OUT/link-peak.json and a table; about 1 min.
source scripts/gpu/device_env.sh || exit 1
python3 scripts/gpu/link_peak.py "$@"
