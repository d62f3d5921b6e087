#!/usr/bin/env bash
# Throughput-at-SLO benchmark on the lent GPU(s) (issue 6, deliverable 2): a MetaGPT-like
# multi-agent workload (coder > tester, coder > tester > reviewer reading one 4K-16K-token
# repository; Poisson session arrivals) against three Llama-3.1-8B-shaped dummy-weight
# servers (coder = sender, tester and reviewer its receivers), swept over QPS for full
# prefill ("off"), full reuse and DroidSpeak 0:8; TTFT/TBT/E2E vs QPS, max QPS at the SLO.
# Here (CPU):   bash ../shared/device/stage.sh   (the SGLang bundle in .device/)
# One GPU:      kind nvidia-h200, carry [".device", ".cache/gpu-models"],
#               command `bash scripts/gpu/bench_throughput.sh` (about 6-8 min: better through
#               `bash scripts/gpu/session.sh start 560 bench_throughput`); the KV moves over
#               the cuda_ipc data plane (the default here: the sender copies it GPU to GPU)
# Two GPUs:     kind nvidia-h200-x2, `bash scripts/gpu/bench_throughput.sh --gpus 0,1,1 --data-plane nccl`
#               (coder alone on GPU 0, receivers on GPU 1; KV over NCCL, or `--data-plane zmq`
#               for host staging; cuda_ipc needs one GPU). Extra args pass through; later win.
# Results: $OUT/bench-throughput-DATE.{json,md,png} (no .png without matplotlib: run
# `droidspeak bench-throughput --replot docs/results/bench-throughput-DATE.json` here), server
# logs under $OUT/work. The JSON is rewritten after every (QPS, system) point.
source scripts/gpu/device_env.sh || exit 1
python3 -m sglang_droidspeak.cli bench-throughput --launch --out "$OUT/bench-throughput-$(date +%F).json" \
  --work-dir "$OUT/work" --tokenizer-from .cache/gpu-models/libwriter --data-plane cuda_ipc \
  --systems off,reuse,0:8 --qps 0.5,1,2,4 --num-sessions 12 --warmup-sessions 1 --slo-ttft-ms 2000 "$@"
