"""Diagnostic plots of an exposure fit (matplotlib, imported when a function is called).

Each ``plot_*`` function returns a new :class:`matplotlib.figure.Figure` (no pyplot state: it
shows in a notebook when it is a cell's value, and nothing is left open), or draws into the
``ax`` given where it takes one; :func:`save_plots` writes the standard set as PNG files.

Conventions shared by every figure:

- fibers are named by **fiberId** (1..300, ``300 -`` the 0-based index), and every title names
  the chip (or the chips of a joint fit);
- omega is always scaled to **mean 1 per fiber** (:meth:`pyapred.OmegaFit.normalized`), the
  normalisation the fluxes are extracted with;
- time is in **seconds since the first read** when the read times are known (the axis says so,
  with the first read's TAI time when the result came from files), else the **read index**
  (0 = first read), and the axis says that instead. Each omega element belongs to a read
  difference, drawn at the middle of its interval, with the interval as its horizontal bar.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputError
from .exposure import (
    ChipResult,
    ExposureResult,
    FiberFits,
    FitOptions,
)
from .solver import Flag
from .solver.reprs import quiet_nanmedian
from .traces import N_FIBERS, fiber_index
from .traces import fiber_id as _fiber_id

if TYPE_CHECKING:  # matplotlib is imported when a plot is drawn
    from matplotlib.figure import Figure

__all__ = [
    "plot_chi2",
    "plot_fiber_summary",
    "plot_flux_comparison",
    "plot_omega",
    "plot_omega_image",
    "plot_ramps",
    "save_plots",
]

# Per-fiber categories: the model used, with the two kinds of constant-model fiber that are not
# a decision (FPI fibers, failed fits) apart. Colours are the same in every figure.
_CATEGORIES = (
    ("constant", "0.55"),
    ("time-variable", "tab:blue"),
    ("borrowed omega", "tab:orange"),
    ("time-variable, chromatic", "tab:green"),
    ("fit failed: constant", "tab:red"),
    ("FPI: not fitted, constant", "tab:purple"),
)
# The first four are the model codes (MODEL_CONSTANT .. MODEL_CHROMATIC).
_FAILED, _FPI = 4, 5
_BAD_PIXEL = int(Flag.SATURATED | Flag.JUMP_DETECTED | Flag.TOO_FEW_DIFFS | Flag.NONFINITE_READ)


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Time:
    """Where reads and read differences go on a time axis, and what the axis is called."""

    reads: np.ndarray  # (n_reads,)
    mid: np.ndarray  # (K,) middle of each read difference
    half: np.ndarray  # (K,) half its interval
    label: str
    known: bool


def _time_axis(read_times, n_reads: int, start: str | None = None) -> _Time:
    """Seconds since the first read, or the read index when the times are not known.

    ``read_times`` equal to ``0, 1, 2, ...`` are what :func:`~pyapred.exposure.run_exposure`
    puts in place of missing times: they count as unknown.
    """
    times = None if read_times is None else np.asarray(read_times, dtype=np.float64)
    # Times of another length, NaN or not increasing were drawn as the read index, silently,
    # or as a blank figure.
    if times is not None and (
        times.shape != (n_reads,) or not np.all(np.isfinite(times)) or np.any(np.diff(times) <= 0)
    ):
        raise ValueError(
            f"read_times: expected {n_reads} finite, increasing times (s), got "
            f"{times.shape[0] if times.ndim == 1 else times.shape} "
            f"{'values' if times.ndim == 1 else 'array'}"
            + ("" if times.shape != (n_reads,) else " with NaN or a step back")
        )
    known = times is not None and not np.array_equal(times, np.arange(n_reads))
    if known:
        t = times - times[0]
        label = "seconds since the first read" + (f" ({start})" if start else "")
    else:
        t = np.arange(n_reads, dtype=np.float64)
        label = "read index (read times unknown; 0 = first read)"
    return _Time(t, 0.5 * (t[1:] + t[:-1]), 0.5 * np.diff(t), label, known)


def _where(chip: str | None) -> str:
    """``chip R``, ``chips R, G, B jointly``; ``""`` when unknown."""
    if not chip:
        return ""
    if chip == "joint":
        return "all chips jointly"
    return f"chips {chip}" if "," in chip else f"chip {chip}"


def _title(chip: str | None, text: str) -> str:
    where = _where(chip)
    return f"{where}: {text}" if where else text


def _id_range(n_fibers: int) -> str:
    ids = _fiber_id(np.arange(n_fibers))
    return f"fiberIds {ids.min()}-{ids.max()}"


def _categories(fits: FiberFits) -> np.ndarray:
    """Per-fiber category code (index into ``_CATEGORIES``)."""
    code = np.asarray(fits.model, dtype=np.int64).copy()
    code[(fits.flags & Flag.FALLBACK_CONSTANT).astype(bool)] = _FAILED
    code[(fits.flags & Flag.FPI_FIBER).astype(bool)] = _FPI
    return code


def _model_name(fits: FiberFits, index: int) -> str:
    return _CATEGORIES[_categories(fits)[index]][0]


def _figure(figsize, nrows: int = 1, ncols: int = 1, **kwargs):
    from matplotlib.figure import Figure  # no pyplot: no global state, any backend

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kwargs)


def _axes(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    fig, axes = _figure(figsize)
    return fig, axes[0, 0]


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)


def _running_median(x, y, n_bins: int = 12, min_count: int = 20):
    """Median of ``y`` in logarithmic bins of ``x`` (> 0); bins with few points are dropped."""
    if x.size < min_count:
        return np.array([]), np.array([])
    edges = np.geomspace(x.min(), x.max() * (1 + 1e-9), n_bins + 1)
    which = np.digitize(x, edges) - 1
    centers, medians = [], []
    for b in range(n_bins):
        inside = which == b
        if inside.sum() >= min_count:
            centers.append(np.sqrt(edges[b] * edges[b + 1]))
            medians.append(np.median(y[inside]))
    return np.array(centers), np.array(medians)


def _default_fibers(fits: FiberFits, n: int) -> np.ndarray:
    """A few bright fibers spread in brightness (median joint flux), else any fitted ones."""
    candidates = np.flatnonzero(fits.bright)
    if candidates.size == 0:
        candidates = np.flatnonzero(np.isfinite(fits.omega_fit).all(axis=1))
    if candidates.size <= n or fits.fit is None:
        return candidates[:n]
    flux = quiet_nanmedian(fits.fit.flux[candidates], axis=1)
    order = candidates[np.argsort(np.nan_to_num(flux, nan=-np.inf))]
    return order[np.linspace(0, order.size - 1, n).round().astype(int)]


# --------------------------------------------------------------------------------------------
# Per fiber group
# --------------------------------------------------------------------------------------------
def _chip_fibers(fiber_ids, n_fibers: int, name: str, *, one: bool = False) -> np.ndarray:
    """The 0-based indices of the fiberIds ``fiber_ids`` (one fiberId where ``one``) on a chip
    of ``n_fibers`` fibers; a ValueError naming ``name`` for any other than whole fiberIds of
    the chip (301 was index -1, the last fiber, drawn under the name fiberId 301; 300.7 was
    fiberId 300)."""
    lowest = _fiber_id(n_fibers - 1)
    what = "the fiberId of one of the chip's fibers" if one else "fiberIds of the chip's fibers"
    try:  # whole fiberIds 1 to 300, as fiber_index takes them
        given = np.asarray(fiber_ids)
        index = np.atleast_1d(fiber_index(given)).astype(np.int64)
    except (TypeError, ValueError):
        index = None
    shape_ok = index is not None and index.ndim == 1 and index.size > 0
    if not shape_ok or (one and given.ndim) or np.any(index >= n_fibers):
        raise ValueError(f"{name}: expected {what}, whole numbers {lowest} to {N_FIBERS}, got "
                         f"{fiber_ids!r}")  # fmt: skip
    return index


def plot_omega(
    fits: FiberFits,
    read_times=None,
    *,
    fiber_ids=None,
    truth=None,
    n_fibers: int = 4,
    chip: str | None = None,
    start: str | None = None,
    ax=None,
) -> Figure:
    """Fitted omega (mean 1) of a few fibers with 1-sigma error bars against time.

    With ``truth``, a second panel shows ``(omega - truth) / sigma``.

    Parameters
    ----------
    fits : FiberFits
    read_times : array_like, ``(n_reads,)``, optional
        Seconds since the first read (``ExposureResult.read_times``); default (or
        ``0, 1, 2, ...``) the read index.
    fiber_ids : sequence of int, optional
        fiberIds (1..300) to draw; default ``n_fibers`` bright fibers spread in brightness.
    truth : ndarray, ``(n_fibers_total, K)``, optional
        True omega by 0-based fiber index (as :class:`pyapred.simulate.SimulatedExposure`
        holds it), any normalisation: drawn scaled to mean 1.
    n_fibers : int
    chip : str, optional
        Chip name (``"R"``), ``"joint"`` or ``"R, G, B"``, for the title.
    start : str, optional
        The first read's time, shown on the time axis.
    ax : matplotlib Axes, optional
        Draw the omega panel there (no residual panel).

    Returns
    -------
    matplotlib.figure.Figure
    """
    K = fits.omega_fit.shape[1]
    t = _time_axis(read_times, K + 1, start)
    if truth is not None:  # another shape: an IndexError at the fiber, or another fiber's omega
        truth = np.asarray(truth, dtype=np.float64)
        if truth.shape != fits.omega.shape:
            raise ValueError(f"truth: expected omega's shape {fits.omega.shape} (fibers, read "
                             f"differences), got {truth.shape}")  # fmt: skip
    with_residuals = truth is not None and ax is None
    if ax is None:
        fig, axes = _figure(
            (9, 6.5 if with_residuals else 4.8),
            2 if with_residuals else 1,
            1,
            sharex=True,
            gridspec_kw={"height_ratios": [2.2, 1]} if with_residuals else None,
        )
        ax = axes[0, 0]
    fig = ax.figure
    title = f"transparency omega per read difference ({_id_range(fits.omega.shape[0])})"
    if fits.fit is None:
        _note(ax, "no omega fit (model forced to constant)")
        ax.set_title(_title(chip, title))
        return fig
    omega, cov = fits.fit.normalized()
    error = np.sqrt(np.maximum(np.diagonal(cov, axis1=-2, axis2=-1), 0.0))
    if fiber_ids is None:
        picks = np.atleast_1d(_default_fibers(fits, n_fibers))
    else:
        picks = _chip_fibers(fiber_ids, fits.omega.shape[0], "fiber_ids")
    width = np.median(2 * t.half)
    for i, fiber in enumerate(picks):
        offset = 0.0 if picks.size == 1 else 0.12 * width * (i - (picks.size - 1) / 2)
        label = f"fiberId {_fiber_id(fiber)} ({_model_name(fits, fiber)})"
        bars = ax.errorbar(
            t.mid + offset,
            omega[fiber],
            error[fiber],
            xerr=t.half,
            fmt="o",
            ms=3.5,
            lw=0.8,
            label=label,
        )
        if truth is None:
            continue
        true = np.asarray(truth[fiber], dtype=np.float64)
        true = true / true.mean()
        colour = bars.lines[0].get_color()
        ax.step(
            t.reads,
            np.append(true, true[-1]),
            where="post",
            color=colour,
            lw=1,
            ls="--",
            alpha=0.8,
            label="truth (dashed, mean 1)" if i == 0 else None,
        )
        if with_residuals:
            with np.errstate(invalid="ignore", divide="ignore"):
                z = (omega[fiber] - true) / error[fiber]
            axes[1, 0].plot(t.mid + offset, z, "o", ms=3.5, color=colour)
    ax.set_ylabel("omega, scaled to mean 1 per fiber")
    ax.set_title(_title(chip, title + "; error bars 1 sigma"), fontsize=10)
    if picks.size:
        ax.legend(fontsize=8, loc="best")
    else:  # an empty legend was a matplotlib warning on the demo's output
        _note(ax, "no fiber to show")
    bottom = axes[1, 0] if with_residuals else ax
    if with_residuals:
        for level, style in ((0, "-"), (-1, ":"), (1, ":")):
            bottom.axhline(level, color="k", lw=0.8, ls=style)
        bottom.set_ylabel("(omega - truth) / sigma")
    bottom.set_xlabel(t.label + "; bars: each read difference's interval")
    return fig


def plot_omega_image(
    fits: FiberFits, read_times=None, *, chip: str | None = None, start: str | None = None, ax=None
) -> Figure:
    """Fiber-by-time image of the omega each fiber was extracted with (mean 1).

    A strip beside the image gives each fiber's model: constant-model fibers are rows of 1;
    FPI fibers (never fitted) and fibers whose fit failed (constant model used,
    ``FALLBACK_CONSTANT``) have their own colours, and their fiberIds are listed.

    Parameters
    ----------
    fits : FiberFits
    read_times : array_like, optional
        As in :func:`plot_omega`.
    chip, start : str, optional
        As in :func:`plot_omega`.
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    fig, ax = _axes(ax, (9, 6))
    n, K = fits.omega.shape
    t = _time_axis(read_times, K + 1, start)
    ids = _fiber_id(np.arange(n))
    extent = (t.reads[0], t.reads[-1], ids.min() - 0.5, ids.max() + 0.5)
    # Row 0 of the image is the last fiber index, the lowest fiberId: fiberIds increase upwards.
    image = ax.imshow(
        fits.omega[::-1],
        aspect="auto",
        origin="lower",
        interpolation="nearest",
        extent=extent,
        cmap="viridis",
    )
    fig.colorbar(image, ax=ax, pad=0.07, label="omega used for extraction (mean 1 per fiber)")
    code = _categories(fits)
    strip = ax.inset_axes([1.005, 0.0, 0.025, 1.0])
    strip.imshow(
        code[::-1, None],
        aspect="auto",
        origin="lower",
        interpolation="nearest",
        extent=(0, 1, *extent[2:]),
        vmin=-0.5,
        vmax=len(_CATEGORIES) - 0.5,
        cmap=ListedColormap([c for _, c in _CATEGORIES]),
    )
    strip.set_axis_off()
    handles = []
    for i, (name, colour) in enumerate(_CATEGORIES):
        members = ids[code == i]
        if not members.size:
            continue
        label = f"{name} ({members.size})"
        if i in (_FAILED, _FPI):
            shown = ", ".join(str(f) for f in sorted(members)[:10])
            word = "fiberId" if members.size == 1 else "fiberIds"
            label += f": {word} {shown}{', ...' if members.size > 10 else ''}"
            short = "FPI" if i == _FPI else "fit failed"
            for f in sorted(members)[:10]:
                ax.axhline(f, color=colour, lw=1.2, ls=":")
                ax.annotate(
                    f"{short}: fiberId {f}",
                    (0.99, f),
                    xycoords=("axes fraction", "data"),
                    ha="right",
                    va="center",
                    fontsize=7,
                    color="w",
                    bbox=dict(boxstyle="round,pad=0.15", fc=colour, ec="none"),
                )
        handles.append(Patch(color=colour, label=label))
    ax.legend(
        handles=handles,
        title="model (strip at right)",
        fontsize=8,
        title_fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.13),
        ncol=2,
        frameon=False,
    )
    ax.set_xlabel(t.label)
    ax.set_ylabel("fiberId")
    ax.set_title(_title(chip, f"omega per fiber and read difference ({_id_range(n)})"))
    return fig


def plot_chi2(
    fits: FiberFits, *, chip: str | None = None, upper: float | None = None, ax=None
) -> Figure:
    """Histograms of the fit pixels' chi2/dof under both models, with the expected curve.

    The pixels are the bright fibers' omega-fit pixels; ``dof = n_diff - 1`` per pixel. The
    black curve is what a correct model gives: the chi2/dof law of those pixels' degrees of
    freedom, scaled to their number (the time-variable fit spends ``K - 1`` of a fiber's
    degrees of freedom on omega, negligible per pixel; with the nuisance term each readout
    segment's offsets spend ``K - 1`` more, shared by the segment's pixels, which moves the
    time-variable histogram left of the curve by that share). Values beyond ``upper`` are
    counted in the last, shaded bin.

    Parameters
    ----------
    fits : FiberFits
    chip : str, optional
    upper : float, optional
        Start of the overflow bin; default the 99.9th percentile of the expected law (at
        least 2).
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    from scipy.stats import chi2 as chi2_law

    fig, ax = _axes(ax, (8, 4.8))
    title = "chi2/dof of the bright fibers' fit pixels"
    used = None if fits.fit is None else fits.bright[:, None] & np.isfinite(fits.fit.chi2)
    if used is None or not used.any():
        _note(ax, "no omega fit" if fits.fit is None else "no bright fiber: no fit pixels")
        ax.set_title(_title(chip, title))
        return fig
    dof = fits.fit.n_diff[used] - 1
    keep = dof > 0
    dof = dof[keep]
    variable = (fits.fit.chi2[used] / np.maximum(fits.fit.n_diff[used] - 1, 1))[keep]
    constant = (fits.pixel_chi2_constant[used] / np.maximum(fits.fit.n_diff[used] - 1, 1))[keep]
    values, counts = np.unique(dof, return_counts=True)
    if upper is not None and not 0 < upper < np.inf:  # 0 divided by 0 in the bin width
        raise ValueError(f"upper: expected a finite chi2/dof > 0, got {upper!r}")
    if upper is None:
        upper = float(np.clip(chi2_law.ppf(0.999, values.min()) / values.min(), 2.0, 10.0))
    width = upper / 40
    edges = np.arange(0.0, upper + 0.5 * width, width)
    edges = np.append(edges[edges <= upper + 1e-12], upper + width)
    expected = np.zeros(edges.size - 1)
    for d, c in zip(values, counts, strict=True):
        expected[:-1] += c * np.diff(chi2_law.cdf(edges[:-1] * d, d))
        expected[-1] += c * chi2_law.sf(upper * d, d)
    top = expected.max()
    for data, name, colour in (
        (variable, "time-variable (fitted omega)", "tab:blue"),
        (constant, "constant flux", "0.45"),
    ):
        hist, _ = np.histogram(np.minimum(data, upper + 0.5 * width), bins=edges)
        label = f"{name}: {data.size} pixels, {hist[-1]} beyond {upper:.3g}"
        ax.stairs(hist, edges, lw=1.5, color=colour, label=label)
        top = max(top, hist[:-1].max())
    dofs = f"{values.min()}" if values.size == 1 else f"{values.min()}-{values.max()}"
    ax.stairs(
        expected,
        edges,
        color="k",
        lw=1,
        ls="--",
        label=f"expected for a correct model (dof {dofs})",
    )
    ax.set_ylim(0, 1.3 * top)
    for data, colour, y in ((variable, "tab:blue", 1.2), (constant, "0.45", 1.1)):
        over = int(np.sum(data > upper))
        if over > 1.3 * top:  # an overflow bar beyond the axis: its count written beside it
            ax.annotate(
                f"{over} beyond {upper:.3g} (off scale) ",
                (upper, y * top),
                ha="right",
                fontsize=8,
                color=colour,
            )
    ax.axvspan(upper, upper + width, color="0.9", zorder=0)
    ticks = [tick for tick in ax.get_xticks() if 0 <= tick < upper - 0.5 * width]
    ax.set_xticks([*ticks, upper + 0.5 * width], [f"{x:g}" for x in ticks] + [f">{upper:.3g}"])
    ax.set_xlim(0, upper + width)
    ax.set_xlabel("chi2 / dof per pixel (dof = read differences used - 1)")
    ax.set_ylabel("pixels per bin")
    n = fits.omega.shape[0]
    ax.set_title(_title(chip, f"{title} ({int(fits.bright.sum())} of {_id_range(n)})"))
    ax.legend(fontsize=8)
    return fig


def _threshold_line(ax, value: float, label: str) -> None:
    """A decision threshold across a panel of the fiber summary: dashed, black, labelled."""
    ax.axhline(value, color="k", lw=0.8, ls="--", label=label)


def _wald(fits: FiberFits) -> bool:
    """Whether ``delta_chi2`` is the Wald statistic (the 1/f nuisance offsets were fitted)."""
    return fits.fit is not None and fits.fit.offsets is not None


def plot_fiber_summary(
    fits: FiberFits, *, chip: str | None = None, options: FitOptions | None = None
) -> Figure:
    """Per-fiber decision statistics by fiberId: amplitude, delta-chi2, fit pixels, median omega
    error and model.

    Parameters
    ----------
    fits : FiberFits
    chip : str, optional
    options : FitOptions, optional
        The thresholds drawn (``amplitude_threshold``, ``p_value``, ``min_fit_pixels``,
        ``max_omega_error``); default ``FitOptions()``'s.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.lines import Line2D
    from scipy.stats import chi2 as chi2_law

    options = FitOptions() if options is None else options
    n, K = fits.omega.shape
    ids = _fiber_id(np.arange(n))
    code = _categories(fits)
    colours = np.array([_CATEGORIES[c][1] for c in code], dtype=object)
    fig, axes = _figure(
        (10, 11), 5, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1, 1, 1, 0.8]}
    )
    amp, dchi2, pix, err, model = axes[:, 0]
    # Fibers never fitted (too few fit pixels, FPI) have no amplitude nor delta chi2.
    fitted = np.isfinite(fits.omega_fit).any(axis=1)
    amp.scatter(ids[fitted], 100 * fits.amplitude[fitted], c=colours[fitted], s=12)
    _threshold_line(
        amp, 100 * options.amplitude_threshold, f"threshold {100 * options.amplitude_threshold:g} %"
    )
    amp.set_ylabel("equivalent amplitude\nA (%) of omega")
    amp.legend(fontsize=8, loc="best")
    dchi2.scatter(ids[fitted], fits.delta_chi2[fitted], c=colours[fitted], s=12)
    dchi2.set_yscale("symlog", linthresh=10)
    critical = chi2_law.isf(options.p_value, max(K - 1, 1))
    _threshold_line(dchi2, critical, f"p = {options.p_value:g} ({K - 1} dof): {critical:.0f}")
    if _wald(fits):
        dchi2.set_ylabel("Wald statistic\n(omega against ones)")
    else:
        dchi2.set_ylabel("delta chi2\n(constant - time-variable)")
    dchi2.legend(fontsize=8, loc="best")
    # With the nuisance term, fibers without flux contrast in their segments are not fitted
    # (no point in the panels above): marked, or they look like fibers the tests refused.
    low = (fits.flags & Flag.LOW_SEGMENT_CONTRAST).astype(bool)
    pix.scatter(ids[~low], fits.n_fit_pixels[~low], c=colours[~low], s=12)
    if low.any():
        pix.scatter(ids[low], fits.n_fit_pixels[low], c=colours[low], s=24, marker="x",
                    label=f"not fitted: LOW_SEGMENT_CONTRAST ({int(low.sum())})")  # fmt: skip
    _threshold_line(pix, options.min_fit_pixels, f"min_fit_pixels {options.min_fit_pixels}")
    pix.set_ylabel("omega-fit pixels")
    pix.legend(fontsize=8, loc="best")
    # The bright test's third rule: a fiber above it borrows, whatever the statistics above.
    free = np.arange(K) != fits.ref_index
    median_error = quiet_nanmedian(np.where(free, fits.omega_error(), np.nan)[fitted], axis=1)
    err.scatter(ids[fitted], median_error, c=colours[fitted], s=12)
    _threshold_line(err, options.max_omega_error, f"max_omega_error {options.max_omega_error:g}")
    err.set_yscale("log")
    err.set_ylabel("median omega\nerror")
    err.legend(fontsize=8, loc="best")
    model.scatter(ids, code, c=colours, s=14)
    model.set_yticks(range(len(_CATEGORIES)), [name for name, _ in _CATEGORIES], fontsize=8)
    model.set_ylim(-0.6, len(_CATEGORIES) - 0.4)
    model.set_xlabel("fiberId")
    model.set_xlim(ids.min() - 1, ids.max() + 1)
    for f in ids[(code == _FAILED) | (code == _FPI)]:
        for ax in axes[:, 0]:
            ax.axvline(f, color=_CATEGORIES[code[fiber_index(f)]][1], lw=0.8, alpha=0.4)
    handles = [
        Line2D([], [], marker="o", ls="", color=colour, label=f"{name} ({np.sum(code == i)})")
        for i, (name, colour) in enumerate(_CATEGORIES)
        if np.any(code == i)
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8)
    amp.set_title(
        _title(chip, f"model choice per fiber ({_id_range(n)}; {int(fits.bright.sum())} bright)")
    )
    return fig


# --------------------------------------------------------------------------------------------
# Per chip
# --------------------------------------------------------------------------------------------
def plot_ramps(
    chip: ChipResult,
    *,
    fiber_id: int | None = None,
    n_pixels: int = 3,
    read_times=None,
    start: str | None = None,
) -> Figure:
    """Ramps and read differences of a few fit pixels of one fiber, both models, residuals.

    Top: the counts above the first read (left) and the read differences (right) with the
    time-variable model (the fiber's fitted omega, mean 1; solid) and the constant-flux model
    (dashed). Bottom: data minus model; for the differences in units of their noise,
    ``sqrt(model / gain + 2 read_noise^2)`` (DN).

    Parameters
    ----------
    chip : ChipResult
        With its fit reads (``FitOptions.keep_fit_reads``, the default).
    fiber_id : int, optional
        fiberId (1..300); default the bright fiber with the largest chi2 improvement.
    n_pixels : int
        Pixels shown, spread in brightness.
    read_times : array_like, optional
        As in :func:`plot_omega`.
    start : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.lines import Line2D

    from .solver import extract_fluxes, fit_constant

    fits, prep = chip.fibers, chip.prepared
    if fiber_id is None:
        score = np.where(fits.bright, np.nan_to_num(fits.delta_chi2, nan=-np.inf), -np.inf)
        fiber = int(np.argmax(score))
    else:
        (fiber,) = _chip_fibers(fiber_id, fits.omega.shape[0], "fiber_id", one=True)
    fid = int(_fiber_id(fiber))
    t = _time_axis(read_times, prep.shape[0], start)
    fig, axes = _figure((11, 7.5), 2, 2, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    model_name = _model_name(fits, fiber)
    valid = np.flatnonzero(prep.fit_pixels.valid[fiber])
    head = f"fiberId {fid} ({model_name})"
    if valid.size == 0 or prep.fit_reads is None:
        why = "no fit pixels" if valid.size == 0 else "no reads kept (FitOptions.keep_fit_reads)"
        _note(axes[0, 0], f"{head}: {why}")
        fig.suptitle(_title(prep.name, head))
        return fig
    stored = prep.fit_reads[:, fiber, valid]
    reads = np.asarray(stored, dtype=np.float64)
    order = np.argsort(np.nanmax(reads, axis=0) - reads[0])
    pick = order[np.linspace(0, order.size - 1, min(n_pixels, order.size)).round().astype(int)]
    reads = reads[:, pick]
    # The fits take the reads in their stored type (float32: the same bits as float64 in the
    # kernels), so that they reuse the pipeline's compiled kernels.
    stored = stored[:, pick]
    rows = prep.fit_pixels.rows[fiber, valid][pick]
    cols = prep.fit_pixels.cols[fiber, valid][pick]
    sigma, gain = prep.fit_read_noise[fiber, valid][pick], prep.fit_gain[fiber, valid][pick]
    fitted = fits.omega_fit[fiber]
    omega = fitted / np.mean(fitted) if np.all(np.isfinite(fitted)) else fits.omega[fiber]
    variable = extract_fluxes(stored, sigma, omega, gain=gain)
    constant = fit_constant(stored, sigma, gain=gain)
    K = reads.shape[0] - 1
    (ramp_ax, diff_ax), (ramp_res, diff_res) = axes
    pixel_handles = []
    for j in range(reads.shape[1]):
        ramp = reads[:, j] - reads[0, j]
        diffs = np.diff(reads[:, j])
        tv_diff = variable.flux[j] * omega
        tv_ramp = np.concatenate([[0.0], np.cumsum(tv_diff)])
        const_ramp = constant.flux[j] * np.arange(K + 1.0)
        (line,) = ramp_ax.plot(t.reads, ramp, "o", ms=3.5)
        colour = line.get_color()
        pixel_handles.append(
            Line2D(
                [],
                [],
                marker="o",
                ls="",
                color=colour,
                label=f"row {rows[j]}, column {cols[j]}: {variable.flux[j]:.4g} DN/read",
            )
        )
        ramp_ax.plot(t.reads, tv_ramp, "-", color=colour, lw=1)
        ramp_ax.plot(t.reads, const_ramp, "--", color=colour, lw=1)
        ramp_res.plot(t.reads, ramp - tv_ramp, "o-", color=colour, ms=3, lw=0.8)
        ramp_res.plot(t.reads, ramp - const_ramp, "x--", color=colour, ms=4, lw=0.8)
        diff_ax.plot(t.mid, diffs, "o", ms=3.5, color=colour)
        diff_ax.step(t.reads, np.append(tv_diff, tv_diff[-1]), where="post", color=colour, lw=1)
        diff_ax.axhline(constant.flux[j], ls="--", color=colour, lw=1)
        noise_tv = np.sqrt(np.maximum(tv_diff, 0.0) / gain[j] + 2 * sigma[j] ** 2)
        noise_c = np.sqrt(max(constant.flux[j], 0.0) / gain[j] + 2 * sigma[j] ** 2)
        diff_res.plot(t.mid, (diffs - tv_diff) / noise_tv, "o-", color=colour, ms=3, lw=0.8)
        diff_res.plot(
            t.mid, (diffs - constant.flux[j]) / noise_c, "x--", color=colour, ms=4, lw=0.8
        )
    styles = [
        Line2D([], [], color="k", lw=1, label="time-variable model (fitted omega)"),
        Line2D([], [], color="k", lw=1, ls="--", label="constant-flux model"),
    ]
    ramp_ax.legend(
        handles=pixel_handles + styles,
        fontsize=8,
        loc="upper left",
        title="fit pixel: time-variable flux",
        title_fontsize=8,
    )
    residual_styles = [
        Line2D([], [], color="k", marker="o", ms=3, lw=0.8, label="time-variable"),
        Line2D([], [], color="k", marker="x", ls="--", lw=0.8, label="constant"),
    ]
    for ax in (ramp_res, diff_res):
        ax.axhline(0.0, color="k", lw=0.8)
        ax.legend(handles=residual_styles, fontsize=7, loc="best")
        ax.set_xlabel(t.label)
    ramp_ax.set_ylabel("counts above the first read (DN)")
    ramp_res.set_ylabel("data - model (DN)")
    diff_ax.set_ylabel("read difference (DN)")
    diff_res.set_ylabel("(data - model) / sigma")
    diff_ax.set_title("read differences (model: steps over each interval)", fontsize=10)
    ramp_ax.set_title("ramps", fontsize=10)
    dchi2 = fits.delta_chi2[fiber]
    statistic = "Wald statistic" if _wald(fits) else "delta chi2"
    total = int(fits.n_fit_pixels[fiber])
    # With --joint-chips the statistic is the fiber's over every chip fitted together.
    scope = f"{total} fit pixels"
    if total != valid.size:
        scope = f"{total} fit pixels of the chips fitted together ({valid.size} here)"
    fig.suptitle(
        _title(
            prep.name,
            f"{head}, {statistic} {dchi2:.4g} over {scope};\n{len(pick)} fit pixels shown, "
            "spread in brightness",
        )
    )
    return fig


def plot_flux_comparison(
    chip: ChipResult, *, true_flux=None, max_points: int = 10000, seed: int = 0
) -> Figure:
    """Per-pixel fluxes: the extraction (model per fiber) against the constant-flux model.

    Left: ``(constant - extracted) / sigma`` against the extracted flux for every traced pixel
    without a saturated read, a jump or too few differences, coloured by its fiber's model,
    with running medians; constant-model fibers sit at 0. Right, when the truth is known:
    ``(flux - truth) / sigma`` of both against the true flux, with running medians.

    Parameters
    ----------
    chip : ChipResult
        With its images and its constant-model fit (``FitOptions.keep_constant``).
    true_flux : ndarray, ``(ny, nx)``, optional
        True exposure-averaged flux, DN per read (a simulation's, divided by the gain).
    max_points : int
        Pixels drawn as points (a random subset; the medians use them all).
    seed : int
        Seed of that subset.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if chip.flux is None or chip.constant is None:
        missing = "images (written to a product)" if chip.flux is None else "constant-model fit"
        raise ValueError(
            f"chip {chip.prepared.name}: no {missing}; run with FitOptions(keep_constant=True) "
            "and keep_images=True, or plot with save_plots, which reads a product's images"
        )
    fits = chip.fibers
    flux, var = np.asarray(chip.flux, np.float64), np.asarray(chip.flux_var, np.float64)
    const, const_var = chip.constant.flux, chip.constant.flux_var
    with np.errstate(invalid="ignore"):
        use = (chip.fiber >= 0) & ((chip.flags & _BAD_PIXEL) == 0) & (var > 0)
        use &= np.isfinite(flux) & np.isfinite(const) & (const_var > 0)
    code = _categories(fits)[np.maximum(chip.fiber, 0)][use]
    x = flux[use]
    sigma = np.sqrt(var[use])
    diff = (const[use] - x) / sigma
    rng = np.random.default_rng(seed)
    shown = rng.permutation(x.size)[:max_points]
    positive = x > 0  # the left panel's log axis; the truth panel selects on the truth
    if true_flux is not None:
        true_flux = np.asarray(true_flux, dtype=np.float64)
        if true_flux.shape != flux.shape:
            raise ValueError(f"true_flux: expected the chip's image shape {flux.shape}, got "
                             f"{true_flux.shape}")  # fmt: skip
        if not np.any(true_flux[use] > 0):  # matplotlib's log axis failed while saving
            raise ValueError("true_flux: expected a positive true flux at some extracted pixel")
    panels = 1 if true_flux is None else 2
    fig, axes = _figure((6.5 * panels, 5), 1, panels)
    left = axes[0, 0]
    for i, (name, colour) in enumerate(_CATEGORIES):
        members = (code == i) & positive
        if not members.any():
            continue
        sub = shown[members[shown]]
        left.scatter(x[sub], diff[sub], s=2, color=colour, alpha=0.3, rasterized=True)
        centers, medians = _running_median(x[members], diff[members])
        left.plot(
            centers,
            medians,
            "-",
            color=colour,
            lw=2,
            label=f"{name}: {int(members.sum())} pixels (line: median)",
        )
    left.axhline(0.0, color="k", lw=0.8, zorder=0)
    left.set_xscale("log")
    left.set_xlabel("extracted flux (DN per read, exposure-averaged)")
    left.set_ylabel("(constant-model flux - extracted flux) / sigma")
    hidden = int(np.count_nonzero(~positive))  # the log axis cannot show them
    left.set_title(
        "constant-flux model vs extraction, by fiber model"
        + (f"\n({hidden} pixels with extracted flux <= 0 not shown)" if hidden else ""),
        fontsize=10,
    )
    left.legend(fontsize=8, loc="best", markerscale=4)
    if true_flux is not None:
        right = axes[0, 1]
        truth = np.asarray(true_flux, dtype=np.float64)[use]
        positive = truth > 0
        for values, variance, name, colour in (
            (x, var[use], "extracted (model per fiber)", "tab:blue"),
            (const[use], const_var[use], "constant-flux model", "0.45"),
        ):
            z = (values - truth) / np.sqrt(variance)
            sub = shown[positive[shown]]
            right.scatter(truth[sub], z[sub], s=2, color=colour, alpha=0.25, rasterized=True)
            centers, medians = _running_median(truth[positive], z[positive])
            right.plot(
                centers,
                medians,
                "-",
                color=colour,
                lw=2,
                label=f"{name}: median z {np.median(z[positive]):+.2f} (all pixels)",
            )
        for level, style in ((0, "-"), (-1, ":"), (1, ":")):
            right.axhline(level, color="k", lw=0.8, ls=style)
        right.set_xscale("log")
        right.set_xlabel("true flux (DN per read, exposure-averaged)")
        right.set_ylabel("(flux - truth) / sigma")
        right.set_title("against the truth (lines: running medians)", fontsize=10)
        right.legend(fontsize=8, loc="best")
    n = fits.omega.shape[0]
    fig.suptitle(
        _title(chip.prepared.name, f"per-pixel fluxes of the traced pixels ({_id_range(n)})")
    )
    return fig


# --------------------------------------------------------------------------------------------
# The standard set
# --------------------------------------------------------------------------------------------
def _start(result: ExposureResult) -> str | None:
    """The first read's time (TAI, ISO) when the result came from files."""
    timing = result.meta.get("timing") or {}
    mjd = timing.get("read_times_tai_mjd")
    if mjd is None or not np.size(mjd):
        return None
    from astropy.time import Time

    return f"{Time(float(np.ravel(mjd)[0]), format='mjd', scale='tai').isot[:19]} TAI"


def _with_product_images(result: ExposureResult) -> dict[str, ChipResult]:
    """The chips, with the images of those written to the product read back from it."""
    chips = dict(result.chips)
    missing = [name for name, chip in chips.items() if chip.flux is None]
    path = result.meta.get("product")
    if not missing or path is None:
        return chips
    from .io import read_product

    images = read_product(path).chips
    for name in missing:
        if name not in images:
            continue
        ivar = images[name].ivar
        variance = np.divide(1.0, ivar, out=np.full_like(ivar, np.inf), where=ivar > 0)
        chips[name] = dataclasses.replace(
            chips[name], flux=images[name].rate, flux_var=variance, flags=images[name].flags
        )
    return chips


#: The names :func:`save_plots` writes (a group or chip name between the kind and ``.png``).
PLOT_NAME = re.compile(r"(omega|omega_image|chi2|fibers|ramps|flux)_[A-Za-z]+\.png")


def save_plots(
    result: ExposureResult,
    directory: str | os.PathLike,
    *,
    truth=None,
    true_flux: Mapping[str, np.ndarray] | None = None,
) -> list[Path]:
    """Write the standard plots of an exposure fit as PNG files.

    Per fiber group (chip name or ``joint``): ``omega_{group}.png`` (:func:`plot_omega`),
    ``omega_image_{group}.png`` (:func:`plot_omega_image`), ``chi2_{group}.png``
    (:func:`plot_chi2`), ``fibers_{group}.png`` (:func:`plot_fiber_summary`). Per chip:
    ``ramps_{chip}.png`` (:func:`plot_ramps`, when the fit pixels' reads were kept) and
    ``flux_{chip}.png`` (:func:`plot_flux_comparison`, when the constant model was kept,
    ``FitOptions.keep_constant``; images written to the result's product are read back).

    Parameters
    ----------
    result : ExposureResult
    directory : str or os.PathLike
        Created if missing; files are replaced.
    truth : ndarray, ``(n_fibers, K)``, optional
        True omega, drawn on the omega plots.
    true_flux : mapping of str to ndarray ``(ny, nx)``, optional
        True exposure-averaged flux per chip, DN per read, drawn on the flux comparisons.

    Returns
    -------
    list of pathlib.Path
    """
    from .io.atomic import atomic_path

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():  # mkdir said "File exists", no more
        raise InputError(directory, "directory", "a folder for the plots", "a file")
    directory.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        path = directory / name
        with atomic_path(path, overwrite=True, keep_suffix=True) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        written.append(path)

    times = result.read_times if result.read_times_known else None
    start = _start(result) if times is not None else None
    for key, fits in result.fibers.items():
        where = ", ".join(result.chips) + " jointly" if key == "joint" else key
        save(plot_omega(fits, times, truth=truth, chip=where, start=start), f"omega_{key}.png")
        save(plot_omega_image(fits, times, chip=where, start=start), f"omega_image_{key}.png")
        save(plot_chi2(fits, chip=where), f"chi2_{key}.png")
        save(plot_fiber_summary(fits, chip=where, options=result.options), f"fibers_{key}.png")
    chips = result.chips
    if any(chip.constant is not None for chip in chips.values()):
        chips = _with_product_images(result)
    for name, chip in chips.items():
        if chip.fibers.fit is not None and chip.prepared.fit_reads is not None:
            save(plot_ramps(chip, read_times=times, start=start), f"ramps_{name}.png")
        if chip.constant is not None and chip.flux is not None:
            truth_flux = None if true_flux is None else true_flux.get(name)
            save(plot_flux_comparison(chip, true_flux=truth_flux), f"flux_{name}.png")
    return written
