"""Averaging the guider's flux-in-fiber over read-difference windows; the prediction."""

from __future__ import annotations

import numpy as np
import pytest
from astropy import units as u

from pyapred import guider
from pyapred.errors import InputError
from pyapred.guider.windows import WindowAverager

from .scenario import INTOFF, N_READS, START, true_window_means, write_frames


def test_prediction_matches_true_window_means_and_says_when_the_sky_changed(tmp_path):
    directory = tmp_path / "frames"
    write_frames(directory, np.random.default_rng(1), zp_noise=0.0)
    series = guider.guider_series(directory)
    assert len(series) == 40 and series.has_photometry
    assert series.transparency.min() == pytest.approx(0.7, abs=0.01)
    times = START + np.arange(N_READS) * INTOFF * u.s
    prediction = guider.predict_omega(series, times)
    truth = true_window_means(np.arange(N_READS) * INTOFF)
    assert prediction.covered.all()
    np.testing.assert_allclose(prediction.omega, truth / truth.max(), atol=1e-3)
    assert prediction.needs_time_variable and prediction.amplitude > 0.3

    stable = tmp_path / "stable"
    constant = np.ones_like
    write_frames(stable, np.random.default_rng(1), transparency=constant, fwhm=constant, cadence=60)
    quiet = guider.predict_omega(guider.guider_series(stable), times)
    assert not quiet.needs_time_variable and quiet.amplitude < 0.01
    # No window covered said "no time-variable model needed" (amplitude NaN): the guider saw
    # nothing of the exposure. And NaN or out-of-range settings left every window uncovered.
    with pytest.raises(InputError, match="DATE-OBS: expected guider frames covering"):
        guider.predict_omega(series, times + 1 * u.day)
    for bad in ({"lag": np.nan}, {"lag": "5"}, {"row_phase": 5.0}, {"row_phase": np.nan},
                {"max_gap": -1.0}, {"max_gap": 0.0}):  # fmt: skip
        with pytest.raises(ValueError, match=f"{next(iter(bad))}: expected"):
            guider.predict_omega(series, times, **bad)
    with pytest.raises(ValueError, match="series: expected a GuiderSeries"):
        guider.predict_omega([series], times)


def test_window_averager_reproduces_the_frames_it_was_built_from():
    start = np.array([0.0, 20.0, 40.0, 60.0, 80.0])
    averager = WindowAverager(start, start + 15.0, start + 7.5)
    values = np.array([1.0, 0.7, 0.9, 0.8, 1.0])
    np.testing.assert_allclose(averager.matrix(start, start + 15.0) @ values, values, atol=1e-12)
    lo = np.linspace(-30.0, 90.0, 13)
    np.testing.assert_allclose(averager.matrix(lo, lo + 10.0) @ np.ones(5), 1.0, atol=1e-12)


def test_a_lag_is_the_same_as_later_read_times(tmp_path):
    """``lag`` is seconds added to the read times: each window moves whole (its end too)."""
    write_frames(tmp_path, np.random.default_rng(1), zp_noise=0.0)
    series = guider.guider_series(tmp_path)
    times = START + np.arange(N_READS) * INTOFF * u.s
    lagged = guider.predict_omega(series, times, lag=30.0)
    later = guider.predict_omega(series, times + 30.0 * u.s)
    np.testing.assert_allclose(lagged.window_end - lagged.window_start,
                               later.window_end - later.window_start)  # fmt: skip
    np.testing.assert_allclose(lagged.omega, later.omega, rtol=1e-9)
    assert lagged.amplitude == pytest.approx(later.amplitude, rel=1e-9)
    unlagged = guider.predict_omega(series, times)
    assert not np.allclose(lagged.omega, unlagged.omega, equal_nan=True)


def test_a_window_inside_or_at_the_edge_of_a_guider_dropout_is_not_covered():
    """No guider frame for 200 s: a window there, or reaching into it from either side, is not
    covered (a spline across the dropout is no guider data)."""
    from types import SimpleNamespace

    from astropy.time import Time

    from pyapred.guider.windows import covered_windows

    t0 = Time("2025-05-01T04:00:00", scale="tai")
    mid = np.r_[np.arange(0.0, 101.0, 10.0), np.arange(300.0, 401.0, 10.0)]
    series = SimpleNamespace(start=t0 + (mid - 2.5) * u.s, mid=t0 + mid * u.s,
                             exptime=np.full(mid.size, 5.0))  # fmt: skip
    lo = np.array([20.0, 105.0, 95.0, 295.0, 320.0])
    covered = covered_windows(series, t0, lo, lo + 10.0, max_gap=120.0)
    assert covered.tolist() == [True, False, False, False, True]
