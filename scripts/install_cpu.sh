#!/usr/bin/env bash
# Set up this project on a fresh CPU machine (what the README's two commands and CI use):
#   bash scripts/install_cpu.sh
# torch is pinned to the CPU build that pip finds on this workplace's disk; the package's
# own dependencies come from pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check "torch==2.13.0" -e ".[test]"
