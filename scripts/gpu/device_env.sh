# Sourced by scripts/gpu/*.sh on the lent GPU machine: unpack the SGLang 0.5.17 bundle
# (.device/, staged by ../shared/device/stage.sh), install this package next to it, and
# print the card. Sets OUT (where results go) and a shared secret for the test servers.
# Without .device (a call that carried something else), a bundle an earlier call on this
# machine unpacked to /tmp/sglang-site is used as sglang-env.sh would set it up.
set -uo pipefail
export OUT=${OUT:-/tmp/out} PYTHONUNBUFFERED=1 DROIDSPEAK_SECRET=${DROIDSPEAK_SECRET:-gpu-check-secret-0123456789}
mkdir -p "$OUT"
if [ -f .device/sglang-env.sh ]; then
  source .device/sglang-env.sh .device/sglang-0.5.17-site.tar.xz
elif [ -f /tmp/sglang-site/.ok ]; then
  export PYTHONPATH=/tmp/sglang-site${PYTHONPATH:+:$PYTHONPATH}
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # as sglang-env.sh
else
  echo "no SGLang bundle: carry .device (or unpack it in an earlier call on this machine)"; exit 1
fi
python3 -m pip install -q --upgrade --no-deps --no-build-isolation --no-index --target /tmp/sglang-site . >"$OUT/pip.log" 2>&1 \
  || { echo "pip install failed"; tail -20 "$OUT/pip.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
