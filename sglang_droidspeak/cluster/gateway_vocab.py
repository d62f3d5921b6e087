"""The o200k_base vocabulary that SGLang Model Gateway 0.3.2 needs in multi-model mode.

With ``--enable-igw`` the gateway builds every router kind at start, the gRPC "harmony"
pipeline included, and that loads the o200k_base tiktoken vocabulary: from
``$TIKTOKEN_ENCODINGS_BASE/o200k_base.tiktoken`` (sha256-checked) or else by download. A
machine without internet access panics there (docs/ROUTER.md). The vocabulary is rebuilt
here from the npm registry's ``js-tiktoken`` package (its ``dist/ranks/o200k_base.js``
holds the same ranks) and checked against the digest the gateway checks.

    python3 scripts/gateway_vocab.py         # (install_cpu.sh runs it) -> vocab_dir()

Imports only the standard library.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Mapping, Optional

FILE_NAME = "o200k_base.tiktoken"
SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
JS_PACKAGE = "js-tiktoken@1.0.21"
ENV = "TIKTOKEN_ENCODINGS_BASE"


def vocab_dir(environ: Optional[Mapping[str, str]] = None) -> Path:
    """``$TIKTOKEN_ENCODINGS_BASE``, else ``$DROIDSPEAK_CACHE/tiktoken`` (default
    ``~/.cache/sglang_droidspeak/tiktoken``)."""
    env = os.environ if environ is None else environ
    if env.get(ENV):
        return Path(env[ENV])
    return Path(env.get("DROIDSPEAK_CACHE") or Path.home() / ".cache" / "sglang_droidspeak") / "tiktoken"


def vocab_problem(directory: Path) -> str:
    """Why the gateway would refuse ``directory`` ("" when it holds the right file)."""
    path = directory / FILE_NAME
    if not path.is_file():
        return f"{path} is missing (run: python3 scripts/gateway_vocab.py)"
    if hashlib.sha256(path.read_bytes()).hexdigest() != SHA256:
        return f"{path} does not have sha256 {SHA256}"
    return ""


def tiktoken_from_js_ranks(js_text: str) -> bytes:
    """js-tiktoken's ``export default {"bpe_ranks": "! <offset> <b64> <b64> ..."}`` as
    the tiktoken file: one ``<b64> <rank>`` line per token, by rank."""
    data = json.loads(js_text[js_text.index("{"):js_text.rindex("}") + 1])
    ranks: dict[str, int] = {}
    for line in filter(None, data["bpe_ranks"].split("\n")):
        _, offset, *tokens = line.split(" ")
        ranks.update((token, int(offset) + i) for i, token in enumerate(tokens))
    return "".join(f"{t} {r}\n" for t, r in sorted(ranks.items(), key=lambda item: item[1])).encode()


def build_vocab(directory: Path, npm: str = "npm") -> Path:
    """Fetch ``JS_PACKAGE`` with ``npm pack``, write ``directory/FILE_NAME``; raises
    RuntimeError when npm fails or the digest differs."""
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([npm, "pack", JS_PACKAGE, "--silent"], cwd=tmp, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"npm pack {JS_PACKAGE} failed: {done.stderr.strip()[-500:]}")
        with tarfile.open(Path(tmp) / done.stdout.strip().splitlines()[-1]) as tar:
            js_text = tar.extractfile("package/dist/ranks/o200k_base.js").read().decode()
    content = tiktoken_from_js_ranks(js_text)
    digest = hashlib.sha256(content).hexdigest()
    if digest != SHA256:
        raise RuntimeError(f"{JS_PACKAGE}'s o200k_base ranks give sha256 {digest}, not {SHA256}")
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / (FILE_NAME + ".partial")
    partial.write_bytes(content)
    partial.replace(directory / FILE_NAME)
    return directory / FILE_NAME
