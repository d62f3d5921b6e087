"""``droidspeak family``: build (or load from the cache) the micro family, print its table.

Every FamilyConfig field is an option, defaults from the dataclass, e.g.
``droidspeak family --seed 1 --finetune-steps 80 --cache-dir /tmp/families``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from sglang_droidspeak.config_cli import checked_type, dataclass_from_args
from sglang_droidspeak.family.config import FamilyConfig


def _optional_int(text: str) -> int | None:
    if text.lower() == "none":
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 or none, got {text[:40]!r}")
    return int(text)


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
    return text.lower() in ("true", "1")


def _parser_for(field: dataclasses.Field):
    if field.default is None:
        return _optional_int
    kind = type(field.default)
    return _bool if kind is bool else checked_type(field, kind) if kind in (int, float) else kind


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for field in dataclasses.fields(FamilyConfig):
        parse = _parser_for(field)
        parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, type=parse, default=field.default,
                            help=f"FamilyConfig.{field.name} (default: %(default)s)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="cache root (default: $DROIDSPEAK_CACHE or ~/.cache/sglang_droidspeak)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from sglang_droidspeak.family import ensure_family
    from sglang_droidspeak.family.manifest import perplexity_table

    config = dataclass_from_args(FamilyConfig, args)
    start = time.perf_counter()
    family = ensure_family(config, cache_dir=args.cache_dir, progress=not args.no_progress)
    elapsed = time.perf_counter() - start
    print(f"family: {family.root}  (this run {elapsed:.1f} s; build took {family.manifest['seconds']['total']:.1f} s)")
    print(perplexity_table(family.manifest))
    return 0
