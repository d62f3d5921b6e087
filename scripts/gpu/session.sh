#!/usr/bin/env bash
# Run several GPU steps in one machine lease, in the background, so that they outlive one
# device call (10 min) and pay the machine start and SGLang's kernel compiles only once.
#
# First call:   carry [".device", ".cache/gpu-models"],
#               command `bash scripts/gpu/session.sh start 560 integration overhead serve_check`
#               (each STEP runs `bash scripts/gpu/STEP.sh` with OUT=/tmp/ds-session/STEP;
#               STEP=name:arg+arg passes args, e.g. bench_prefill:--lengths+1024,16384+--plans+0:4,0:8;
#               the first ':' ends the name, '+' separates args (runs of 2026-11-28 before
#               commit "session.sh: '+' separates step args" used ':', which split plans);
#               'overhead&suffix_profile:--gpu+1' runs two steps at once, then goes on)
# Next calls:   command `bash scripts/gpu/session.sh wait 560`  (within the machine's
#               30 s idle window, or the machine and the run are gone)
# Each call waits up to N seconds, prints progress, and copies every step's *.json and one
# log archive per finished step into $OUT (8 files at most come back).
# DS_SESSION=NAME (in every call of that session) runs a second, independent session beside
# the default one (/tmp/NAME, /tmp/NAME-repo): e.g. SGLang exactness checks on the same GPU
# while a training step runs; only for steps whose numbers are not timings.
set -uo pipefail
if [ -n "${DS_SESSION:-}" ]; then ROOT=/tmp/$DS_SESSION REPO=/tmp/$DS_SESSION-repo; else ROOT=/tmp/ds-session REPO=/tmp/ds-repo; fi

start() {
  rm -rf "$ROOT" "$REPO" && mkdir -p "$ROOT" && cp -a . "$REPO"
  printf '%s\n' "$@" >"$ROOT/steps"
  setsid nohup bash -c '
    cd '"$REPO"'
    run_step() {  # NAME[:ARG+ARG...]
      local step=$1 name=${1%%:*} args=""; [ "$name" != "$step" ] && args=${step#*:}
      echo "$(date +%T) start $name" >>'"$ROOT"'/progress
      OUT='"$ROOT"'/$name bash scripts/gpu/$name.sh ${args//+/ } >'"$ROOT"'/$name.log 2>&1; local rc=$?
      echo "$(date +%T) end $name rc=$rc" >>'"$ROOT"'/progress
    }
    for step in "$@"; do  # A&B: run A and B at once (e.g. on GPUs 0 and 1), then go on
      IFS="&" read -ra group <<<"$step"
      for member in "${group[@]}"; do run_step "$member" & done
      wait
    done
    touch '"$ROOT"'/DONE' _ "$@" >/dev/null 2>&1 &
}

wait_for() {
  local deadline=$(( $(date +%s) + $1 ))
  while [ ! -f "$ROOT/DONE" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 5; done
  cat "$ROOT/progress" 2>/dev/null
  local running; running=$(awk '$2=="start"{r[$3]=1} $2=="end"{delete r[$3]} END{for(k in r) print k}' "$ROOT/progress" 2>/dev/null)
  for step in $running; do echo "--- running: $step"; tail -5 "$ROOT/$step.log"; done
  [ -f "$ROOT/DONE" ] && echo "--- all steps done"
}

collect() {
  local out=${OUT:-/tmp/out}; mkdir -p "$out"
  for json in "$ROOT"/*/*.json; do [ -f "$json" ] && cp "$json" "$out/"; done
  # logs of every step that ended, small files only (server logs, bench logs, step stdout; no profiler traces)
  (cd "$ROOT" && find . -type f -size -4M ! -name '*.png' ! -name '*.trace.json*' -print0 | tar czf "$out/session-logs.tar.gz" --null -T -)
  for png in "$ROOT"/*/*.png; do [ -f "$png" ] && cp "$png" "$out/"; done
  for tgz in "$ROOT"/*/*.results.tar.gz; do [ -f "$tgz" ] && cp "$tgz" "$out/"; done  # a step's packed results
  ls -la "$out"
}

case "${1:-}" in
  start) shift; secs=$1; shift; start "$@"; wait_for "$secs"; collect ;;
  wait) wait_for "${2:-560}"; collect ;;
  *) echo "usage: session.sh start SECONDS STEP... | session.sh wait SECONDS"; exit 2 ;;
esac
