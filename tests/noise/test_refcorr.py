"""refcorr: the correlated part of the row offsets falls, nothing is biased."""

import numpy as np
import pytest

from pyapred import extract_fluxes
from pyapred.noise import (
    HxrgNoise,
    refcorr,
    refcorr_inplace,
    refcorr_reads,
    reference_read_variance,
    simulate_hxrg,
)

ROWS = slice(0, 2048)
INNER = (slice(None), slice(4, 2044), slice(4, 2044))  # science pixels off the reference border


def _row_mean_std(frames: np.ndarray) -> float:
    """Std of the per-output row means of the inner science pixels of (n, 2048, >= 2048) frames."""
    inner = frames[:, 4:2044, :2048].reshape(frames.shape[0], 2040, 4, 512)[..., 4:508]
    return float(inner.mean(axis=-1).std())


@pytest.fixture(scope="module")
def correlated():
    """Differences of c_pink-dominated noise, and of its white part alone (same draws)."""
    noise = HxrgNoise(white=1.0, c_pink=1.0, u_pink=0.0, acn=0.0)
    white = HxrgNoise(white=1.0, c_pink=0.0, u_pink=0.0, acn=0.0)
    total = np.diff(simulate_hxrg(7, noise, rows=ROWS, rng=11), axis=0)
    white_only = np.diff(simulate_hxrg(3, white, rows=ROWS, rng=12), axis=0)
    return total, white_only


def test_row_offsets_of_the_correlated_part_fall_threefold(correlated):
    total, white_only = correlated
    before = _row_mean_std(total)
    after = _row_mean_std(refcorr(total))
    # What white noise alone leaves after the same correction: the floor set by the reference
    # pixels' own noise. The correlated part is what lies above it.
    floor = _row_mean_std(refcorr(white_only))
    correlated_after = np.sqrt(max(after**2 - floor**2, 0.0))
    correlated_before = np.sqrt(before**2 - _row_mean_std(white_only) ** 2)
    assert correlated_before / max(correlated_after, 1e-12) >= 3.0
    assert before / after >= 3.0  # and the total, white floor included


def test_mean_residual_is_zero(correlated):
    total, _ = correlated
    # A single frame's mean scatters by ~0.012 sigma (residual row offsets); 6 frames average it.
    corrected = refcorr(total)[INNER]
    assert abs(corrected.mean()) < 0.01 * corrected.std()


def test_no_flux_bias_on_a_flat():
    n_reads, rate = 3, 500.0
    rows = slice(0, 2048)
    flat = np.zeros((2048, 2560))
    flat[4:2044, 4:2044] = rate  # light on the science pixels only
    reads = np.arange(n_reads)[:, None, None] * flat
    reads = reads + simulate_hxrg(n_reads, HxrgNoise(), rows=rows, rng=3)
    corrected = refcorr_reads(reads, rows=rows)
    slope = (corrected[-1] - corrected[0])[4:2044, 4:2044].mean() / (n_reads - 1)
    assert abs(slope / rate - 1.0) < 1e-3


def test_reads_are_corrected_through_their_difference_from_the_mean_read():
    reads = simulate_hxrg(3, HxrgNoise(read_time=0.0), rows=slice(10, 42), rng=4)
    corrected = refcorr_reads(reads, rows=slice(10, 42))
    mean = reads.mean(axis=0)
    np.testing.assert_allclose(
        corrected - mean[:, :2048], refcorr(reads - mean, rows=slice(10, 42))
    )
    in_place = reads.astype(np.float32)
    refcorr_inplace(in_place)
    np.testing.assert_allclose(in_place[:, :, :2048], corrected, rtol=0, atol=1e-3)
    np.testing.assert_array_equal(in_place[:, :, 2048:], reads[:, :, 2048:].astype(np.float32))


def test_added_noise_is_read_noise_and_faint_fluxes_stay_calibrated():
    # White noise only, so that everything the correction adds is the reference output's own.
    # A median of differences is not a difference of medians: summing corrected successive
    # differences made part of it a random walk (var(e_19 - e_0) 3.5x var(e_1 - e_0); faint
    # pixels' flux z std 1.2 at 20 reads, 1.26 at 47), where the fit assumes read noise; from
    # the first read, every difference after the first had 20 % more than read noise gives.
    n, ny = 20, 16
    rows = slice(200, 200 + ny)
    rng = np.random.default_rng(7)
    noise = simulate_hxrg(n, HxrgNoise(white=10.0, c_pink=0, u_pink=0, acn=0), rows=rows, rng=7)
    flux = rng.uniform(2.0, 20.0, (ny, 2048))
    photons = np.cumsum(rng.poisson(np.broadcast_to(flux, (n - 1, ny, 2048))), axis=0)
    reads = noise.copy()
    reads[1:, :, :2048] += photons
    corrected = refcorr_reads(reads, rows=rows)
    added = corrected - reads[..., :2048]
    growth = [float((added[k] - added[0]).var()) for k in (1, n - 1)]
    variance = reference_read_variance(np.diff(reads, axis=0))
    assert growth[1] / growth[0] < 1.1
    np.testing.assert_allclose(growth, 2 * variance, rtol=0.1)
    successive = np.diff(added, axis=0)
    np.testing.assert_allclose(successive[1:].var(axis=(1, 2)), 2 * variance, rtol=0.1)
    neighbours = (successive[1:] * successive[:-1]).mean(axis=(1, 2))
    np.testing.assert_allclose(neighbours, -variance, rtol=0.15)  # read noise: -var(read)
    inner = corrected[:, :, 4:2044].reshape(n, -1)
    fit = extract_fluxes(inner, np.sqrt(100.0 + variance), np.ones(n - 1))
    z = (fit.flux - flux[:, 4:2044].ravel()) / np.sqrt(fit.flux_var)
    assert abs(np.std(z) - 1.0) < 0.03


def test_row_median_of_background_pixels_removes_per_output_offsets():
    rows = slice(100, 228)
    noise = HxrgNoise(white=1.0, c_pink=0.3, u_pink=1.0, acn=0.0, read_time=0.0)
    diffs = np.diff(simulate_hxrg(3, noise, rows=rows, rng=5), axis=0)
    background = np.zeros((128, 2048), dtype=bool)
    background[:, ::4] = True  # every 4th column is dark
    refpix = refcorr(diffs, rows=rows)
    rowmed = refcorr(diffs, rows=rows, method="rowmedian", background=background)
    inner = lambda a: a.reshape(2, 128, 4, 512)[..., 4:508].mean(axis=-1).std()  # noqa: E731
    assert inner(rowmed) < 0.5 * inner(refpix)
    # Rows with too few dark pixels keep the reference-pixel correction.
    sparse = np.zeros_like(background)
    sparse[:, :8] = True
    np.testing.assert_allclose(
        refcorr(diffs, rows=rows, method="rowmedian", background=sparse, min_background=9),
        refpix,
    )


def test_none_returns_the_science_columns():
    diffs = np.arange(2 * 3 * 2560, dtype=float).reshape(2, 3, 2560)
    np.testing.assert_array_equal(
        refcorr(diffs, method="none", rows=slice(0, 3)), diffs[..., :2048]
    )


def test_bad_input():
    good = np.zeros((1, 8, 2560))
    with pytest.raises(ValueError, match="method"):
        refcorr(good, method="sirs", rows=slice(0, 8))
    with pytest.raises(ValueError, match="2560"):
        refcorr(np.zeros((1, 8, 2048)), rows=slice(0, 8))
    with pytest.raises(ValueError, match="rows"):
        refcorr(good)
    with pytest.raises(ValueError, match="background"):
        refcorr(good, rows=slice(0, 8), method="rowmedian")


def test_a_nan_read_spoils_that_read_only():
    reads = simulate_hxrg(5, HxrgNoise(read_time=0.0), rows=slice(10, 26), rng=1)
    reads[2, 5, 100] = np.nan
    corrected = refcorr_reads(reads, rows=slice(10, 26))
    in_place = reads.astype(np.float32)
    refcorr_inplace(in_place)
    for out in (corrected, in_place[..., :2048]):
        assert np.isnan(out[:, 5, 100]).tolist() == [False, False, True, False, False]
        assert np.isnan(out).sum() == 1
