"""Comparison of fitted omega with the guider's prediction, with an optional time-lag fit.

:func:`compare` selects the guider frames of the exposure (its configuration, its time span),
averages their flux-in-fiber over each read-difference window, fits ``omega ~ scale * guider``
per fiber, optionally on a grid of time lags, and reports the agreement and the clock verdict as
a :class:`GuiderComparison` (which can draw itself). A positive ``lag`` means the exposure's read
times must be moved later to line up with the guider.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from astropy import units as u
from astropy.time import Time

from ..errors import InputError
from ..io.atomic import atomic_path
from ..traces import fiber_id
from .fiber_flux import GuiderSeries, chromatic_prediction, guider_series
from .frames import GuiderFrames, as_guider_frames, header_number
from .omega import select_omega
from .timing import exposure_read_times, seconds_since
from .windows import (
    WindowAverager,
    _check_number,
    check_window_options,
    covered_windows,
    read_windows,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["SELECT_PAD", "GuiderComparison", "compare"]

SELECT_PAD = 90.0  # s of guider frames kept beyond the exposure (and the lag range)
#: The chi2 rise, per fiber, that the lag profile must show across the search range for the
#: guider to constrain the lag at all. Under a steady sky the profile is noise: its range was
#: 8-22 for one fiber in 8 simulations (a false clock verdict in 28 of 40 before this test), and
#: it grows with the fibers, which share the guider's noise; a passing cloud gave 1.4e5.
LAG_EVIDENCE = 50.0
#: Values whose spread is below this fraction of their size are constant (to rounding): a
#: seeing-only curve under steady seeing, a spline through equal values, gave a correlation of
#: 0.45 or -0.10 from its last bits.
CONSTANT_RTOL = 1e-12
#: The most steps of the lag grid (``2 lag_range / lag_step``): 240 at the defaults.
MAX_LAG_STEPS = 100_000


@dataclass(frozen=True)
class GuiderComparison:
    """Fitted omega against the guider's flux-in-fiber prediction.

    Per-fiber arrays have shape ``(F,)``; per-window arrays ``(K,)``.

    Attributes
    ----------
    fibers : ndarray of int
        The product's 0-based fiber indices (``300 - fiberId``), else rows of the input omega.
    omega, omega_err : ndarray, ``(F, K)``
        The fitted omega and its standard errors (NaN where unused).
    used : ndarray of bool, ``(F, K)``
        Elements in the fit: finite, not the fixed reference, covered by the guider.
    guider, guider_err : ndarray, ``(K,)``
        The guider prediction at the best lag (normalised, maximum 1 over covered windows).
    frame_flux : ndarray, ``(n_frames,)``
        The guider frames' flux-in-fiber values on the same normalisation.
    window_start, window_end : ndarray, ``(K,)``
        Windows in TAI s since ``t0``, lag applied.
    t0 : astropy.time.Time
    scale, scale_err : ndarray
        Least-squares factor with ``omega ~ scale * guider``, weighted by omega's covariance plus
        the guider's; the error includes that of the guider's normalisation (its peak window).
        That peak is the largest of noisy values, so where the guider's noise rules the scale
        is high by 0.4-1.3 of its error (simulations at 1-5 % zero-point noise per star), the
        same factor for every fiber (ratios of fibers' scales are not biased by it).
    correlation : ndarray
        Pearson correlation of omega and the guider over the used elements; NaN where it is
        undefined: fewer than 3 used elements, or omega or the guider constant over them (a
        steady sky without guider noise).
    chi2, dof, chi2_dof, p_value : ndarray
        Of the scaled fit; ``dof = n_used - 1``.
    residual_rms : ndarray
        RMS of ``omega - scale * guider``.
    explained_variance : ndarray
        ``1 - var(residual) / var(omega)``: the part of omega's variance the guider explains
        (NaN where omega is constant over the used elements).
    disagree : ndarray of bool
        ``p_value < alpha``: the two differ beyond their errors.
    lag, lag_err : float
        Best time lag (s; 0 and NaN when not fitted) and its 1-sigma error (where the summed
        chi2 rises by ``max(1, chi2/dof)`` per fiber); inf when the lag is not constrained
        (flag ``lag-unconstrained``). Where the profile shows no evidence at all (a steady sky,
        ``LAG_EVIDENCE``) the lag is not applied: 0.
    lag_grid, lag_chi2 : ndarray or None
        Total chi2 over the lag grid.
    tai_minus_utc : float
        Leap seconds at the exposure, s.
    clock : str
        ``"not-fitted"``, ``"aligned"`` (lag ~ 0), ``"date-obs-is-tai"`` (lag ~ -(TAI-UTC): the
        exposure's times were read as UTC but are TAI), ``"date-obs-is-utc"`` (lag ~
        +(TAI-UTC)), ``"unexplained"`` or ``"undetermined"``.
    series : GuiderSeries
        The guider frames used.
    flags : tuple of str
        ``"disagree"``, ``"frames-dropped"``, ``"partial-coverage"``, ``"seeing-only"``,
        ``"omega-incomplete"``, ``"fit-undetermined"``, ``"lag-unconstrained"``,
        ``"clock-offset"``, ``"lag-at-edge"``.
    dropped : tuple of (str, str)
        Guider files left out, with the reason.
    gamma, gamma_err : ndarray, ``(F, K)``, or None
        With a chromatic fit (``pyapred fit --chromatic``): its slope ``gamma`` (omega at
        wavelength coordinate ``c`` is ``omega (1 + gamma c)``) and errors, NaN where unused.
    gamma_guider : ndarray, ``(K,)``, or None
        The guider's prediction of gamma from its seeing (:func:`chromatic_prediction`).
    gamma_chi2, gamma_dof, gamma_p_value : ndarray, ``(F,)``, or None
        ``r^T C^-1 r`` with ``r = gamma - gamma_guider`` and ``C`` gamma's covariance, over the
        used elements (free, covered by the guider), their number, and its probability when the
        prediction is right (the elements share the reference read's errors: their marginal
        z-scores are correlated, so only the whole covariance gives a chi2 test).
    """

    fibers: np.ndarray
    omega: np.ndarray
    omega_err: np.ndarray
    used: np.ndarray
    guider: np.ndarray
    guider_err: np.ndarray
    frame_flux: np.ndarray
    window_start: np.ndarray
    window_end: np.ndarray
    t0: Time
    scale: np.ndarray
    scale_err: np.ndarray
    correlation: np.ndarray
    chi2: np.ndarray
    dof: np.ndarray
    chi2_dof: np.ndarray
    p_value: np.ndarray
    residual_rms: np.ndarray
    explained_variance: np.ndarray
    disagree: np.ndarray
    lag: float
    lag_err: float
    lag_grid: np.ndarray | None
    lag_chi2: np.ndarray | None
    tai_minus_utc: float
    clock: str
    series: GuiderSeries
    flags: tuple
    dropped: tuple
    gamma: np.ndarray | None = None
    gamma_err: np.ndarray | None = None
    gamma_guider: np.ndarray | None = None
    gamma_chi2: np.ndarray | None = None
    gamma_dof: np.ndarray | None = None
    gamma_p_value: np.ndarray | None = None

    def __repr__(self) -> str:
        """Each field in a few words (:func:`~pyapred.solver.reprs.summary_repr`), never whole
        arrays."""
        from ..solver.reprs import summary_repr

        return summary_repr(self)

    def to_dict(self) -> dict:
        """A JSON-ready summary (no per-window arrays except the guider curve)."""

        def clean(values):
            return [None if not np.isfinite(v) else float(v) for v in np.ravel(values)]

        chromatic = {}
        if self.gamma_guider is not None:
            residual = self.gamma - self.gamma_guider[None]
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                # A fiber without gamma elements: NaN (null in the JSON), not "Mean of empty
                # slice" on stderr.
                warnings.simplefilter("ignore", RuntimeWarning)
                rms = np.sqrt(np.nanmean(residual**2, axis=1))
                chi2_dof = self.gamma_chi2 / self.gamma_dof
            chromatic = {
                "gamma_guider": clean(self.gamma_guider),
                "gamma_residual_rms": clean(rms),
                "gamma_chi2_dof": clean(chi2_dof),
                "gamma_p_value": clean(self.gamma_p_value),
            }
        return {
            "fiber_ids": [int(fiber_id(f)) for f in self.fibers],
            "t0_tai": self.t0.tai.isot,
            "lag_s": float(self.lag),
            "lag_err_s": None if not np.isfinite(self.lag_err) else float(self.lag_err),
            "tai_minus_utc_s": self.tai_minus_utc,
            "clock": self.clock,
            "scale": clean(self.scale),
            "scale_err": clean(self.scale_err),
            "correlation": clean(self.correlation),
            "chi2_dof": clean(self.chi2_dof),
            "p_value": clean(self.p_value),
            "residual_rms": clean(self.residual_rms),
            "explained_variance": clean(self.explained_variance),
            "disagree": [bool(d) for d in self.disagree],
            "guider": clean(self.guider),
            "n_guider_frames": len(self.series),
            "flags": list(self.flags),
            "dropped": [{"path": p, "reason": r} for p, r in self.dropped],
            **chromatic,
        }

    def plot(self, path: str | os.PathLike | None = None, *, max_fibers: int = 10) -> Figure:
        """Omega with error bars against the guider curve, the guider's transparency and seeing,
        and the residuals, over read time.

        Parameters
        ----------
        path : str or os.PathLike, optional
            Save the figure there (PNG; written to a temporary file, then renamed).
        max_fibers : int, optional
            Draw at most this many fibers (the best-measured ones).

        Returns
        -------
        matplotlib.figure.Figure
        """
        from matplotlib.figure import Figure  # no pyplot: no global state, any backend

        chromatic = self.gamma_guider is not None
        fig = Figure(figsize=(8, 11 if chromatic else 8.5), layout="tight")
        ratios = [1, 1.6, 1] + ([1.3] if chromatic else [])
        axes = fig.subplots(len(ratios), 1, sharex=True, gridspec_kw={"height_ratios": ratios})
        top, middle, bottom = axes[:3]
        guide_t = seconds_since(self.series.mid, self.t0)
        top.plot(guide_t, self.series.transparency, "o-", color="tab:red", ms=3)
        top.set_ylabel("transparency", color="tab:red")
        seeing_axis = top.twinx()
        seeing_axis.plot(guide_t, self.series.fwhm, "s-", color="tab:blue", ms=3)
        seeing_axis.set_ylabel("FWHM [arcsec]", color="tab:blue")
        top.set_title(
            f"guider vs omega: lag {self.lag:+.1f} s"
            + (f" +/- {self.lag_err:.1f} s" if np.isfinite(self.lag_err) else "")
            + f", clock: {self.clock}",
            fontsize=10,
        )
        mid = 0.5 * (self.window_start + self.window_end)
        half = 0.5 * (self.window_end - self.window_start)
        shown = np.argsort(np.nansum(self.omega_err**2, axis=1))[:max_fibers]
        middle.step(
            np.append(self.window_start, self.window_end[-1]),
            np.append(self.guider, self.guider[-1]),
            where="post",
            color="k",
            lw=2,
            label="guider flux in fiber",
        )
        middle.plot(guide_t, self.frame_flux, ".", color="0.5", label="guider frames")
        for n, f in enumerate(shown):
            use = self.used[f]
            # One colour per fiber in both panels, whether or not its middle panel is drawn (the
            # two colour cycles drifted apart after a fiber without one).
            color = f"C{n % 10}"
            residual = (self.omega[f] - self.scale[f] * self.guider) / self.omega_err[f]
            bottom.plot(mid[use], residual[use], "o", ms=3, color=color)
            if not self.scale[f] > 0:  # omega / scale means nothing (flag fit-undetermined)
                continue
            scaled = self.omega[f] / self.scale[f]
            middle.errorbar(
                mid[use],
                scaled[use],
                xerr=half[use],
                yerr=self.omega_err[f][use] / self.scale[f],
                fmt="o",
                ms=3,
                lw=0.8,
                color=color,
                label=f"fiberId {int(fiber_id(self.fibers[f]))}" if n < 6 else None,
            )
        middle.set_ylabel("omega / scale")
        middle.legend(fontsize=8, loc="best")
        bottom.axhline(0, color="k", lw=1)
        bottom.set_ylabel("(omega - scale g) / sigma")
        if chromatic:
            self._plot_gamma(axes[3], mid, half, shown)
        axes[-1].set_xlabel(f"TAI seconds since first read {self.t0.tai.isot} (+ lag)")
        if path is not None:
            with atomic_path(path, overwrite=True, keep_suffix=True) as tmp:
                fig.savefig(tmp, dpi=110, format="png")
        return fig

    def _plot_gamma(self, ax, mid, half, shown) -> None:
        """The chromatic slope of the shown fibers against the guider's prediction."""
        ax.step(
            np.append(self.window_start, self.window_end[-1]),
            np.append(self.gamma_guider, self.gamma_guider[-1]),
            where="post", color="k", lw=2, label="guider prediction (seeing)",
        )  # fmt: skip
        for n, f in enumerate(shown):  # each fiber in the colour of the panels above
            ok = np.isfinite(self.gamma[f])
            chi2_dof = self.gamma_chi2[f] / max(int(self.gamma_dof[f]), 1)
            ax.errorbar(mid[ok], self.gamma[f][ok], xerr=half[ok], yerr=self.gamma_err[f][ok],
                        fmt="o", ms=3, lw=0.8, color=f"C{n % 10}",
                        label=f"fiberId {int(fiber_id(self.fibers[f]))}: chi2/dof "
                        f"{chi2_dof:.2f}")  # fmt: skip
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_ylabel("gamma (red - blue) / 2")
        ax.legend(fontsize=7, loc="best")


def _fit_scale(omega, cov, used, g, g_cov):
    """Weighted least squares of ``omega ~ a g`` per fiber, in batch.

    Unused elements are neutralised (identity covariance, zero residual) so that all fibers
    share one batched solve. The guider's covariance enters as ``a**2 g_cov``, with ``a`` from a
    first pass without it.

    Returns
    -------
    a, a_var, chi2 : ndarray, ``(F,)``
    da_dg : ndarray, ``(F, K)``
        Derivative of ``a`` with respect to the guider curve (0 on unused elements).
    """
    both = used[:, :, None] & used[:, None, :]
    w = np.where(used, omega, 0.0)
    gm = np.where(used, g[None], 0.0)

    def solve(total):
        c = np.where(both, total, np.eye(omega.shape[1]))

        def apply(rhs):
            try:
                return np.linalg.solve(c, rhs)
            except np.linalg.LinAlgError:  # a singular covariance: least-squares inverse
                return np.linalg.pinv(c, hermitian=True) @ rhs

        return apply

    def weighted(total):
        solved = solve(total)(np.stack([w, gm], axis=-1))  # C^-1 omega, C^-1 g
        gwg = np.einsum("fk,fk->f", gm, solved[..., 1])
        with np.errstate(invalid="ignore", divide="ignore"):
            a = np.einsum("fk,fk->f", gm, solved[..., 0]) / gwg
        return a, gwg, solved

    a, gwg, solved = weighted(cov)
    if np.any(g_cov):
        a, gwg, solved = weighted(cov + (a**2)[:, None, None] * g_cov[None])
    c_w, c_g = solved[..., 0], solved[..., 1]
    chi2 = np.einsum("fk,fk->f", w - a[:, None] * gm, c_w - a[:, None] * c_g)
    with np.errstate(invalid="ignore", divide="ignore"):
        da_dg = (c_w - 2 * a[:, None] * c_g) / gwg[:, None]
        return a, 1.0 / gwg, chi2, da_dg


def compare(
    omega_fit_or_product,
    guider_frames,
    *,
    read_times=None,
    fibers=None,
    group: str | None = None,
    fit_lag: bool = False,
    lag_range: float = 60.0,
    lag_step: float = 0.5,
    telescope: str | None = None,
    diameter: float | None = None,
    seeing: str = "best",
    config_id: int | None = None,
    timesys: str | None = None,
    row_phase: float = 0.5,
    max_gap: float = 120.0,
    alpha: float = 1e-3,
    wavelength: float | None = None,
) -> GuiderComparison:
    """Compare fitted omega with the guider's flux-in-fiber prediction.

    Parameters
    ----------
    omega_fit_or_product : OmegaFit, (omega, omega_cov), Mapping, or product path
        ``omega`` ``(K,)`` or ``(F, K)`` with covariance ``(K, K)`` or ``(F, K, K)``; the fixed
        element (covariance row 0) and NaN elements are left out of the fit.
    guider_frames : GuiderSeries, GuiderFrames, list of GuiderFrame, path, directory or glob
    read_times : astropy.time.Time, header or RawExposure, optional
        The exposure's ``n_reads = K + 1`` read times (see :func:`exposure_read_times`).
        Required unless the product carries them.
    fibers : sequence of int, optional
        Fibers to compare: a product's 0-based fiber indices (``300 - fiberId``), else rows of
        omega. Default: every fiber with a fitted omega (at least 3 elements of variance > 0).
    group : str, optional
        A product's fiber group (chip name or ``"joint"``); see
        :func:`~pyapred.guider.omega.read_product_omega`.
    fit_lag : bool, optional
        Fit a time lag on a grid over ``[-lag_range, lag_range]`` s, step ``lag_step``, refined.
    telescope, diameter, seeing
        See :func:`guider_series`.
    config_id : int, optional
        The exposure's ``CONFIGID`` (default from its header); guider frames of another
        configuration are dropped.
    timesys : str, optional
        Override the exposure header's ``TIMESYS``.
    row_phase, max_gap
        See :func:`predict_omega`.
    alpha : float, optional
        p-value below which a fiber is flagged as disagreeing.
    wavelength : float, optional
        Wavelength (micron) of the flux-in-fiber prediction of omega, see
        :func:`guider_series`. With a chromatic fit (``gamma`` in the input) the guider's
        prediction of gamma is made and compared too (:func:`chromatic_prediction`): the
        ``gamma*`` fields.

    Returns
    -------
    GuiderComparison

    Raises
    ------
    pyapred.errors.InputError
        No usable guider frame, no frame of the exposure's configuration, or no time overlap.
    ValueError
        Bad arguments (shapes, missing read times).
    """
    from scipy import optimize, special

    check_window_options(lag=0.0, row_phase=row_phase, max_gap=max_gap)
    _check_number("lag_range", lag_range, lambda v: 0.0 <= v < math.inf, "a finite time >= 0 (s)")
    _check_number("lag_step", lag_step, lambda v: 0.0 < v < math.inf, "a finite time > 0 (s)")
    if fit_lag and 2 * lag_range / lag_step > MAX_LAG_STEPS:  # 1e-9 s steps: 894 GiB of grid
        raise ValueError(
            f"lag_step: expected at most {MAX_LAG_STEPS} steps over +-lag_range ({lag_range:g} "
            f"s), got a step of {lag_step:g} s"
        )
    _check_number("alpha", alpha, lambda v: 0.0 < v < 1.0, "a probability between 0 and 1")
    if isinstance(guider_frames, GuiderSeries):
        # A series has its frames chosen and its flux modelled already: these would be ignored.
        given = {
            "telescope": telescope,
            "diameter": diameter,
            "config_id": config_id,
            "wavelength": wavelength,
            "seeing": None if seeing == "best" else seeing,
        }
        ignored = [name for name, value in given.items() if value is not None]
        if ignored:
            raise ValueError(
                f"{', '.join(ignored)}: expected none with a GuiderSeries (they choose the frames "
                "and model the flux of guider_series): pass the frames, or the series alone"
            )
    data = select_omega(omega_fit_or_product, fibers, group)
    source_times = read_times if read_times is not None else data.read_times
    # The omega source's header where it has no read times, or where a time scale is asked
    # for: that scale is the header's (a product's read times are in TAI already, and
    # ignored it).
    if read_times is None and data.header and (source_times is None or timesys is not None):
        source_times = data.header
    if source_times is None:
        raise ValueError("read_times: required (the omega source carries no read times)")
    n_diff = data.omega.shape[1]
    times, header = exposure_read_times(source_times, n_reads=n_diff + 1, timesys=timesys)
    if times.size != n_diff + 1:
        raise ValueError(f"read_times: expected {n_diff + 1} reads for omega of length {n_diff}")
    if config_id is None and header is not None and header_number(header.get("CONFIGID")) > 0:
        config_id = int(header["CONFIGID"])

    # The product's telescope (its fiber diameter) unless one is given; the frames' names only
    # for an omega that does not say. Frames of the other site are refused.
    series = _select_series(
        guider_frames, times, config_id, telescope or data.telescope, diameter, seeing,
        lag_range if fit_lag else 0, wavelength, data.telescope,
    )  # fmt: skip
    flags = []
    if series.dropped:
        flags.append("frames-dropped")
    if not series.has_photometry:
        flags.append("seeing-only")

    t0, lo0, hi0 = read_windows(times, row_phase)
    covered = covered_windows(series, t0, lo0, hi0, max_gap)
    if not covered.any():
        raise InputError(
            series.paths[0][0],
            "DATE-OBS",
            f"guider frames covering the exposure ({times[0].isot} to {times[-1].isot} TAI)",
            f"frames from {series.start[0].isot} to {(series.start[-1]).isot} TAI with gaps",
        )
    diag = np.diagonal(data.cov, axis1=1, axis2=2)
    has_data = np.isfinite(data.omega) & (diag > 0)  # the fixed element has variance 0
    if (~has_data & (diag != 0)).any():  # NaN elements or variances, left out: said so
        flags.append("omega-incomplete")
    averager = WindowAverager.for_series(series, t0)
    flux_var = series.flux_err**2

    def evaluate(lag, used):
        matrix = averager.matrix(lo0 + lag, hi0 + lag)
        g = matrix @ series.flux
        g_cov = matrix @ (flux_var[:, None] * matrix.T)
        return (g, g_cov, *_fit_scale(data.omega, data.cov, used, g, g_cov))

    # The lag search compares chi2 over one fixed set of elements: those covered at lag 0.
    used = has_data & covered[None]
    n_used = used.sum(axis=1)

    def total_chi2(lag):
        return float(np.nansum(evaluate(lag, used)[4]))

    lag, lag_err, grid, grid_chi2, clock = 0.0, math.nan, None, None, "not-fitted"
    tai_utc = _tai_minus_utc(times[0])
    if fit_lag:
        grid = np.arange(-lag_range, lag_range + lag_step / 2, lag_step)
        grid_chi2 = np.array([total_chi2(x) for x in grid])
        best = int(np.nanargmin(grid_chi2))
        if best in (0, grid.size - 1):
            flags.append("lag-at-edge")
        lo_b, hi_b = grid[max(best - 1, 0)], grid[min(best + 1, grid.size - 1)]
        refined = optimize.minimize_scalar(
            total_chi2, bounds=(lo_b, hi_b), method="bounded", options={"xatol": 1e-3}
        )
        lag, chi2_min = (
            (refined.x, refined.fun)
            if refined.fun <= grid_chi2[best]
            else (grid[best], grid_chi2[best])
        )
        total_dof = max(int(np.sum(n_used - 1) - 1), 1)
        inflation = max(1.0, chi2_min / total_dof)
        # The fibers' chi2 are summed, but they share the guider curve and its noise: counted
        # as independent, the error shrank as 1 / sqrt(fibers) (17 times too small for 300
        # where the guider's noise rules). The error is therefore where the sum rises by one
        # per fitted fiber, the error of one fiber's lag: right where the guider's noise
        # rules, too large by up to sqrt(fibers) where omega's does.
        n_fibers = max(int(np.count_nonzero(n_used > 1)), 1)
        threshold = chi2_min + n_fibers * inflation
        if np.nanmax(grid_chi2) - chi2_min < LAG_EVIDENCE * n_fibers * inflation:
            # A steady sky: the profile is noise, its minimum anywhere. Not applied: it moved
            # the windows to that minimum, where the clock as given had them right.
            lag, lag_err = 0.0, math.inf
        else:
            # Open on one side (an offset beyond the range): applied, the nearest the grid
            # gets, and flagged.
            lag_err = _lag_error(total_chi2, grid, grid_chi2, lag, threshold, optimize)
        clock = _clock_verdict(lag, lag_err, tai_utc)
        if not np.isfinite(lag_err):
            flags.append("lag-unconstrained")
        if clock in ("date-obs-is-tai", "date-obs-is-utc", "unexplained"):
            flags.append("clock-offset")

    if lag != 0.0:
        covered = covered_windows(series, t0, lo0 + lag, hi0 + lag, max_gap)
        used = has_data & covered[None]
    if not covered.all():
        flags.append("partial-coverage")
    g, g_cov, a, a_var, chi2, da_dg = evaluate(lag, used)
    # The guider curve is normalised by its peak window j: scale = a * g[j]. Its error adds the
    # peak's own uncertainty and its correlation with a.
    j = int(np.argmax(np.where(covered, g, -np.inf)))
    peak = g[j]
    scale = a * peak
    scale_var = peak**2 * a_var + a**2 * g_cov[j, j] + 2 * a * peak * (da_dg @ g_cov[:, j])
    dof = used.sum(axis=1) - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        chi2_dof = chi2 / dof
        p_value = np.where(dof > 0, special.chdtrc(np.maximum(dof, 1), chi2), np.nan)
    omega = np.where(used, data.omega, np.nan)
    omega_err = np.sqrt(np.where(used, diag, np.nan))
    residual = omega - a[:, None] * g[None]
    correlation = np.array([_pearson(o[ok], g[ok]) for o, ok in zip(omega, used, strict=True)])
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a fiber without used windows: NaN
        residual_rms = np.sqrt(np.nanmean(np.where(used, residual**2, np.nan), axis=1))
        spread = np.nanvar(omega, axis=1)
        level = np.nanmax(np.abs(omega), axis=1, initial=0.0)
        explained = np.where(spread > (CONSTANT_RTOL * level) ** 2,
                             1.0 - np.nanvar(residual, axis=1) / spread, np.nan)  # fmt: skip
    disagree = np.nan_to_num(p_value, nan=1.0) < alpha
    if disagree.any():
        flags.append("disagree")
    # A fiber with elements to fit but no finite scale or p-value (omega values near the float
    # range overflow the solve; one covered window alone, dof 0), or a scale not above 0 (an
    # omega of zeros, or one that falls as the guider's flux rises: a damaged product): neither
    # agreeing nor disagreeing, said so.
    with np.errstate(invalid="ignore"):
        determined = np.isfinite(p_value) & (scale > 0) & (scale < np.inf)
    if (has_data.any(axis=1) & ~determined).any():  # covered or not: a NaN scale is said so
        flags.append("fit-undetermined")
    chromatic = {}
    if data.gamma is not None:
        chromatic = _gamma_comparison(data, series, averager.matrix(lo0 + lag, hi0 + lag), covered,
                                      special)  # fmt: skip
    t_lo, t_hi = lo0 + lag, hi0 + lag
    return GuiderComparison(
        fibers=data.fibers,
        omega=omega,
        omega_err=omega_err,
        used=used,
        guider=np.where(covered, g / peak, np.nan),
        guider_err=np.where(covered, np.sqrt(np.diag(g_cov)) / peak, np.nan),
        frame_flux=series.flux / peak,
        window_start=t_lo,
        window_end=t_hi,
        t0=t0,
        scale=scale,
        scale_err=np.sqrt(np.maximum(scale_var, 0.0)),
        correlation=correlation,
        chi2=chi2,
        dof=dof,
        chi2_dof=chi2_dof,
        p_value=p_value,
        residual_rms=residual_rms,
        explained_variance=explained,
        disagree=disagree,
        lag=float(lag),
        lag_err=float(lag_err),
        lag_grid=grid,
        lag_chi2=grid_chi2,
        tai_minus_utc=tai_utc,
        clock=clock,
        series=series,
        flags=tuple(flags),
        dropped=series.dropped,
        **chromatic,
    )


def _gamma_comparison(data, series, matrix, covered, special) -> dict:
    """The fitted chromatic slope against the guider's prediction (GuiderComparison fields)."""
    if data.span is None:
        raise ValueError(
            "gamma: the chromatic fit's wavelength span is needed to predict it (a product's "
            "coordinate_span_um, or 'span' in a mapping)"
        )
    diag = np.diagonal(data.cov, axis1=1, axis2=2)
    # The reference read: omega fixed to 1 with variance 0 (one for all fibers in a product).
    fixed = np.flatnonzero((diag[0] == 0) & (data.omega[0] == 1.0))
    if not fixed.size:
        raise ValueError("omega: no element fixed to 1 (with variance 0) to predict gamma against")
    _, predicted = chromatic_prediction(series, matrix, data.span, int(fixed[0]))
    predicted = np.where(covered, predicted, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        error = np.sqrt(np.maximum(np.diagonal(data.gamma_cov, axis1=1, axis2=2), 0.0))
        used = np.isfinite(data.gamma) & (error > 0) & covered[None]
        chi2 = np.zeros(len(data.gamma))
        for f, use in enumerate(used):
            resid = (data.gamma[f] - predicted)[use]
            sub = data.gamma_cov[f][np.ix_(use, use)]
            chi2[f] = float(resid @ np.linalg.solve(sub, resid)) if use.any() else np.nan
        dof = used.sum(axis=1)
        p_value = np.where(dof > 0, special.chdtrc(np.maximum(dof, 1), chi2), np.nan)
    return {
        "gamma": np.where(used, data.gamma, np.nan),
        "gamma_err": np.where(used, error, np.nan),
        "gamma_guider": predicted,
        "gamma_chi2": chi2,
        "gamma_dof": dof,
        "gamma_p_value": p_value,
    }


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    def constant(v):
        return not np.std(v) > CONSTANT_RTOL * np.max(np.abs(v))

    if x.size < 3 or constant(x) or constant(y):
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def _lag_error(chi2_of, grid, grid_chi2, lag, threshold, optimize) -> float:
    """Half the width of the ``chi2 <= threshold`` interval around ``lag`` (inf if open)."""
    bounds = []
    for side in (-1, 1):
        beyond = grid[(np.sign(grid - lag) == side) & (grid_chi2 > threshold)]
        if beyond.size == 0:
            return math.inf
        edge = beyond[np.argmin(np.abs(beyond - lag))]
        bounds.append(optimize.brentq(lambda x: chi2_of(x) - threshold, *sorted((lag, edge))))
    return 0.5 * (bounds[1] - bounds[0])


def _clock_verdict(lag: float, lag_err: float, tai_minus_utc: float) -> str:
    """Which clock hypothesis the fitted lag supports."""
    if not np.isfinite(lag_err):
        return "undetermined"
    tolerance = max(3.0 * lag_err, 1.5)
    hypotheses = {
        0.0: "aligned",
        -tai_minus_utc: "date-obs-is-tai",
        tai_minus_utc: "date-obs-is-utc",
    }
    matches = [name for value, name in hypotheses.items() if abs(lag - value) <= tolerance]
    if len(matches) == 1:
        return matches[0]
    return "undetermined" if matches else "unexplained"


def _select_series(frames, times, config_id, telescope, diameter, seeing, margin,
                   wavelength=None, exposure_site=None) -> GuiderSeries:  # fmt: skip
    """Frames of the exposure's configuration within its time span (+- margin), as a series."""
    if isinstance(frames, GuiderSeries):
        return frames
    window = (times[0] - (margin + SELECT_PAD) * u.s, times[-1] + (margin + SELECT_PAD) * u.s)
    frames = as_guider_frames(frames, window)
    inside, rejected = [], list(frames.rejected)
    for frame in frames.frames:
        if not frame.overlaps(window):
            continue
        if config_id is not None and frame.config_id is not None and frame.config_id != config_id:
            rejected.append((frame.path, f"CONFIGID {frame.config_id} != exposure's {config_id}"))
            continue
        inside.append(frame)
    if not inside:
        spans = [f.start for f in frames.frames]
        path = frames.frames[0].path
        if rejected and len(rejected) > len(frames.rejected):
            raise InputError(
                path,
                "CONFIGID",
                f"guider frames of configuration {config_id}",
                "; ".join(r for _, r in rejected[-3:]),
            )
        raise InputError(
            path,
            "DATE-OBS",
            f"guider frames overlapping the exposure, {times[0].isot} to {times[-1].isot} TAI",
            f"{len(spans)} frame(s) from {min(spans, key=lambda t: t.mjd).isot} "
            f"to {max(spans, key=lambda t: t.mjd).isot} TAI",
        )
    return guider_series(GuiderFrames(inside, rejected), telescope=telescope, diameter=diameter,
                         seeing=seeing, wavelength=wavelength,
                         exposure_site=exposure_site)  # fmt: skip


# --------------------------------------------------------------------------------------------


def _tai_minus_utc(t: Time) -> float:
    """TAI - UTC (leap seconds) at ``t``, s."""
    return float(round((t.tai.mjd - t.utc.mjd) * 86400.0))
