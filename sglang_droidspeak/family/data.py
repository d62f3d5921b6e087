"""Token streams and training windows, sampled deterministically from corpus splits.

A stream is the concatenation ``doc_1 EOS doc_2 EOS ...`` of files taken in a seeded
shuffle order, and only as many files are tokenized as the stream needs. Windows are
non-overlapping ``window_len`` slices of a stream; batches walk seeded permutations of
the windows (a new permutation per epoch when the steps need more than one).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer

from sglang_droidspeak.family.corpus import CorpusSplit

_ENCODE_CHUNK_FILES = 16


@dataclass(frozen=True)
class TokenStream:
    """``token_ids`` [num_tokens] (int64) built from ``num_files`` files."""

    token_ids: torch.Tensor
    num_files: int

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.numel())


def shuffled_files(corpus: CorpusSplit, split: str, seed: int,
                   max_files: int | None = None) -> list[str]:
    """The split's files in a seeded order, optionally only the first ``max_files``."""
    files = list(corpus.files(split))
    random.Random(f"{seed}:{split}").shuffle(files)
    return files[:max_files] if max_files is not None else files


def sample_texts(corpus: CorpusSplit, files: Sequence[str], num_chars: int) -> list[str]:
    """Texts of ``files`` in order until their total length reaches ``num_chars``."""
    texts, total = [], 0
    for rel_path in files:
        if total >= num_chars:
            break
        texts.append(corpus.read(rel_path))
        total += len(texts[-1])
    return texts


def token_stream(corpus: CorpusSplit, files: Sequence[str], tokenizer: Tokenizer,
                 eos_id: int, num_tokens: int) -> TokenStream:
    """Tokenize ``files`` in order, EOS after each, until ``num_tokens`` (or files) run out."""
    ids: list[int] = []
    num_files = 0
    while len(ids) < num_tokens and num_files < len(files):
        chunk = files[num_files:num_files + _ENCODE_CHUNK_FILES]
        for encoding in tokenizer.encode_batch([corpus.read(f) for f in chunk]):
            ids.extend(encoding.ids)
            ids.append(eos_id)
            num_files += 1
            if len(ids) >= num_tokens:
                break
    return TokenStream(torch.tensor(ids, dtype=torch.int64), num_files)


def windows(token_ids: torch.Tensor, window_len: int) -> torch.Tensor:
    """Non-overlapping windows [num_windows, window_len]; the tail is dropped."""
    num_windows = token_ids.numel() // window_len
    if num_windows == 0:
        raise ValueError(f"stream of {token_ids.numel()} tokens < one window of {window_len}")
    return token_ids[: num_windows * window_len].view(num_windows, window_len)


def spread_windows(token_ids: torch.Tensor, window_len: int,
                   num_windows: int) -> torch.Tensor:
    """``num_windows`` windows [num_windows, window_len] at evenly spaced starts over the
    whole stream (so they sample many files, not the first few)."""
    if token_ids.numel() < window_len:
        raise ValueError(f"stream of {token_ids.numel()} tokens < one window of {window_len}")
    starts = torch.linspace(0, token_ids.numel() - window_len, num_windows).long()
    return torch.stack([token_ids[start:start + window_len] for start in starts.tolist()])


def batches(all_windows: torch.Tensor, batch_size: int, num_steps: int,
            seed: int) -> Iterator[torch.Tensor]:
    """``num_steps`` batches [batch_size, window_len] over seeded window permutations."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.int64)
    for _ in range(num_steps):
        while order.numel() < batch_size:
            order = torch.cat([order, torch.randperm(len(all_windows), generator=generator)])
        yield all_windows[order[:batch_size]]
        order = order[batch_size:]
