"""How every command line of this project ends when something is wrong.

    what                                          output (stderr)                     status
    a bad argument (argparse, or UsageError)      the usage, then "<prog>: error: ..."  2
    a runtime problem (port in use, a missing     "<prog>: error: <one line>"          1
    file, a bad config, model not found)
    an unexpected exception (a bug)               the same line, "(--debug shows the   1
                                                  traceback)" at its end
    Ctrl-C                                        "<prog>: interrupted"                130

``--debug`` (every subcommand has it) or ``DROIDSPEAK_DEBUG=1`` lets the exception
through with its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional

DEBUG_ENV = "DROIDSPEAK_DEBUG"


class UsageError(Exception):
    """A bad argument found after argparse accepted it: exit status 2 with the usage."""


def _expected(exc: BaseException) -> bool:
    """Errors that describe the input or the machine (not a bug): no type name, no hint."""
    from sglang_droidspeak.text_files import FileLoadError
    from sglang_droidspeak.validation import FieldError

    return isinstance(exc, (OSError, FileLoadError, FieldError))


def one_line(exc: BaseException) -> str:
    """The exception as one line of at most 500 characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not _expected(exc):
        text = f"{type(exc).__name__}: {text}"
    return text[:500]


def debug_requested(argv: Optional[list[str]] = None) -> bool:
    return "--debug" in (sys.argv if argv is None else argv) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_guarded(run: Callable[[], int], parser: argparse.ArgumentParser, debug: bool) -> int:
    """``run()``, with every failure turned into the table above."""
    try:
        return int(run() or 0)
    except UsageError as exc:
        parser.error(str(exc))  # exits with status 2
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - the point: one line instead of a traceback
        if debug:
            raise
        hint = "" if _expected(exc) else " (--debug shows the traceback)"
        print(f"{parser.prog}: error: {one_line(exc)}{hint}", file=sys.stderr)
        return 1
    return 2  # not reached: parser.error exits
