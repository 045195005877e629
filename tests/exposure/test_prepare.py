"""Stage 1, ``pyapred.exposure.prepare``: its robust helpers."""

import numpy as np
import pytest


def test_nanmedian_last_axis_matches_numpy():
    from pyapred.exposure.prepare import _nanmedian_last_axis

    rng = np.random.default_rng(2)
    values = rng.normal(size=(7, 5, 12)).astype(np.float32)
    values[rng.random(values.shape) < 0.3] = np.nan
    values[0, 0] = np.nan  # all NaN
    values[1, 1, :11] = np.nan  # one value
    with pytest.warns(RuntimeWarning):
        want = np.nanmedian(values, axis=-1)
    got = _nanmedian_last_axis(values)
    assert got.dtype == want.dtype and np.array_equal(got, want, equal_nan=True)


@pytest.mark.parametrize("n", [46, 45, 1, 2])
def test_median_first_axis_is_numpy_median_to_the_bit(n):
    from pyapred.exposure.prepare import _median_first_axis

    rng = np.random.default_rng(4)
    values = (rng.poisson(100, (n, 6, 50)) + rng.normal(0, 20, (n, 6, 50))).astype(np.float32)
    values[rng.random(values.shape) < 0.01] = np.nan
    values[:, 0, :3] = np.inf  # all +inf
    values[0, 1, :3] = -np.inf
    values[-1, 1, 3:6] = np.inf
    values[: n // 2 + 1, 2, 6] = -np.inf  # +inf and -inf at the middle: NaN
    values[n // 2 :, 2, 6] = np.inf
    want = np.median(values, axis=0)
    got = _median_first_axis(values)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got, want, equal_nan=True)
    assert np.isnan(got).any()


@pytest.mark.parametrize(
    "layout", ["contiguous", "big-endian", "sliced", "float64", "int32", "one-read"]
)
def test_pixel_reads_equal_fancy_indexing(layout):
    from pyapred.exposure.prepare import _pixel_reads

    rng = np.random.default_rng(3)
    reads = rng.integers(0, 65535, (5, 40, 60), dtype=np.uint16)
    if layout == "big-endian":
        reads = reads.astype(">u2")
    elif layout == "sliced":
        reads = reads[:, :, ::2]  # planes not contiguous
    elif layout == "float64":
        reads = reads * 0.5
    elif layout == "int32":
        reads = reads.astype(np.int32) - 40000  # to float64, negative values kept
    elif layout == "one-read":
        reads = reads[:1]
    rows = rng.integers(0, reads.shape[1], (7, 11))
    cols = rng.integers(0, reads.shape[2], (7, 11))
    got = _pixel_reads(reads, rows, cols)
    want = reads[:, rows, cols].astype(np.result_type(reads.dtype, np.float32))
    assert got.dtype == want.dtype and got.dtype.isnative
    assert np.array_equal(got, want)


def test_prepare_chip_names_a_wrong_argument(small_chip):
    """The wrong object given to the stage: a message naming the argument, not an
    AttributeError from inside."""
    from pyapred.exposure import FitOptions, prepare_chip

    chip, traces = small_chip
    with pytest.raises(TypeError, match="traces: expected Traces, got NoneType"):
        prepare_chip(chip, None, FitOptions())
    with pytest.raises(TypeError, match="options: expected FitOptions, got dict"):
        prepare_chip(chip, traces, {})
    with pytest.raises(TypeError, match="chip: expected ChipExposure, got dict"):
        prepare_chip({"reads": chip.reads}, traces, FitOptions())
