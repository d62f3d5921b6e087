#!/usr/bin/env bash
# The quality study on the real pairs (scripts/gpu/real_quality.py): per ordered pair, 256
# held-out lcc examples (seed 1), receiver / sender / full reuse / DroidSpeak frontier /
# CacheBlend-style at equal budgets / hybrid (group + token recompute), every metric with
# its 95% interval and paired verdicts at equal budget. Runs AFTER real_family in the same
# machine lease: it reads $DROIDSPEAK_REAL_DIR/models/smollm2-* and results/profiles/.
# Device calls (after real_family's two carries; see real_family.sh):
#   `bash scripts/gpu/real_stage.sh part2 && bash scripts/gpu/session.sh start 540 real_family real_quality`
#   then `bash scripts/gpu/session.sh wait 540` within the warm window until "all steps done".
# Options pass through session.sh as real_quality:--rows-per-batch+256+--budget-s+200.
# Expected on one H100: not yet measured (estimate 10-25 s per pair, so 2-5 min for 12); no pair
# starts after 240 s (--budget-s), each pair prints its seconds (prefixes / rows). CPU rehearsal
# (93 s): see the docstring of real_quality.py.
# Results: $OUT/real-quality.json, $OUT/real-quality.results.tar.gz (per-example scores, JSONL).
set -uo pipefail
export OUT=${OUT:-/tmp/out} PYTHONUNBUFFERED=1 DROIDSPEAK_REAL_DIR=${DS_REAL_DIR:-/tmp/ds-real}
export PYTHONPATH=$DROIDSPEAK_REAL_DIR/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"
ls -d "$DROIDSPEAK_REAL_DIR"/models/smollm2-* >/dev/null 2>&1 \
  || { echo "no models in $DROIDSPEAK_REAL_DIR/models: run real_family first in this lease"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
python3 scripts/gpu/real_quality.py "$@"
