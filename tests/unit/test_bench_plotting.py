"""bench/plotting: the saved PNG is a 256-colour palette image, smaller, same size in pixels."""

import pytest

from sglang_droidspeak.bench import plotting


def test_save_writes_a_palette_png_smaller_than_matplotlibs(tmp_path):
    plt, problem = plotting.load_pyplot()
    if plt is None:
        pytest.skip(problem)
    Image = pytest.importorskip("PIL.Image")

    def figure():
        fig, ax = plt.subplots(figsize=(4, 3))
        for k in range(4):
            ax.plot(range(20), [x * (k + 1) for x in range(20)], "o-", label=f"series {k}")
        ax.legend()
        return fig

    raw = tmp_path / "raw.png"
    fig = figure()
    fig.tight_layout()
    fig.savefig(raw, dpi=100)
    plt.close(fig)
    shrunk = tmp_path / "shrunk.png"
    plotting.save(plt, figure(), shrunk, dpi=100)
    with Image.open(raw) as a, Image.open(shrunk) as b:
        assert (a.mode, b.mode) == ("RGBA", "P") and a.size == b.size
    assert shrunk.stat().st_size < raw.stat().st_size
    assert plotting.shrink_png(raw) is True
    with Image.open(raw) as a:
        assert a.mode == "P"
