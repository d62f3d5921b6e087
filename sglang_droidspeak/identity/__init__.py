"""Model identity: who may share KV with whom."""

from sglang_droidspeak.identity.fingerprint import (
    IncompatibleModels,
    ModelFingerprint,
    check_compatible,
    diff_fingerprints,
    fingerprint_from_config,
    fingerprint_model_dir,
    tokenizer_hash,
)

__all__ = [
    "IncompatibleModels",
    "ModelFingerprint",
    "check_compatible",
    "diff_fingerprints",
    "fingerprint_from_config",
    "fingerprint_model_dir",
    "tokenizer_hash",
]
