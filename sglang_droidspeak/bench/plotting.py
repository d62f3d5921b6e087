"""The matplotlib plumbing of the bench reports (prefill, sweep, throughput, quality-latency).

    pyplot, problem = load_pyplot()     # (matplotlib.pyplot on Agg, None) or (None, "no plot: ...")
    save(pyplot, fig, path, dpi)        # tight layout, write the PNG, free the figure

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
