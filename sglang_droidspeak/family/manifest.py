"""family.json: what a built family holds and how it was made (read/write)."""

from __future__ import annotations

import json
import math
from pathlib import Path

MANIFEST_NAME = "family.json"


def write_manifest(family_root: Path, manifest: dict) -> None:
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    (family_root / MANIFEST_NAME).write_text(text)


def read_manifest(family_root: Path) -> dict:
    return json.loads((family_root / MANIFEST_NAME).read_text())


def has_manifest(family_root: Path) -> bool:
    return (family_root / MANIFEST_NAME).is_file()


def perplexity_table(manifest: dict) -> str:
    """Perplexity per model: held-out splits, own split seen/unseen, last training steps."""
    columns = ["lib_heldout", "test_heldout", "train_seen", "train_unseen"]
    header = f"{'model':<10}" + "".join(f"{c:>14}" for c in columns) + f"{'train_steps':>13}"
    lines = [header, "-" * len(header)]
    perplexity = manifest["perplexity"]
    for name in manifest["names"]:
        row = "".join(f"{perplexity[name][c]:>14.2f}" for c in columns)
        last_steps = math.exp(manifest["models"][name]["final_train_loss"])
        lines.append(f"{name:<10}{row}{last_steps:>13.2f}")
    lines.append(f"{'uniform':<10}{perplexity['uniform']:>14}")
    return "\n".join(lines)
