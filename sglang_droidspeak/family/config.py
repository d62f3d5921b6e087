"""FamilyConfig: every knob of the micro family build, and the hash that names its cache.

The defaults fit the hard budget of about five minutes on a 2-core CPU (tokenizer,
tokenizing, base, two fine-tunes, evaluation). Every optimizer step sees
``batch_size * seq_len`` tokens. Each model first trains on ``short_seq_len`` windows
(``batch_size * seq_len // short_seq_len`` of them per step; attention there is cheap)
and then its last ``base_long_steps`` / ``finetune_long_steps`` steps on ``seq_len``
windows, so that it works at the 512-1024-token contexts the project evaluates.
Small batches, many steps: at this budget the models are step-starved, and a 1024-token
step costs the same per token as a 4096-token one on CPU.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field

from sglang_droidspeak.config_cli import at_least, check_fields
from sglang_droidspeak.family.corpus import SPLIT_VERSION

# Bump when the build changes in a way that changes the weights for the same config.
BUILD_FORMAT_VERSION = 3

EOS_TOKEN = "<|endoftext|>"
BASE = "base"
TESTER = "tester"
LIBWRITER = "libwriter"
MODEL_NAMES = (BASE, TESTER, LIBWRITER)
# model name -> corpus split it is trained on (fine-tunes start from the base)
TRAIN_SPLITS = {BASE: "base", TESTER: "test", LIBWRITER: "lib"}
EVAL_SPLITS = ("lib_heldout", "test_heldout")


@dataclass(frozen=True)
class FamilyConfig:
    """Architecture, data and schedule of the micro family; same config -> same weights.

    ``max_train_files`` (None = all) caps the files per training split, for tiny test
    builds. Evaluation windows are spread over the first ``eval_stream_tokens`` tokens
    of each split (many files, not the first few). ``num_threads`` is part of the config
    because float reductions, hence the weights, depend on it.
    """

    seed: int = 0
    vocab_size: int = field(default=2048, metadata=at_least(1))
    hidden_size: int = field(default=128, metadata=at_least(1))
    intermediate_size: int = field(default=384, metadata=at_least(1))
    num_hidden_layers: int = field(default=8, metadata=at_least(1))
    num_attention_heads: int = field(default=2, metadata=at_least(1))
    num_key_value_heads: int = field(default=1, metadata=at_least(1))
    max_position_embeddings: int = field(default=2048, metadata=at_least(1))
    rope_theta: float = field(default=10000.0, metadata=at_least(1e-9))
    tie_word_embeddings: bool = True
    seq_len: int = field(default=1024, metadata=at_least(1))
    short_seq_len: int = field(default=256, metadata=at_least(1))
    batch_size: int = field(default=1, metadata=at_least(1))
    base_steps: int = 1000
    base_long_steps: int = 100
    finetune_steps: int = 200
    finetune_long_steps: int = 100
    lr: float = 3e-3
    finetune_lr: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    tokenizer_train_chars: int = 4_000_000
    max_train_files: int | None = None
    eval_windows: int = 24
    eval_stream_tokens: int = 160_000
    num_threads: int = field(default=2, metadata=at_least(1))

    def __post_init__(self) -> None:
        check_fields(self)  # every int and float >= 0 and finite unless its metadata says more (config_cli)
        if self.num_key_value_heads >= self.num_attention_heads:
            raise ValueError("the family uses GQA: num_key_value_heads < num_attention_heads")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        if self.seq_len % self.short_seq_len or self.seq_len > self.max_position_embeddings:
            raise ValueError("need short_seq_len | seq_len <= max_position_embeddings")
        if not 0 <= self.base_long_steps <= self.base_steps:
            raise ValueError("base_long_steps must be within [0, base_steps]")
        if not 0 <= self.finetune_long_steps <= self.finetune_steps:
            raise ValueError("finetune_long_steps must be within [0, finetune_steps]")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict:
        return asdict(self)


def python_version() -> str:
    return ".".join(map(str, sys.version_info[:3]))


def config_hash(config: FamilyConfig) -> str:
    """Short stable hash of the config, the Python version (the corpus) and the format."""
    payload = {"config": config.to_dict(), "python": python_version(),
               "format": BUILD_FORMAT_VERSION, "split": SPLIT_VERSION}
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
