"""Comparison of fitted omega with the guider: scale, lag and clock verdict, flags, figure."""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from astropy import units as u

from pyapred import guider
from pyapred.errors import InputError
from pyapred.guider.omega import select_omega

from .scenario import INTOFF, N_READS, START, exposure_header, write_frames


def test_comparison_recovers_the_scale_to_one_percent(sky):
    result = guider.compare(sky.fit, sky.frames, read_times=exposure_header())
    expected = sky.truth.max() / sky.truth[sky.fit.ref_index]
    assert abs(result.scale[0] / expected - 1) < 0.01
    assert result.correlation[0] > 0.99 and result.explained_variance[0] > 0.95
    assert 0.6 < result.chi2_dof[0] < 1.5 and not result.disagree[0]
    assert result.flags == () and result.clock == "not-fitted"
    assert result.used[0].sum() == N_READS - 2  # all but the fixed reference element


def test_nan_omega_elements_are_left_out_and_flagged(sky):
    """They were left out of the fit without a word."""
    omega = np.array(sky.fit.omega, dtype=float)
    omega[..., 5] = np.nan
    source = SimpleNamespace(omega=omega, omega_cov=sky.fit.omega_cov)
    result = guider.compare(source, sky.frames, read_times=exposure_header())
    assert result.flags == ("omega-incomplete",)
    assert result.used[0].sum() == N_READS - 3 and not result.used[0, 5]
    cov = np.array(sky.fit.omega_cov, dtype=float)
    cov[..., 7, 7] = np.nan  # a finite element with no variance: left out too
    source = SimpleNamespace(omega=sky.fit.omega, omega_cov=cov)
    result = guider.compare(source, sky.frames, read_times=exposure_header())
    assert result.flags == ("omega-incomplete",) and not result.used[0, 7]


def test_an_omega_the_fit_cannot_take_is_flagged(sky):
    """An element of 1e308 gave a NaN scale and p-value with no flag (exit 0)."""
    omega = np.array(sky.fit.omega, dtype=float)
    omega[..., 3] = 1e308
    source = SimpleNamespace(omega=omega, omega_cov=sky.fit.omega_cov)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = guider.compare(source, sky.frames, read_times=exposure_header())
    assert "fit-undetermined" in result.flags and not np.isfinite(result.scale[0])


@pytest.mark.parametrize("damage", ["zeros", "negated"])
def test_an_omega_that_does_not_rise_with_the_guider_is_flagged_and_drawn(sky, tmp_path, damage):
    """A product's omega row of zeros gave a scale of 0 and NaN statistics with no flag (exit
    0); negated, the figure's error bars (divided by the scale) failed in matplotlib."""
    omega = np.array(sky.fit.omega, dtype=float)
    omega = np.zeros_like(omega) if damage == "zeros" else -omega
    source = SimpleNamespace(omega=omega, omega_cov=sky.fit.omega_cov)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = guider.compare(source, sky.frames, read_times=exposure_header())
        result.plot(tmp_path / "cmp.png")
    assert "fit-undetermined" in result.flags and not result.scale[0] > 0
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"


def test_a_constant_omega_has_no_correlation_or_explained_variance(sky):
    """Both undefined (NaN, documented); the explained variance was -inf (divided by 0)."""
    omega = np.ones_like(np.asarray(sky.fit.omega, dtype=float))
    source = SimpleNamespace(omega=omega, omega_cov=sky.fit.omega_cov)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = guider.compare(source, sky.frames, read_times=exposure_header())
    assert np.isnan(result.correlation[0]) and np.isnan(result.explained_variance[0])
    assert np.isfinite(result.scale[0]) and "disagree" in result.flags


def test_a_curve_constant_to_rounding_has_no_correlation():
    """A seeing-only curve under steady seeing is constant but for its last bits: r was 0.45
    or -0.10 of them."""
    from pyapred.guider.compare import _pearson

    x = np.linspace(0.9, 1.1, 20)
    flat = 0.7 * (1 + np.random.default_rng(1).normal(0.0, 1e-14, 20))
    assert np.isnan(_pearson(x, flat)) and np.isnan(_pearson(flat, x))
    assert _pearson(x, 2 * x) == pytest.approx(1.0)


def test_guider_results_have_short_reprs(sky):
    """A line or a few, never whole arrays (they were the dataclasses' full reprs: 2-40 kB)."""
    series = guider.guider_series(sky.frames)
    objects = {
        "GuiderComparison": guider.compare(sky.fit, sky.frames, read_times=exposure_header()),
        "GuiderSeries": series,
        "GuiderFrames": sky.frames,
        "OmegaSelection": select_omega(sky.fit),
        "GuiderPrediction": guider.predict_omega(series, START + np.arange(N_READS) * INTOFF * u.s),
    }
    for name, obj in objects.items():
        text = repr(obj)
        assert len(text) < 2000 and "array(" not in text, (name, len(text))
        assert text.startswith(type(obj).__name__), name


def test_lag_fit_finds_a_37_second_clock_offset(sky):
    # DATE-OBS holds TAI but the header says UTC: read times come out 37 s late.
    header = exposure_header(TIMESYS="UTC")
    result = guider.compare(sky.fit, sky.frames, read_times=header, fit_lag=True)
    assert result.tai_minus_utc == 37.0
    assert abs(result.lag - (-37.0)) < 3.0
    assert 0 < result.lag_err < 3.0
    assert result.clock == "date-obs-is-tai" and "clock-offset" in result.flags
    expected = sky.truth.max() / sky.truth[sky.fit.ref_index]
    assert abs(result.scale[0] / expected - 1) < 0.01
    # Without the lag the misalignment shows up as a disagreement.
    unaligned = guider.compare(sky.fit, sky.frames, read_times=header)
    assert unaligned.disagree[0] and "disagree" in unaligned.flags


def test_aligned_clocks_give_zero_lag_and_the_overriding_timesys_is_honoured(sky):
    raw = SimpleNamespace(
        read_times=START + np.arange(N_READS) * INTOFF * u.s, header=exposure_header()
    )
    result = guider.compare(sky.fit, sky.frames, read_times=raw, fit_lag=True)
    assert abs(result.lag) < 3.0 and result.clock == "aligned"
    as_utc = guider.compare(sky.fit, sky.frames, read_times=raw, fit_lag=True, timesys="UTC")
    assert abs(as_utc.lag + 37.0) < 3.0


def test_many_fibers_get_their_own_scales(sky):
    omega = np.stack([sky.fit.omega, 0.5 * sky.fit.omega])
    cov = np.stack([sky.fit.omega_cov, 0.25 * sky.fit.omega_cov])
    result = guider.compare((omega, cov), sky.frames, read_times=exposure_header())
    assert result.scale[1] / result.scale[0] == pytest.approx(0.5, rel=1e-6)
    one = guider.compare((omega, cov), sky.frames, read_times=exposure_header(), fibers=[1])
    assert one.fibers.tolist() == [1] and one.scale[0] == pytest.approx(result.scale[1])
    summary = json.loads(json.dumps(result.to_dict()))
    assert summary["fiber_ids"] == [300, 299] and len(summary["guider"]) == N_READS - 1


def test_plot_draws_the_three_panels(sky, tmp_path):
    result = guider.compare(sky.fit, sky.frames, read_times=exposure_header())
    figure = result.plot(tmp_path / "cmp.png")
    assert len(figure.axes) == 4  # three panels plus the seeing axis
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp.png"]  # no temporary left


def test_each_fiber_has_one_colour_in_every_panel(sky):
    """A fiber whose scale is not positive has no middle-panel points: the residual panel's
    colours drifted one fiber from the legend's after it."""
    from matplotlib.colors import to_rgba

    omega = np.stack([sky.fit.omega, -sky.fit.omega, 0.9 * sky.fit.omega])
    cov = np.stack([sky.fit.omega_cov] * 3)
    result = guider.compare((omega, cov), sky.frames, read_times=exposure_header())
    assert not result.scale[1] > 0 < result.scale[2]
    figure = result.plot()
    _, middle, bottom = figure.axes[:3]
    residual = [to_rgba(line.get_color()) for line in bottom.get_lines()
                if line.get_marker() == "o"]  # fmt: skip
    handles, labels = middle.get_legend_handles_labels()
    colours = {label: to_rgba(handle.lines[0].get_color())
               for handle, label in zip(handles, labels, strict=True)
               if label.startswith("fiberId")}  # fmt: skip
    assert len(residual) == 3
    assert colours == {"fiberId 300": residual[0], "fiberId 298": residual[2]}


def test_the_product_s_telescope_picks_the_fiber_and_refuses_the_other_site(sky):
    """A product of LCO was compared with APO's 3 arcsec fiber (the frames' names decided), and
    frames of the other site were taken for the exposure's."""
    omega = {"omega": sky.fit.omega, "omega_cov": sky.fit.omega_cov}
    apo = guider.compare({**omega, "telescope": "apo"}, sky.frames, read_times=exposure_header())
    assert apo.series.diameter == 3.0  # the frames are APO's (gfa1n, gfa5n)
    with pytest.raises(InputError) as err:
        guider.compare({**omega, "telescope": "lco"}, sky.frames, read_times=exposure_header())
    assert err.value.field == "camera" and "of lco (the exposure's telescope)" in str(err.value)
    unnamed = guider.compare(omega, sky.frames, read_times=exposure_header())
    assert unnamed.series.diameter == 3.0


def test_a_header_of_fewer_reads_than_omega_is_another_exposure_s(sky):
    """An exposure header of 8 reads for omega of 12 was taken, its times stretched to the
    omega's reads (an ar3Dcal product's header may say more: ApogeeReduction.jl drops reads)."""
    with pytest.raises(InputError) as err:
        guider.compare(sky.fit, sky.frames, read_times=exposure_header(NREAD=N_READS - 3))
    assert err.value.field == "NREAD" and f"at least the {N_READS} reads" in str(err.value)
    more = guider.compare(sky.fit, sky.frames, read_times=exposure_header(NREAD=N_READS + 2))
    assert more.window_start.size == N_READS - 1


def test_no_time_overlap_is_a_clear_error(sky):
    late = exposure_header(**{"DATE-OBS": (START + 3 * u.hour).isot})
    with pytest.raises(InputError) as err:
        guider.compare(sky.fit, sky.frames, read_times=late)
    assert err.value.field == "DATE-OBS" and "overlapping the exposure" in str(err.value)
    assert "proc-gimg" in err.value.path
    with pytest.raises(InputError) as err:  # from a directory: only headers are read
        guider.compare(sky.fit, sky.directory, read_times=late)
    assert err.value.field == "DATE-OBS" and str(sky.directory) in str(err.value)


def test_settings_are_checked_not_ignored(sky):
    header = exposure_header()
    for bad in ({"lag_step": 0.0, "fit_lag": True}, {"lag_range": -5.0, "fit_lag": True},
                {"lag_step": np.nan, "fit_lag": True}, {"alpha": 2.0}, {"alpha": -1.0},
                {"max_gap": 0.0}, {"row_phase": np.nan},
                # A grid of 1e11 lags (894 GiB: a MemoryError) or of 1e308 s (NumPy's error).
                {"lag_step": 1e-9, "fit_lag": True, "lag_range": 60.0},
                {"lag_step": 0.5, "fit_lag": True, "lag_range": 1e308}):  # fmt: skip
        name = next(iter(bad))
        with pytest.raises(ValueError, match=f"{name}: expected"):
            guider.compare(sky.fit, sky.frames, read_times=header, **bad)
    # A ready series has its frames chosen and its flux modelled: these were silently ignored.
    series = guider.guider_series(sky.frames)
    with pytest.raises(ValueError, match="diameter, wavelength: expected none with a GuiderSeries"):
        guider.compare(sky.fit, series, read_times=header, diameter=0.0, wavelength=1.6)
    assert guider.compare(sky.fit, series, read_times=header).scale.shape == (1,)


def test_configid_mismatch_drops_frames_or_fails(sky, tmp_path):
    with pytest.raises(InputError) as err:
        guider.compare(sky.fit, sky.frames, read_times=exposure_header(CONFIGID=7))
    assert err.value.field == "CONFIGID" and "configuration 7" in str(err.value)
    # Frames of another configuration among the exposure's: dropped and flagged.
    other = tmp_path / "other"
    rng = np.random.default_rng(6)
    write_frames(other, rng, start=START + 100 * u.s, duration=100.0, config_id=2, first_frame=900)
    mixed = guider.GuiderFrames(sky.frames.frames + guider.read_guider_frames(other).frames, [])
    result = guider.compare(sky.fit, mixed, read_times=exposure_header(CONFIGID=1))
    assert "frames-dropped" in result.flags
    assert sum("CONFIGID 2 != exposure's 1" in reason for _, reason in result.dropped) == 5
    assert set(result.series.config_id.tolist()) == {1} and len(result.series) == 34


def test_frames_without_stars_or_fwhm_are_dropped_and_flagged(sky, tmp_path):
    no_stars, no_fwhm = (
        tmp_path / "proc-gimg-gfa3n-0901.fits",
        tmp_path / "proc-gimg-gfa3n-0902.fits",
    )
    guider.write_proc_gimg(no_stars, date_obs=START, exptime=15.0, fwhm=1.2, camera="gfa3n")
    guider.write_proc_gimg(
        no_fwhm, date_obs=START + 20 * u.s, exptime=15.0, fwhm=None, source_id=[1], zp=[25.0],
        camera="gfa3n",
    )  # fmt: skip
    bad = guider.read_guider_frames(tmp_path)
    frames = guider.GuiderFrames(sky.frames.frames + bad.frames, [])
    result = guider.compare(sky.fit, frames, read_times=exposure_header())
    reasons = dict(result.dropped)
    assert "no stars" in reasons[str(no_stars)] and "no valid FWHM" in reasons[str(no_fwhm)]
    assert "frames-dropped" in result.flags and len(result.series) == 34  # exposure +- 90 s


def test_partial_guider_coverage_is_flagged_not_fatal(sky):
    early = [f for f in sky.frames.frames if (f.start - START).sec < 300]  # ends mid-exposure
    result = guider.compare(sky.fit, early, read_times=exposure_header())
    assert "partial-coverage" in result.flags
    assert 20 < result.used[0].sum() < N_READS - 2
    assert np.isnan(result.guider[-1]) and np.isfinite(result.guider[0])


def test_one_covered_window_is_flagged_undetermined(sky):
    """Frames that end as the exposure starts cover one window: no p-value, no correlation and
    chi2/dof inf, flagged only ``partial-coverage`` (the NaN carried no flag of its own)."""
    for end in np.arange(0.0, 120.0, 5.0):
        early = [f for f in sky.frames.frames if (f.start - START).sec < end]
        if not early:
            continue
        try:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                result = guider.compare(sky.fit, early, read_times=exposure_header())
        except InputError:  # no window covered yet
            continue
        if result.used[0].sum() == 1:
            break
    assert result.used[0].sum() == 1 and np.isnan(result.p_value[0])
    assert {"partial-coverage", "fit-undetermined"} <= set(result.flags)


# --------------------------------------------------------------------------------------------
# The chromatic fit: gamma against the guider's seeing
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chromatic(seeing_change, tmp_path_factory):
    """The seeing-change exposure's chromatic fibers as a product, and guider frames that see
    the same seeing history (1.2 to 3.6 arcsec over the exposure, grey transparency 1)."""
    from pyapred.exposure import MODEL_CHROMATIC, write_exposure

    sim, result = seeing_change
    fits_ = result.fibers["joint"]
    n_diff = len(sim.read_times) - 1
    duration = n_diff * INTOFF
    start, end = sim.fwhm[0, 0] - 0.5 * np.diff(sim.fwhm[0])[0], sim.fwhm[0, -1]
    directory = tmp_path_factory.mktemp("chromatic_guider")
    frames = guider.simulate_guider_frames(
        directory, start=START - 100 * u.s, duration=duration + 200.0,
        transparency=lambda t: np.ones_like(t),
        fwhm=lambda t: start + (end - start) * np.clip((t - 100.0) / duration, 0.0, 1.0),
        rng=np.random.default_rng(11), cadence=10.0, exptime=8.0, cameras=("gfa2n",),
    )  # fmt: skip
    product = write_exposure(result, tmp_path_factory.mktemp("product") / "p.h5")
    chosen = np.flatnonzero(fits_.model == MODEL_CHROMATIC)
    header = exposure_header(NREAD=len(sim.read_times))
    return SimpleNamespace(sim=sim, fits=fits_, frames=frames, product=product, chosen=chosen,
                           header=header)  # fmt: skip


def test_guider_predicts_the_fitted_gamma(chromatic):
    """From the seeing alone the guider predicts gamma within the fit's errors."""
    result = guider.compare(chromatic.product, chromatic.frames, read_times=chromatic.header,
                            fibers=chromatic.chosen, row_phase=0.0, wavelength=1.6)  # fmt: skip
    _, truth = chromatic.sim.chromatic_truth(chromatic.fits.ref_index)
    covered = np.isfinite(result.gamma_guider)
    np.testing.assert_allclose(result.gamma_guider[covered], truth[0][covered], atol=2e-4)
    chi2_dof = result.gamma_chi2 / result.gamma_dof
    assert abs(np.mean(chi2_dof) - 1.0) < 0.15
    assert np.mean(result.gamma_p_value < 0.01) < 0.1
    summary = json.loads(json.dumps(result.to_dict()))
    assert len(summary["gamma_guider"]) == len(result.gamma_guider)
    assert len(summary["gamma_chi2_dof"]) == len(chromatic.chosen)
    assert len(result.plot().axes) == 5  # a fourth panel: gamma against the prediction
    # Every fiber with an omega, borrowed ones (no gamma) included: no "Mean of empty slice".
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        every = guider.compare(chromatic.product, chromatic.frames, read_times=chromatic.header,
                               row_phase=0.0, wavelength=1.6)  # fmt: skip
        every.to_dict()


def test_gamma_needs_the_coordinate_span(chromatic):
    from pyapred.guider.omega import read_product_omega

    data = read_product_omega(chromatic.product)
    data.pop("span")
    with pytest.raises(ValueError, match="span"):
        guider.compare(data, chromatic.frames, read_times=chromatic.header,
                       fibers=chromatic.chosen[:2])  # fmt: skip


def test_chromatic_prediction_checks_its_arguments(sky):
    """NumPy's matmul, reshape and LAPACK errors before (an SVD that did not converge)."""
    from pyapred.guider.fiber_flux import chromatic_prediction

    series = guider.guider_series(sky.frames)
    matrix = np.full((7, len(series.fwhm)), 1.0 / len(series.fwhm))
    for args, words in (
        ((matrix[:, :2], (1.5, 1.7), 0), "matrix: expected"),
        ((matrix, (1.6, 1.6), 0), "span: expected"),
        ((matrix, (1.5, 1.7), 99), "ref_index: expected"),
    ):
        with pytest.raises(ValueError, match=words):
            chromatic_prediction(series, *args)
    with pytest.raises(ValueError, match="n_wavelengths: expected"):
        chromatic_prediction(series, matrix, (1.5, 1.7), 0, n_wavelengths=0)
    omega, gamma = chromatic_prediction(series, matrix, (1.5, 1.7), 0)
    assert omega.shape == gamma.shape == (7,)


def test_a_steady_sky_leaves_the_lag_undetermined(tmp_path):
    """The guider carries no timing where nothing changes: the lag profile is noise, and its
    minimum came with a finite error and a clock verdict (28 of 40 simulations said
    clock-offset, exit 1)."""
    import pyapred

    for seed in range(3):
        rng = np.random.default_rng(5000 + seed)
        directory = tmp_path / str(seed)
        write_frames(directory, rng, transparency=lambda t: 1.0 + 0.0 * t,
                     fwhm=lambda t: 1.5 + 0.0 * t)  # fmt: skip
        sim = pyapred.simulate_ramps(rng.uniform(3000, 5000, 300), 15.0,
                                     omega=np.ones(N_READS - 1), rng=rng)  # fmt: skip
        fit = pyapred.fit_omega(sim.reads, 15.0)
        result = guider.compare(fit, directory, read_times=exposure_header(), fit_lag=True)
        assert not np.isfinite(result.lag_err) and result.clock == "undetermined"
        assert "lag-unconstrained" in result.flags and "clock-offset" not in result.flags
        assert result.lag == 0.0  # not applied (it moved the windows to the noise's minimum)


def test_lag_error_of_many_fibers_sharing_the_guider_noise(sky):
    """The fibers' chi2 were summed as if independent, though they share the guider curve:
    the lag's error shrank as 1 / sqrt(fibers) (0.04 s for 20, against a scatter of 0.18)."""
    omega, cov = sky.fit.omega, sky.fit.omega_cov
    one = guider.compare((omega[None], cov[None]), sky.directory, read_times=exposure_header(),
                         fit_lag=True)  # fmt: skip
    many = guider.compare((np.repeat(omega[None], 20, 0), np.repeat(cov[None], 20, 0)),
                          sky.directory, read_times=exposure_header(), fit_lag=True)  # fmt: skip
    assert np.isfinite(one.lag_err) and many.lag_err == pytest.approx(one.lag_err, rel=0.05)
