# Sourced by the real-family steps that serve through SGLang (real_serving.sh, guard_check.sh):
# the real family made earlier on this machine (scripts/gpu/real_family.sh: $DS_REAL_DIR, default
# /tmp/ds-real), then the SGLang bundle and this package (scripts/gpu/device_env.sh).
set -uo pipefail
export DROIDSPEAK_REAL_DIR=${DS_REAL_DIR:-/tmp/ds-real}
[ -f "$DROIDSPEAK_REAL_DIR/models/smollm2-base/config.json" ] \
  || { echo "no real family under $DROIDSPEAK_REAL_DIR/models: run the real_family step on this machine first"; return 1; }
source scripts/gpu/device_env.sh
