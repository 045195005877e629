"""The Python backend: Numba kernels for the tridiagonal ramp algebra.

Everything here works in electrons and in units of the caller's read times; ``api.py`` validates
arguments, applies the gain and converts units. The Julia package ``julia/`` (APRampFit) is the
twin of this module, function for function.

Notation (``docs/model.md``, ``../shared/docs/math-spec.md``): K read differences ``d_k`` per
pixel, design vector ``x_k = omega_k * dt_k`` (the expected difference per unit flux), single-read
noise variance ``s2``. The covariance of the differences is tridiagonal,

    C = diag(max(a * x, 0)) + s2 * T,    T = tridiag(-1, 2, -1),

where ``a`` is the flux at which the photon noise is evaluated. A masked difference is decoupled
(its off-diagonal entries are zeroed, its diagonal set to 1) and its data and design entries set to
0, which is exactly the generalised least-squares fit of the unmasked subset.

All kernels factor C as L D L^T (unit lower-bidiagonal L, pivots D), so that quadratic forms need
only the forward substitution: ``p^T C^-1 q = sum_k (L^-1 p)_k (L^-1 q)_k / D_k``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._flags import Flag

_MASKED_READ = int(Flag.MASKED_READ)
_NONFINITE_READ = int(Flag.NONFINITE_READ)
_SATURATED = int(Flag.SATURATED)
_TOO_FEW_DIFFS = int(Flag.TOO_FEW_DIFFS)

# Size of the pixel blocks that the full-chip kernels gather from the (n_reads, n_pix) cube:
# big enough for contiguous reads along each read plane, small enough to stay in cache.
_BLOCK = 256
# Positivity floor of the reference implementation (min_b_val, min_f_val).
CLAMP_FLOOR = 1e-10


@njit(cache=True, inline="always")
def _valid_reads(ramp, bad, use_mask, saturation, valid_read):
    """Fill ``valid_read`` for one ramp and return the pixel's read flags."""
    flags = 0
    saturated = False
    for j in range(ramp.shape[0]):
        value = ramp[j]
        ok = True
        if use_mask and bad[j]:
            ok = False
            flags |= _MASKED_READ
        if not np.isfinite(value):
            ok = False
            flags |= _NONFINITE_READ
        elif value >= saturation:
            saturated = True
        if saturated:
            ok = False
            flags |= _SATURATED
        valid_read[j] = ok
    return flags


@njit(cache=True, inline="always")
def _factor(x, valid, s2, rate, alpha, beta, piv, low):
    """L D L^T factorisation of C(rate) for one pixel.

    Fills ``piv`` (D) and ``low`` (the sub-diagonal of L, ``low[k] = beta[k-1] / piv[k-1]``).
    ``alpha`` and ``beta`` receive the diagonal and super-diagonal of C.
    """
    K = x.shape[0]
    for k in range(K):
        if valid[k]:
            alpha[k] = max(rate * x[k], 0.0) + 2.0 * s2
        else:
            alpha[k] = 1.0
        if k < K - 1 and valid[k] and valid[k + 1]:
            beta[k] = -s2
        else:
            beta[k] = 0.0
    piv[0] = alpha[0]
    low[0] = 0.0
    for k in range(1, K):
        low[k] = beta[k - 1] / piv[k - 1]
        piv[k] = alpha[k] - low[k] * beta[k - 1]


@njit(cache=True, inline="always")
def _forward(low, rhs, out):
    """Forward substitution ``out = L^-1 rhs``."""
    out[0] = rhs[0]
    for k in range(1, rhs.shape[0]):
        out[k] = rhs[k] - low[k] * out[k - 1]


@njit(cache=True, inline="always")
def _backward(low, piv, y, out):
    """Finish a solve: ``out = L^-T D^-1 y`` where ``y = L^-1 rhs``."""
    K = y.shape[0]
    out[K - 1] = y[K - 1] / piv[K - 1]
    for k in range(K - 2, -1, -1):
        out[k] = y[k] / piv[k] - low[k + 1] * out[k + 1]


@njit(cache=True)
def _gls_pixel(d, x, valid, s2, a0, n_pass, work):
    """Constant-model GLS of ``d = f x + noise`` with the covariance refreshed ``n_pass`` times.

    Returns ``(flux, variance, chi2)``. The variance is from the last pass (covariance built from
    the previous estimate); chi2 uses the covariance at the final flux (spec sections 1.3, 3).
    """
    alpha, beta, piv, low, yx, yd = work[0], work[1], work[2], work[3], work[4], work[5]
    K = d.shape[0]
    rate = a0
    flux = 0.0
    var = np.nan
    for _ in range(n_pass):
        _factor(x, valid, s2, rate, alpha, beta, piv, low)
        _forward(low, x, yx)
        _forward(low, d, yd)
        sxx = 0.0
        sxd = 0.0
        for k in range(K):
            sxx += yx[k] * yx[k] / piv[k]
            sxd += yx[k] * yd[k] / piv[k]
        flux = sxd / sxx
        var = 1.0 / sxx
        rate = max(flux, 0.0)
    chi2 = _chi2_pixel(d, x, valid, s2, flux, work)
    return flux, var, chi2


@njit(cache=True, inline="always")
def _chi2_pixel(d, x, valid, s2, flux, work):
    """``(d - f x)^T C(f)^-1 (d - f x)`` with the photon noise at ``max(f x, 0)`` (eq 24)."""
    alpha, beta, piv, low, resid, y = work[0], work[1], work[2], work[3], work[4], work[5]
    K = d.shape[0]
    _factor(x, valid, s2, flux, alpha, beta, piv, low)
    for k in range(K):
        resid[k] = d[k] - flux * x[k] if valid[k] else 0.0
    _forward(low, resid, y)
    chi2 = 0.0
    for k in range(K):
        chi2 += y[k] * y[k] / piv[k]
    return chi2


@njit(cache=True, inline="always")
def _median_rate(d, x, valid, buf):
    """Median of ``d_k / x_k`` over usable differences with ``x_k > 0``, clipped at 0."""
    n = 0
    for k in range(d.shape[0]):
        if valid[k] and x[k] > 0.0:
            buf[n] = d[k] / x[k]
            n += 1
    if n == 0:
        return 0.0
    b = buf[:n]
    b.sort()
    med = b[n // 2] if n % 2 == 1 else 0.5 * (b[n // 2 - 1] + b[n // 2])
    return max(med, 0.0)


@njit(cache=True, parallel=True)
def extract_kernel(
    reads,
    bad,
    use_mask,
    omega,
    groups,
    dt,
    read_noise,
    gain,
    saturation,
    n_pass,
    flux,
    flux_var,
    chi2,
    n_diff,
    flags,
):
    """Eq-15 fluxes with omega fixed, for every pixel of a flattened cube.

    Parameters
    ----------
    reads : (N, n_pix) array, any real dtype, in the caller's units (DN or e-).
    bad : (N, n_pix) bool, True = bad read; ignored unless ``use_mask``.
    omega : (n_groups, K) float64; a non-finite element masks that difference.
    groups : (n_pix,) int64 row of ``omega`` for each pixel.
    dt : (K,) float64 read intervals.
    read_noise, gain, saturation : (n_pix,) float64.
    flux, flux_var, chi2 : (n_pix,) float64 outputs, in e- per unit time (gain applied).
    n_diff, flags : (n_pix,) int64 outputs.
    """
    N, n_pix = reads.shape
    K = N - 1
    n_blocks = (n_pix + _BLOCK - 1) // _BLOCK
    for b in prange(n_blocks):
        p0 = b * _BLOCK
        p1 = min(p0 + _BLOCK, n_pix)
        local = np.empty((p1 - p0, N))
        local_bad = np.zeros((p1 - p0, N), dtype=np.bool_)
        for j in range(N):
            for p in range(p0, p1):
                local[p - p0, j] = reads[j, p]
                if use_mask:
                    local_bad[p - p0, j] = bad[j, p]
        valid_read = np.empty(N, dtype=np.bool_)
        valid = np.empty(K, dtype=np.bool_)
        d = np.empty(K)
        x = np.empty(K)
        buf = np.empty(K)
        work = np.empty((6, K))
        for p in range(p0, p1):
            g = gain[p]
            pflags = _valid_reads(
                local[p - p0], local_bad[p - p0], use_mask, saturation[p], valid_read
            )
            row = groups[p]
            n = 0
            for k in range(K):
                w = omega[row, k]
                ok = valid_read[k] and valid_read[k + 1] and np.isfinite(w)
                valid[k] = ok
                if ok:
                    d[k] = (local[p - p0, k + 1] - local[p - p0, k]) * g
                    x[k] = w * dt[k]
                    n += 1
                else:
                    d[k] = 0.0
                    x[k] = 0.0
            n_diff[p] = n
            if n < 2:
                flags[p] = pflags | _TOO_FEW_DIFFS
                flux[p] = np.nan
                flux_var[p] = np.nan
                chi2[p] = np.nan
                continue
            flags[p] = pflags
            s = read_noise[p] * g
            a0 = _median_rate(d, x, valid, buf)
            f, v, c = _gls_pixel(d, x, valid, s * s, a0, n_pass, work)
            flux[p] = f
            flux_var[p] = v
            chi2[p] = c


@njit(cache=True, parallel=True)
def prepare_diffs_kernel(reads, bad, use_mask, gain, saturation, diffs, valid, flags):
    """Gather read differences of a (N, G, P) cube into (G, P, K) layout, in electrons.

    ``valid[g, p, k]`` is False for differences touching a bad read; there ``diffs`` is 0.
    """
    N, G, P = reads.shape
    K = N - 1
    for g in prange(G):
        ramp = np.empty(N)
        ramp_bad = np.zeros(N, dtype=np.bool_)
        valid_read = np.empty(N, dtype=np.bool_)
        for p in range(P):
            for j in range(N):
                ramp[j] = reads[j, g, p]
                if use_mask:
                    ramp_bad[j] = bad[j, g, p]
            flags[g, p] = _valid_reads(ramp, ramp_bad, use_mask, saturation[g, p], valid_read)
            for k in range(K):
                ok = valid_read[k] and valid_read[k + 1]
                valid[g, p, k] = ok
                diffs[g, p, k] = (ramp[k + 1] - ramp[k]) * gain[g, p] if ok else 0.0


@njit(cache=True, parallel=True)
def normal_equations_kernel(
    diffs, valid, s2, dt, flux, omega, active, fit_pixel, out_g, out_gw, e_hat, gf_hat, sqrt_d
):
    """Gauss-Newton normal equations of the time-variable model, fluxes ready for elimination.

    For each active group g and fitted pixel p, with ``x = omega[g] * dt``, ``C_p`` built at
    ``(flux, omega)`` (both already clamped) and ``r_p = d_p - flux_p x``:

    - ``sqrt_d[g, p] = sqrt(D_p)``, ``D_p = x^T C_p^-1 x`` (the flux block of H, diagonal);
    - ``e_hat[g, p] = E_p / sqrt(D_p)``, ``E_p = flux_p dt * (C_p^-1 x)`` (flux-omega block);
    - ``gf_hat[g, p] = (x^T C_p^-1 r_p) / sqrt(D_p)`` (the flux part of the gradient);
    - ``out_g[g] = sum_p flux_p^2 diag(dt) C_p^-1 diag(dt)`` (the omega block G, K x K);
    - ``out_gw[g] = sum_p flux_p dt * (C_p^-1 r_p)`` (the omega part of the gradient).

    The Schur complement is then ``G - e_hat^T e_hat`` (spec section 9.1). G needs the full inverse
    of each C_p; its columns are walked from the diagonal with the pivot ratios (spec section 1.5),
    K^2 operations per pixel, and accumulated without storing them.
    """
    G, P, K = diffs.shape
    for g in prange(G):
        if not active[g]:
            continue
        alpha = np.empty(K)
        beta = np.empty(K)
        piv = np.empty(K)
        low = np.empty(K)
        back = np.empty(K)
        x = np.empty(K)
        r = np.empty(K)
        yx = np.empty(K)
        yr = np.empty(K)
        u = np.empty(K)
        col = np.empty(K)
        acc = np.zeros((K, K))
        accw = np.zeros(K)
        for p in range(P):
            if not fit_pixel[g, p]:
                sqrt_d[g, p] = 0.0
                gf_hat[g, p] = 0.0
                e_hat[g, p, :] = 0.0
                continue
            f = flux[g, p]
            vmask = valid[g, p]
            for k in range(K):
                x[k] = omega[g, k] * dt[k] if vmask[k] else 0.0
                r[k] = diffs[g, p, k] - f * x[k] if vmask[k] else 0.0
            _factor(x, vmask, s2[g, p], f, alpha, beta, piv, low)
            _forward(low, x, yx)
            _forward(low, r, yr)
            dd = 0.0
            gf = 0.0
            for k in range(K):
                dd += yx[k] * yx[k] / piv[k]
                gf += yx[k] * yr[k] / piv[k]
            sd = np.sqrt(dd)
            sqrt_d[g, p] = sd
            gf_hat[g, p] = gf / sd
            _backward(low, piv, yx, u)
            for k in range(K):
                e_hat[g, p, k] = f * dt[k] * u[k] / sd if vmask[k] else 0.0
            _backward(low, piv, yr, col)
            for k in range(K):
                if vmask[k]:
                    accw[k] += f * dt[k] * col[k]
            # Backward pivots, for the diagonal of C^-1.
            back[K - 1] = alpha[K - 1]
            for k in range(K - 2, -1, -1):
                back[k] = alpha[k] - beta[k] * beta[k] / back[k + 1]
            f2 = f * f
            for j in range(K):
                if not vmask[j]:
                    continue
                den = alpha[j]
                if j > 0:
                    den -= beta[j - 1] * beta[j - 1] / piv[j - 1]
                if j < K - 1:
                    den -= beta[j] * beta[j] / back[j + 1]
                cj = f2 * dt[j]
                value = 1.0 / den
                acc[j, j] += cj * dt[j] * value
                for i in range(j - 1, -1, -1):
                    value *= -beta[i] / piv[i]
                    if value == 0.0:
                        break
                    acc[i, j] += cj * dt[i] * value
        for j in range(K):
            out_gw[g, j] = accw[j]
            for i in range(j + 1):
                out_g[g, i, j] = acc[i, j]
                out_g[g, j, i] = acc[i, j]


@njit(cache=True, parallel=True)
def chi2_kernel(diffs, valid, s2, x, flux, fit_pixel, out):
    """Eq-24 chi2 of every fitted pixel of a (G, P, K) layout, ``x`` of shape (G, K) or (1, K)."""
    G, P, K = diffs.shape
    x_stride = 0 if x.shape[0] == 1 else 1
    for g in prange(G):
        work = np.empty((6, K))
        xv = np.empty(K)
        xg = g * x_stride
        for p in range(P):
            if not fit_pixel[g, p]:
                out[g, p] = np.nan
                continue
            for k in range(K):
                xv[k] = x[xg, k] if valid[g, p, k] else 0.0
            out[g, p] = _chi2_pixel(diffs[g, p], xv, valid[g, p], s2[g, p], flux[g, p], work)


# --------------------------------------------------------------------------------------------
# Time-variable joint fit (NumPy orchestration of the kernels above)
# --------------------------------------------------------------------------------------------
_GUESS_CHUNK = 16  # groups per chunk of the initial guess, which needs a few (G, P, K) temporaries


def initial_guess(diffs, valid, s2, dt, fit_pixel, *, reference=False, ref_index=None):
    """Initial omega and fluxes (spec section 2.6), per group.

    Parameters
    ----------
    diffs, valid : (G, P, K) differences in e- (0 where invalid) and their usability.
    s2 : (G, P) single-read noise variance, e-^2.
    dt : (K,) read intervals.
    fit_pixel : (G, P) bool, pixels that take part.
    reference : bool
        Use the reference code's per-difference error ``sqrt((2 s2)^2 + d)`` (quirk Q1) instead of
        the correct ``sqrt(2 s2 + d)``.
    ref_index : (G,) int array or None
        Element to fix to 1; default the argmax of the guess, as in the reference.

    Returns
    -------
    omega : (G, K), 1 at ``ref_index``, NaN where no pixel has data.
    flux : (G, P), NaN for pixels that do not take part.
    ref_index : (G,) int64
    """
    G, P, K = diffs.shape
    omega = np.full((G, K), np.nan)
    flux = np.full((G, P), np.nan)
    kstar = np.zeros(G, dtype=np.int64)
    for g0 in range(0, G, _GUESS_CHUNK):
        sl = slice(g0, min(g0 + _GUESS_CHUNK, G))
        d = diffs[sl]
        use = valid[sl] & fit_pixel[sl][..., None]
        read_var = 2.0 * s2[sl][..., None]
        err_d = np.sqrt((read_var**2 if reference else read_var) + np.maximum(d, 0.0))
        d_floor = np.maximum(d, CLAMP_FLOOR)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            f0 = np.nanmedian(np.where(use, d / dt, np.nan), axis=-1)
            f0 = np.maximum(f0, CLAMP_FLOOR)[..., None]
            om_pix = d / (f0 * dt)
            om_err = np.abs(om_pix / d_floor) * err_d
            w = np.where(use & (om_err > 0), 1.0 / om_err**2, 0.0)
            w_sum = w.sum(axis=1)
            om0 = np.maximum((w * np.where(use, om_pix, 0.0)).sum(axis=1) / w_sum, CLAMP_FLOOR)
            has_data = w_sum > 0
            om0 = np.where(has_data, om0, np.nan)
            om_sig = np.where(has_data, w_sum**-0.5, np.inf)
            if ref_index is None:
                k = np.argmax(np.where(has_data, om0, -np.inf), axis=-1)
            else:
                k = ref_index[sl]
            scale = np.take_along_axis(om0, k[:, None], axis=-1)
            om0 = om0 / scale
            om_sig = om_sig / scale
            f0 = f0 * scale[:, :, None]
            om_use = np.where(has_data, om0, 1.0)[:, None, :]
            fl_pix = d / (om_use * dt)
            fl_err = np.sqrt(
                (fl_pix / d_floor * err_d) ** 2 + (fl_pix / om_use * om_sig[:, None, :]) ** 2
            )
            w = np.where(use & has_data[:, None, :] & (fl_err > 0), 1.0 / fl_err**2, 0.0)
            fl0 = np.maximum(
                (w * np.where(use, fl_pix, 0.0)).sum(axis=-1) / w.sum(axis=-1), CLAMP_FLOOR
            )
        omega[sl] = om0
        flux[sl] = np.where(fit_pixel[sl], fl0, np.nan)
        kstar[sl] = k
    return omega, flux, kstar


def _solve_spd(a, b):
    """Batched solve of SPD systems ``a x = b``; a singular group gets the least-squares answer."""
    try:
        return np.linalg.solve(a, b[..., None])[..., 0]
    except np.linalg.LinAlgError:
        pairs = zip(a, b, strict=True)
        return np.stack([np.linalg.lstsq(ai, bi, rcond=None)[0] for ai, bi in pairs])


def _gram(e):
    """``e[g].T @ e[g]`` for every group: one BLAS call each (a stacked matmul on the transposed
    view falls back to a loop ten times slower)."""
    out = np.empty((e.shape[0], e.shape[2], e.shape[2]))
    for g in range(e.shape[0]):
        np.matmul(e[g].T, e[g], out=out[g])
    return out


class _Normal:
    """Buffers of the normal equations for (G, P, K), reused across iterations."""

    def __init__(self, G, P, K):
        self.g = np.zeros((G, K, K))
        self.gw = np.zeros((G, K))
        self.e_hat = np.zeros((G, P, K))
        self.gf_hat = np.zeros((G, P))
        self.sqrt_d = np.zeros((G, P))

    def evaluate(self, diffs, valid, s2, dt, flux_cl, omega_cl, active, fit_pixel):
        normal_equations_kernel(
            diffs, valid, s2, dt, flux_cl, omega_cl, active, fit_pixel,
            self.g, self.gw, self.e_hat, self.gf_hat, self.sqrt_d,
        )  # fmt: skip

    def schur(self, free):
        """Schur complement and right-hand side, with the non-free elements pinned (identity)."""
        sch = self.g - _gram(self.e_hat)
        rhs = self.gw - np.einsum("gpk,gp->gk", self.e_hat, self.gf_hat)
        pinned = ~free
        sch[pinned[:, :, None] | pinned[:, None, :]] = 0.0
        G, K = free.shape
        diag = sch.reshape(G, K * K)[:, :: K + 1]
        diag[pinned] = 1.0
        rhs[pinned] = 0.0
        return sch, rhs

    def flux_step(self, d_omega):
        """Flux update from the omega update: ``(g_f - E . d_omega) / D``."""
        step = self.gf_hat - np.einsum("gpk,gk->gp", self.e_hat, d_omega)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.sqrt_d > 0, step / self.sqrt_d, 0.0)


def gauss_newton_step(diffs, valid, s2, dt, flux, omega, ref_index, fit_pixel):
    """One Schur-complement Gauss-Newton step at clamped ``(flux, omega)``; for tests.

    Returns ``(d_flux (G, P), d_omega (G, K), schur (G, K, K))``.
    """
    G, P, K = diffs.shape
    free = np.isfinite(omega) & (np.arange(K) != ref_index[:, None])
    normal = _Normal(G, P, K)
    normal.evaluate(diffs, valid, s2, dt, flux, np.nan_to_num(omega), np.ones(G, bool), fit_pixel)
    sch, rhs = normal.schur(free)
    d_omega = _solve_spd(sch, rhs)
    return normal.flux_step(d_omega), d_omega, sch


def fit_omega_groups(diffs, valid, s2, dt, fit_pixel, *, reference, rtol, max_iter, ref_index):
    """Gauss-Newton joint fit of omega and fluxes for G independent groups (spec 2.4-2.7, 9).

    Returns a dict of the ``OmegaFit`` fields that are computed here (electron units).
    """
    G, P, K = diffs.shape
    omega, flux, kstar = initial_guess(
        diffs, valid, s2, dt, fit_pixel, reference=reference, ref_index=ref_index
    )
    has_data = np.isfinite(omega)
    free = has_data & (np.arange(K) != kstar[:, None])
    nonempty = fit_pixel.any(axis=1)
    omega_cl = np.where(has_data, np.maximum(omega, CLAMP_FLOOR), 0.0)
    flux_cl = np.where(fit_pixel, np.maximum(flux, CLAMP_FLOOR), 0.0)
    prev_omega, prev_flux = omega_cl.copy(), flux_cl.copy()
    omega, flux = omega_cl.copy(), flux_cl.copy()
    scale = np.maximum(np.abs(flux_cl), np.sqrt(s2))
    tol = 1e-10 if reference else rtol
    min_iter = 3 if reference else 2
    active = nonempty.copy()
    n_iter = np.zeros(G, dtype=np.int64)
    converged = ~nonempty
    normal = _Normal(G, P, K)
    for it in range(max_iter):
        if not active.any():
            break
        normal.evaluate(diffs, valid, s2, dt, flux_cl, omega_cl, active, fit_pixel)
        sch, rhs = normal.schur(free)
        d_omega = _solve_spd(sch[active], rhs[active])
        d_flux = normal.flux_step(_scatter(d_omega, active, (G, K)))[active]
        new_omega = omega_cl[active] + d_omega
        new_flux = np.where(fit_pixel[active], flux_cl[active] + d_flux, 0.0)
        step_omega = np.where(free[active], np.abs(new_omega - prev_omega[active]), 0.0)
        step_flux = np.abs(new_flux - prev_flux[active])
        if not reference:
            step_flux = step_flux / scale[active]
        done = (step_omega.max(axis=1) < tol) & (step_flux.max(axis=1) < tol) & (it + 1 >= min_iter)
        omega[active] = new_omega
        flux[active] = new_flux
        prev_omega[active] = new_omega
        prev_flux[active] = new_flux
        omega_cl[active] = np.where(has_data[active], np.maximum(new_omega, CLAMP_FLOOR), 0.0)
        flux_cl[active] = np.where(fit_pixel[active], np.maximum(new_flux, CLAMP_FLOOR), 0.0)
        n_iter[active] = it + 1
        idx = np.flatnonzero(active)
        converged[idx[done]] = True
        active[idx[done]] = False

    if not reference:
        # The covariance at the returned solution (the reference keeps the one from the
        # linearisation before the last step, quirk Q3).
        normal.evaluate(diffs, valid, s2, dt, flux_cl, omega_cl, nonempty, fit_pixel)
    sch, _ = normal.schur(free)
    cov = np.linalg.inv(sch)
    cov[~(free[:, :, None] & free[:, None, :])] = 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        quad = np.einsum("gpl,gpl->gp", np.matmul(normal.e_hat, cov), normal.e_hat)
        flux_var = np.where(fit_pixel, (1.0 + quad) / normal.sqrt_d**2, np.nan)
    omega = np.where(has_data, omega, np.nan)
    omega[np.arange(G), kstar] = np.where(nonempty, 1.0, np.nan)
    flux = np.where(fit_pixel, flux, np.nan)
    x = np.where(has_data, omega, 0.0) * dt
    chi2 = np.empty((G, P))
    chi2_kernel(diffs, valid, s2, x, np.where(fit_pixel, flux, 0.0), fit_pixel, chi2)
    return {
        "omega": omega,
        "omega_cov": cov,
        "ref_index": kstar,
        "flux": flux,
        "flux_var": flux_var,
        "chi2": chi2,
        "n_iter": n_iter,
        "converged": converged,
        "has_data": has_data,
    }


def _scatter(values, where, shape):
    out = np.zeros(shape)
    out[where] = values
    return out


def gibbs(diffs, valid, s2, dt, fit_pixel, omega, flux, kstar, n_samples, burn_in, rng):
    """Gibbs sampler of one group (spec section 4) with the exact omega conditional (2.3).

    Each sweep draws every flux from ``N(mu_p, 1/D_p)`` given omega, rebuilds the covariances,
    then draws the free omega elements from ``N(omega_S + G_SS^-1 g_S, G_SS^-1)``: the exact
    conditional, including the coupling to the fixed element that the reference drops (Q6).
    Raw draws are stored; the positivity clamp applies only to the sampler state.

    Returns ``(omega_samples (n_samples, K), flux_samples (n_samples, P))``.
    """
    _, P, K = diffs.shape
    free = np.isfinite(omega[0]) & (np.arange(K) != kstar)
    omega_cl = np.where(np.isfinite(omega), np.maximum(omega, CLAMP_FLOOR), 0.0)
    flux_cl = np.where(fit_pixel, np.maximum(flux, CLAMP_FLOOR), 0.0)
    normal = _Normal(1, P, K)
    everything = np.ones(1, dtype=bool)
    out_omega = np.empty((n_samples, K))
    out_flux = np.empty((n_samples, P))
    idx = np.flatnonzero(free)
    for s in range(burn_in + n_samples):
        normal.evaluate(diffs, valid, s2, dt, flux_cl, omega_cl, everything, fit_pixel)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = flux_cl + np.where(fit_pixel, normal.gf_hat / normal.sqrt_d, 0.0)
            sd = np.where(fit_pixel, 1.0 / normal.sqrt_d, 0.0)
        new_flux = np.where(fit_pixel, mean + sd * rng.standard_normal(mean.shape), np.nan)
        flux_cl = np.where(fit_pixel, np.maximum(new_flux, CLAMP_FLOOR), 0.0)
        normal.evaluate(diffs, valid, s2, dt, flux_cl, omega_cl, everything, fit_pixel)
        precision = normal.g[0][np.ix_(idx, idx)]
        chol = np.linalg.cholesky(precision)
        # Mean omega_S + P^-1 g and covariance P^-1 = L^-T L^-1: draw L^-T (L^-1 g + z).
        half = np.linalg.solve(chol, normal.gw[0, idx])
        draw = omega_cl[0, idx] + np.linalg.solve(chol.T, half + rng.standard_normal(idx.size))
        new_omega = np.where(np.isfinite(omega[0]), omega_cl[0], np.nan)
        new_omega[idx] = draw
        omega_cl[0, idx] = np.maximum(draw, CLAMP_FLOOR)
        if s >= burn_in:
            out_omega[s - burn_in] = new_omega
            out_flux[s - burn_in] = new_flux[0]
    return out_omega, out_flux
