#!/usr/bin/env bash
# The live quality guard on real weights through SGLang (scripts/gpu/guard_check.py; issue 16
# item 5): a sender, a lying receiver (inline full-reuse plan promising agreement 0.99, the guard
# on every reused greedy request) that must trip, and an honest same-weights control that must
# not; the liar once without and once with --enable-priority-scheduling.
# Needs, on the same machine: the real family (scripts/gpu/real_family.sh: /tmp/ds-real/models)
# and the SGLang bundle (.device, or /tmp/sglang-site unpacked by an earlier call).
# Staging and device calls (session step after real_family, or after an await_session): the
# docstring of scripts/gpu/guard_check.py. Here (CPU): python3 scripts/gpu/guard_check.py --dry-run
# Results: $OUT/guard-check.json, PASS/FAIL rows on stdout (exit 1 on a FAIL), server logs and
# configs in $OUT/servers/.
source scripts/gpu/real_sglang_env.sh || exit 1
python3 scripts/gpu/guard_check.py "$@"
