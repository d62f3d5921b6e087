#!/usr/bin/env bash
# A session step that waits for another session (session.sh's DS_SESSION=NAME) to finish,
# so that timed steps after it do not share the GPU with it:
#   bash scripts/gpu/session.sh start 540 real_family await_session:exact+600 real_serving
# Waits until /tmp/NAME/DONE exists or SECONDS pass (then goes on, and says so).
name=${1:?usage: await_session.sh NAME [SECONDS]} secs=${2:-600}
deadline=$(( $(date +%s) + secs ))
while [ ! -f "/tmp/$name/DONE" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 5; done
if [ -f "/tmp/$name/DONE" ]; then echo "session $name done"; else echo "session $name still running after ${secs} s: going on"; fi
