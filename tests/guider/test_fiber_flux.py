"""The flux-in-fiber model: PSF coupling, and guider frames combined into the series."""

from __future__ import annotations

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.time import Time

from pyapred import guider
from pyapred.errors import InputError

from .scenario import FIXTURES, START, needs_fixtures


@pytest.mark.parametrize(("fwhm", "diameter"), [(0.8, 3.0), (1.5, 3.0), (3.0, 3.0), (2.2, 1.3)])
def test_coupling_matches_numerical_integration_over_the_disc(fwhm, diameter):
    from scipy import integrate

    sigma = fwhm / (2 * np.sqrt(2 * np.log(2)))
    radius = diameter / 2

    def gaussian(y, x):
        return np.exp(-(x**2 + y**2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)

    inside, _ = integrate.dblquad(
        gaussian,
        -radius,
        radius,
        lambda x: -np.sqrt(radius**2 - x**2),
        lambda x: np.sqrt(radius**2 - x**2),
        epsabs=1e-12,
        epsrel=1e-12,
    )
    assert abs(guider.fiber_coupling(fwhm, diameter) - inside) < 1e-6


def test_coupling_is_one_half_when_fwhm_equals_diameter_and_model_peaks_at_one():
    assert guider.fiber_coupling(3.0, 3.0) == pytest.approx(0.5, abs=1e-15)
    flux = guider.flux_in_fiber([1.0, 0.8, 0.9], [1.0, 1.0, 2.0], 3.0)
    assert flux.max() == 1.0 and flux[1] == pytest.approx(0.8)


@needs_fixtures
def test_plate_era_transparency_follows_mag_against_ref_mag(tmp_path):
    """Copies of the processed frame, 30 s apart, with the probes dimmed by 0, 0.1, 0.05 mag."""
    source = FIXTURES / "lco" / "expect-gimg-0040.fits.gz"
    start = Time("2015-12-01 01:41:26.6", scale="tai")
    for i, dimming in enumerate([0.0, 0.1, 0.05]):
        with fits.open(source) as hdul:
            hdul[0].header["DATE-OBS"] = (start + 30 * i * u.s).iso + "Z"
            hdul[0].header["SEEING"] = 1.2 + 0.1 * i
            hdul[6].data["mag"] = hdul[6].data["mag"] + dimming
            hdul.writeto(tmp_path / f"proc-gimg-{i:04d}.fits.gz")
    series = guider.guider_series(tmp_path)
    ratio = series.transparency / series.transparency[0]
    np.testing.assert_allclose(ratio, 10 ** (-0.4 * np.array([0.0, 0.1, 0.05])), rtol=1e-5)
    assert series.n_stars.tolist() == [14, 14, 14]  # the enabled guide probes with photometry
    coupling = guider.fiber_coupling(np.array([1.2, 1.3, 1.4]), 3.0)
    np.testing.assert_allclose(series.flux, ratio * coupling / (ratio * coupling).max(), rtol=1e-5)


def test_seeing_choice_and_telescope_from_file_names(tmp_path):
    for i in range(2):
        for c, camera_fwhm in enumerate([1.4, 1.8, 1.6]):
            guider.write_proc_gimg(
                tmp_path / f"proc-gimg-gfa{c + 1}s-{i:04d}.fits", date_obs=START + 20 * i * u.s,
                exptime=15.0, fwhm=camera_fwhm, fwhm_fit=1.1, source_id=[c], zp=[25.0 - 0.1 * i],
                camera=f"gfa{c + 1}s",
            )  # fmt: skip
    best = guider.guider_series(tmp_path)
    assert len(best) == 2 and best.diameter == 1.3  # LCO ('s' cameras)
    np.testing.assert_allclose(best.fwhm, 1.1)
    camera = guider.guider_series(tmp_path, seeing="camera", telescope="apo")
    np.testing.assert_allclose(camera.fwhm, 1.6)
    assert camera.diameter == 3.0
    np.testing.assert_allclose(best.transparency[1] / best.transparency[0], 10 ** (-0.04))


def test_only_unusable_frames_is_a_clear_error(tmp_path):
    first = tmp_path / "proc-gimg-gfa1n-0001.fits"
    guider.write_proc_gimg(first, date_obs=START, exptime=15.0, fwhm=1.2)
    guider.write_proc_gimg(
        tmp_path / "proc-gimg-gfa1n-0002.fits", date_obs=START + 20 * u.s, exptime=15.0,
        fwhm=None, source_id=[1], zp=[25.0],
    )  # fmt: skip
    with pytest.raises(InputError) as err:
        guider.guider_series(tmp_path)
    message = str(err.value)
    assert "no stars" in message and "no valid FWHM" in message and "proc-gimg-gfa1n" in message


def test_flux_model_arguments_are_checked():
    """One NaN made every value NaN, all zeros 0/0, a negative FWHM or diameter a coupling."""
    for transparency, fwhm, match in (
        ([1.0, np.nan, 0.9], [1.2, 1.3, 1.4], "transparency"),
        ([0.0, 0.0], [1.2, 1.3], "light in at least one frame"),
        ([1.0, -0.5], [1.2, 1.3], "transparency"),
        ([1.0, 0.9, 0.8], [1.2, 1.3], "transparency, fwhm"),
        ([], [], "transparency, fwhm"),
        ([1.0, 0.9], [1.2, -1.0], "fwhm"),
    ):
        with pytest.raises(ValueError, match=match):
            guider.flux_in_fiber(transparency, fwhm, 2.0)
    for diameter in (-3.0, 0.0, np.inf, np.nan, "wide"):
        with pytest.raises(ValueError, match="diameter"):
            guider.fiber_coupling(1.3, diameter)
    np.testing.assert_allclose(guider.flux_in_fiber([1.0, 0.5], [1.3, 1.3], 2.0), [1.0, 0.5])


def test_series_of_no_frames_or_no_frame_kind():
    """'guider frames: guider frames: ... found ' (nothing) and "'int' object is not iterable"."""
    with pytest.raises(ValueError, match="frames: expected guider frames, .* got none"):
        guider.guider_series([])
    with pytest.raises(TypeError, match="frames: expected GuiderFrames, .* got int"):
        guider.guider_series(123)


def test_frames_whose_integrations_overlap_are_dropped_not_fitted(tmp_path):
    """A frame copied 10 ms after another (a new number) made the windows' spline
    ill-conditioned: r 1.00 -> 0.47 and a false "disagree". One guider integrates one exposure
    at a time: an epoch overlapping an earlier one by more than half its integration goes,
    with its reason; frames that follow each other are kept."""
    start = Time("2024-12-04 01:35:06.4", scale="tai")
    for i in range(5):
        guider.write_proc_gimg(
            tmp_path / f"proc-gimg-gfa1n-{i:04d}.fits", date_obs=start + 20 * i * u.s,
            exptime=15.0, fwhm=1.2, source_id=[1, 2, 3], zp=[25.0, 24.0, 23.0],
        )  # fmt: skip
    series = guider.guider_series(tmp_path)
    assert len(series) == 5 and not series.dropped
    copy = tmp_path / "proc-gimg-gfa1n-0099.fits"
    guider.write_proc_gimg(
        copy, date_obs=start + 40.01 * u.s, exptime=15.0, fwhm=1.2, source_id=[1, 2, 3],
        zp=[25.0, 24.0, 23.0],
    )  # fmt: skip
    series = guider.guider_series(tmp_path)
    assert len(series) == 5
    assert series.dropped == ((str(copy), "its integration overlaps an earlier frame's by 15 s"),)


def test_transparency_errors_pool_the_stars_scatter_over_neighbouring_frames(tmp_path):
    """One frame's MAD of 30 stars scattered by about 20 % (omega's chi2/dof against a noisy
    guider curve 1.13-1.16): pooled over 9 frames, the errors scatter by under 13 % about the
    standard error of a median, and the frames' z-scores against the truth have std near 1."""
    from .scenario import OFFSET, transparency, write_frames

    zp_noise, n_stars = 0.01, 30
    ratios, z = [], []
    for seed in range(6):
        folder = tmp_path / str(seed)
        write_frames(folder, np.random.default_rng(900 + seed), zp_noise=zp_noise,
                     n_stars=n_stars)  # fmt: skip
        series = guider.guider_series(folder)
        t = (series.start - (START - OFFSET * u.s)).sec
        truth = np.array([np.mean(transparency(np.linspace(a, a + 15, 201) - OFFSET)) for a in t])
        expected = 1.2533 * 0.4 * np.log(10) * zp_noise / np.sqrt(n_stars) * truth
        ratios.append(series.transparency_err / expected)
        ratio = series.transparency / truth
        z.append((ratio / np.median(ratio) - 1) * truth / series.transparency_err)
    ratios, z = np.concatenate(ratios), np.concatenate(z)
    assert 0.9 < ratios.mean() < 1.05 and ratios.std() < 0.13  # was 0.21 frame by frame
    assert 0.93 < z.std() < 1.03


def test_a_frame_of_one_star_borrows_its_neighbours_scatter(tmp_path):
    """Its error was 0 (no scatter of its own): the guider treated as exact there."""
    from pyapred.guider.fiber_flux import _transparency

    rng = np.random.default_rng(3)
    ids = [np.arange(20)] * 5 + [np.arange(1)] + [np.arange(20)] * 5
    zps = [25.0 + rng.normal(0.0, 0.01, i.size) for i in ids]
    transparency, error, n_stars = _transparency(ids, zps)
    assert n_stars[5] == 1 and error[5] > 0
    assert error[5] == pytest.approx(error[4] * np.sqrt(20), rel=0.3)
