#!/usr/bin/env bash
# Issue 20 item 3 + the GPU fault repeat: SGLang Model Gateway vs our router in front of the
# same real SGLang servers (micro family: tester x2, libwriter x2 on one GPU), in one run.
# Here (CPU):   bash ../shared/device/stage.sh && python3 scripts/gpu/prepare.py
#               python3 scripts/gpu/front_door.py --stage-gateway    # .device-gw/ (wheel + vocab, ~32 MB)
# Device call 1 (about 1 min; the gateway and the SGLang bundle do not fit one 64 MiB carry):
#               carry [".device-gw"], command `bash scripts/gpu/front_door.sh install`
# Device call 2 (about 8 min, within the machine's idle window after call 1):
#               carry [".device", ".cache/gpu-models"], command `bash scripts/gpu/front_door.sh`
# Results: $OUT/front_door.json (+ the bench JSON/MD per door), $OUT/front-door-logs.tar.gz.
set -uo pipefail
GW=/tmp/gateway-site
if [ "${1:-}" = install ]; then
  mkdir -p "$GW" && python3 -m pip install -q --no-deps --no-index --target "$GW" .device-gw/sglang_router-*.whl \
    && mkdir -p "$GW/tiktoken" && cp .device-gw/o200k_base.tiktoken "$GW/tiktoken/" && ls "$GW" && exit 0
  echo "gateway install failed"; exit 1
fi
source scripts/gpu/device_env.sh || exit 1
[ -d "$GW/sglang_router" ] || { echo "no gateway in $GW: run 'bash scripts/gpu/front_door.sh install' first"; exit 1; }
export PYTHONPATH=/tmp/sglang-site:$GW:${PYTHONPATH:-} TIKTOKEN_ENCODINGS_BASE=$GW/tiktoken
python3 scripts/gpu/front_door.py "$@"; rc=$?
(cd /tmp/ds-front-door && tar czf "$OUT/front-door-logs.tar.gz" --exclude='*.json' . 2>/dev/null)
exit $rc
