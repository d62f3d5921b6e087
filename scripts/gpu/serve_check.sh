#!/usr/bin/env bash
# Issue 5 GPU check: one `droidspeak serve`, cross-model reuse via the router, a killed replica.
# Here (CPU):   bash ../shared/device/stage.sh && python3 scripts/gpu/prepare.py
# Device call:  carry [".device", ".cache/gpu-models"], command `bash scripts/gpu/serve_check.sh`
# Results: $OUT/serve_check.json, $OUT/serve.log (launcher), $OUT/serve-logs.tar.gz (servers).
source scripts/gpu/device_env.sh || exit 1
export PYTHONPATH=/tmp/sglang-site:${PYTHONPATH:-}
# the online policy needs a latency model: the calibrate_latency step of this session, if any
[ -f /tmp/ds-session/calibrate_latency/latency_model.json ] && export DS_LATENCY_MODEL=/tmp/ds-session/calibrate_latency/latency_model.json
python3 scripts/gpu/serve_check.py
