"""Diagnostic plots of an exposure fit (matplotlib, imported when a function is called).

Each ``plot_*`` function draws into a new figure (or the ``ax`` given) and returns the figure,
so they work in notebooks; :func:`save_plots` writes the standard set as PNG files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .exposure import MODEL_NAMES, ChipResult, ExposureResult, FiberFits

__all__ = [
    "plot_chi2",
    "plot_omega",
    "plot_omega_image",
    "plot_ramps",
    "save_plots",
]


def _axes(ax, **subplots):
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(**subplots)
    return fig, ax


def _diff_times(read_times, K):
    read_times = np.arange(K + 1.0) if read_times is None else np.asarray(read_times, float)
    return 0.5 * (read_times[1:] + read_times[:-1])


def _default_fibers(fits: FiberFits, n: int) -> np.ndarray:
    """A few bright fibers spread in brightness (by fit-pixel count), else any fitted ones."""
    candidates = np.flatnonzero(fits.bright)
    if candidates.size == 0:
        candidates = np.flatnonzero(np.isfinite(fits.omega_fit).all(axis=1))
    if candidates.size <= n:
        return candidates
    return candidates[np.linspace(0, candidates.size - 1, n).round().astype(int)]


def plot_omega(
    fits: FiberFits, read_times=None, *, fibers=None, truth=None, ax=None, n_fibers: int = 4
):
    """Fitted omega of a few fibers with 1-sigma error bars against read time.

    Parameters
    ----------
    fits : FiberFits
    read_times : array_like, ``(n_reads,)``, optional
        Seconds; default read index.
    fibers : sequence of int, optional
        0-based fiber indices; default ``n_fibers`` bright fibers.
    truth : ndarray, ``(n_fibers_total, K)``, optional
        True omega (any normalisation); drawn rescaled to the fit's reference read.
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _axes(ax, figsize=(8, 4.5))
    K = fits.omega_fit.shape[1]
    t = _diff_times(read_times, K)
    fibers = _default_fibers(fits, n_fibers) if fibers is None else np.asarray(fibers)
    error = fits.omega_error()
    for i, fiber in enumerate(fibers):
        offset = 0.0 if len(fibers) == 1 else 0.15 * (i - (len(fibers) - 1) / 2) * (t[1] - t[0])
        label = f"fiber {fiber} ({MODEL_NAMES[fits.model[fiber]]})"
        ax.errorbar(t + offset, fits.omega_fit[fiber], error[fiber], fmt="o", ms=3, label=label)
        if truth is not None:
            true = np.asarray(truth[fiber], float)
            ax.plot(t, true / true[fits.ref_index], "k-", lw=0.8, alpha=0.6)
    ax.set_xlabel("time (s)" if read_times is not None else "read difference")
    ax.set_ylabel(r"$\omega$ (reference read = 1)")
    ax.set_title(
        "Transparency per read difference" + (" (lines: truth)" if truth is not None else "")
    )
    ax.legend(fontsize=8)
    return fig


def plot_omega_image(fits: FiberFits, read_times=None, *, ax=None):
    """Fiber-by-read image of the omega used for extraction (mean 1; constant fibers are 1).

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _axes(ax, figsize=(8, 5))
    K = fits.omega.shape[1]
    t = _diff_times(read_times, K)
    image = ax.imshow(
        fits.omega,
        aspect="auto",
        origin="lower",
        interpolation="nearest",
        extent=(t[0], t[-1], -0.5, fits.omega.shape[0] - 0.5),
        cmap="viridis",
    )
    fig.colorbar(image, ax=ax, label=r"$\omega$ used (mean 1)")
    ax.set_xlabel("time (s)" if read_times is not None else "read difference")
    ax.set_ylabel("fiber index (300 - fiberId)")
    ax.set_title("Omega per fiber and read")
    return fig


def plot_chi2(fits: FiberFits, *, ax=None):
    """Histograms of the fit pixels' chi2/dof under both models.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _axes(ax, figsize=(7, 4.5))
    if fits.fit is None:
        ax.text(0.5, 0.5, "no omega fit (constant model forced)", ha="center")
        return fig
    dof = np.where(fits.fit.n_diff > 1, fits.fit.n_diff - 1, np.nan)
    used = fits.bright[:, None] & np.isfinite(fits.fit.chi2)
    variable = (fits.fit.chi2 / dof)[used]
    constant = (fits.pixel_chi2_constant / dof)[used]
    upper = max(3.0, float(np.nanpercentile(np.concatenate([variable, constant]), 99)))
    bins = np.geomspace(0.1, upper, 60)
    ax.hist(variable, bins=bins, histtype="step", lw=1.5, label="time-variable (fitted omega)")
    ax.hist(constant, bins=bins, histtype="step", lw=1.5, label="constant flux")
    ax.axvline(1.0, color="k", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel(r"$\chi^2$ / dof per pixel (bright fibers' fit pixels)")
    ax.set_ylabel("pixels")
    ax.legend(fontsize=8)
    return fig


def plot_ramps(chip: ChipResult, fiber: int | None = None, *, n_pixels: int = 3, read_times=None):
    """Ramps and read differences of a few fit pixels of one fiber, with both models.

    Parameters
    ----------
    chip : ChipResult
    fiber : int, optional
        0-based index; default the bright fiber with the largest chi2 improvement.
    n_pixels : int
        Pixels shown, spread in brightness.
    read_times : array_like, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    from .solver import extract_fluxes, fit_constant

    fits, prep = chip.fibers, chip.prepared
    if fiber is None:
        score = np.where(fits.bright, np.nan_to_num(fits.delta_chi2, nan=-np.inf), -np.inf)
        fiber = int(np.argmax(score))
    valid = np.flatnonzero(prep.fit_pixels.valid[fiber])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    if valid.size == 0 or prep.fit_reads is None:
        why = "no fit pixels" if valid.size == 0 else "no reads kept (FitOptions.keep_fit_reads)"
        axes[0].text(0.5, 0.5, f"fiber {fiber}: {why}", ha="center")
        return fig
    reads = prep.fit_reads[:, fiber, valid]
    order = np.argsort(np.nanmax(reads, axis=0) - reads[0])
    pick = order[np.linspace(0, order.size - 1, min(n_pixels, order.size)).round().astype(int)]
    reads = reads[:, pick]
    sigma, gain = prep.fit_read_noise[fiber, valid][pick], prep.fit_gain[fiber, valid][pick]
    omega = (
        fits.omega_fit[fiber] if np.all(np.isfinite(fits.omega_fit[fiber])) else fits.omega[fiber]
    )
    variable = extract_fluxes(reads, sigma, omega, gain=gain)
    constant = fit_constant(reads, sigma, gain=gain)
    K = reads.shape[0] - 1
    t_reads = np.arange(K + 1.0) if read_times is None else np.asarray(read_times, float)
    t_diff = _diff_times(read_times, K)
    for j in range(reads.shape[1]):
        ramp = reads[:, j] - reads[0, j]
        (line,) = axes[0].plot(t_reads, ramp, "o", ms=3)
        colour = line.get_color()
        tv_model = np.concatenate([[0.0], np.cumsum(variable.flux[j] * omega)])
        axes[0].plot(t_reads, tv_model, "-", color=colour, lw=1)
        axes[0].plot(t_reads, constant.flux[j] * np.arange(K + 1.0), "--", color=colour, lw=1)
        axes[1].plot(t_diff, np.diff(reads[:, j]), "o", ms=3, color=colour)
        axes[1].plot(t_diff, variable.flux[j] * omega, "-", color=colour, lw=1)
        axes[1].axhline(constant.flux[j], ls="--", color=colour, lw=1)
    axes[0].set_ylabel("counts above read 1 (DN)")
    axes[1].set_ylabel("read difference (DN)")
    for ax in axes:
        ax.set_xlabel("time (s)" if read_times is not None else "read")
    axes[0].set_title(f"chip {prep.name}, fiber {fiber}: solid time-variable, dashed constant")
    axes[1].set_title("differences")
    fig.tight_layout()
    return fig


def save_plots(result: ExposureResult, directory: str | os.PathLike, *, truth=None) -> list[Path]:
    """Write the standard plots of an exposure fit as PNG files.

    Per fiber group (chip or ``joint``): ``omega_{group}.png``, ``omega_image_{group}.png``,
    ``chi2_{group}.png``; per chip: ``ramps_{chip}.png``.

    Parameters
    ----------
    result : ExposureResult
    directory : str or os.PathLike
        Created if missing.
    truth : ndarray, ``(n_fibers, K)``, optional
        True omega, drawn on the omega plot.

    Returns
    -------
    list of pathlib.Path
    """
    import matplotlib.pyplot as plt  # headless machines fall back to the Agg backend

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        path = directory / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    times = result.read_times
    for key, fits in result.fibers.items():
        save(plot_omega(fits, times, truth=truth), f"omega_{key}.png")
        save(plot_omega_image(fits, times), f"omega_image_{key}.png")
        save(plot_chi2(fits), f"chi2_{key}.png")
    for name, chip in result.chips.items():
        if chip.fibers.fit is not None:
            save(plot_ramps(chip, read_times=times), f"ramps_{name}.png")
    return written
