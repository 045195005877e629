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


def _core_diffs(shapes, levels, n_columns=64, read_noise=10.0, seed=0):
    """``(K, n_fibers, n_columns)`` float32 trace-center differences, DN: per fiber, ``levels``
    times its shape plus Poisson-like and read noise."""
    rng = np.random.default_rng(seed)
    shapes = np.asarray(shapes, dtype=np.float64)  # (n_fibers, K)
    mean = np.asarray(levels, dtype=np.float64)[:, None, None] * shapes[:, :, None]
    mean = np.broadcast_to(mean, (*shapes.shape, n_columns))
    noise = np.sqrt(np.maximum(mean, 0.0) + 2 * read_noise**2)
    diffs = mean + noise * rng.standard_normal(mean.shape)
    return np.ascontiguousarray(diffs.transpose(1, 0, 2)).astype(np.float32)


def test_rough_omega_keeps_measured_shapes_and_replaces_noisy_ones():
    """A fiber's own shape shapes its jump detection where it is measured well; a faint fiber
    (its own shape is noise), one whose trace centers all saturate (none) and an excluded FPI
    fiber do not: the first two take the well-measured fibers' common shape, the FPI fiber is
    flat, as extraction models it."""
    from pyapred.exposure.prepare import MAX_ROUGH_ERROR, _rough_error, _rough_omega

    K = 12
    clouds = np.linspace(1.3, 0.7, K)
    steady = np.ones(K)
    shapes = [clouds, clouds * (1 + 0.05 * np.sin(np.arange(K))), steady, clouds, clouds, clouds]
    levels = [2000.0, 1500.0, 3000.0, 3.0, 2500.0, 2500.0]
    diffs = _core_diffs(shapes, levels)
    diffs[:, 4] = np.nan  # saturated at every trace center
    excluded = np.array([False, False, False, False, False, True])
    got = _rough_omega(diffs, excluded)
    assert got.shape == (6, K) and got.dtype == np.float32
    assert np.allclose(got.mean(axis=1), 1.0, rtol=1e-6)
    # Well measured: their own shapes, even the steady one that differs from the others.
    for f in (0, 1, 2):
        assert np.allclose(got[f], shapes[f] / shapes[f].mean(), atol=0.02), f
    assert np.abs(got[1] - got[0]).max() > 0.03  # not the common shape
    # The faint and the saturated fiber: the same common shape, the median of the measured
    # ones (the median of their own shapes, before each is scaled to mean 1).
    assert np.array_equal(got[3], got[4])
    assert np.allclose(got[3], np.median(got[:3], axis=0), atol=0.02)
    assert np.array_equal(got[5], np.ones(K, np.float32))
    # The faint fiber's own shape was noise, and the rule saw it.
    level = np.median(diffs[:, 3], axis=0)
    ratio = diffs[:, 3:4] / level[None, None]
    own = np.nanmedian(ratio, axis=-1)
    assert np.abs(own[:, 0] / own[:, 0].mean() - clouds / clouds.mean()).max() > 0.3
    assert _rough_error(ratio, own)[0] > MAX_ROUGH_ERROR


def test_rough_omega_is_flat_where_no_fiber_is_measured():
    from pyapred.exposure.prepare import _rough_omega

    K = 8
    diffs = _core_diffs([np.linspace(1.2, 0.8, K)] * 3, [2.0, 3.0, 1.0])
    got = _rough_omega(diffs, np.zeros(3, bool))
    assert np.array_equal(got, np.ones((3, K), np.float32))


@pytest.mark.parametrize("seed, depth, n_reads", [(2, 0.6, 20), (4, 0.99, 47)])
def test_jumps_are_the_cosmic_rays_under_clouds(seed, depth, n_reads):
    """Under clouds the jump detector finds the cosmic rays and little else. With each fiber's
    own rough shape, a faint sky fiber's (noise) made 274 "jumps" in its pixels at depth 0.6:
    458 found for 187 hits. Under a cloud that dims to 1 %, the rate as a mean of differences
    over their shapes made 6064 for 472 hits."""
    from pyapred.exposure import ChipExposure, FitOptions, prepare_chip
    from pyapred.simulate import simulate_exposure

    sim = simulate_exposure("clouds", seed=seed, chips=("R",), n_fibers=300, n_columns=256,
                            ref_columns=0, n_reads=n_reads, depth=depth)  # fmt: skip
    c = sim.chips["R"]
    chip = ChipExposure("R", c.reads, c.read_noise, gain=c.gain, saturation=c.saturation)
    found = {tuple(j) for j in prepare_chip(chip, c.traces, FitOptions()).jumps.tolist()}
    hits = c.cosmic_rays
    assert hits.shape[0] > 100
    # A hit in difference k masks read k + 1.
    recovered = sum((k + 1, r, col) in found for k, r, col in hits.tolist())
    assert recovered >= 0.9 * hits.shape[0]
    assert len(found) <= 1.1 * hits.shape[0] + 2
