"""The family's byte-level BPE tokenizer, trained with the `tokenizers` library.

GPT-2 style: bytes map to 256 printable symbols (so any text encodes, nothing is UNK),
the GPT-2 regex pre-splits words/whitespace runs, and BPE merges are learnt on the
``base`` split. One special token, ``<|endoftext|>``, is id 0; it separates documents in
training streams and is the family's bos, eos and pad. No token is added automatically
on encode. BPE training was checked to give identical ``tokenizer.json`` across
processes and with ``RAYON_NUM_THREADS`` 1 or default (tokenizers 0.22.2).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from sglang_droidspeak.family.config import EOS_TOKEN


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Learn BPE merges on ``texts`` up to ``vocab_size`` tokens (incl. 256 bytes + EOS)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def eos_id(tokenizer: Tokenizer) -> int:
    token_id = tokenizer.token_to_id(EOS_TOKEN)
    if token_id is None:
        raise ValueError(f"tokenizer has no {EOS_TOKEN!r} token")
    return token_id


def to_hf_tokenizer(tokenizer: Tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
    """Wrap for `AutoTokenizer`: EOS is bos, eos and pad."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def save_hf_tokenizer(tokenizer: Tokenizer, model_max_length: int, out_dir: Path) -> None:
    """Write tokenizer.json + tokenizer_config.json into ``out_dir``.

    transformers 5 records its class as ``TokenizersBackend``; the config names
    ``PreTrainedTokenizerFast`` instead (the same class in 5.x, and one 4.x knows).
    """
    to_hf_tokenizer(tokenizer, model_max_length).save_pretrained(str(out_dir))
    config_path = out_dir / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(tokenizer_config, indent=2, sort_keys=True) + "\n")
