"""Dense, obviously-correct reference implementations used to check the fast solver.

Everything here forms full K x K covariances and (P+K-1)^2 normal equations: slow, but a direct
transcription of the equations in docs/model.md.
"""

from __future__ import annotations

import numpy as np


def covariance(rate_x: np.ndarray, sigma2: float) -> np.ndarray:
    """``diag(max(rate_x, 0)) + sigma2 * T`` for the design-weighted rate ``rate_x`` (K,)."""
    K = rate_x.size
    T = 2 * np.eye(K) - np.eye(K, k=1) - np.eye(K, k=-1)
    return np.diag(np.maximum(rate_x, 0.0)) + sigma2 * T


def gls_pixel(reads, sigma, omega, dt=None, bad_read=None, n_pass=2):
    """Dense eq-15 fit of one ramp on its usable differences: (flux, var, chi2, n_diff)."""
    d = np.diff(reads)
    K = d.size
    dt = np.ones(K) if dt is None else dt
    ok = np.isfinite(d) & np.isfinite(omega)
    if bad_read is not None:
        ok &= ~(bad_read[1:] | bad_read[:-1])
    d, x = d[ok], (omega * dt)[ok]
    if d.size < 2:
        return np.nan, np.nan, np.nan, d.size
    # Deleting rows and columns of the full covariance = fitting the unmasked subset.
    keep = np.flatnonzero(ok)
    rate = max(np.median(d / x), 0.0)
    for _ in range(n_pass):
        C = covariance(rate * (omega * dt), sigma**2)[np.ix_(keep, keep)]
        Ci = np.linalg.inv(C)
        flux = x @ Ci @ d / (x @ Ci @ x)
        var = 1.0 / (x @ Ci @ x)
        rate = max(flux, 0.0)
    C = covariance(flux * (omega * dt), sigma**2)[np.ix_(keep, keep)]
    r = d - flux * x
    return flux, var, r @ np.linalg.solve(C, r), d.size


def chi2_at(diffs, sigma, flux, omega, dt=None, usable=None):
    """Eq-24 chi2 ``r^T C(flux)^-1 r`` of one pixel's differences ``diffs`` (K,) at the given
    ``flux`` and ``omega`` (K,), over the ``usable`` ones with a finite omega element."""
    K = diffs.size
    dt = np.ones(K) if dt is None else dt
    ok = np.isfinite(omega) & (np.ones(K, bool) if usable is None else usable)
    keep = np.flatnonzero(ok)
    x = (np.where(ok, omega, 0.0) * dt)[keep]
    C = covariance(flux * np.where(ok, omega, 0.0) * dt, sigma**2)[np.ix_(keep, keep)]
    r = diffs[keep] - flux * x
    return r @ np.linalg.solve(C, r)


def gauss_newton_step(diffs, sigma2, flux, omega, ref_index):
    """Dense joint normal-equation solve of one Gauss-Newton step (spec 2.4), unit read spacing.

    ``diffs`` (P, K), ``sigma2`` (P,), ``flux`` (P,), ``omega`` (K,) clamped.
    Returns ``(d_flux (P,), d_omega (K,) with 0 at ref_index, H (P+K-1 square))``.
    """
    P, K = diffs.shape
    free = np.flatnonzero(np.arange(K) != ref_index)
    n = P + free.size
    H = np.zeros((n, n))
    g = np.zeros(n)
    for p in range(P):
        J = np.zeros((K, n))
        J[:, p] = omega
        J[free, P + np.arange(free.size)] = flux[p]
        Ci = np.linalg.inv(covariance(flux[p] * omega, sigma2[p]))
        H += J.T @ Ci @ J
        g += J.T @ Ci @ (diffs[p] - flux[p] * omega)
    step = np.linalg.solve(H, g)
    d_omega = np.zeros(K)
    d_omega[free] = step[P:]
    return step[:P], d_omega, H
