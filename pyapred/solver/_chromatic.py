"""The chromatic time-variable model: omega that changes linearly with wavelength.

Read difference ``k`` of pixel ``p`` is ``f_p (a_k + c_p b_k) dt_k``, with ``c_p`` the pixel's
normalised wavelength coordinate; ``a = omega`` (the transparency at ``c = 0``) and
``b = omega * gamma`` (its slope). The model is linear in the fluxes, so they are eliminated by
the Schur complement exactly as in the achromatic fit (``_numpy.normal_equations_kernel``); the
parameter block grows from K to 2K, with ``a[ref] = 1`` and ``b[ref] = 0`` pinned. Every pixel's
contribution to the 2K x 2K block is ``[[1, c], [c, c^2]] (x) M_p``, with ``M_p`` the pixel's
K x K block of the achromatic fit at its own omega ``a + c_p b``: so the kernel accumulates the
three moments ``sum c^j M_p`` (j = 0, 1, 2) instead of one (``docs/model.md``, "Chromatic
transparency"). The Julia twin is ``julia/src/chromatic.jl``.

Everything is in electrons, as in ``_numpy``.
"""

from __future__ import annotations

import numpy as np

from ..jit import njit, prange
from ._numpy import (
    _GROUP_BLOCK,
    STOP_BREAKDOWN,
    STOP_CONVERGED,
    STOP_EMPTY,
    STOP_LINE_SEARCH,
    STOP_MAX_ITER,
    _back_block,
    _chi2_pixel,
    _flux_scale_block,
    _inverse_spd,
    _one_block_factors,
    _padding_block,
    _solve_spd,
    _sweep_block,
    _upper_accumulate,
    _walk_block,
    _weighted_change,
)

__all__ = ["fit_chromatic_groups"]

# Step halvings tried by the line search before a group is declared stuck.
MAX_HALVINGS = 30
# Iterations before a group may be declared converged (the achromatic fit's rule).
MIN_ITER = 2


@njit(cache=True, parallel=True)
def chromatic_normal_kernel(
    diffs, valid, s2, dt, flux, a, b, coord, active, fit_pixel, out_g, out_gw, e_hat, gf_hat,
    sqrt_d,
):  # fmt: skip
    """Gauss-Newton normal equations of the chromatic model, fluxes ready for elimination.

    As ``_numpy.normal_equations_kernel`` (Gauss-Newton blocks, C built at the current point),
    with each pixel's omega ``a[g] + coord[g, p] * b[g]``: ``out_g[g, j]`` (j = 0, 1, 2) is
    ``sum_p c_p^j flux_p^2 diag(dt) C_p^-1 diag(dt)``, ``out_gw[g, j]`` (j = 0, 1) is
    ``sum_p c_p^j flux_p dt * (C_p^-1 r_p)``; ``e_hat``, ``gf_hat`` and ``sqrt_d`` are the
    per-pixel flux blocks of the omega part (the slope part is ``c_p`` times them).

    The pixels are taken ``_GROUP_BLOCK`` at a time, with the achromatic kernel's block sweeps.
    """
    G, P, K = diffs.shape
    B = min(P, _GROUP_BLOCK)
    K4 = (K + 3) // 4 * 4  # the rows of _upper_accumulate's blocks
    rows = np.flatnonzero(active)  # the threads split the active groups (as the achromatic one)
    for i_row in prange(rows.size):
        g = rows[i_row]
        use = np.empty(B, dtype=np.bool_)
        f = np.empty(B)
        var = np.empty(B)
        c = np.empty(B)
        x = np.empty((K, B))
        d = np.empty((K, B))
        ok = np.empty((K, B), dtype=np.bool_)
        low = np.empty((K, B))
        inv = np.empty((K, B))
        yx = np.empty((K, B))
        yr = np.empty((K, B))
        u = np.empty((K, B))
        z = np.empty((K, B))
        diag = np.empty((K, B))
        running = np.empty((K, B))
        first = np.empty((K, B), dtype=np.int64)
        one_block = np.empty(B, dtype=np.bool_)
        dd = np.empty(B)
        gf = np.empty(B)
        inv_sd = np.empty(B)
        f2 = np.empty(B)
        # The C^-1 factors as in normal_equations_kernel: one-block pixels become columns of
        # `left` and `right` (K4, B), summed by tiles for each moment (the rows past K stay
        # zero); the other pixels are summed here.
        left = np.zeros((K4, B))
        right = np.zeros((K4, B))
        weighted = np.zeros((K4, B))
        acc = np.zeros((3, K, K))  # the pixels that are not one block, lower triangle
        acc_tiles = np.zeros((3, K4, K4))  # the one-block pixels, upper triangle
        accw = np.zeros((2, K))
        for p0 in range(0, P, B):
            n = min(B, P - p0)
            if not fit_pixel[g, p0 : p0 + n].any():  # padding: nothing to add
                _padding_block(g, p0, n, sqrt_d, gf_hat, e_hat)
                continue
            _gather_chromatic_block(diffs, valid, fit_pixel, flux, s2, coord, a, b, dt, g, p0,
                                    use, f, var, c, x, d, ok)  # fmt: skip
            _sweep_block(x, d, ok, f, var, low, inv, yx, yr, dd, gf)
            _back_block(low, inv, yx, yr, u, z, diag)
            _walk_block(low, running, first, one_block)
            _flux_scale_block(g, p0, n, use, dd, gf, sqrt_d, gf_hat, inv_sd)
            for i in range(n):
                p = p0 + i
                fi = f[i]
                for k in range(K):
                    e_hat[g, p, k] = fi * dt[k] * u[k, i] * inv_sd[i] if ok[k, i] else 0.0
                for k in range(K):
                    w = fi * dt[k] * z[k, i] if ok[k, i] else 0.0
                    accw[0, k] += w
                    accw[1, k] += c[i] * w
            _one_block_factors(n, use, one_block, ok, f, dt, running, diag, f2, left, right)
            _upper_accumulate(left, right, n, acc_tiles[0])
            for m in (1, 2):  # the moments c^m: c is 0 for the pixels not used
                for j in range(K):
                    for i in range(n):
                        weighted[j, i] = left[j, i] * (c[i] if m == 1 else c[i] * c[i])
                _upper_accumulate(weighted, right, n, acc_tiles[m])
            for i in range(n):
                if not use[i] or one_block[i]:
                    continue
                ci = c[i]
                for j in range(K):
                    rj = dt[j] * running[j, i] * diag[j, i] if ok[j, i] else 0.0
                    for m in range(first[j, i], j + 1):
                        li = f2[i] * dt[m] / running[m, i] if ok[m, i] else 0.0
                        term = li * rj
                        acc[0, j, m] += term
                        acc[1, j, m] += ci * term
                        acc[2, j, m] += ci * ci * term
        for m in range(3):
            for j in range(K):
                for i in range(j + 1):
                    value = acc[m, j, i] + acc_tiles[m, i, j]
                    out_g[g, m, i, j] = value
                    out_g[g, m, j, i] = value
        for j in range(K):
            out_gw[g, 0, j] = accw[0, j]
            out_gw[g, 1, j] = accw[1, j]


@njit(cache=True, inline="always")
def _gather_chromatic_block(diffs, valid, fit_pixel, flux, s2, coord, a, b, dt, g, p0, use, f,
                            var, c, x, d, ok):  # fmt: skip
    """:func:`~pyapred.solver._numpy._gather_fit_block` with each pixel's own omega,
    ``a + c_p b``; ``c`` (B,) receives the coordinates (0 for pixels not used)."""
    P, K = diffs.shape[1], diffs.shape[2]
    B = use.shape[0]
    for i in range(B):
        p = p0 + i
        use[i] = p < P and fit_pixel[g, p]
        f[i] = flux[g, p] if use[i] else 0.0
        var[i] = s2[g, p] if use[i] else 0.0
        c[i] = coord[g, p] if use[i] else 0.0
    for i in range(B):
        p = p0 + i
        for k in range(K):
            good = use[i] and valid[g, p, k]
            ok[k, i] = good
            x[k, i] = (a[g, k] + c[i] * b[g, k]) * dt[k] if good else 0.0
            d[k, i] = diffs[g, p, k] if good else 0.0


@njit(cache=True, parallel=True)
def chromatic_chi2_kernel(diffs, valid, s2, dt, flux, a, b, coord, fit_pixel, out):
    """Eq-24 chi2 of every fitted pixel at its own omega ``a[g] + coord[g, p] * b[g]``."""
    G, P, K = diffs.shape
    for g in prange(G):
        work = np.empty((6, K))
        xv = np.empty(K)
        for p in range(P):
            if not fit_pixel[g, p]:
                out[g, p] = np.nan
                continue
            c = coord[g, p]
            for k in range(K):
                xv[k] = (a[g, k] + c * b[g, k]) * dt[k] if valid[g, p, k] else 0.0
            out[g, p] = _chi2_pixel(diffs[g, p], xv, valid[g, p], s2[g, p], flux[g, p], work)


@njit(cache=True, parallel=True)
def chromatic_objective_change_kernel(
    diffs, valid, s2, dt, flux, a, b, coord, d_flux, d_a, d_b, active, fit_pixel, out
):  # fmt: skip
    """Change of each group's chi2, C frozen at the current point, over a trial step.

    As ``_numpy.objective_change_kernel``: ``sum_p (m' - m)^T C_p^-1 (m' - m - 2 r_p)``, from
    the model change itself so that its sign is right near convergence.
    """
    G, P, K = diffs.shape
    out[:] = 0.0
    rows = np.flatnonzero(active)  # the threads split the active groups
    for i_row in prange(rows.size):
        g = rows[i_row]
        xv = np.empty(K)
        dm = np.empty(K)
        q = np.empty(K)
        total = 0.0
        for p in range(P):
            if not fit_pixel[g, p]:
                continue
            f = flux[g, p]
            df = d_flux[g, p]
            c = coord[g, p]
            vmask = valid[g, p]
            for k in range(K):
                ok = vmask[k]
                xk = (a[g, k] + c * b[g, k]) * dt[k] if ok else 0.0
                dxk = (d_a[g, k] + c * d_b[g, k]) * dt[k] if ok else 0.0
                xv[k] = xk
                dm[k] = df * xk + f * dxk + df * dxk if ok else 0.0
                q[k] = dm[k] - 2.0 * (diffs[g, p, k] - f * xk) if ok else 0.0
            total += _weighted_change(dm, q, xv, vmask, f, s2[g, p])
        out[g] = total


class _ChromaticNormal:
    """Buffers of the chromatic normal equations for (G, P, K), reused across iterations."""

    def __init__(self, G, P, K):
        self.g = np.zeros((G, 3, K, K))
        self.gw = np.zeros((G, 2, K))
        self.e_hat = np.zeros((G, P, K))
        self.gf_hat = np.zeros((G, P))
        self.sqrt_d = np.zeros((G, P))

    def evaluate(self, diffs, valid, s2, dt, flux, a, b, coord, active, fit_pixel):
        chromatic_normal_kernel(diffs, valid, s2, dt, flux, a, b, coord, active, fit_pixel,
                                self.g, self.gw, self.e_hat, self.gf_hat, self.sqrt_d)  # fmt: skip

    def schur(self, coord, free, rows):
        """The 2K x 2K Schur complement and right-hand side of the groups ``rows``; the pinned
        parameters (``~free``, (G, 2K)) get an identity row and a zero right-hand side."""
        G, P, K = self.e_hat.shape
        sch = np.zeros((G, 2 * K, 2 * K))
        rhs = np.zeros((G, 2 * K))
        for g in rows:
            e = self.e_hat[g]
            ce = e * coord[g][:, None]
            m0, m1, m2 = self.g[g]
            sch[g, :K, :K] = m0 - e.T @ e
            sch[g, :K, K:] = m1 - e.T @ ce
            sch[g, K:, :K] = sch[g, :K, K:].T
            sch[g, K:, K:] = m2 - ce.T @ ce
            rhs[g, :K] = self.gw[g, 0] - e.T @ self.gf_hat[g]
            rhs[g, K:] = self.gw[g, 1] - ce.T @ self.gf_hat[g]
        pinned = ~free
        sch[pinned[:, :, None] | pinned[:, None, :]] = 0.0
        diag = sch.reshape(G, 4 * K * K)[:, :: 2 * K + 1]
        diag[pinned] = 1.0
        rhs[pinned] = 0.0
        return sch, rhs

    def flux_step(self, coord, d_a, d_b, rows):
        """Flux update ``(g_f - E . (d_a + c d_b)) / D`` of the groups ``rows``."""
        step = np.zeros(self.gf_hat.shape)
        for g in rows:
            e = self.e_hat[g]
            step[g] = self.gf_hat[g] - e @ d_a[g] - coord[g] * (e @ d_b[g])
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.sqrt_d > 0, step / self.sqrt_d, 0.0)


def fit_chromatic_groups(diffs, valid, s2, dt, fit_pixel, coord, omega, flux, ref_index, *,
                         rtol=1e-8, max_iter=50):  # fmt: skip
    """Gauss-Newton fit of the chromatic model from an achromatic solution, per group.

    Parameters
    ----------
    diffs, valid, s2 : ndarray, ``(G, P, K)``, ``(G, P, K)``, ``(G, P)``
        Differences (e-), the differences to use, single-read variance (e-^2).
    dt : ndarray, ``(K,)``
    fit_pixel : ndarray of bool, ``(G, P)``
    coord : ndarray, ``(G, P)``
        Normalised wavelength coordinate of each pixel.
    omega, flux : ndarray, ``(G, K)``, ``(G, P)``
        The achromatic solution (the start), ``omega[g, ref_index[g]] == 1``; NaN where there is
        no data.
    ref_index : ndarray of int, ``(G,)``
    rtol, max_iter
        Convergence: every parameter step below ``rtol`` and every flux step below ``rtol``
        times ``max(flux, read noise)``, as in the achromatic fit.

    Returns
    -------
    dict
        ``omega``, ``slope`` (G, K): ``a`` and ``b`` (NaN where there is no data; ``b[ref] = 0``);
        ``cov`` (G, 2K, 2K) of ``(a, b)``, pinned rows and columns 0; ``flux``, ``flux_var``,
        ``chi2`` (G, P); ``n_iter``, ``converged``, ``stop_reason``.
    """
    G, P, K = diffs.shape
    coord = np.ascontiguousarray(np.where(fit_pixel, coord, 0.0), dtype=np.float64)
    has_data = np.isfinite(omega) & (valid & fit_pixel[:, :, None]).any(axis=1)
    nonempty = fit_pixel.any(axis=1)
    kstar = np.asarray(ref_index, dtype=np.int64)
    ref = np.arange(K)[None, :] == kstar[:, None]
    free_a = has_data & ~ref
    # The slope of an element is free where the pixels that see it span more than one
    # wavelength; otherwise it is pinned at 0 (one coordinate cannot tell a from b). Where the
    # reference element itself is seen at one coordinate only, every slope is pinned: gamma is
    # measured relative to the reference read.
    spread = np.zeros((G, K), dtype=bool)
    for g in np.flatnonzero(nonempty):
        seen = valid[g] & fit_pixel[g][:, None]
        c = coord[g][:, None]
        lo = np.where(seen, c, np.inf).min(axis=0)
        hi = np.where(seen, c, -np.inf).max(axis=0)
        spread[g] = hi > lo
    free_b = free_a & spread & spread[np.arange(G), kstar][:, None]
    free = np.concatenate([free_a, free_b], axis=1)
    a = np.where(has_data, omega, 0.0).astype(np.float64)
    b = np.zeros((G, K))
    f = np.where(fit_pixel, flux, 0.0).astype(np.float64)
    # Flux steps are judged against each pixel's flux or read noise (the achromatic fit's rule).
    scale = np.maximum(np.abs(f), np.sqrt(s2))
    normal = _ChromaticNormal(G, P, K)
    active = nonempty.copy()
    converged = np.zeros(G, dtype=bool)
    reason = np.where(nonempty, STOP_MAX_ITER, STOP_EMPTY).astype(np.int64)
    n_iter = np.zeros(G, dtype=np.int64)
    change = np.zeros(G)
    for it in range(int(max_iter)):
        if not active.any():
            break
        idx = np.flatnonzero(active)
        normal.evaluate(diffs, valid, s2, dt, f, a, b, coord, active, fit_pixel)
        sch, rhs = normal.schur(coord, free, idx)
        step = np.zeros((G, 2 * K))
        step[idx] = _solve_spd(sch[idx], rhs[idx])
        broken = ~np.isfinite(step[idx]).all(axis=1)
        if broken.any():
            reason[idx[broken]] = STOP_BREAKDOWN
            active[idx[broken]] = False
            step[idx[broken]] = 0.0
            idx = idx[~broken]
        d_a, d_b = step[:, :K], step[:, K:]
        d_f = np.where(fit_pixel, normal.flux_step(coord, d_a, d_b, idx), 0.0)
        # Line search: halve the step until the chi2 (C frozen here) does not increase; not for a
        # step already below the tolerance (its objective change is at the rounding level).
        with np.errstate(invalid="ignore", divide="ignore"):
            full = np.maximum(
                np.abs(step).max(axis=1, initial=0.0),
                np.where(fit_pixel, np.abs(d_f) / scale, 0.0).max(axis=1, initial=0.0),
            )
        lam = np.ones(G)
        trying = np.zeros(G, dtype=bool)
        trying[idx] = full[idx] >= rtol
        for _ in range(MAX_HALVINGS):
            chromatic_objective_change_kernel(
                diffs, valid, s2, dt, f, a, b, coord, lam[:, None] * d_f, lam[:, None] * d_a,
                lam[:, None] * d_b, trying, fit_pixel, change,
            )  # fmt: skip
            trying &= change > 0.0
            if not trying.any():
                break
            lam[trying] *= 0.5
        lam[trying] = 0.0
        a[idx] += lam[idx, None] * d_a[idx]
        b[idx] += lam[idx, None] * d_b[idx]
        f[idx] += lam[idx, None] * d_f[idx]
        n_iter[idx] = it + 1
        size_omega = np.abs(lam[idx, None] * step[idx]).max(axis=1, initial=0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel_flux = np.abs(lam[idx, None] * d_f[idx]) / scale[idx]
        size_flux = np.where(fit_pixel[idx], rel_flux, 0.0).max(axis=1, initial=0.0)
        # A step the line search rejected entirely (lam = 0) is no sign of convergence.
        done = (size_omega < rtol) & (size_flux < rtol) & (it + 1 >= MIN_ITER) & (lam[idx] > 0)
        converged[idx[done]] = True
        reason[idx[done]] = STOP_CONVERGED
        stuck = idx[(lam[idx] == 0.0) & ~done]
        reason[stuck] = STOP_LINE_SEARCH
        active[idx[done]] = False
        active[stuck] = False
    # The covariance at the solution.
    normal.evaluate(diffs, valid, s2, dt, f, a, b, coord, nonempty, fit_pixel)
    sch, _ = normal.schur(coord, free, np.flatnonzero(nonempty))
    cov = _inverse_spd(sch)
    cov[~(free[:, :, None] & free[:, None, :])] = 0.0
    e_full = np.concatenate([normal.e_hat, normal.e_hat * coord[:, :, None]], axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        quad = np.einsum("gpl,gpl->gp", np.matmul(e_full, cov), e_full)
        flux_var = np.where(fit_pixel, (1.0 + quad) / normal.sqrt_d**2, np.nan)
    chi2 = np.empty((G, P))
    chromatic_chi2_kernel(diffs, valid, s2, dt, f, a, b, coord, fit_pixel, chi2)
    a_out = np.where(has_data, a, np.nan)
    b_out = np.where(has_data, b, np.nan)
    finite = np.isfinite(cov).all(axis=(1, 2)) & np.isfinite(np.where(has_data, a, 0)).all(1)
    finite &= np.isfinite(np.where(has_data, b, 0)).all(1)
    for value in (f, flux_var, chi2):
        finite &= np.isfinite(np.where(fit_pixel, value, 0.0)).all(axis=1)
    broken = nonempty & ~finite
    reason[broken & converged] = STOP_BREAKDOWN
    converged[broken] = False
    return {
        "omega": a_out,
        "slope": b_out,
        "cov": cov,
        "free": free,
        "flux": np.where(fit_pixel, f, np.nan),
        "flux_var": flux_var,
        "chi2": chi2,
        "n_iter": n_iter,
        "converged": converged,
        "stop_reason": reason,
    }
