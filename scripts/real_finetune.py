"""Make the real family: fine-tunes of SmolLM2-135M-Instruct on the pinned Django domains.

    python3 scripts/real_finetune.py --device cuda --out-dir $OUT/real-family --models-dir /tmp/real-models
    python3 scripts/real_finetune.py --device cpu --max-steps 3 --eval-windows 2 --variants docs-lora   # smoke

Variants (sglang_droidspeak/real/recipe.py): lib-full (full fine-tune), test-lora (LoRA r8),
docs-lora (LoRA r4). Writes <out-dir>/finetune.json (held-out loss per domain, base and
every variant, sha256 of the data, base and outputs) and <out-dir>/adapters/*.safetensors
(bfloat16 LoRA adapters, small enough to commit under adapters/); every variant's full
weights go to <models-dir>/<variant> (HF directories for the profiler). Prints the table.
On one H100 the default recipe trains in about 2 minutes (estimate; 8192 tokens a step).
Every RecipeConfig field is an option.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from sglang_droidspeak.config_cli import add_dataclass_arguments, dataclass_from_args  # noqa: E402
from sglang_droidspeak.real.recipe import RecipeConfig  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataclass_arguments(parser, RecipeConfig, {"variants": "comma-separated variant names"})
    return parser


def main(argv: list[str] | None = None) -> int:
    from sglang_droidspeak.real.finetune import loss_table, run_recipe

    config = dataclass_from_args(RecipeConfig, build_parser().parse_args(argv))
    report = run_recipe(config, progress=sys.stderr.isatty())
    print(loss_table(report))
    print(f"written: {Path(config.out_dir) / 'finetune.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
