"""Averaging the guider's flux-in-fiber over the read-difference windows of an exposure.

Omega element ``k`` is compared with the guider curve averaged over ``[t_k, t_{k+1}]``, the
window between reads ``k`` and ``k + 1`` (moved by ``row_phase`` of a read: the fiber's rows are
sampled after the read starts). :class:`WindowAverager` is the linear map from the guider
frames' values to those window means; :func:`predict_omega` applies it to a
:class:`~pyapred.guider.fiber_flux.GuiderSeries` and says whether the guider saw a change
larger than the paper's 3.5 % threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.time import Time

from .fiber_flux import GuiderSeries
from .timing import exposure_read_times, seconds_since

__all__ = [
    "PAPER_THRESHOLD",
    "GuiderPrediction",
    "WindowAverager",
    "check_window_options",
    "covered_windows",
    "predict_omega",
    "read_windows",
]

PAPER_THRESHOLD = 0.035  # amplitude above which the paper prefers the time-variable model


class WindowAverager:
    """Linear map from the guider frames' values to their curve's mean over any time windows.

    Each guider value is the mean of the sky over the frame's integration, not a point sample.
    The curve is therefore the cubic spline through the frame mid-times (constant beyond the
    first and last) whose mean over each frame's integration equals the frame's value
    (area-preserving, so a dip is not smoothed by the frames' own averaging). Being linear in
    the values, it also propagates their covariance exactly.

    Parameters
    ----------
    start, end, mid : ndarray, ``(n,)``
        Frame integration start, end and middle, s (any common origin); ``mid`` increasing.
    """

    def __init__(self, start: np.ndarray, end: np.ndarray, mid: np.ndarray) -> None:
        from scipy.interpolate import CubicSpline

        self.knots = mid
        n = mid.size
        if n > 1:
            # The cardinal basis: spline j interpolates the unit vector e_j at the knots.
            self._antiderivative = CubicSpline(mid, np.eye(n), axis=0).antiderivative()
        frame_means = self._means(start, end)
        self._to_knots = np.linalg.inv(frame_means)  # knot values from frame means

    def _integral(self, x: np.ndarray) -> np.ndarray:
        """``(len(x), n)``: integral from the first knot to ``x`` of each basis function."""
        n = self.knots.size
        if n == 1:
            return (x - self.knots[0])[:, None]
        inside = np.clip(x, self.knots[0], self.knots[-1])
        out = self._antiderivative(inside)
        out[:, 0] += np.minimum(x - self.knots[0], 0.0)  # constant e_0 before the first knot
        out[:, -1] += np.maximum(x - self.knots[-1], 0.0)  # constant e_n after the last
        return out

    def _means(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return (self._integral(hi) - self._integral(lo)) / (hi - lo)[:, None]

    def matrix(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """``(K, n)`` matrix ``A``: ``A @ frame_values`` = the curve's mean over each window."""
        return self._means(lo, hi) @ self._to_knots

    @classmethod
    def for_series(cls, series: GuiderSeries, t0: Time) -> WindowAverager:
        """The averager of a guider series, times in TAI seconds since ``t0``.

        Parameters
        ----------
        series : GuiderSeries
        t0 : astropy.time.Time
            Origin of the windows given to :meth:`matrix`.

        Returns
        -------
        WindowAverager
        """
        start = seconds_since(series.start, t0)
        return cls(start, start + series.exptime, seconds_since(series.mid, t0))


@dataclass(frozen=True)
class GuiderPrediction:
    """The guider's flux-in-fiber averaged over each read-difference window.

    Attributes
    ----------
    omega : ndarray, ``(K,)``
        Predicted omega, normalised to maximum 1 over the covered windows; NaN where the guider
        does not cover the window.
    omega_cov : ndarray, ``(K, K)``
        Its covariance from the transparency errors.
    covered : ndarray of bool, ``(K,)``
    window_start, window_end : ndarray, ``(K,)``
        Windows in TAI seconds since ``t0`` (lag and row phase applied).
    t0 : astropy.time.Time
        The first read time (TAI).
    amplitude : float
        ``1 - min/max`` of the covered prediction: the variability the guider sees.
    needs_time_variable : bool
        ``amplitude`` above the paper's 3.5 % threshold.
    """

    omega: np.ndarray
    omega_cov: np.ndarray
    covered: np.ndarray
    window_start: np.ndarray
    window_end: np.ndarray
    t0: Time
    amplitude: float
    needs_time_variable: bool

    def __repr__(self) -> str:
        """Each field in a few words (:func:`~pyapred.solver.reprs.summary_repr`), never whole
        arrays."""
        from ..solver.reprs import summary_repr

        return summary_repr(self)


def read_windows(read_times: Time, row_phase: float = 0.5) -> tuple[Time, np.ndarray, np.ndarray]:
    """The read-difference windows of an exposure, in TAI seconds since its first read.

    Parameters
    ----------
    read_times : astropy.time.Time, ``(n_reads,)``
        Read start times.
    row_phase : float, optional
        Fraction of the median read period added to every time (when the fiber's rows are
        sampled; 0.5: the middle of the slit).

    Returns
    -------
    t0 : astropy.time.Time
        The first read time.
    start, end : ndarray, ``(n_reads - 1,)``
        Window ``k`` runs from read ``k`` to read ``k + 1``, s since ``t0``.
    """
    t0 = read_times[0]
    seconds = seconds_since(read_times, t0)
    seconds = seconds + row_phase * np.median(np.diff(seconds))
    return t0, seconds[:-1], seconds[1:]


def covered_windows(
    series: GuiderSeries, t0: Time, lo: np.ndarray, hi: np.ndarray, max_gap: float
) -> np.ndarray:
    """Which windows lie inside the guider's span with no gap longer than ``max_gap`` s.

    Parameters
    ----------
    series : GuiderSeries
    t0 : astropy.time.Time
        Origin of ``lo`` and ``hi``.
    lo, hi : ndarray, ``(K,)``
        Window start and end, TAI s since ``t0``.
    max_gap : float
        Longest allowed interval between neighbouring frames' mid-times, s.

    Returns
    -------
    ndarray of bool, ``(K,)``
    """
    start = seconds_since(series.start, t0)
    end = start + series.exptime
    mid = seconds_since(series.mid, t0)
    covered = (lo >= start.min()) & (hi <= end.max())
    if mid.size > 1:
        gaps = np.diff(mid)
        a = np.clip(np.searchsorted(mid, lo, side="right") - 1, 0, mid.size - 2)
        b = np.clip(np.searchsorted(mid, hi, side="left"), 1, mid.size - 1)
        for k in np.flatnonzero(covered):
            covered[k] = gaps[a[k] : b[k]].max(initial=0.0) <= max_gap
    return covered


def check_window_options(*, lag: float, row_phase: float, max_gap: float) -> None:
    """Raise ValueError, naming the argument, unless ``lag`` is a finite number of seconds,
    ``row_phase`` a fraction of a read period in [0, 1] and ``max_gap`` a finite time > 0 (s):
    a NaN or a negative gap left every window uncovered, which read as "no change seen"."""
    _check_number("lag", lag, math.isfinite, "a finite number of seconds")
    _check_number(
        "row_phase", row_phase, lambda v: 0.0 <= v <= 1.0, "a fraction of a read in [0, 1]"
    )
    _check_number("max_gap", max_gap, lambda v: 0.0 < v < math.inf, "a finite time > 0 (s)")


def _check_number(name: str, value, ok, expected: str) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is a real number for which ``ok``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, (bool, str)) or not ok(number):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")


def predict_omega(
    series: GuiderSeries,
    read_times,
    *,
    lag: float = 0.0,
    row_phase: float = 0.5,
    max_gap: float = 120.0,
) -> GuiderPrediction:
    """Average the guider's flux-in-fiber over each read-difference window of an exposure.

    Use it before fitting: ``needs_time_variable`` says whether the guider saw a change larger
    than the paper's 3.5 % threshold during the exposure.

    Parameters
    ----------
    series : GuiderSeries
    read_times : astropy.time.Time, header or RawExposure
        See :func:`exposure_read_times`.
    lag : float, optional
        Seconds added to the read times.
    row_phase : float, optional
        Fraction of a read period between a read's start and the sampling of the fiber's rows
        (0.5: the middle of the slit).
    max_gap : float, optional
        A window whose neighbouring guider frames are further apart than this (s) is not covered.

    Returns
    -------
    GuiderPrediction

    Raises
    ------
    pyapred.errors.InputError
        No read-difference window is covered by the guider frames (no time overlap): the guider
        says nothing about this exposure.
    ValueError
        ``series`` is not a GuiderSeries, or ``lag``, ``row_phase``, ``max_gap`` out of range.
    """
    from ..errors import InputError

    if not isinstance(series, GuiderSeries):
        raise ValueError(
            f"series: expected a GuiderSeries (guider_series), got {type(series).__name__}"
        )
    check_window_options(lag=lag, row_phase=row_phase, max_gap=max_gap)
    times, _ = exposure_read_times(read_times)
    t0, lo, hi = read_windows(times, row_phase)
    lo, hi = lo + lag, hi + lag
    covered = covered_windows(series, t0, lo, hi, max_gap)
    if not covered.any():
        raise InputError(
            series.paths[0][0] if series.paths else "guider frames",
            "DATE-OBS",
            f"guider frames covering the exposure ({times[0].isot} to {times[-1].isot} "
            f"{times.scale.upper()}, lag {lag:g} s)",
            f"frames from {series.start[0].isot} to {series.start[-1].isot} "
            f"{series.start.scale.upper()} with gaps over {max_gap:g} s",
        )
    matrix = WindowAverager.for_series(series, t0).matrix(lo, hi)
    omega = matrix @ series.flux
    cov = matrix @ (series.flux_err[:, None] ** 2 * matrix.T)
    peak = omega[covered].max() if covered.any() else math.nan
    omega, cov = omega / peak, cov / peak**2
    omega[~covered] = np.nan
    amplitude = 1.0 - np.min(omega[covered]) if covered.any() else math.nan
    return GuiderPrediction(
        omega=omega,
        omega_cov=cov,
        covered=covered,
        window_start=lo,
        window_end=hi,
        t0=t0,
        amplitude=float(amplitude),
        needs_time_variable=bool(amplitude > PAPER_THRESHOLD),
    )
