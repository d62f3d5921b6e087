"""Load a model for the reference engine: a HF directory, a real-family name or a micro-family name.

    name                    resolves to
    an existing directory   itself (the model is named after the directory)
    smollm2-base            the converted pinned SmolLM2 base (real/base.py)
    smollm2-<lora variant>  the base with the committed adapter merged (real/variants.py)
    tester, libwriter, ...  the micro family (built on first use)
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, NamedTuple

import torch

from sglang_droidspeak.identity import ModelFingerprint, fingerprint_model_dir
from sglang_droidspeak.reference import ReferenceModel


class LoadedModel(NamedTuple):
    name: str
    path: Path
    model: ReferenceModel
    tokenizer: Any
    fingerprint: ModelFingerprint
    weights_digest: str


def default_work_dir() -> Path:
    """Where the profiler, the demo and the quality study keep their resumable scores."""
    from sglang_droidspeak.family import default_cache_dir

    return default_cache_dir() / "profiler"


REAL_PREFIX = "smollm2-"


def resolve_model_path(name_or_path: str) -> Path:
    """A directory as given, else a real-family or micro-family model name (built if needed)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if name_or_path.startswith(REAL_PREFIX):
        from sglang_droidspeak.real.variants import ensure_variant

        return ensure_variant(name_or_path.removeprefix(REAL_PREFIX))
    from sglang_droidspeak.family import ensure_family

    family = ensure_family()
    if name_or_path not in family.names:
        raise FileNotFoundError(
            f"{name_or_path!r} is neither a model directory nor a micro-family model ({', '.join(family.names)})")
    return family.model_path(name_or_path)


def weights_digest(path: Path) -> str:
    """sha256 of the safetensors files (identifies the exact weights a profile was made on)."""
    digest = hashlib.sha256()
    for file in sorted(path.glob("*.safetensors")):
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def load_model(name_or_path: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name_or_path)
    fingerprint = fingerprint_model_dir(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    name = path.name if Path(name_or_path).is_dir() else name_or_path
    return LoadedModel(name, path, ReferenceModel(model), tokenizer, fingerprint, weights_digest(path))


def run_header(config: Any, sender: LoadedModel, receiver: LoadedModel, exclude: tuple[str, ...] = (),
               **extra: Any) -> dict[str, Any]:
    """What identifies a scoring run: the config's fields (less ``exclude``, which do not
    change scores), the exact weights of both models, and ``extra``."""
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in exclude}
    return {**fields, "sender_weights": sender.weights_digest, "receiver_weights": receiver.weights_digest, **extra}
