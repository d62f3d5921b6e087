"""Build (or load from the cache) the micro model family and print its perplexity table.

    python scripts/build_family.py

builds the default family (about 5 minutes on 2 CPU cores) into
``$DROIDSPEAK_CACHE`` or ``~/.cache/sglang_droidspeak``/family-<hash>, or just loads it
when already built. Every FamilyConfig field is an option, e.g.
``python scripts/build_family.py --seed 1 --finetune-steps 80 --cache-dir /tmp/families``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from sglang_droidspeak.family import FamilyConfig, ensure_family  # noqa: E402
from sglang_droidspeak.family.manifest import perplexity_table  # noqa: E402


def _optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for field in dataclasses.fields(FamilyConfig):
        parse = _optional_int if field.default is None else type(field.default)
        parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name,
                            type=parse, default=field.default,
                            help=f"FamilyConfig.{field.name} (default: %(default)s)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="cache root (default: $DROIDSPEAK_CACHE or ~/.cache/sglang_droidspeak)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    cache_dir, progress = args.pop("cache_dir"), not args.pop("no_progress")
    config = FamilyConfig(**args)
    start = time.perf_counter()
    family = ensure_family(config, cache_dir=cache_dir, progress=progress)
    elapsed = time.perf_counter() - start
    build_seconds = family.manifest["seconds"]["total"]
    print(f"family: {family.root}  (this run {elapsed:.1f} s; build took {build_seconds:.1f} s)")
    print(perplexity_table(family.manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
