#!/usr/bin/env bash
# Real weights through SGLang (scripts/gpu/real_serving.py; issue 16 item 6): the base and one
# fine-tune of the real family served with the plugin on one GPU; the fine-tune reuses the
# base's KV over 64 long held-out contexts; greedy match against its own full prefill, edit
# similarity, TTFT, fallbacks; plus a same-weights control (base -> base must be exact).
# Needs, on the same machine: the real family (scripts/gpu/real_family.sh: /tmp/ds-real/models,
# /tmp/ds-real/results/profiles) and the SGLang bundle (.device, or /tmp/sglang-site unpacked by
# an earlier call: .device and the real family's part2 carry do not fit one call's 64 MiB).
# Here (CPU):   bash ../shared/device/stage.sh; bash scripts/install_cpu.sh; python3 scripts/gpu/stage_real.py
#               (rehearse: python3 scripts/gpu/real_serving.py --dry-run)
# Device calls, each within the warm window of the previous one:
#   1. carry [".device"], command `source .device/sglang-env.sh .device/sglang-0.5.17-site.tar.xz`
#   2. carry [".device-smol/part1"], command `bash scripts/gpu/real_stage.sh part1`
#   3. carry [".device-smol/part2"], command
#      `bash scripts/gpu/real_stage.sh part2 && bash scripts/gpu/session.sh start 540 real_family real_serving`
#   4. `bash scripts/gpu/session.sh wait 540` until `all steps done`
# Alone (real family already there): `bash scripts/gpu/real_serving.sh [--receiver smollm2-test-lora]
#   [--backend triton] [--num-prompts 64] ...`; as a session step, '+' separates the args:
#   real_serving:--receiver+smollm2-docs-lora
# Results: $OUT/real-serving.json (copy to docs/results/real-serving-<receiver>-<date>.json), a table
# on stdout, server logs and configs in $OUT/servers/.
source scripts/gpu/real_sglang_env.sh || exit 1
python3 scripts/gpu/real_serving.py "$@"
