"""Model fingerprints: two models may share KV only when their fingerprints are equal.

A fingerprint holds what fixes the layout and meaning of a KV cache and of the
residual stream: architecture, layer count, hidden size, head counts, head dim, RoPE
settings, vocab size, and a hash of the tokenizer (its vocabulary, merges, special
tokens and normalisation). Weights are deliberately not part of it: fine-tunes of one
foundation model share a fingerprint, which is the whole point.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from sglang_droidspeak.text_files import MAX_MODEL_FILE_BYTES, excerpt, read_text_file
from sglang_droidspeak.validation import is_number, unknown_keys_problem
from sglang_droidspeak.yaml_io import load_json_file


class IncompatibleModels(ValueError):
    """Raised when two fingerprints differ; the message names every differing field."""


@dataclass(frozen=True)
class ModelFingerprint:
    architecture: str
    model_type: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rope_theta: float
    rope_scaling: str  # canonical JSON of the rope scaling dict, "null" when absent
    tokenizer_hash: str

    @property
    def digest(self) -> str:
        """A short stable id of the whole fingerprint (16 hex chars)."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "fingerprint") -> "ModelFingerprint":
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
        unknown = set(data) - set(names)
        if unknown:
            raise ValueError(f"{where}: {unknown_keys_problem(unknown, names)}")
        values = {}
        for f in fields(cls):
            value = data[f.name]
            ok = is_number(value) if f.type == "float" else isinstance(value, str if f.type == "str" else int)
            if not ok or isinstance(value, bool):
                raise ValueError(f"{where}.{f.name}: expected {'a finite number' if f.type == 'float' else f.type}, "
                                 f"got {excerpt(value)}")
            values[f.name] = float(value) if f.type == "float" else value
        return cls(**values)


def diff_fingerprints(a: ModelFingerprint, b: ModelFingerprint) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ, as {field: (a_value, b_value)}."""
    return {
        f.name: (getattr(a, f.name), getattr(b, f.name))
        for f in fields(ModelFingerprint)
        if getattr(a, f.name) != getattr(b, f.name)
    }


def check_compatible(
    sender: ModelFingerprint, receiver: ModelFingerprint, sender_name: str = "sender",
    receiver_name: str = "receiver",
) -> None:
    """Raise IncompatibleModels unless the two models may share KV."""
    diff = diff_fingerprints(sender, receiver)
    if diff:
        parts = "; ".join(f"{k}: {sender_name}={a!r} vs {receiver_name}={b!r}" for k, (a, b) in diff.items())
        raise IncompatibleModels(f"{sender_name} and {receiver_name} cannot share KV ({parts})")


def _config_get(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def _rope(config: Any) -> tuple[float, str]:
    """(rope_theta, canonical rope scaling) for transformers 4.x and 5.x configs alike.

    5.x folds rope_theta into ``rope_parameters`` (aliased as ``rope_scaling``); 4.x keeps
    ``rope_theta`` apart and spells ``rope_type`` as ``type``. Both map to one form.
    """
    merged = {**(_config_get(config, "rope_parameters") or {}), **(_config_get(config, "rope_scaling") or {})}
    if "type" in merged:
        merged.setdefault("rope_type", merged.pop("type"))
    theta = _config_get(config, "rope_theta") or merged.get("rope_theta") or 10000.0
    scaling = {k: v for k, v in merged.items() if k != "rope_theta"}
    if scaling.get("rope_type", "default") == "default" and len(scaling) <= 1:
        scaling = None
    return float(theta), json.dumps(scaling, sort_keys=True)


def tokenizer_hash(tokenizer_json: str | bytes) -> str:
    """sha256 over the canonical JSON of a tokenizer.json (key order does not matter)."""
    data = json.loads(tokenizer_json)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:32]


def fingerprint_from_config(config: Any, tokenizer_json: str | bytes) -> ModelFingerprint:
    """Fingerprint from a HF config (object or dict) and the tokenizer.json text."""
    heads = int(_config_get(config, "num_attention_heads"))
    hidden = int(_config_get(config, "hidden_size"))
    theta, scaling = _rope(config)
    archs = _config_get(config, "architectures") or [""]
    return ModelFingerprint(
        architecture=str(archs[0]),
        model_type=str(_config_get(config, "model_type", "")),
        num_layers=int(_config_get(config, "num_hidden_layers")),
        hidden_size=hidden,
        num_attention_heads=heads,
        num_kv_heads=int(_config_get(config, "num_key_value_heads") or heads),
        head_dim=int(_config_get(config, "head_dim") or hidden // heads),
        vocab_size=int(_config_get(config, "vocab_size")),
        rope_theta=theta,
        rope_scaling=scaling,
        tokenizer_hash=tokenizer_hash(tokenizer_json),
    )


def fingerprint_model_dir(path: str | Path) -> ModelFingerprint:
    """Fingerprint of a Hugging Face model directory (config.json + tokenizer.json)."""
    path = Path(path)
    for name in ("config.json", "tokenizer.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path}: no {name}; cannot fingerprint this model")
    config = load_json_file(path / "config.json", MAX_MODEL_FILE_BYTES)  # regular files, bounded, UTF-8
    return fingerprint_from_config(config, read_text_file(path / "tokenizer.json", MAX_MODEL_FILE_BYTES))
