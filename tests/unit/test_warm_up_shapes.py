"""The engine warm-up's two forwards fit the request pool's rows (runtime_e.warm_up_shapes)."""

from sglang_droidspeak.sglang.runtime_e import warm_up_shapes


def test_default_chunk_fits_a_wide_row():
    assert warm_up_shapes(512, 131076) == ((512, 0), (512, 512))


def test_chunk_over_prefix_is_capped_by_the_row():
    # SmolLM2: context 8192 -> rows of 8196 positions; 2 x 8192 did not fit (H100, 2026-12-06)
    assert warm_up_shapes(8192, 8196) == ((4098, 0), (4098, 4098))
    assert sum(warm_up_shapes(8192, 8196)[1]) <= 8196


def test_tiny_rows_still_warm_one_token():
    assert warm_up_shapes(8192, 1) == ((1, 0), (1, 1))
