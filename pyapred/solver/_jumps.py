"""Jump (cosmic-ray) search inside the constant and time-variable ramp models: Numba kernels.

Brandt's likelihood search (``docs/jumps.md``, ``../shared/docs/math-spec.md`` section 1.6) with
the design vector ``x = omega * dt`` in place of the vector of ones. For each clean difference k
the pixel is refitted with one extra parameter, a jump ``b`` in difference k (model
``a x + b e_k``), and optionally with two jumps in the adjacent differences k, k+1. The drop in
chi2 has a closed form in the quantities of one tridiagonal solve (section 1.5): with
``u = C^-1 x``, ``z = C^-1 d``, ``a = x^T z / x^T u`` and ``S = [C^-1]_JJ - u_J u_J^T / x^T u``
for the jump set J,

    delta_chi2 = q^T S^-1 q,    q = z_J - a u_J.

The difference (or pair) with the largest drop, after subtracting each option's threshold, is
masked and the search repeats on that pixel until nothing passes or at most 3 differences remain.
As in Brandt's code, the covariance is built at the median difference rate; a pixel where that
search flags anything is searched again from the start, with the covariance at the GLS rate of
the differences left clean (:func:`search_pixel`). The jump sizes are fitted at the end, all
jumps at once, against the final flux.
"""

from __future__ import annotations

import math

import numpy as np

from ..jit import njit, prange
from ._flags import Flag
from ._numpy import (
    _GROUP_BLOCK,
    _back_block,
    _backward,
    _block_differences,
    _block_gls,
    _block_median_rate,
    _block_values,
    _center_network,
    _factor,
    _forward,
    _gather_block,
    _gather_group_block,
    _median_rate,
    finish_groups,
    fit_omega_groups,
)

_JUMP_DETECTED = int(Flag.JUMP_DETECTED)
_FEW_CLEAN_DIFFS = int(Flag.FEW_CLEAN_DIFFS)
_TOO_FEW_DIFFS = int(Flag.TOO_FEW_DIFFS)
# The search stops once this many clean differences or fewer are left (spec section 1.6).
MIN_CLEAN_DIFFS = 3
# Rows of search_pixel's scratch: search_at_rate's 10, and the pixel's own d, x and valid.
_N_WORK = 13
# Pixels per block of the jump search (a multiple of 8: the blocks write whole bytes of the
# packed mask). Smaller than the extraction's block: the screen holds seven (K, B) arrays, which
# at this size stay in a core's 1 MB L2 cache.
_SEARCH_BLOCK = 256
# Pixels whose reads :func:`jump_sizes_kernel` gathers together.
_SIZES_CHUNK = 64
# ``max_jumps`` meaning "no limit".
NO_LIMIT = np.iinfo(np.int64).max


def chi2_thresholds(threshold: float) -> tuple[float, float]:
    """Chi2-drop thresholds for one jump and for two adjacent jumps at ``threshold`` sigma.

    One jump: ``threshold**2`` (chi2 with 1 degree of freedom). Two jumps: the chi2 with 2 degrees
    of freedom at the same two-sided tail probability, ``-2 ln erfc(threshold / sqrt 2)``, as in
    stcal (23.8 for 4.5 sigma).
    """
    from scipy.special import log_ndtr  # erfc(t / sqrt 2) = 2 Phi(-t), without underflow

    return threshold**2, -2.0 * (math.log(2.0) + float(log_ndtr(-threshold)))


@njit(cache=True, error_model="numpy")
def search_pixel(d, x, valid, s2, rate, thr_one, thr_two, two_adjacent, max_jumps, work):
    """The jump search of one pixel: :func:`search_at_rate` at ``rate``, and where that flags
    anything, again from the start at the GLS rate of the differences it left clean.

    ``rate`` is the median of the differences (Brandt's guess, spec section 1.6). Where read
    noise rules, the median scatters several times more than the GLS rate (at 1 e- per read,
    read noise 5 e- and 50 reads: 0.71 against 0.16 e- per read), and a low draw underrates the
    photon noise, so that clean differences pass the threshold: 0.64 % of such pixels were
    flagged, against the 0.03 % that 49 tests at 4.5 sigma give. The second search, at the
    clean rate, leaves 0.05 % (``docs/jumps.md``). Pixels the first search leaves alone keep
    their result: a second search could only find jumps where the median was too high, where
    the search is conservative.

    Arguments as in :func:`search_at_rate`, with ``work`` (13, K) float64 scratch: its rows
    10-12 keep the pixel's own ``d``, ``x`` and ``valid`` for the second search.

    Returns
    -------
    int
        Number of differences flagged.
    """
    K = d.shape[0]
    d0, x0, valid0 = work[10], work[11], work[12]
    for k in range(K):
        d0[k] = d[k]
        x0[k] = x[k]
        valid0[k] = 1.0 if valid[k] else 0.0
    n_flagged = search_at_rate(d, x, valid, s2, rate, thr_one, thr_two, two_adjacent, max_jumps,
                               work)  # fmt: skip
    if n_flagged == 0:
        return 0
    clean_rate = _gls_rate(d, x, valid, s2, rate)
    if not math.isfinite(clean_rate):  # no design left (x 0 on every clean difference)
        return n_flagged
    for k in range(K):
        d[k] = d0[k]
        x[k] = x0[k]
        valid[k] = valid0[k] != 0.0
    return search_at_rate(d, x, valid, s2, max(clean_rate, 0.0), thr_one, thr_two, two_adjacent,
                          max_jumps, work)  # fmt: skip


@njit(cache=True, error_model="numpy")
def _gls_rate(d, x, valid, s2, rate):
    """GLS rate ``x^T C^-1 d / x^T C^-1 x`` of the ``valid`` differences, C at ``rate`` (the
    forward sweep of :func:`search_at_rate`, with ``d`` and ``x`` 0 where not valid); NaN
    where ``x^T C^-1 x`` is not > 0."""
    K = d.shape[0]
    xu = 0.0
    xz = 0.0
    piv = 1.0
    yx = 0.0
    yd = 0.0
    for k in range(K):
        alpha = max(rate * x[k], 0.0) + 2.0 * s2 if valid[k] else 1.0
        beta = -s2 if (k > 0 and valid[k] and valid[k - 1]) else 0.0
        lk = beta / piv
        piv = alpha - lk * beta
        yx = x[k] - lk * yx
        yd = d[k] - lk * yd
        xu += yx * yx / piv
        xz += yx * yd / piv
    return xz / xu if xu > 0.0 else math.nan


# error_model="numpy": IEEE division without Python's zero-division checks. The drops are
# computed at every difference, and those with a zero denominator are then left out.
@njit(cache=True, error_model="numpy")
def search_at_rate(d, x, valid, s2, rate, thr_one, thr_two, two_adjacent, max_jumps, work):
    """Brandt's iterative jump search on one pixel's differences, with the covariance at
    ``rate``.

    Parameters
    ----------
    d, x : (K,) float64
        Differences (e-) and design ``omega * dt``; both 0 where not ``valid``. Entries of flagged
        differences are set to 0 in place.
    valid : (K,) bool
        Usable differences; flagged ones are set to False in place.
    s2, rate : float
        Single-read noise variance (e-^2) and the rate at which the photon noise is evaluated.
    thr_one, thr_two : float
        Chi2-drop thresholds (:func:`chi2_thresholds`).
    two_adjacent : bool
        Also try two jumps in adjacent differences.
    max_jumps : int
        Stop once this many differences are flagged (a pair may pass it by one).
    work : (10, K) float64 scratch (or larger)

    Returns
    -------
    int
        Number of differences flagged.
    """
    K = d.shape[0]
    alpha, beta, piv, low, back = work[0], work[1], work[2], work[3], work[4]
    yx, yd, u, z, cinv = work[5], work[6], work[7], work[8], work[9]
    n_valid = 0
    for k in range(K):
        if valid[k]:
            n_valid += 1
    n_flagged = 0
    while n_valid > MIN_CLEAN_DIFFS and n_flagged < max_jumps:
        for k in range(K):  # C(rate), as _factor builds it
            alpha[k] = max(rate * x[k], 0.0) + 2.0 * s2 if valid[k] else 1.0
        for k in range(K - 1):
            beta[k] = -s2 if (valid[k] and valid[k + 1]) else 0.0
        beta[K - 1] = 0.0
        # Two independent recursions share one loop, so that their divisions overlap: downwards
        # the L D L^T pivots (_factor) with the forward substitutions of x and d and the sums
        # x^T C^-1 x, x^T C^-1 d; upwards the pivots of the backward factorisation, for the
        # diagonal of C^-1 (spec section 1.5). Each value is computed as in the separate loops.
        xu = 0.0
        xz = 0.0
        piv[0] = alpha[0]
        low[0] = 0.0
        yx[0] = x[0]
        yd[0] = d[0]
        xu += yx[0] * yx[0] / piv[0]
        xz += yx[0] * yd[0] / piv[0]
        back[K - 1] = alpha[K - 1]
        for k in range(1, K):
            lk = beta[k - 1] / piv[k - 1]
            low[k] = lk
            piv[k] = alpha[k] - lk * beta[k - 1]
            yx[k] = x[k] - lk * yx[k - 1]
            yd[k] = d[k] - lk * yd[k - 1]
            xu += yx[k] * yx[k] / piv[k]
            xz += yx[k] * yd[k] / piv[k]
            j = K - 1 - k
            back[j] = alpha[j] - beta[j] * beta[j] / back[j + 1]
        if not xu > 0.0:
            break
        a = xz / xu
        u[K - 1] = yx[K - 1] / piv[K - 1]  # the backward substitutions (_backward), together
        z[K - 1] = yd[K - 1] / piv[K - 1]
        for k in range(K - 2, -1, -1):
            u[k] = yx[k] / piv[k] - low[k + 1] * u[k + 1]
            z[k] = yd[k] / piv[k] - low[k + 1] * z[k + 1]
        for k in range(K):
            den = alpha[k]
            if k > 0:
                den -= beta[k - 1] * beta[k - 1] / piv[k - 1]
            if k < K - 1:
                den -= beta[k] * beta[k] / back[k + 1]
            cinv[k] = 1.0 / den

        # The one- and two-jump chi2 drops at every difference, without branches so that the
        # loops vectorise; 0 where a drop is not defined (an unusable difference, s or det not
        # positive), which never wins. Then the first largest of each. The scratch rows reused
        # here are not read again in this round.
        drop_one, drop_two, s_k, q_k = alpha, back, yx, yd
        for k in range(K):
            s = cinv[k] - u[k] * u[k] / xu
            q = z[k] - a * u[k]
            s_k[k] = s
            q_k[k] = q
            drop_one[k] = q * q / s if (valid[k] and s > 0.0) else 0.0
        best_one = 0.0
        k_one = -1
        for k in range(K):
            if drop_one[k] > best_one:
                best_one, k_one = drop_one[k], k
        best_two = 0.0
        k_two = -1
        if two_adjacent:
            for k in range(K - 1):
                s11 = s_k[k]
                s22 = s_k[k + 1]
                s12 = -cinv[k + 1] * beta[k] / piv[k] - u[k] * u[k + 1] / xu
                det = s11 * s22 - s12 * s12
                q1 = q_k[k]
                q2 = q_k[k + 1]
                drop = (s22 * q1 * q1 - 2.0 * s12 * q1 * q2 + s11 * q2 * q2) / det
                drop_two[k] = drop if (valid[k] and valid[k + 1] and det > 0.0) else 0.0
            for k in range(K - 1):
                if drop_two[k] > best_two:
                    best_two, k_two = drop_two[k], k

        # Two jumps always fit better than one: compare them after subtracting their thresholds.
        if k_one >= 0 and best_one > thr_one and best_one - thr_one > best_two - thr_two:
            valid[k_one] = False
            d[k_one] = 0.0
            x[k_one] = 0.0
            n_valid -= 1
            n_flagged += 1
        elif k_two >= 0 and best_two > thr_two:
            for k in range(k_two, k_two + 2):
                valid[k] = False
                d[k] = 0.0
                x[k] = 0.0
            n_valid -= 2
            n_flagged += 2
        else:
            break
    return n_flagged


# The block screen flags a pixel for the full search when its best chi2 drop is within this
# relative margin of the threshold, so that its rounding can never hide a jump.
_SCREEN_MARGIN = 1e-9


# error_model="numpy": IEEE division without Python's zero-division checks, which would keep
# these loops from vectorising.
@njit(cache=True, error_model="numpy")
def _block_needs_search(d, x, valid, n_valid, s2, rate, thr_one, thr_two, two_adjacent, max_jumps,
                        out, sxx, sxd):  # fmt: skip
    """Whether :func:`search_pixel` may flag anything, for every pixel of a block ``(K, B)``.

    ``out[p]`` is True where the first round of the search could flag a difference: only those
    pixels need :func:`search_pixel`, which repeats that round and goes on. The round flags
    something exactly when the best one-jump drop passes ``thr_one`` or the best two-jump drop
    passes ``thr_two``; here those drops are computed across the block's pixels at each
    difference, branch-free (which the compiler vectorises), and compared with
    thresholds lowered by ``_SCREEN_MARGIN``, so the screen never misses a pixel that the search
    would flag. ``n_valid`` (the number of valid differences), ``s2`` and ``rate`` are (B,).

    ``sxx``, ``sxd`` (B,) receive ``x^T C^-1 x`` and ``x^T C^-1 d`` at ``rate``: the sums of the
    first GLS pass (``_numpy._block_pass``), from the same forward sweep, bit for bit.
    """
    K, B = d.shape
    inv_piv = np.empty((K, B))
    low = np.empty((K, B))
    yx = np.empty((K, B))
    yd = np.empty((K, B))
    u = np.empty((K, B))
    z = np.empty((K, B))
    cdiag = np.empty((K, B))  # the diagonal of C^-1
    xu = np.empty(B)
    xz = np.empty(B)
    # L D L^T of C(rate), forward substitutions of x and d, and the sums; the first difference
    # apart, so that the loop over k carries no branch (the same arithmetic: its low is 0).
    for p in range(B):
        ip = 1.0 / (max(rate[p] * x[0, p], 0.0) + 2.0 * s2[p] if valid[0, p] != 0 else 1.0)
        low[0, p] = 0.0
        inv_piv[0, p] = ip
        yx[0, p] = x[0, p]
        yd[0, p] = d[0, p]
        xu[p] = x[0, p] * x[0, p] * ip
        xz[p] = x[0, p] * d[0, p] * ip
    for k in range(1, K):
        for p in range(B):
            # The masks' bytes combined with &: as Python bools, LLVM's cost model kept the
            # loop out of vectors (AMD EPYC Zen 3; _numpy._block_pass).
            a = max(rate[p] * x[k, p], 0.0) + 2.0 * s2[p] if valid[k, p] != 0 else 1.0
            b = -s2[p] if (valid[k, p] & valid[k - 1, p]) != 0 else 0.0
            lk = b * inv_piv[k - 1, p]
            low[k, p] = lk
            ip = 1.0 / (a - lk * b)
            inv_piv[k, p] = ip
            fx = x[k, p] - lk * yx[k - 1, p]
            fd = d[k, p] - lk * yd[k - 1, p]
            yx[k, p] = fx
            yd[k, p] = fd
            xu[p] += fx * fx * ip
            xz[p] += fx * fd * ip
    # Backward substitutions, and the diagonal of C^-1 by Takahashi's recursion (no division).
    _back_block(low, inv_piv, yx, yd, u, z, cdiag)
    inv_xu = np.empty(B)
    slope = np.empty(B)
    for p in range(B):
        inv_xu[p] = 1.0 / xu[p] if xu[p] > 0.0 else 0.0
        slope[p] = xz[p] * inv_xu[p]
    one_limit = thr_one * (1.0 - _SCREEN_MARGIN)
    two_limit = thr_two * (1.0 - _SCREEN_MARGIN)
    hit = np.zeros(B, dtype=np.bool_)
    s_prev = np.zeros(B)  # the previous difference's s and q
    q_prev = np.zeros(B)
    for k in range(K):  # the best one- and two-adjacent-jump chi2 drops
        for p in range(B):
            cinv = cdiag[k, p]
            s = cinv - u[k, p] * u[k, p] * inv_xu[p]
            q = z[k, p] - slope[p] * u[k, p]
            # The one-jump drop q^2 / s against the lowered threshold, without the division.
            hit[p] |= (valid[k, p] != 0) & (s > 0.0) & (q * q > one_limit * s)
            if two_adjacent and k > 0:
                # (C^-1)_{k-1,k} = -low_k diag_k (the walk of spec section 1.5).
                s12 = -cinv * low[k, p] - u[k - 1, p] * u[k, p] * inv_xu[p]
                det = s_prev[p] * s - s12 * s12
                pair = ((valid[k - 1, p] & valid[k, p]) != 0) & (det > 0.0)
                q1 = q_prev[p]
                # The two-jump drop (...) / det against the lowered threshold, likewise.
                drop = s * q1 * q1 - 2.0 * s12 * q1 * q + s_prev[p] * q * q
                hit[p] |= pair & (drop > two_limit * det)
            s_prev[p] = s
            q_prev[p] = q
    for p in range(B):
        searched = n_valid[p] > MIN_CLEAN_DIFFS and max_jumps > 0 and xu[p] > 0.0
        # A pair's drop starts at 0 in the search: a threshold below 0 flags every pixel.
        out[p] = searched and (hit[p] or two_limit < 0.0)
        sxx[p] = xu[p]
        sxd[p] = xz[p]


@njit(cache=True, inline="always")
def _first_pass_sums(d, x, valid, s2, rate, i):
    """``(x^T C^-1 x, x^T C^-1 d)`` of pixel ``i`` of a block ``(K, B)``, C at ``rate``: one
    pixel of ``_numpy._block_pass``, with its arithmetic in its order."""
    K = d.shape[0]
    sxx = 0.0
    sxd = 0.0
    inv_prev = 0.0
    yx_prev = 0.0
    yd_prev = 0.0
    for k in range(K):
        ok = valid[k, i] != 0
        alpha = max(rate * x[k, i], 0.0) + 2.0 * s2 if ok else 1.0
        beta = -s2 if (ok and k > 0 and valid[k - 1, i] != 0) else 0.0
        low = beta * inv_prev
        inv = 1.0 / (alpha - low * beta)
        yx = x[k, i] - low * yx_prev
        yd = d[k, i] - low * yd_prev
        sxx += yx * yx * inv
        sxd += yx * yd * inv
        inv_prev = inv
        yx_prev = yx
        yd_prev = yd
    return sxx, sxd


@njit(cache=True)
def _jump_sizes(d, x, valid, jumps, s2, flux, work, out):
    """Fitted size (e-) of each flagged jump, given the final fit of the clean differences.

    With every flagged difference j free, its estimate is ``d_j - f x_j - E[n_j | clean
    residuals]``; the conditional mean needs only the read-noise covariance ``-s2`` with the clean
    neighbours, times ``w = C^-1 r`` of the clean differences (C at the final flux).
    ``d`` and ``x`` hold the data of the clean and the flagged differences; ``out[j]`` is set
    for the flagged ones.
    """
    K = d.shape[0]
    alpha, beta, piv, low, r, y, w = work[0], work[1], work[2], work[3], work[4], work[5], work[6]
    _factor(x, valid, s2, flux, alpha, beta, piv, low)
    for k in range(K):
        r[k] = d[k] - flux * x[k] if valid[k] else 0.0
    _forward(low, r, y)
    _backward(low, piv, y, w)
    for k in range(K):
        if jumps[k]:
            noise = 0.0
            if k > 0 and valid[k - 1]:
                noise -= s2 * w[k - 1]
            if k < K - 1 and valid[k + 1]:
                noise -= s2 * w[k + 1]
            out[k] = d[k] - flux * x[k] - noise


@njit(cache=True, inline="always")
def _pack_unused(usable, out):
    """``out[:] = np.packbits(usable == 0)`` for a row of 0/1 bytes (B,): bit 7 - j of byte i
    is 1 where difference ``8 i + j`` is not used.

    Each whole byte takes eight bytes of ``usable`` as one 64-bit word, flipped, and one
    multiplication that carries byte j to bit 63 - j (no two products overlap below bit 64);
    bit by bit, with a condition on each, the packing took 5 % of ``find_jumps`` (0.078 s
    against 0.002 s for a 2048 x 2048 chip's bits, one thread, Zen 4).
    """
    n = usable.shape[0]
    whole = n // 8
    for byte in range(whole):
        j = byte * 8
        word = np.uint64(0)
        for bit in range(8):
            word |= np.uint64(usable[j + bit]) << np.uint64(8 * bit)
        word ^= np.uint64(0x0101010101010101)
        out[byte] = np.uint8((word * np.uint64(0x8040201008040201)) >> np.uint64(56))
    if whole < out.shape[0]:  # the block's last pixels, fewer than eight
        bits = 0
        for i in range(8 * whole, n):
            bits |= (1 - usable[i]) << (7 - (i - 8 * whole))
        out[whole] = bits


@njit(cache=True, parallel=True)
def find_jumps_kernel(
    reads,
    bad,
    use_mask,
    omega,
    groups,
    dt,
    read_noise,
    gain,
    saturation,
    thr_one,
    thr_two,
    two_adjacent,
    max_jumps,
    n_pass,
    diff_bits,
    jumps,
    jump_size,
    n_jumps,
    flux,
    flux_var,
    chi2,
    n_diff,
    flags,
):
    """Jump search and the eq-15 fit with the jumps masked, for every pixel of a flattened cube.

    Inputs are those of ``_numpy.extract_kernel``. Outputs: ``diff_bits`` (K, ceil(n_pix / 8))
    uint8, the differences the final fit does not use, as ``np.packbits(diff_mask, axis=1)``
    (a bool array of the cube's size costs more page faults than the search takes);
    ``jumps`` (K, n_pix) bool, the flagged differences; ``jump_size`` (K, n_pix) float64, the
    fitted jump in e- (0 where none); ``n_jumps``, ``n_diff``, ``flags`` (n_pix,) int64;
    ``flux``, ``flux_var``, ``chi2`` (n_pix,) float64 in e- per unit time. ``jumps`` and
    ``jump_size`` may both be ``(K, 0)``: then they are not written, and
    :func:`jump_sizes_kernel` gives them for the few pixels with jumps.
    """
    N, n_pix = reads.shape
    K = N - 1
    write_jumps = jump_size.shape[1] == n_pix and jumps.shape[1] == n_pix
    n_blocks = (n_pix + _SEARCH_BLOCK - 1) // _SEARCH_BLOCK
    network = _center_network(K)
    for blk in prange(n_blocks):
        p0 = blk * _SEARCH_BLOCK
        p1 = min(p0 + _SEARCH_BLOCK, n_pix)
        ramp = np.empty((N, p1 - p0))
        ok_read = np.empty((N, p1 - p0), dtype=np.uint8)  # 0/1 bytes (_numpy._block_pass)
        read_flags = np.empty(p1 - p0, dtype=np.int64)
        gain_b = _block_values(gain, p0, p1 - p0)
        _gather_block(reads, bad, use_mask, _block_values(saturation, p0, p1 - p0), p0, ramp,
                      ok_read, read_flags)  # fmt: skip
        # The block's differences, and its pixels' starting rates all at once (the median of
        # each pixel's usable d / x, as _median_rate gives it).
        block_d = np.empty((K, p1 - p0))
        block_x = np.empty((K, p1 - p0))
        block_ok = np.empty((K, p1 - p0), dtype=np.uint8)
        n_usable = np.zeros(p1 - p0, dtype=np.int64)
        _block_differences(ramp, ok_read, omega, groups, dt, gain_b, p0, block_d, block_x,
                           block_ok, n_usable)  # fmt: skip
        rates = np.empty(p1 - p0)
        _block_median_rate(block_d, block_x, block_ok, network, np.empty((K, p1 - p0)),
                           np.empty(p1 - p0, dtype=np.int64), rates)  # fmt: skip
        block_s2 = np.empty(p1 - p0)
        noise_b = _block_values(read_noise, p0, p1 - p0)
        for i in range(p1 - p0):
            block_s2[i] = (noise_b[i] * gain_b[i]) ** 2
        needs_search = np.empty(p1 - p0, dtype=np.bool_)
        first_sxx = np.empty(p1 - p0)
        first_sxd = np.empty(p1 - p0)
        _block_needs_search(block_d, block_x, block_ok, n_usable, block_s2, rates, thr_one,
                            thr_two, two_adjacent, max_jumps, needs_search, first_sxx,
                            first_sxd)  # fmt: skip
        nb = p1 - p0
        n_local = nb if write_jumps else 0  # the block's jumps, only where they are wanted
        local_jumps = np.zeros((n_local, K), dtype=np.bool_)
        local_size = np.zeros((n_local, K))
        found = np.zeros(nb, dtype=np.int64)
        d = np.empty(K)
        x = np.empty(K)
        valid = np.empty(K, dtype=np.bool_)
        buf = np.empty(K)
        work = np.empty((_N_WORK, K))
        # The search, on the pixels that need it; their flagged differences leave the block.
        for i in range(nb):
            if not needs_search[i]:
                continue
            for k in range(K):
                valid[k] = block_ok[k, i] != 0
                d[k] = block_d[k, i]
                x[k] = block_x[k, i]
            found[i] = search_pixel(
                d, x, valid, block_s2[i], rates[i], thr_one, thr_two, two_adjacent, max_jumps, work
            )
            if found[i] > 0:
                for k in range(K):
                    if write_jumps:
                        local_jumps[i, k] = block_ok[k, i] != 0 and not valid[k]
                    block_ok[k, i] = valid[k]
                    block_d[k, i] = d[k]
                    block_x[k, i] = x[k]
                rates[i] = _median_rate(d, x, valid, buf)
        # The final fit sees only the clean differences, as extract_fluxes would (the same
        # block passes).
        fl = np.empty(nb)
        var_last = np.empty(nb)
        chi2_block = np.empty(nb)
        # The first pass is the screen's forward sweep at the same rates: only the pixels whose
        # differences the search changed need it again, at their new rates. The arithmetic is
        # _block_gls's, so the result is that of n_pass passes over the block.
        for i in range(nb):
            if found[i] > 0:
                first_sxx[i], first_sxd[i] = _first_pass_sums(
                    block_d, block_x, block_ok, block_s2[i], rates[i], i
                )
            fl[i] = first_sxd[i] / first_sxx[i]
            var_last[i] = 1.0 / first_sxx[i]
            rates[i] = max(fl[i], 0.0)
        _block_gls(block_d, block_x, block_ok, block_s2, rates, n_pass - 1, fl, var_last,
                   chi2_block)  # fmt: skip
        for i in range(nb):
            p = p0 + i
            n = 0
            for k in range(K):
                n += block_ok[k, i]
            pflags = read_flags[i]
            n_jumps[p] = found[i]
            n_diff[p] = n
            if found[i] > 0:
                pflags |= _JUMP_DETECTED
            if n <= MIN_CLEAN_DIFFS:
                pflags |= _FEW_CLEAN_DIFFS
            # No flux either where x^T C^-1 x = 0 (omega 0 on every usable difference).
            if n < 2 or not var_last[i] < np.inf:
                flags[p] = pflags | _TOO_FEW_DIFFS
                flux[p] = np.nan
                flux_var[p] = np.nan
                chi2[p] = np.nan
                continue
            flags[p] = pflags
            if found[i] > 0 and write_jumps:
                g = gain_b[i]
                for k in range(K):
                    valid[k] = block_ok[k, i] != 0
                    d[k] = block_d[k, i]
                    x[k] = block_x[k, i]
                    if local_jumps[i, k]:
                        d[k] = (ramp[k + 1, i] - ramp[k, i]) * g
                        x[k] = omega[groups[p], k] * dt[k]
                _jump_sizes(d, x, valid, local_jumps[i], block_s2[i], fl[i], work, local_size[i])
            flux[p] = fl[i]
            flux_var[p] = var_last[i]
            chi2[p] = chi2_block[i]
        # Written plane by plane (contiguous), the few pixels with jumps after. A block starts
        # on a byte (_SEARCH_BLOCK is a multiple of 8), so no two threads write one byte.
        # The byte index counts from the block's first byte: indexes built from p0 are not known
        # to be >= 0, and numba's negative-index check on each would keep the loop slow.
        byte0 = p0 // 8
        for k in range(K):
            _pack_unused(block_ok[k], diff_bits[k, byte0 : byte0 + (nb + 7) // 8])
        if write_jumps:
            # Slices, not jumps[k, p] over range(p0, p1): with an index not known to be >= 0,
            # numba's negative-index check keeps the loop out of vectors.
            for k in range(K):
                jumps[k, p0:p1] = False
                jump_size[k, p0:p1] = 0.0
            for i in range(nb):
                if found[i] > 0:
                    for k in range(K):
                        jumps[k, p0 + i] = local_jumps[i, k]
                        jump_size[k, p0 + i] = local_size[i, k]


@njit(cache=True, parallel=True)
def jump_sizes_kernel(
    reads,
    bad,
    use_mask,
    omega,
    groups,
    dt,
    read_noise,
    gain,
    saturation,
    pixels,
    diff_bits,
    flux,
    jumps,
    jump_size,
):
    """Where the jumps of the listed pixels are and how big, after :func:`find_jumps_kernel` ran
    without its ``jumps`` and ``jump_size`` outputs.

    A flagged difference is one whose reads are usable (``_block_differences``) but that the
    final fit did not use; its size is :func:`_jump_sizes` at the final flux, as
    :func:`find_jumps_kernel` computes it (the same bits). Jumps are rare: this replaces two
    outputs of the cube's size that are almost all 0.

    Inputs ``reads`` ... ``saturation`` are those of :func:`find_jumps_kernel`; ``pixels`` (m,)
    int64 the pixels' indices; ``diff_bits`` (K, ceil(n_pix / 8)) and ``flux`` (n_pix,) in e-
    its outputs.
    Outputs ``jumps`` (K, m) bool and ``jump_size`` (K, m) float64 in e- (0 where none, and on a
    pixel without flux).
    """
    N = reads.shape[0]
    K = N - 1
    n_chunks = (pixels.shape[0] + _SIZES_CHUNK - 1) // _SIZES_CHUNK
    for c in prange(n_chunks):
        i0 = c * _SIZES_CHUNK
        m = min(i0 + _SIZES_CHUNK, pixels.shape[0]) - i0
        # The chunk's reads first, plane by plane: each pixel's reads lie a plane apart, and
        # the loads of the chunk's pixels in one plane do not wait for each other (pixel by
        # pixel, with work arrays allocated for each, the S2 chip took 0.055 s, now 0.044 s).
        chunk_reads = np.empty((N, m))
        chunk_bad = np.empty((N, m) if use_mask else (1, 0), dtype=np.bool_)
        for j in range(N):
            for q in range(m):
                chunk_reads[j, q] = float(reads[j, pixels[i0 + q]])
                if use_mask:
                    chunk_bad[j, q] = bad[j, pixels[i0 + q]]
        # Each pixel's work arrays, allocated once per chunk.
        ramp = np.empty((N, 1))
        ok_read = np.empty((N, 1), dtype=np.bool_)
        read_flags = np.empty(1, dtype=np.int64)
        d_block = np.empty((K, 1))
        x_block = np.empty((K, 1))
        ok_block = np.empty((K, 1), dtype=np.bool_)
        count = np.empty(1, dtype=np.int64)
        d = np.empty(K)
        x = np.empty(K)
        valid = np.empty(K, dtype=np.bool_)
        flagged = np.empty(K, dtype=np.bool_)
        sizes = np.empty(K)
        work = np.empty((_N_WORK, K))
        for q in range(m):
            i = i0 + q
            p = pixels[i]
            gain_p = _block_values(gain, p, 1)
            _gather_block(chunk_reads, chunk_bad, use_mask, _block_values(saturation, p, 1), q,
                          ramp, ok_read, read_flags)  # fmt: skip
            count[0] = 0
            _block_differences(ramp, ok_read, omega, groups, dt, gain_p, p, d_block, x_block,
                               ok_block, count)  # fmt: skip
            sizes[:] = 0.0
            for k in range(K):
                d[k] = d_block[k, 0]
                x[k] = x_block[k, 0]
                valid[k] = not (diff_bits[k, p // 8] >> (7 - p % 8)) & 1
                flagged[k] = ok_block[k, 0] and not valid[k]
            if not np.isnan(flux[p]):
                s2 = (_block_values(read_noise, p, 1)[0] * gain_p[0]) ** 2
                _jump_sizes(d, x, valid, flagged, s2, flux[p], work, sizes)
            for k in range(K):
                jumps[k, i] = flagged[k]
                jump_size[k, i] = sizes[k]


@njit(cache=True, parallel=True)
def search_groups_kernel(
    diffs, valid, s2, x, fit_pixel, thr_one, thr_two, two_adjacent, max_jumps, out_valid, n_jumps
):
    """Jump search on the (G, P, K) layout of the omega fit, with ``x = omega[g] * dt`` (G, K).

    ``out_valid`` is ``valid`` with the flagged differences of the ``fit_pixel`` pixels removed;
    ``n_jumps`` (G, P) counts them. A non-finite ``x`` element makes that difference unusable
    for the search (it is left as it is in ``out_valid``).
    """
    G, P, K = diffs.shape
    network = _center_network(K)
    B = min(P, _GROUP_BLOCK)
    for g in prange(G):
        d = np.empty(K)
        xv = np.empty(K)
        use = np.empty(K, dtype=np.bool_)
        work = np.empty((_N_WORK, K))
        block_d = np.empty((K, B))
        block_x = np.empty((K, B))
        block_ok = np.empty((K, B), dtype=np.uint8)
        block_s2 = np.ones(B)
        rates = np.empty(B)
        needs_search = np.empty(B, dtype=np.bool_)
        sums = np.empty((2, B))  # the screen's first-pass sums, not needed here
        n_valid = np.empty(B, dtype=np.int64)
        for p0 in range(0, P, B):
            nb = min(B, P - p0)
            _gather_group_block(diffs[g], valid[g], x[g], fit_pixel[g], p0, block_d, block_x,
                                block_ok)  # fmt: skip
            _block_median_rate(block_d, block_x, block_ok, network, np.empty((K, B)),
                               np.empty(B, dtype=np.int64), rates)  # fmt: skip
            block_s2[:nb] = s2[g, p0 : p0 + nb]
            for i in range(B):
                n_valid[i] = 0
                for k in range(K):
                    n_valid[i] += block_ok[k, i]
            _block_needs_search(block_d, block_x, block_ok, n_valid, block_s2, rates, thr_one,
                                thr_two, two_adjacent, max_jumps, needs_search, sums[0],
                                sums[1])  # fmt: skip
            for i in range(nb):
                p = p0 + i
                out_valid[g, p, :] = valid[g, p, :]
                n_jumps[g, p] = 0
                if not (fit_pixel[g, p] and needs_search[i]):
                    continue
                for k in range(K):
                    use[k] = block_ok[k, i] != 0
                    d[k] = block_d[k, i]
                    xv[k] = block_x[k, i]
                found = search_pixel(
                    d, xv, use, s2[g, p], rates[i], thr_one, thr_two, two_adjacent, max_jumps,
                    work,
                )  # fmt: skip
                if found > 0:
                    n_jumps[g, p] = found
                    for k in range(K):
                        if valid[g, p, k] and np.isfinite(x[g, k]) and not use[k]:
                            out_valid[g, p, k] = False


def fit_omega_with_jumps(diffs, valid, s2, dt, fit_pixel, *, threshold, max_rounds, **fit_options):
    """Alternate the joint omega fit and the jump search until the jump mask is stable.

    Every search starts again from the caller's ``valid`` with the latest omega, so a difference
    flagged under the first omega (biased by the very jumps being sought) can be cleared later.
    After the first round the reference element is kept fixed so that omega's normalisation does
    not change between rounds. Only the groups whose mask changed are refitted, from their last
    solution, and only refitted groups are searched again: a group's search depends on nothing
    but its own omega (and offsets).

    With ``segments`` in ``fit_options`` (the 1/f nuisance term), the search judges each
    difference against the whole fitted model: the segment's fitted offset is subtracted from the
    difference before it is compared with ``flux * omega * dt``, so that a row offset shared by
    the segment is not taken for a jump, nor hides one.

    Parameters
    ----------
    diffs, valid, s2, dt, fit_pixel
        As in :func:`pyapred.solver._numpy.fit_omega_groups`.
    threshold : float
        Jump threshold in sigma.
    max_rounds : int
        Searches at most; the fit always matches the returned mask.
    **fit_options
        Passed to ``fit_omega_groups`` (``reference``, ``rtol``, ``max_iter``, ``ref_index``,
        ``segments``).

    Returns
    -------
    res : dict
        ``fit_omega_groups``'s result for the returned mask.
    used : (G, P, K) bool
        ``valid`` without the flagged differences.
    n_jumps : (G, P) int64
    """
    thr_one, thr_two = chi2_thresholds(threshold)
    segments = fit_options.get("segments")
    # The first fit stops short of the covariance where it can (finish_groups, the same bits):
    # the groups whose mask the search changes are fitted again, the others finished at the end.
    defer = not fit_options.get("reference", False) and segments is None
    res = fit_omega_groups(diffs, valid, s2, dt, fit_pixel, finish=not defer, **fit_options)
    unfinished = np.full(diffs.shape[0], defer)
    ref_index = res["ref_index"]
    used = valid.copy()
    n_jumps = np.zeros(fit_pixel.shape, dtype=np.int64)
    todo = np.arange(diffs.shape[0])  # the groups whose omega changed since their last search
    for _ in range(max_rounds):
        every = todo.size == diffs.shape[0]

        def pick(array, todo=todo, every=every):
            return array if every else array[todo]

        new_valid = np.empty(pick(valid).shape, dtype=bool)
        new_jumps = np.empty(pick(n_jumps).shape, dtype=np.int64)
        x = np.ascontiguousarray(pick(res["omega"]) * dt)
        searched = pick(diffs)
        if segments is not None:
            searched = without_offsets(searched, pick(res["offsets"]), pick(segments))
        search_groups_kernel(searched, pick(valid), pick(s2), x, pick(fit_pixel), thr_one,
                             thr_two, False, NO_LIMIT, new_valid, new_jumps)  # fmt: skip
        changed = (new_valid != pick(used)).any(axis=(1, 2))
        if not changed.any():
            break
        todo = todo[changed]
        used[todo] = new_valid[changed]
        n_jumps[todo] = new_jumps[changed]
        # Every kernel of the fit reads a difference only where `used` marks it, so the flagged
        # ones need no zeroing, and a refit of every group needs no copy of the differences.
        every = todo.size == diffs.shape[0]
        sub_used = used if every else used[todo]
        sub_diffs = diffs if every else diffs[todo]
        options = fit_options | {"ref_index": ref_index[todo]}
        if segments is not None:
            options["segments"] = segments[todo]
        part = fit_omega_groups(
            sub_diffs, sub_used, s2[todo], dt, fit_pixel[todo],
            start=(res["omega"][todo], res["flux"][todo]), **options,
        )  # fmt: skip
        for key, value in part.items():
            if key == "offsets":  # the refitted groups may use fewer segment labels
                res[key][todo] = np.nan
                res[key][todo, : value.shape[1]] = value
            else:
                res[key][todo] = value
        unfinished[todo] = False
    if unfinished.any():
        rest = np.flatnonzero(unfinished)

        def sub(array, rest=rest, every=rest.size == diffs.shape[0]):
            return array if every else array[rest]

        part = finish_groups(sub(diffs), sub(valid), sub(s2), dt, sub(fit_pixel),
                             {key: sub(value) for key, value in res.items()})  # fmt: skip
        for key, value in part.items():
            res[key][rest] = value
    return res, used, n_jumps


def without_offsets(diffs, offsets, segments):
    """``diffs (G, P, K)`` less each pixel's segment offsets ``offsets (G, S, K)`` (NaN: none)."""
    per_pixel = offsets[np.arange(diffs.shape[0])[:, None], segments]
    return np.ascontiguousarray(diffs - np.nan_to_num(per_pixel))
