#!/usr/bin/env bash
# Set up this project on a fresh CPU machine (what the README's two commands and CI use):
#   bash scripts/install_cpu.sh
# torch is pinned to the CPU build that pip finds on this workplace's disk; the package's
# own dependencies come from pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check "torch==2.13.0" -e ".[test]"
# SGLang 0.5.17's Python side, for the CPU tests of the radix cache and plugin against
# SGLang's real RadixCache and KV pools. --no-deps into a git-ignored folder: sglang pins
# torch 2.11.0 + CUDA (about 10 GB), which a CPU machine does not need for these imports.
# sglang_droidspeak.sglang.cpu_import puts this folder on sys.path (tests/conftest.py).
python3 -m pip install -q --disable-pip-version-check --no-deps --target .cache/sglang-cpu \
    sglang==0.5.17 triton==3.6.0 torchvision==0.28.0 psutil==7.2.2 pybase64==1.5.1 starlette==1.10.0 \
    aiohttp==3.14.5 multidict==7.2.1 yarl==1.25.1 propcache==0.5.4 aiohappyeyeballs==2.7.1 aiosignal==1.4.0 \
    frozenlist==1.8.0 msgspec==0.22.0 dill==0.4.1 openai==2.6.1 partial_json_parser==0.2.1.1.post7 \
    xgrammar==0.2.1 apache-tvm-ffi==0.1.11 distro==1.9.0 sentencepiece==0.2.3 einops==0.8.2 \
    compressed-tensors==0.20.0 loguru==0.7.3 gguf==0.19.0
