"""The pipeline's first pass (``pyapred.solver.first_pass``) against a plain per-pixel reference."""

import numpy as np
import pytest

from pyapred.solver.first_pass import _N_ROUGH, _is_jump, first_pass


def _reference(reads, shape_index, shapes, inv_gain, var_read, saturation, threshold):
    """The first pass of one pixel at a time, as its docstring states it."""
    n_reads, ny, nx = reads.shape
    rate = np.zeros((ny, nx), np.float32)
    saturated = np.zeros((ny, nx), bool)
    jumps = []

    def is_jump(excess, model, y, x):
        return excess > np.sqrt(threshold**2 * (max(model, 0.0) * inv_gain[y, x] + var_read[y, x]))

    for y in range(ny):
        for x in range(nx):
            ramp = reads[:, y, x].astype(float)
            bad = ~np.isfinite(ramp) | (ramp >= saturation[y, x])
            n_good = int(np.argmax(bad)) if bad.any() else n_reads
            saturated[y, x] = n_good < n_reads
            shape = shapes[shape_index[y, x]]
            diff = np.diff(ramp[:n_good])
            scaled = diff / shape[: diff.size]
            n = min(diff.size, _N_ROUGH)
            rough = np.median(scaled[(np.arange(n) * diff.size) // n]) if n else 0.0
            pairs = list(zip(diff, shape[: diff.size], strict=True))
            keep = [not is_jump(d - rough * s, rough * s, y, x) for d, s in pairs]
            level = diff[keep].sum() / shape[: diff.size][keep].sum() if any(keep) else rough
            rate[y, x] = level
            jumps += [
                (k, y, x)
                for k, (d, s) in enumerate(pairs)
                if is_jump(d - level * s, level * s, y, x)
            ]
    return rate, saturated, np.array(jumps, dtype=np.int64).reshape(-1, 3)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
@pytest.mark.parametrize("calibration", ["maps", "scalars"])
@pytest.mark.parametrize("layout", ["mixed shapes", "a shape per row", "runs of shapes"])
def test_first_pass_matches_the_per_pixel_reference(dtype, calibration, layout):
    """With a shape per row, or runs of one shape (1 to 59 pixels, as a trace drifting across
    rows makes them), row 0 never saturates: its blocks take the kernel's common path (every
    difference usable, the sampled ones read run by run), the others the general one."""
    rng = np.random.default_rng(3)
    n_reads, ny, nx = 14, 3, 300  # a row is two blocks of the kernel
    shapes = rng.uniform(0.6, 1.3, (4, n_reads - 1))
    if layout == "mixed shapes":
        shape_index = rng.integers(0, 4, (ny, nx))
    elif layout == "a shape per row":
        shape_index = np.repeat(rng.integers(0, 4, (ny, 1)), nx, axis=1)
    else:
        runs = np.repeat(rng.integers(0, 4, 40), rng.integers(1, 60, 40))
        shape_index = np.tile(np.resize(runs, nx), (ny, 1))
    flux = rng.uniform(0.0, 2000.0, (ny, nx))
    steps = rng.poisson(flux[None] * shapes[shape_index].transpose(2, 0, 1))
    reads = 1000.0 + np.concatenate([np.zeros((1, ny, nx)), np.cumsum(steps, axis=0)])
    hits = rng.random(reads.shape) < 0.01
    reads += np.cumsum(hits * rng.uniform(100, 3000, reads.shape), axis=0)  # jumps
    reads = np.round(reads)
    saturation = np.full((ny, nx), 20000.0)  # the brightest ramps saturate
    if layout != "mixed shapes":
        saturation[0] = 65535.0
    if layout == "a shape per row":
        # A pixel whose rough level is that of the differences the median samples: large
        # ones at 5 of its 9 (0, 1, 2, 4, 5, 7, 8, 10, 11 of 13), none elsewhere.
        steps = np.zeros(n_reads - 1)
        steps[[0, 2, 5, 8, 11]] = 3000.0
        reads[:, 0, 7] = 1000.0 + np.concatenate([[0.0], np.cumsum(steps)])
    if dtype == np.float32:
        reads[5, 1, 7] = np.nan
    reads = reads.astype(dtype)
    inv_gain = 1.0 / rng.uniform(1.5, 2.5, (ny, nx))
    var_read = 2.0 * rng.uniform(8.0, 15.0, (ny, nx)) ** 2
    if calibration == "scalars":  # as prepare_chip passes them: stride-0 views
        inv_gain = np.broadcast_to(inv_gain[0, 0], (ny, nx))
        var_read = np.broadcast_to(var_read[0, 0], (ny, nx))
    args = (reads, shape_index, shapes, inv_gain, var_read, saturation, 6.0)
    rate, saturated, jumps = first_pass(*args)
    want_rate, want_saturated, want_jumps = _reference(*args)
    assert saturated.any() and len(jumps) > 10
    assert np.array_equal(saturated, want_saturated)
    np.testing.assert_allclose(rate, want_rate, rtol=1e-6)
    assert sorted(map(tuple, jumps)) == sorted(map(tuple, want_jumps))


def test_a_shape_near_zero_does_not_throw_the_rate():
    """A thick cloud's difference (shape 0.005 of the mean) counts for its shape: the level was
    the mean of the differences over their shapes, which divided that difference's read noise
    by 0.005. Pixels of 10 DN a difference then got rates of hundreds of DN of either sign, and a
    negative one flagged nearly every other difference as a jump."""
    rng = np.random.default_rng(5)
    n_reads, ny, nx = 20, 4, 256
    shape = np.ones(n_reads - 1)
    shape[9] = 0.005
    shape /= shape.mean()
    steps = rng.poisson(10.0 * shape[:, None, None], (n_reads - 1, ny, nx))
    noise = rng.normal(0.0, 10.0, (n_reads, ny, nx))
    reads = 1000.0 + np.concatenate([np.zeros((1, ny, nx)), np.cumsum(steps, axis=0)]) + noise
    args = (reads, np.zeros((ny, nx), np.int64), shape[None], np.full((ny, nx), 1.0),
            np.full((ny, nx), 200.0), np.full((ny, nx), np.inf), 8.0)  # fmt: skip
    rate, _, jumps = first_pass(*args)
    assert len(jumps) == 0
    assert np.abs(rate - 10.0).max() < 6.0  # sigma about 0.8 DN
    np.testing.assert_allclose(rate, _reference(*args)[0], rtol=1e-6)


def test_one_compiled_kernel_whatever_the_calibration_form():
    """Maps or single numbers, int32 or int64 shape indices, writeable or read-only: the inputs
    reach the kernel in one form, so Numba compiles it once per reads type (tens of seconds
    each on a 2-core machine), with the same rates."""
    from pyapred.solver.first_pass import first_pass_kernel

    rng = np.random.default_rng(5)
    n_reads, ny, nx = 6, 2, 40
    reads = np.cumsum(rng.uniform(50, 150, (n_reads, ny, nx)), axis=0).astype(np.float32)
    shapes = np.ones((2, n_reads - 1))
    forms = [
        (np.zeros((ny, nx), np.int64), 0.5, 200.0, 1e9),
        (np.zeros((ny, nx), np.int32), np.full((ny, nx), 0.5), np.full((ny, nx), 200.0), 1e9),
        (np.zeros((ny, nx), np.int16), np.broadcast_to(0.5, (ny, nx)), 200.0, np.inf),
    ]
    rates = []
    for shape_index, inv_gain, var_read, saturation in forms:
        rates.append(first_pass(reads, shape_index, shapes, inv_gain, var_read, saturation, 6.0)[0])
        if len(rates) == 1:
            compiled = len(first_pass_kernel.signatures)
    assert len(first_pass_kernel.signatures) == compiled
    for rate in rates[1:]:
        np.testing.assert_array_equal(rate, rates[0])


def test_the_jump_test_on_squares_decides_as_the_square_root():
    # excess^2 > threshold^2 noise^2 for a positive excess: the square root's decision wherever
    # the two sides are not within rounding of each other, and no jump for a negative or NaN
    # variance (whose square root is NaN).
    rng = np.random.default_rng(7)
    thr2 = 8.0**2
    for _ in range(2000):
        excess = rng.normal(0.0, 300.0)
        model = rng.normal(500.0, 800.0)
        inv_gain, var_read = rng.uniform(0.2, 2.0), rng.uniform(0.0, 400.0)
        with np.errstate(invalid="ignore"):
            want = excess > np.sqrt(thr2 * (max(model, 0.0) * inv_gain + var_read))
        assert _is_jump(excess, model, inv_gain, var_read, thr2) == want
    assert not _is_jump(1e3, 10.0, -1.0, 0.0, thr2)  # negative variance
    assert not _is_jump(1e3, np.nan, 1.0, 1.0, thr2)
    assert not _is_jump(np.nan, 10.0, 1.0, 1.0, thr2)
    assert _is_jump(np.inf, 10.0, 1.0, 1.0, thr2)
    assert not _is_jump(np.inf, np.inf, 1.0, 1.0, thr2)
    assert _is_jump(1e-3, 0.0, 1.0, 0.0, thr2)  # no noise: any positive excess
    assert not _is_jump(0.0, 0.0, 1.0, 0.0, thr2)
    assert not _is_jump(-5.0, 0.0, 1.0, 0.0, thr2)
