"""Where a code-completion example can cut a source file, and the tokenizer plumbing.

A *site* is a target line plus the token boundary that ends the prompt. The file is
tokenized once, whole, and the prompt always ends at a boundary of that tokenization,
so the model continues exactly as it would inside the whole file (no token-healing
artefact). The cut is the latest such boundary that

- lies between the target line's start and its first non-blank character (the prompt
  ends with "\\n" plus part or all of the indentation, never mid-line),
- re-encodes exactly: encoding the prefix text alone gives the file's first tokens (so
  the context/query split never changes tokens), and
- leaves the prompt window starting on a character boundary (it decodes to file text).

With a GPT-2-style byte-level pre-tokenizer ``"\\n        return"`` splits as
``"\\n       "`` + ``" return"``: the prompt ends with the newline and all but the last
indentation space. (Where BPE leaves that space a token of its own, ``"\\n    "`` alone
would re-encode differently, so the cut moves one token back.) Lines with no valid cut
are skipped.

Only byte-level BPE tokenizers (``tokenizers.Tokenizer`` or a transformers fast
tokenizer wrapping one) are supported: token byte lengths come from the vocabulary.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
from typing import Any

from tokenizers import Tokenizer
from tokenizers.decoders import ByteLevel as ByteLevelDecoder
from tokenizers.pre_tokenizers import ByteLevel

MIN_TARGET_CHARS = 8  # drops "pass", "else:", "return" and the like: too easy to guess
NUM_LOOKAHEAD_LINES = 3  # every site has this many non-empty lines from the target on
_SKIP_MARKERS = ("#", "`", "//")  # lines LongBench's edit_sim would skip (metrics.py)


def as_backend(tokenizer: Any) -> Tokenizer:
    """The ``tokenizers.Tokenizer`` behind ``tokenizer`` (itself or a fast HF wrapper)."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if isinstance(backend, Tokenizer):
        return backend
    raise TypeError(f"need a tokenizers.Tokenizer or a fast HF tokenizer, got {type(tokenizer)}")


def encode(backend: Tokenizer, text: str) -> list[int]:
    return backend.encode(text, add_special_tokens=False).ids


def special_token_ids(backend: Tokenizer) -> frozenset[int]:
    return frozenset(i for i, t in backend.get_added_tokens_decoder().items() if t.special)


def token_byte_lengths(backend: Tokenizer) -> list[int]:
    """Bytes each token id stands for; raises unless the tokenizer is byte-level."""
    if not isinstance(backend.decoder, ByteLevelDecoder):
        raise ValueError(f"need a byte-level BPE tokenizer (ByteLevel decoder): {backend.decoder}")
    added = backend.get_added_tokens_decoder()
    alphabet = frozenset(ByteLevel.alphabet())
    lengths = [0] * backend.get_vocab_size(with_added_tokens=True)
    for token, token_id in backend.get_vocab(with_added_tokens=True).items():
        if token_id in added:
            lengths[token_id] = len(token.encode("utf-8"))
        elif set(token) <= alphabet:
            lengths[token_id] = len(token)
        else:
            raise ValueError(f"token {token!r} is not byte-level: need a byte-level BPE tokenizer")
    return lengths


def is_target_line(line: str) -> bool:
    """Code worth predicting: long enough, and no comment/backtick/'//' marker."""
    stripped = line.strip()
    return len(stripped) >= MIN_TARGET_CHARS and not any(m in stripped for m in _SKIP_MARKERS)


def next_nonempty_lines(text: str, num_lines: int) -> list[str]:
    """The first ``num_lines`` non-empty lines of ``text``, stripped."""
    stripped = (line.strip() for line in text.split("\n"))
    return list(itertools.islice((line for line in stripped if line), num_lines))


@dataclasses.dataclass(frozen=True)
class Site:
    """A candidate cut: the prompt is the file's first ``num_prefix_tokens`` tokens."""

    line_index: int  # 0-based index of the target line in text.split("\n")
    line_start_bytes: int  # UTF-8 offset of the target line's start
    num_prefix_tokens: int
    prefix_bytes: int  # UTF-8 length of the prompt's text (the file up to the cut)


@dataclasses.dataclass(frozen=True)
class ScannedFile:
    """One source file, tokenized whole, with its candidate sites in file order."""

    text: str
    ids: tuple[int, ...]
    byte_ends: tuple[int, ...]  # byte_ends[i]: UTF-8 offset where token i ends
    sites: tuple[Site, ...]


def scan_file(
    text: str, backend: Tokenizer, byte_lengths: list[int], min_prefix_tokens: int
) -> ScannedFile:
    """Tokenize ``text`` once and list the target lines with enough tokens before them."""
    ids = encode(backend, text)
    byte_ends = list(itertools.accumulate(byte_lengths[i] for i in ids))
    lines = text.split("\n")
    nonempty_from = _nonempty_counts_from(lines)
    sites, line_start = [], 0
    for index, line in enumerate(lines):
        line_bytes = len(line.encode("utf-8")) + 1
        if is_target_line(line) and nonempty_from[index] >= NUM_LOOKAHEAD_LINES:
            indent = len(line) - len(line.lstrip())
            content_start = line_start + len(line[:indent].encode("utf-8"))
            k = bisect.bisect_right(byte_ends, content_start)  # token holding content_start
            prefix_bytes = byte_ends[k - 1] if k else 0
            if k >= min_prefix_tokens and line_start <= prefix_bytes <= content_start:
                sites.append(Site(index, line_start, k, prefix_bytes))
        line_start += line_bytes
    return ScannedFile(text, tuple(ids), tuple(byte_ends), tuple(sites))


def _nonempty_counts_from(lines: list[str]) -> list[int]:
    """counts[i] = number of non-empty lines in lines[i:]."""
    flags = [int(bool(line.strip())) for line in reversed(lines)]
    return list(itertools.accumulate(flags))[::-1]


def exact_site(
    scanned: ScannedFile, site: Site, window_len: int, backend: Tokenizer
) -> Site | None:
    """The latest cut at or before ``site``'s, still in the target line's indentation,
    that re-encodes exactly with a decodable window; None if there is none."""
    for k in range(site.num_prefix_tokens, window_len - 1, -1):
        prefix_bytes = scanned.byte_ends[k - 1]
        if prefix_bytes < site.line_start_bytes:
            return None
        cut = dataclasses.replace(site, num_prefix_tokens=k, prefix_bytes=prefix_bytes)
        if _cut_is_exact(scanned, cut, window_len, backend):
            return cut
    return None


def _cut_is_exact(scanned: ScannedFile, site: Site, window_len: int, backend: Tokenizer) -> bool:
    text_bytes = scanned.text.encode("utf-8")
    start = site.num_prefix_tokens - window_len
    window_start = scanned.byte_ends[start - 1] if start > 0 else 0
    try:
        prefix = text_bytes[: site.prefix_bytes].decode("utf-8")
        text_bytes[window_start : site.prefix_bytes].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return tuple(encode(backend, prefix)) == scanned.ids[: site.num_prefix_tokens]
