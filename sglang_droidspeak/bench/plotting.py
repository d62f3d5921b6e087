"""The matplotlib plumbing of the bench reports (prefill, sweep, throughput, quality-latency).

    pyplot, problem = load_pyplot()     # (matplotlib.pyplot on Agg, None) or (None, "no plot: ...")
    save(pyplot, fig, path, dpi)        # tight layout, write the PNG, free the figure
    shrink_png(path)                    # 256-colour palette: a third of the bytes, same plot

matplotlib is optional: a report without it still writes its tables, and says why no plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional


def load_pyplot() -> tuple[Any, Optional[str]]:
    """matplotlib.pyplot with the non-interactive Agg backend, or the reason it cannot load."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return None, f"no plot: {exc}"
    return plt, None


def save(plt: Any, fig: Any, path: Path, dpi: int) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    shrink_png(path)


def shrink_png(path: Path) -> bool:
    """Rewrite ``path`` with a 256-colour palette (Pillow, which matplotlib depends on).
    Line plots on a white ground lose nothing visible and about two thirds of their bytes,
    which keeps the tracked tree small enough to travel to the GPU machine. False if the
    file was left as it was (no Pillow)."""
    try:
        from PIL import Image
    except ImportError:
        return False
    with Image.open(path) as image:
        palette = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    palette.save(path, format="PNG", optimize=True)
    return True
