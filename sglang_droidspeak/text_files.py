"""Read a text file that a user or a peer handed us, without letting it hang or flood us.

``read_text_file(path, max_bytes)`` is the one way this project opens a config, profile,
latency model, settings or result file:

    input                          what happens
    a FIFO, socket, device, dir    FileLoadError "not a regular file" (opened O_NONBLOCK:
                                   a FIFO never blocks the open)
    larger than ``max_bytes``      FileLoadError "is N bytes, the limit is M" (at most
                                   max_bytes + 1 bytes are ever read)
    not UTF-8                      FileLoadError naming the line and column of the first
                                   bad byte
    missing / unreadable           FileLoadError with the OS's reason

Every message starts with the file name and never quotes more than ``EXCERPT_CHARS`` of
the file's content (``excerpt``).
"""

from __future__ import annotations

import os
import stat
from typing import Any, Optional

MAX_CONFIG_BYTES = 64 << 10  # configs, profiles, settings, latency models: 2 KB each here
MAX_RESULT_BYTES = 4 << 20  # benchmark result JSON: 100 KB at most here
MAX_MODEL_FILE_BYTES = 64 << 20  # a model directory's config.json / tokenizer.json (Gemma 3's: 33 MB)
EXCERPT_CHARS = 60


class FileLoadError(ValueError):
    """A file that cannot be used; ``str()`` is ``<path>[:<line>[:<column>]]: <problem>``."""

    def __init__(self, path: str, problem: str, line: Optional[int] = None, column: Optional[int] = None,
                 reason: str = "invalid"):
        self.path, self.problem, self.line, self.column, self.reason = str(path), problem, line, column, reason
        where = self.path if line is None else f"{self.path}:{line}" + (f":{column}" if column else "")
        super().__init__(f"{where}: {problem}")


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters (with the full length) for error messages."""
    return shorten(repr(value), limit)


def shorten(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def read_text_file(path: str | os.PathLike, max_bytes: int = MAX_CONFIG_BYTES) -> str:
    """The UTF-8 text of the regular file ``path``; FileLoadError for anything else."""
    name = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise FileLoadError(name, f"cannot read ({exc.strerror})", reason="unreadable") from None
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        regular = False
    if not regular:
        os.close(fd)
        raise FileLoadError(name, "not a regular file", reason="not_regular")
    with os.fdopen(fd, "rb") as file:
        raw = _read_capped(file, name, max_bytes)
    return decode_utf8(raw, name)


def _read_capped(file: Any, name: str, max_bytes: int) -> bytes:
    try:
        raw = file.read(max_bytes + 1)
    except OSError as exc:
        raise FileLoadError(name, f"cannot read ({exc.strerror})", reason="unreadable") from None
    if len(raw) > max_bytes:
        size = os.fstat(file.fileno()).st_size
        raise FileLoadError(name, f"is {max(size, len(raw))} bytes, the limit is {max_bytes}", reason="too_large")
    return raw


def decode_utf8(raw: bytes, name: str) -> str:
    """``raw`` as UTF-8; FileLoadError naming the line and column of the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise FileLoadError(name, f"not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
                            line, column, reason="not_utf8") from None

