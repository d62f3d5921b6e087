"""The GGUF's byte-level BPE tokenizer rebuilt with ``tokenizers`` alone (no transformers).

transformers builds this tokenizer wrongly from the SmolLM2 GGUF: 5.12.1 (the CPU pin,
checked 2026-12-06) and 5.17 (the GPU machine) both give eos id 1 (``<|im_start|>``)
instead of 2 (``<|im_end|>``) and a decoder that is not plain byte-level
(ByteFallback + Fuse + Replace("▁") + ByteLevel); 5.12.1 also drops the digit split.
So the tokenizer is built here from the GGUF metadata, the same on every machine:

    model          BPE over ``tokenizer.ggml.tokens`` / ``tokenizer.ggml.merges``
    pre-tokenizer  Digits(individual) then ByteLevel(no prefix space, GPT-2 regex): what
                   ``tokenizer.ggml.pre == "smollm"`` means in llama.cpp
    decoder        ByteLevel; post-processor ByteLevel (no BOS added: add_bos_token false)
    specials       every CONTROL token (type 3), e.g. <|endoftext|> 0, <|im_start|> 1, <|im_end|> 2

``check_tokenizer`` asserts the properties a broken build would miss (tests and every
script that loads the real family call it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from sglang_droidspeak.real.gguf_model import GGUFConversionError, field_value

CONTROL_TOKEN_TYPE = 3
SUPPORTED_PRE = ("smollm",)
ROUND_TRIP_TEXT = "def f(x):\n    return x  + 12345  # ok\n\n\tz = 'é' \u2014 \u2581\n"


def build_tokenizer(reader: Any) -> Tokenizer:
    model_kind = field_value(reader, "tokenizer.ggml.model")
    pre = field_value(reader, "tokenizer.ggml.pre", "default")
    if model_kind != "gpt2" or pre not in SUPPORTED_PRE:
        raise GGUFConversionError(f"tokenizer {model_kind!r}/{pre!r} is not supported (need gpt2 / {SUPPORTED_PRE})")
    tokens = list(field_value(reader, "tokenizer.ggml.tokens"))
    types = list(field_value(reader, "tokenizer.ggml.token_type"))
    merges = [tuple(m.split(" ", 1)) for m in field_value(reader, "tokenizer.ggml.merges")]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [tokens[i] for i, kind in enumerate(types) if kind == CONTROL_TOKEN_TYPE]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tokenizer


def tokenizer_config(reader: Any, model_max_length: int) -> dict[str, Any]:
    """tokenizer_config.json: special tokens by the GGUF's ids, the chat template."""
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    token = lambda key: tokens[int(field_value(reader, f"tokenizer.ggml.{key}"))]  # noqa: E731
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos_token_id"),
        "eos_token": token("eos_token_id"),
        "unk_token": token("unknown_token_id"),
        "pad_token": token("padding_token_id"),
        "add_bos_token": bool(field_value(reader, "tokenizer.ggml.add_bos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": field_value(reader, "tokenizer.chat_template", ""),
    }


def save_tokenizer(reader: Any, out_dir: Path, model_max_length: int) -> None:
    out_dir = Path(out_dir)
    build_tokenizer(reader).save(str(out_dir / "tokenizer.json"))
    text = json.dumps(tokenizer_config(reader, model_max_length), indent=2, sort_keys=True) + "\n"
    (out_dir / "tokenizer_config.json").write_text(text)


def check_tokenizer(tokenizer: Any, eos_token: str = "<|im_end|>", eos_id: int = 2) -> None:
    """ValueError unless ``tokenizer`` (HF or ``tokenizers``) is byte-level with the right eos and
    round-trips code text with spaces, tabs, newlines, digits and non-ASCII characters."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if not isinstance(backend.decoder, decoders.ByteLevel):
        raise ValueError(f"tokenizer decoder is {backend.decoder}, not ByteLevel")
    if hasattr(tokenizer, "eos_token_id") and (tokenizer.eos_token, tokenizer.eos_token_id) != (eos_token, eos_id):
        raise ValueError(f"tokenizer eos is {tokenizer.eos_token!r} id {tokenizer.eos_token_id}, "
                         f"expected {eos_token!r} id {eos_id}")
    if backend.token_to_id(eos_token) != eos_id:
        raise ValueError(f"{eos_token!r} has id {backend.token_to_id(eos_token)}, expected {eos_id}")
    ids = backend.encode(ROUND_TRIP_TEXT, add_special_tokens=False).ids
    decoded = backend.decode(ids, skip_special_tokens=False)
    if decoded != ROUND_TRIP_TEXT:
        raise ValueError(f"tokenizer does not round-trip: {ROUND_TRIP_TEXT!r} -> {decoded!r}")
