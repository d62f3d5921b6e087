#!/usr/bin/env bash
# GPU smoke test of the plugin on a stock SGLang 0.5.17 server (run on the lent GPU machine):
#   bash ../shared/device/stage.sh && mkdir -p .cache/gpu-models && \
#     cp -r ~/.cache/sglang_droidspeak/family-*/libwriter .cache/gpu-models/ && \
#     (device run, carry .device and .cache/gpu-models)  bash scripts/gpu/plugin_smoke.sh
# Checks: the plugin loads, `--radix-cache-backend droidspeak` builds our tree, the server
# answers /generate twice (the second a prefix-cache hit), the idle leak check stays quiet.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source .device/sglang-env.sh .device/sglang-0.5.17-site.tar.xz
python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/sglang-site . >/dev/null 2>&1 \
  || python3 -m pip install -q --no-deps --no-index --target /tmp/sglang-site .
MODEL=.cache/gpu-models/libwriter PORT=30111 LOG="$OUT/server.log"
SGLANG_PLUGINS=droidspeak python3 -m sglang.launch_server --model-path "$MODEL" --port $PORT \
  --attention-backend triton --radix-cache-backend droidspeak --dtype bfloat16 \
  --disable-cuda-graph --mem-fraction-static 0.3 > "$LOG" 2>&1 &
PID=$!
for i in $(seq 1 150); do
  kill -0 $PID 2>/dev/null || { echo "server died"; tail -40 "$LOG"; exit 1; }
  curl -sf localhost:$PORT/health >/dev/null && break; sleep 2
done
BODY='{"text": "import os\nimport sys\n\ndef main():\n    ", "sampling_params": {"max_new_tokens": 16, "temperature": 0}}'
for n in 1 2; do curl -s -m 240 localhost:$PORT/generate -H 'content-type: application/json' -d "$BODY" > "$OUT/gen$n.json"; done
sleep 3; kill $PID; wait $PID 2>/dev/null
echo "== checks"
grep -m1 -o "Tree cache initialized.*" "$LOG" || echo "NO tree-cache line"
python3 - "$OUT" <<'PY'
import json, sys
a, b = (json.load(open(f"{sys.argv[1]}/gen{n}.json")) for n in (1, 2))
print("gen1:", repr(a.get("text")), "cached_tokens:", a.get("meta_info", {}).get("cached_tokens"))
print("gen2:", repr(b.get("text")), "cached_tokens:", b.get("meta_info", {}).get("cached_tokens"))
print("same greedy output:", a.get("text") == b.get("text"))
PY
grep -i -m3 "leak\|Traceback" "$LOG" || echo "no leak/traceback lines"
