"""Build the o200k_base vocabulary SGLang Model Gateway's multi-model mode loads at start.

    python3 scripts/gateway_vocab.py [DIR]     # default: $TIKTOKEN_ENCODINGS_BASE or
                                               # $DROIDSPEAK_CACHE/tiktoken
Does nothing when the file is already there with the right digest. Needs npm (the npm
registry's js-tiktoken holds the ranks). See sglang_droidspeak/cluster/gateway_vocab.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sglang_droidspeak.cluster.gateway_vocab import build_vocab, vocab_dir, vocab_problem


def main(argv: list[str]) -> int:
    directory = Path(argv[0]) if argv else vocab_dir()
    if not vocab_problem(directory):
        print(f"gateway vocabulary: {directory} (already there)")
        return 0
    try:
        path = build_vocab(directory)
    except (OSError, RuntimeError) as exc:
        print(f"gateway vocabulary: cannot build it: {exc}", file=sys.stderr)
        return 1
    print(f"gateway vocabulary: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
