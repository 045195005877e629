"""The flux-in-fiber model: PSF coupling, and the guider's flux-in-fiber time series.

For a circular Gaussian PSF of width ``FWHM`` centered on a fiber of diameter ``D`` the fraction
of light entering the fiber is ``1 - 2**(-(D / FWHM)**2)`` (:func:`fiber_coupling`); times the
transparency ``T`` and normalised by its maximum this is the guider's prediction of omega
(:func:`flux_in_fiber`; Li, McKinnon, Saydjari et al., section IV). :func:`guider_series`
combines guider frames (:mod:`pyapred.guider.frames`) into that series, one point per guider
exposure.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from astropy.time import Time

from ..chromatic import (
    FIBER_DIAMETER_ARCSEC,
    fiber_coupling,
    linear_in_coordinate,
    seeing_fwhm,
    wavelength_coordinate,
)
from ..errors import InputError
from .frames import GuiderFrame, as_guider_frames
from .timing import seconds_since

__all__ = [
    "FIBER_DIAMETER_ARCSEC",
    "GuiderSeries",
    "chromatic_prediction",
    "fiber_coupling",
    "flux_in_fiber",
    "guider_series",
]


def flux_in_fiber(transparency, fwhm, diameter: float) -> np.ndarray:
    """Relative flux entering a fiber: ``T * coupling(FWHM)``, normalised by its maximum.

    Parameters
    ----------
    transparency, fwhm : array_like, ``(n_frames,)``
        Relative transparency and seeing FWHM (arcsec) per guider frame.
    diameter : float
        Fiber diameter, arcsec.

    Returns
    -------
    ndarray, ``(n_frames,)``, maximum 1

    Raises
    ------
    ValueError
        Arrays of other lengths or empty, values not finite, a negative transparency, no light
        in any frame (one NaN made every value NaN; all zeros gave 0/0).
    """
    transparency = np.asarray(transparency, dtype=np.float64)
    fwhm = np.asarray(fwhm, dtype=np.float64)
    if transparency.ndim != 1 or transparency.shape != fwhm.shape or not transparency.size:
        raise ValueError(
            f"transparency, fwhm: expected two (n_frames,) arrays of one length, got shapes "
            f"{transparency.shape} and {fwhm.shape}"
        )
    if not (np.all(np.isfinite(transparency)) and np.all(transparency >= 0)):
        raise ValueError("transparency: expected finite values >= 0")
    if not np.all(np.isfinite(fwhm)):
        raise ValueError("fwhm: expected finite values > 0 (arcsec)")
    flux = transparency * fiber_coupling(fwhm, diameter)
    if not np.any(flux > 0):
        raise ValueError("transparency: expected light in at least one frame, got none")
    return flux / np.max(flux)


@dataclass(frozen=True)
class GuiderSeries:
    """The guider's flux-in-fiber time series, one entry per guider exposure (epoch).

    SDSS-V camera files of the same guider frame (same frame number) form one epoch.

    Attributes
    ----------
    start, mid : astropy.time.Time, ``(n,)``
        Integration start and middle, TAI.
    exptime : ndarray, ``(n,)``
        Integration time, s.
    fwhm : ndarray, ``(n,)``
        Seeing FWHM, arcsec.
    transparency, transparency_err : ndarray, ``(n,)``
        Median over stars of ``10**(0.4 (zp - zp_ref))``, the star's reference being its median
        over the series; error the standard error of that median, from the stars' scatter
        about it pooled over the neighbouring epochs (``SCATTER_EPOCHS``; 0 where no epoch
        near has two stars). All 1 and 0 when the frames carry no photometry (gcam summary:
        seeing only).
    n_stars : ndarray of int, ``(n,)``
    flux, flux_err : ndarray, ``(n,)``
        ``transparency * fiber_coupling(fwhm, diameter)`` normalised by its maximum, and its error.
    config_id : ndarray of int, ``(n,)``
        -1 where unknown.
    diameter : float
        Fiber diameter used, arcsec.
    paths : tuple of tuple of str
        The files of each epoch.
    dropped : tuple of (str, str)
        ``(path, reason)`` for frames left out.
    has_photometry : bool
        False for a seeing-only series.
    """

    start: Time
    mid: Time
    exptime: np.ndarray
    fwhm: np.ndarray
    transparency: np.ndarray
    transparency_err: np.ndarray
    n_stars: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    config_id: np.ndarray
    diameter: float
    paths: tuple
    dropped: tuple
    has_photometry: bool

    def __repr__(self) -> str:
        """Each field in a few words (:func:`~pyapred.solver.reprs.summary_repr`), never whole
        arrays."""
        from ..solver.reprs import summary_repr

        return summary_repr(self)

    def __len__(self) -> int:
        return len(self.flux)


def _epoch_key(frame: GuiderFrame):
    if frame.kind == "proc-gimg" and frame.frame_number is not None:
        return ("sdss-v", frame.site, frame.frame_number)
    return ("single", frame.path)


def _site(frames: Sequence[GuiderFrame]) -> str:
    sites = {f.site for f in frames if f.site}
    return sites.pop() if len(sites) == 1 else "apo"


def guider_series(
    frames,
    *,
    telescope: str | None = None,
    diameter: float | None = None,
    seeing: str = "best",
    wavelength: float | None = None,
    exposure_site: str | None = None,
) -> GuiderSeries:
    """Combine guider frames into the flux-in-fiber series.

    Parameters
    ----------
    frames : GuiderFrames, sequence of GuiderFrame, or what :func:`read_guider_frames` accepts
    telescope : {"apo", "lco"}, optional
        Picks the default fiber diameter; default from the file names (``n``/``s``), else APO.
    diameter : float, optional
        Fiber diameter, arcsec; default ``FIBER_DIAMETER_ARCSEC[telescope]``.
    seeing : {"best", "camera"}
        SDSS-V: ``"best"`` uses ``FWHMFIT`` (the best-focus FWHM fitted across the six cameras,
        the focus of the fibers), falling back to the median camera ``FWHM``; ``"camera"`` always
        uses the median of the cameras' ``FWHM``.
    wavelength : float, optional
        Evaluate the coupling at this wavelength (micron), the FWHM scaled from the guider's
        wavelength as ``wavelength**-0.2`` (:func:`pyapred.chromatic.seeing_fwhm`); for example
        1.6, the middle of APOGEE's band. Default: at the FWHM the guider measured (the
        paper's model). ``GuiderSeries.fwhm`` stays the guider's.
    exposure_site : {"apo", "lco"}, optional
        The exposure's telescope: frames whose camera names the other site are refused
        (:func:`~pyapred.guider.compare` passes a product's).

    Returns
    -------
    GuiderSeries

    Raises
    ------
    pyapred.errors.InputError
        No usable frame (each frame's reason is in the message).
    """
    if seeing not in ("best", "camera"):
        raise ValueError(f"seeing: expected 'best' or 'camera', got {seeing!r}")
    frames = as_guider_frames(frames)
    dropped = list(frames.rejected)
    telescope = (telescope or _site(frames.frames)).lower()
    if telescope not in FIBER_DIAMETER_ARCSEC:
        raise ValueError(
            f"telescope: expected one of {sorted(FIBER_DIAMETER_ARCSEC)}, got {telescope!r}"
        )
    if exposure_site is not None:
        # Frames whose camera names the other site (gfa1s for an APO exposure) guided another
        # telescope.
        other = sorted({f.site for f in frames.frames if f.site and f.site != exposure_site})
        if other:
            path = next(f.path for f in frames.frames if f.site in other)
            raise InputError(path, "camera", f"a guider camera of {exposure_site} (the "
                             f"exposure's telescope)", f"one of {', '.join(other)}")  # fmt: skip
    diameter = FIBER_DIAMETER_ARCSEC[telescope] if diameter is None else float(diameter)
    if not diameter > 0:
        raise ValueError(f"diameter: expected > 0 arcsec, got {diameter}")
    if wavelength is not None and not float(wavelength) > 0:
        raise ValueError(f"wavelength: expected > 0 micron, got {wavelength}")

    groups: dict = {}
    for frame in frames.frames:
        if frame.problems:
            dropped.append((frame.path, "; ".join(frame.problems)))
        else:
            groups.setdefault(_epoch_key(frame), []).append(frame)
    if not groups:
        reasons = "; ".join(f"{os.path.basename(p)}: {r}" for p, r in dropped[:6])
        where = dropped[0][0] if dropped else "guider frames"
        raise InputError(where, "guider frames", "at least one usable object frame", reasons)

    epochs = sorted(groups.values(), key=lambda g: min(f.start.mjd for f in g))
    start = Time([min(g, key=lambda f: f.start.mjd).start for g in epochs])
    mid = Time([Time(np.mean([f.mid.mjd for f in g]), format="mjd", scale="tai") for g in epochs])
    exptime = np.array([max(f.exptime for f in g) for g in epochs])
    fwhm = np.empty(len(epochs))
    for i, group in enumerate(epochs):
        best = np.array([f.fwhm_fit for f in group]) if seeing == "best" else np.array([])
        camera = np.array([f.camera_fwhm if f.kind == "proc-gimg" else f.fwhm for f in group])
        values = best if np.isfinite(best).any() else camera
        fwhm[i] = np.nanmedian(values) if np.isfinite(values).any() else math.nan
    config = np.array(
        [next((f.config_id for f in g if f.config_id is not None), -1) for g in epochs]
    )
    star_ids = [np.concatenate([f.star_ids for f in g]) for g in epochs]
    star_zp = [np.concatenate([f.star_zp for f in g]) for g in epochs]
    has_photometry = any(s.size for s in star_zp)
    if has_photometry:
        transparency, transparency_err, n_stars = _transparency(star_ids, star_zp)
    else:
        transparency, transparency_err = np.ones(len(epochs)), np.zeros(len(epochs))
        n_stars = np.zeros(len(epochs), dtype=np.int64)

    keep = np.isfinite(transparency) & (transparency > 0)
    for i in np.flatnonzero(~keep):
        for f in epochs[i]:
            dropped.append((f.path, "no star seen in another frame (transparency undefined)"))
    mid_seconds = seconds_since(mid, mid[0])
    start_seconds = seconds_since(start, mid[0])
    end_seconds = start_seconds + exptime
    for i in range(1, len(epochs)):
        if not (keep[i] and keep[:i].any()):
            continue
        if np.any(keep[:i] & (np.abs(mid_seconds[:i] - mid_seconds[i]) < 1e-3)):
            keep[i] = False
            dropped.extend((f.path, "same time as an earlier frame (duplicate)") for f in epochs[i])
            continue
        # One guider integrates one exposure at a time (its cameras form one epoch): an epoch
        # that overlaps an earlier one by more than half its integration is a copy or has a
        # corrupt time, and made the windows' spline ill-conditioned (a frame copied 10 ms
        # later turned r = 1.00 into 0.47 and a false "disagree").
        overlap = end_seconds[:i][keep[:i]].max() - start_seconds[i]
        if overlap > 0.5 * exptime[i]:
            keep[i] = False
            reason = f"its integration overlaps an earlier frame's by {overlap:.3g} s"
            dropped.extend((f.path, reason) for f in epochs[i])
    if not keep.any():
        raise InputError(
            epochs[0][0].path, "GAIAMATCH/zp", "stars measured in at least two guider frames"
        )
    at = fwhm[keep] if wavelength is None else seeing_fwhm(fwhm[keep], float(wavelength))
    coupling = fiber_coupling(at, diameter)
    flux = transparency[keep] * coupling
    peak = flux.max()
    return GuiderSeries(
        start=start[keep],
        mid=mid[keep],
        exptime=exptime[keep],
        fwhm=fwhm[keep],
        transparency=transparency[keep],
        transparency_err=transparency_err[keep],
        n_stars=n_stars[keep],
        flux=flux / peak,
        flux_err=transparency_err[keep] * coupling / peak,
        config_id=config[keep],
        diameter=diameter,
        paths=tuple(tuple(f.path for f in g) for g, k in zip(epochs, keep, strict=True) if k),
        dropped=tuple(dropped),
        has_photometry=has_photometry,
    )


def _transparency(star_ids: list, star_zp: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-epoch median over stars of ``10**(0.4 (zp - median_epochs zp))``.

    Only stars measured in at least two epochs carry information about changes (a single
    epoch is its own reference: transparency 1).
    """
    ids = np.concatenate(star_ids)
    unique, inverse = np.unique(ids, return_inverse=True)
    epoch = np.repeat(np.arange(len(star_ids)), [s.size for s in star_ids])
    zp = np.concatenate(star_zp)
    n_epochs = len(star_ids)
    # Several values of one star in one epoch (two cameras): average them.
    sums = np.zeros((n_epochs, unique.size))
    counts = np.zeros((n_epochs, unique.size))
    np.add.at(sums, (epoch, inverse), zp)
    np.add.at(counts, (epoch, inverse), 1.0)
    with np.errstate(invalid="ignore"):
        grid = sums / counts
    seen = np.sum(np.isfinite(grid), axis=0) >= min(2, n_epochs)
    grid = grid[:, seen]
    ratio = 10.0 ** (0.4 * (grid - np.nanmedian(grid, axis=0)))
    n_stars = np.sum(np.isfinite(ratio), axis=1)
    transparency = np.full(n_epochs, np.nan)
    scatter = np.full(n_epochs, np.nan)  # the stars' scatter about the median, relative
    for i in np.flatnonzero(n_stars):
        values = ratio[i][np.isfinite(ratio[i])]
        transparency[i] = np.median(values)
        if values.size > 1:
            scatter[i] = 1.4826 * np.median(np.abs(values / transparency[i] - 1.0))
    # One epoch's MAD of 30 stars scatters by about 20 %, and the guider curve's chi2 weights
    # by its inverse square: omega's chi2/dof against it was 1.19 where the guider's noise
    # rules. The median over the neighbouring epochs follows a changing sky with a few
    # percent of scatter (1.07 there), and gives an epoch of one star an error too.
    local = _running_nanmedian(scatter, SCATTER_EPOCHS)
    error = np.zeros(n_epochs)
    known = (n_stars > 0) & np.isfinite(local)
    # The standard error of a median, relative to the transparency.
    error[known] = 1.2533 * local[known] * transparency[known] / np.sqrt(n_stars[known])
    return transparency, error, n_stars


#: The guider epochs over which the stars' scatter is pooled (centred; fewer at the ends).
SCATTER_EPOCHS = 9


def _running_nanmedian(values: np.ndarray, width: int) -> np.ndarray:
    """Median of the finite values within ``width // 2`` places either side (NaN if none)."""
    half = width // 2
    padded = np.pad(values, half, constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(padded, width)
    out = np.full(values.shape, np.nan)
    finite = np.isfinite(windows).any(axis=1)
    if finite.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out[finite] = np.nanmedian(windows[finite], axis=1)
    return out


def chromatic_prediction(
    series: GuiderSeries, matrix: np.ndarray, span: tuple, ref_index: int, n_wavelengths: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """The chromatic model's ``(omega, gamma)`` that the guider's seeing predicts.

    Each guider frame's light in the fiber is evaluated at ``n_wavelengths`` wavelengths across
    ``span``: its transparency times the coupling (:func:`fiber_coupling`) at the frame's FWHM
    scaled to that wavelength (:func:`pyapred.chromatic.seeing_fwhm`, the FWHM being measured at
    the guider's wavelength). Averaged over each read-difference window (``matrix``) and fitted
    by ``omega_k (1 + gamma_k c)`` relative to read difference ``ref_index``
    (:func:`pyapred.chromatic.linear_in_coordinate`), as the chromatic fit sees it.

    Parameters
    ----------
    series : GuiderSeries
    matrix : ndarray, ``(K, n_frames)``
        Window-averaging weights of the frames (:class:`pyapred.guider.windows.WindowAverager`).
    span : (float, float)
        Bluest and reddest wavelength of the chromatic fit's coordinate, micron.
    ref_index : int
        The fit's reference read difference.
    n_wavelengths : int

    Returns
    -------
    omega, gamma : ndarray, ``(K,)``
        For every window; those the guider does not cover are extrapolated (the caller masks
        them, :func:`pyapred.guider.windows.covered_windows`).
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] != len(series.fwhm):
        raise ValueError(f"matrix: expected (K, {len(series.fwhm)}) window weights of the "
                         f"series' frames, got shape {matrix.shape}")  # fmt: skip
    low, high = (float(v) for v in span)
    if not (0 < low < high < np.inf):
        raise ValueError(f"span: expected (bluest, reddest) wavelengths in micron, got {span!r}")
    if not (isinstance(ref_index, (int, np.integer)) and 0 <= ref_index < matrix.shape[0]):
        raise ValueError(f"ref_index: expected a read difference in [0, {matrix.shape[0]}), "
                         f"got {ref_index!r}")  # fmt: skip
    if not (isinstance(n_wavelengths, (int, np.integer)) and n_wavelengths >= 2):
        raise ValueError(f"n_wavelengths: expected an integer >= 2, got {n_wavelengths!r}")
    wavelength = np.linspace(low, high, int(n_wavelengths))
    coupling = fiber_coupling(seeing_fwhm(series.fwhm[:, None], wavelength), series.diameter)
    per_window = matrix @ (series.transparency[:, None] * coupling)  # (K, n_wavelengths)
    return linear_in_coordinate(per_window, wavelength_coordinate(wavelength, span), ref_index)
