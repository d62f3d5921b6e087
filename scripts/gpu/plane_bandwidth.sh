#!/usr/bin/env bash
# Issue 18: fetch bandwidth at 16K tokens, 8B shapes (32 layers x 8 KV heads x 128, bf16;
# all K/V + E of one layer) over the nixl plane beside cuda_ipc and zmq, sender and
# receiver as two processes on one GPU (scripts/gpu/plane_bandwidth.py).
# Here (CPU):   bash ../shared/device/stage.sh    # .device/ (the SGLang bundle), if not staged
#               python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                   --platform manylinux_2_28_x86_64 -d .device-nixl nixl-cu13==1.5.1   # 56 MiB
# Device call 1 (under a minute; NIXL and the SGLang bundle do not fit one 64 MiB carry):
#               carry [".device-nixl"], command `bash scripts/gpu/plane_bandwidth.sh install`
# Device call 2 (about 2 min, within the machine's idle window after call 1; one GPU):
#               carry [".device"], command `bash scripts/gpu/plane_bandwidth.sh`
#               (args pass through, e.g. --planes nixl,cuda_ipc,zmq --tokens 16384 --repeats 5)
# Results: $OUT/plane-bandwidth.json and a table (card, date, GB/s per plane).
set -uo pipefail
NIXL=/tmp/nixl-site
if [ "${1:-}" = install ]; then
  mkdir -p "$NIXL" && python3 -m pip install -q --no-deps --no-index --target "$NIXL" .device-nixl/nixl_cu13-*.whl \
    && ls "$NIXL" && exit 0
  echo "nixl install failed"; exit 1
fi
source scripts/gpu/device_env.sh || exit 1
[ -d "$NIXL/nixl_cu13" ] || echo "no NIXL in $NIXL (run 'bash scripts/gpu/plane_bandwidth.sh install' first): nixl reports an error"
export PYTHONPATH=/tmp/sglang-site:$NIXL:${PYTHONPATH:-}
python3 scripts/gpu/plane_bandwidth.py "$@"
