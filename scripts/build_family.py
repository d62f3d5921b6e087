"""Build (or load from the cache) the micro model family and print its perplexity table.

    python scripts/build_family.py

builds the default family (about 4-5 minutes on 2 CPU cores) into
``$DROIDSPEAK_CACHE`` or ``~/.cache/sglang_droidspeak``/family-<hash>, or just loads it
when already built. Every FamilyConfig field is an option, e.g.
``python scripts/build_family.py --seed 1 --finetune-steps 80 --cache-dir /tmp/families``.
Same as ``droidspeak family`` (sglang_droidspeak/family/cli.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from sglang_droidspeak.family import cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
