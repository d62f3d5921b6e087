#!/usr/bin/env bash
# Receive the real family's inputs on the GPU machine, one carry per device call, into
# /tmp/ds-real (kept while the machine stays warm). Staged here by scripts/gpu/stage_real.py.
#   call 1: carry [".device-smol/part1"], command `bash scripts/gpu/real_stage.sh part1`
#   call 2: carry [".device-smol/part2"], command
#           `bash scripts/gpu/real_stage.sh part2 && bash scripts/gpu/session.sh start 540 real_family`
# part2 checks every file against manifest.json, joins the wheel (sha256 = the pin in
# sglang_droidspeak/real/pins.py), puts it and the Django sdist in /tmp/ds-real/downloads and
# installs the gguf wheel (pure Python, --no-deps) into /tmp/ds-real/site.
set -euo pipefail
DST=${DS_REAL_DIR:-/tmp/ds-real}  # DS_REAL_DIR: a rehearsal elsewhere (CPU)
part=${1:?usage: real_stage.sh part1|part2}
mkdir -p "$DST/incoming" "$DST/downloads"
cp .device-smol/"$part"/* "$DST/incoming/"
python3 - "$DST" "$part" <<'PY'
import hashlib, json, sys
from pathlib import Path
dst, part = Path(sys.argv[1]), sys.argv[2]
incoming = dst / "incoming"
manifest = json.loads((incoming / "manifest.json").read_text())
sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
for name, digest in manifest["parts"][part].items():
    assert sha(incoming / name) == digest, f"{name}: sha256 differs from the manifest"
print(f"{part}: {len(manifest['parts'][part])} files sha256-checked")
if part == "part2":
    missing = [n for n in manifest["parts"]["part1"] if not (incoming / n).is_file()]
    assert not missing, f"part1 is not here ({missing}): run part1 first, within the warm window"
    wheel = dst / "downloads" / manifest["wheel"]
    wheel.write_bytes((incoming / "wheel.part1").read_bytes() + (incoming / "wheel.part2").read_bytes())
    assert sha(wheel) == manifest["wheel_sha256"], "joined wheel: sha256 differs from the pin"
    for name in manifest["parts"]["part2"]:
        if name.endswith(".tar.gz"):
            (incoming / name).replace(dst / "downloads" / name)
    print(f"{wheel.name}: joined, sha256 {manifest['wheel_sha256'][:16]}... as pinned")
PY
if [ "$part" = part2 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$DST/site" "$DST"/incoming/gguf-*.whl
  PYTHONPATH=$DST/site python3 -c 'import gguf, numpy, yaml, safetensors, tokenizers, torch, transformers; print("gguf", gguf.__file__, "| torch", torch.__version__, "| transformers", transformers.__version__, "| cuda", torch.cuda.is_available())'
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
