# Sourced by scripts/gpu/*.sh on the lent GPU machine: unpack the SGLang 0.5.17 bundle
# (.device/, staged by ../shared/device/stage.sh), install this package next to it, and
# print the card. Sets OUT (where results go) and a shared secret for the test servers.
set -uo pipefail
export OUT=${OUT:-/tmp/out} PYTHONUNBUFFERED=1 DROIDSPEAK_SECRET=${DROIDSPEAK_SECRET:-gpu-check-secret-0123456789}
mkdir -p "$OUT"
source .device/sglang-env.sh .device/sglang-0.5.17-site.tar.xz
python3 -m pip install -q --upgrade --no-deps --no-build-isolation --no-index --target /tmp/sglang-site . >"$OUT/pip.log" 2>&1 \
  || { echo "pip install failed"; tail -20 "$OUT/pip.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
