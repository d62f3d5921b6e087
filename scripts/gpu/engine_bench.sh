#!/usr/bin/env bash
# TTFT at 16K and 32K, 8B shapes, one H200/H100, cuda_ipc: full prefill, DroidSpeak 0:8 and
# the CacheBlend-style blend:0.21875 (the same budget), on the triton and on the flashinfer
# backend, one after the other in the same call (the baseline is each backend's own full
# prefill). The first import after each pair's start-up is kept (warmup_samples: cold start).
# blend:0.21875 is the equal-compute point with the selection pass counted: layer 0 over every
# token (S = 1) and layer 1's V projection, then 0.21875 x 32 = 7 layers' worth of tokens:
# about 8 layers in all, as 0:8 (blend:0.25, run before 2026-12-06 evening, spends about 9).
# reuse (every layer's K/V fetched, nothing recomputed) isolates the fetch of all layers (1.5-8 s
# on 2026-12-06 until the fetch thread got its GIL handoff: docs/BENCHMARKS.md run 11); 1:8
# starts from the sender's E_1, which cuda_ipc writes into the receiver's E staging area.
# Here (CPU):   bash ../shared/device/stage.sh && python3 scripts/gpu/prepare.py && mkdir -p .cache/gpu-tok && cp .cache/gpu-models/libwriter/tokenizer*.json .cache/gpu-tok/
# Device call:  carry [".device", ".cache/gpu-tok"], command `bash scripts/gpu/engine_bench.sh`
#               (DS_BACKENDS=flashinfer for one backend only; DS_PLANS=0:8,1:8,reuse for other plans;
#               DS_LENGTHS=16384 for one length; DS_PROFILE_PLANS= for no profiled requests)
# At the first length one more receiver request per DS_PROFILE_PLANS system (default: full
# prefill, 0:8 and the blend) runs under SGLang's profiler: GPU kernel time by kind, busy and idle
# (bench/kernel_profile.py), in the JSON's "profiles" and the .md's last table.
# Results: $OUT/bench-prefill-<backend>-DATE.{json,md}; the servers' logs under $OUT/work-<backend>.
source scripts/gpu/device_env.sh || exit 1
export DROIDSPEAK_TRACE_FETCHES=${DROIDSPEAK_TRACE_FETCHES:-1}  # every fetch and export logs its timeline
for backend in ${DS_BACKENDS:-triton flashinfer}; do
  python3 -m sglang_droidspeak.cli bench-prefill --out "$OUT/bench-prefill-$backend-$(date +%F).json" \
    --work-dir "$OUT/work-$backend" --tokenizer-from .cache/gpu-tok \
    --lengths ${DS_LENGTHS:-16384,32768} --plans ${DS_PLANS:-0:8,1:8,reuse,blend:0.21875} --data-plane cuda_ipc --repeats 3 --warmup 1 \
    --profile-plans "${DS_PROFILE_PLANS-off,0:8,blend:0.21875}" \
    --fetch-timeout 120 --server-args="--attention-backend=$backend" --port-base $((30700 + ${#backend})) \
    || echo "bench-prefill $backend failed"
done
