#!/usr/bin/env bash
# A session step that waits until a file exists (another session's output), so that a step
# after it can use it:
#   DS_SESSION=sg bash scripts/gpu/session.sh start 540 engine_exactness \
#     await_path:/tmp/ds-real/results/profiles/smollm2-base__smollm2-lib-full.yaml+600 real_serving
# Waits until PATH exists or SECONDS pass (then goes on, and says so).
path=${1:?usage: await_path.sh PATH [SECONDS]} secs=${2:-600}
deadline=$(( $(date +%s) + secs ))
while [ ! -e "$path" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 5; done
if [ -e "$path" ]; then echo "$path exists"; else echo "$path still missing after ${secs} s: going on"; fi
