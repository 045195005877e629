"""How well a fit recovered a simulation: omega z-scores and flux biases, in sigma."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..solver import Flag
from .fibers import MODEL_BORROWED, MODEL_CHROMATIC, _free_cov
from .result import ExposureResult

__all__ = ["truth_metrics"]


def truth_metrics(result: ExposureResult, omega, flux: Mapping[str, np.ndarray], *, min_flux=None):
    """How well a fit recovered a simulation: omega z-scores and flux biases in sigma.

    Parameters
    ----------
    result : ExposureResult
    omega : ndarray, ``(n_fibers, K)``
        True omega (any normalisation per fiber).
    flux : mapping of str to ndarray ``(ny, nx)``
        True exposure-averaged flux per chip, in the units of the fit (DN per read).
    min_flux : float or mapping of str to float, optional
        Pixels at least this bright (units of ``flux``; per chip if a mapping) are "bright";
        default the 90th percentile of the traced pixels.

    Returns
    -------
    dict
        ``omega[group]``: ``z_std``, ``z_median``, ``z_mean`` (the bias) and its standard error
        ``z_mean_error`` (from the per-fiber means), ``n_fibers``, over bright fibers' free
        elements (a chromatic fiber's from its chromatic fit's omega, at the coordinate 0:
        ``omega`` is then the truth at the middle of the chips' wavelengths; a grey-fitted
        fiber of such an exposure estimates its colours' average, so its z-scores spread
        wider);
        ``borrowed[group]``: the same for the borrowed omega against borrowed fibers' truth, plus
        ``chi2_dof``, its Mahalanobis distance to that truth per degree of freedom (about 1 when
        its covariance is right; the z-scores of its elements are positively correlated, so
        their std is below 1 even then);
        ``flux[chip]``: ``variable_bias`` and ``constant_bias`` (median z of bright pixels),
        ``variable_z_std``, ``n_pixels``, and ``borrowed_bias`` over borrowed fibers' pixels.
    """
    omega = np.asarray(omega, dtype=np.float64)
    for key, fits in result.fibers.items():
        if omega.shape != fits.omega.shape:
            raise ValueError(
                f"omega: expected the true omega of every fiber, {fits.omega.shape} as "
                f"fibers[{key!r}], got {omega.shape}"
            )
    out: dict = {"omega": {}, "borrowed": {}, "flux": {}}
    for key, fits in result.fibers.items():
        if fits.fit is None:
            continue
        ref = fits.ref_index
        truth = omega / omega[:, ref : ref + 1]
        fitted, error = fits.omega_fit, fits.omega_error()
        if fits.chromatic is not None:
            # A chromatic fiber's grey omega_fit averages its colours: its own omega (at the
            # coordinate 0, the middle of the span) is the fit of the truth's middle value.
            chosen = (fits.model == MODEL_CHROMATIC)[:, None]
            fitted = np.where(chosen, fits.chromatic.omega, fitted)
            own = np.diagonal(fits.chromatic.omega_cov(), axis1=1, axis2=2)
            error = np.where(chosen, np.sqrt(np.maximum(own, 0.0)), error)
        free = np.arange(truth.shape[1]) != ref
        with np.errstate(invalid="ignore", divide="ignore"):
            z = ((fitted - truth) / error)[fits.bright][:, free]
        # A fiber's z-scores share the error of its fixed element: the bias's standard error
        # comes from the scatter of the per-fiber means.
        per_fiber = np.array([row[np.isfinite(row)].mean() for row in z if np.isfinite(row).any()])
        z = z[np.isfinite(z)]
        out["omega"][key] = {
            "z_std": float(np.std(z)) if z.size else None,
            "z_median": float(np.median(z)) if z.size else None,
            "z_mean": float(np.mean(z)) if z.size else None,
            "z_mean_error": float(per_fiber.std(ddof=1) / np.sqrt(per_fiber.size))
            if per_fiber.size > 1
            else None,
            "n_fibers": int(fits.bright.sum()),
        }
        borrowed = fits.model == MODEL_BORROWED
        if borrowed.any():
            b_err = np.sqrt(np.maximum(np.diag(fits.borrowed_cov), 0.0))[free]
            diff = fits.borrowed_omega[free] - truth[borrowed][:, free]
            bz = diff / b_err
            # The elements share the bright fibers' errors (positively correlated), so their z
            # scatter is below 1 even when the covariance is right; chi2/dof tests the whole of it.
            whitened = np.linalg.solve(_free_cov(fits.borrowed_cov, ref), diff.T).T
            out["borrowed"][key] = {
                "chi2_dof": float(np.mean(np.sum(diff * whitened, axis=1)) / diff.shape[1]),
                "z_std": float(np.std(bz)),
                "z_median": float(np.median(bz)),
                "n_fibers": int(borrowed.sum()),
            }
    bad = int(Flag.SATURATED | Flag.JUMP_DETECTED | Flag.TOO_FEW_DIFFS | Flag.NONFINITE_READ)
    for name, chip in result.chips.items():
        if name not in flux:
            continue
        true = np.asarray(flux[name], dtype=np.float64)
        traced = (chip.fiber >= 0) & ((chip.flags & bad) == 0)
        threshold = min_flux.get(name) if isinstance(min_flux, Mapping) else min_flux
        if threshold is None:  # (no usable traced pixel: no threshold, and none bright)
            threshold = float(np.percentile(true[traced], 90)) if traced.any() else np.inf
        bright = traced & (true >= threshold)
        fiber_model = np.where(chip.fiber >= 0, chip.fibers.model[np.maximum(chip.fiber, 0)], -1)
        entry = {"n_pixels": int(bright.sum()),
                 "min_flux": float(threshold) if np.isfinite(threshold) else None}  # fmt: skip

        def stat(function, values):  # None, as the omega metrics say it, where none are bright
            return float(function(values)) if values.size else None

        with np.errstate(invalid="ignore", divide="ignore"):
            z = (chip.flux - true) / np.sqrt(chip.flux_var)
            entry["variable_bias"] = stat(np.median, z[bright])
            entry["variable_z_std"] = stat(np.std, z[bright])
            on_borrowed = traced & (fiber_model == MODEL_BORROWED) & (true > 0)
            if on_borrowed.any():
                entry["borrowed_bias"] = float(np.median(z[on_borrowed]))
            if chip.constant is not None:
                zc = (chip.constant.flux - true) / np.sqrt(chip.constant.flux_var)
                entry["constant_bias"] = stat(np.median, zc[bright])
        out["flux"][name] = entry
    return out
