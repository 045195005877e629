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

import functools

import numpy as np

from ..jit import njit, prange
from ._flags import Flag

_MASKED_READ = int(Flag.MASKED_READ)
_NONFINITE_READ = int(Flag.NONFINITE_READ)
_SATURATED = int(Flag.SATURATED)
_TOO_FEW_DIFFS = int(Flag.TOO_FEW_DIFFS)

# Size of the pixel blocks that the full-chip kernels gather from the (n_reads, n_pix) cube:
# big enough for long contiguous reads along each read plane (the gather reads n_reads planes
# at once, more streams than the prefetcher follows), small enough for the block's arrays to
# stay in the last-level cache. 1024 extracts a chip 15-25% faster than 256 (AMD EPYC Zen 4).
_BLOCK = 1024
# Pixels of one group transposed together into a (K, B) block (the omega fit's layout is (P, K)).
_GROUP_BLOCK = 64
# Positivity floor of the reference implementation (min_b_val, min_f_val).
CLAMP_FLOOR = 1e-10


@njit(cache=True, inline="always")
def _block_values(values, p0, B):
    """Pixels ``p0 .. p0+B-1`` of a per-pixel calibration ``values``, (B,) float64.

    ``values`` is (n_pix,), one per pixel, or (1,), one for every pixel (a calibration that is
    one number: the callers build no chip-sized map of it). The kernels' loops read the block's
    copy, contiguous either way.
    """
    out = np.empty(B)
    if values.shape[0] == 1:
        out[:] = values[0]
    else:
        out[:] = values[p0 : p0 + B]
    return out


@njit(cache=True, inline="always")
def _gather_block(reads, bad, use_mask, saturation, p0, ramp, ok_read, pflags):
    """Copy pixels ``p0 .. p0+B-1`` of a (N, n_pix) cube into ``ramp`` (N, B), as float64.

    ``ok_read`` (N, B) marks usable reads: not masked, finite, and before the first finite read
    at or above ``saturation`` (B,), the block's own (:func:`_block_values`). ``pflags`` (B,)
    receives each pixel's read flags.

    The loop over the block's pixels has no branch (each condition is a 0/1 byte, the flags
    are set from them after the last read), so it runs in vectors: the gather took half of a
    whole extraction written with branches, and takes half that time without. It reads each
    plane through a slice of its own: indexed ``reads[j, p0 + p]``, every access carries
    numba's negative-index check (``p0 + p`` is not known to be >= 0), which keeps the loop
    out of vectors and made the gather 4x slower.
    """
    N, B = ramp.shape
    saturated = np.zeros(B, dtype=np.uint8)
    nonfinite = np.zeros(B, dtype=np.uint8)
    masked = np.zeros(B, dtype=np.uint8)
    for j in range(N):
        plane = reads[j, p0 : p0 + B]
        bad_plane = bad[j, p0 : p0 + B] if use_mask else bad[0, 0:0]
        for p in range(B):
            value = float(plane[p])
            ramp[j, p] = value
            is_masked = np.uint8(bad_plane[p]) if use_mask else np.uint8(0)
            is_nonfinite = np.uint8(not abs(value) < np.inf)
            # A non-finite read is not a saturated one: +inf does not start saturation.
            is_saturated = saturated[p] | (np.uint8(value >= saturation[p]) & (is_nonfinite ^ 1))
            saturated[p] = is_saturated
            ok_read[j, p] = (is_masked | is_nonfinite | is_saturated) == 0
            nonfinite[p] |= is_nonfinite
            masked[p] |= is_masked
    for p in range(B):
        pflags[p] = (
            (_MASKED_READ if masked[p] else 0)
            | (_NONFINITE_READ if nonfinite[p] else 0)
            | (_SATURATED if saturated[p] else 0)
        )


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


@njit(cache=True, inline="always")
def _weighted_change(dm, q, x, vmask, f, var):
    """``dm^T C^-1 q`` for one pixel, C built at ``(f, x)``, in one forward sweep (the objective
    change of a trial step: ``dm`` the model change, ``q = dm - 2 r``)."""
    total = 0.0
    inv_prev = 0.0
    ym_prev = 0.0
    yq_prev = 0.0
    for k in range(x.shape[0]):
        ok = vmask[k]
        alpha = max(f * x[k], 0.0) + 2.0 * var if ok else 1.0
        beta = -var if (ok and k > 0 and vmask[k - 1]) else 0.0
        lk = beta * inv_prev
        inv = 1.0 / (alpha - lk * beta)
        ym = dm[k] - lk * ym_prev
        yq = q[k] - lk * yq_prev
        total += ym * yq * inv
        inv_prev = inv
        ym_prev = ym
        yq_prev = yq
    return total


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
def _select(b, n, k):
    """Move the k-th smallest of ``b[:n]`` to ``b[k]`` (Hoare quickselect), smaller ones before."""
    lo, hi = 0, n - 1
    while lo < hi:
        pivot = b[(lo + hi) // 2]
        i, j = lo, hi
        while i <= j:
            while b[i] < pivot:
                i += 1
            while b[j] > pivot:
                j -= 1
            if i <= j:
                b[i], b[j] = b[j], b[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    return b[k]


@njit(cache=True)
def _median_of(buf, n):
    """Median of ``buf[:n]`` clipped at 0 (0 when n == 0); reorders ``buf``."""
    if n == 0:
        return 0.0
    upper = _select(buf, n, n // 2)
    if n % 2 == 1:
        return max(upper, 0.0)
    lower = buf[0]
    for i in range(1, n // 2):
        lower = max(lower, buf[i])
    return max(0.5 * (lower + upper), 0.0)


@njit(cache=True, inline="always")
def _median_rate(d, x, valid, buf):
    """Median of ``d_k / x_k`` over usable differences with ``x_k > 0``, clipped at 0."""
    n = 0
    for k in range(d.shape[0]):
        if valid[k] and x[k] > 0.0:
            buf[n] = d[k] / x[k]
            n += 1
    return _median_of(buf, n)


@njit(cache=True)
def _median_network(n):
    """Comparators ``(C, 3)`` of Batcher's odd-even merge sort of ``n`` values: the two wires
    ``i < j`` and the phase, the length of the sorted runs that the comparator's merge joins
    (1, 2, 4, ...).

    Built for the next power of two and pruned of the comparators that touch an element ``>= n``
    (padding with +inf leaves those in place), so it sorts any ``n`` values. The phase tells
    :func:`_sort_columns` which comparators its register blocks already ran.
    """
    m = 1
    while m < n:
        m *= 2
    pairs = np.empty((m * m + 1, 3), dtype=np.int64)
    count = 0
    p = 1
    while p < m:
        k = p
        while k >= 1:
            for j in range(k % p, m - k, 2 * k):
                for i in range(min(k, m - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        pairs[count, 0] = a
                        pairs[count, 1] = b
                        pairs[count, 2] = p
                        count += 1
            k //= 2
        p *= 2
    return pairs[:count].copy()


@njit(cache=True, inline="always")
def _median_positions(n, m):
    """Where the median of ``m`` usable values lies among ``n`` sorted ones when the other
    ``n - m`` are padded in turn with +inf and -inf (:func:`_block_median_rate`): the positions
    ``(low, high)`` of its two middle values, equal for odd ``m``."""
    below = (n - m) // 2  # the -inf padding
    return below + max(m - 1, 0) // 2, below + m // 2


@njit(cache=True)
def _center_network(n):
    """The comparators of :func:`_median_network` of ``n`` that decide its values at the median
    positions of :func:`_block_median_rate`, in their order ``(C, 3)``.

    That sort pads the ``n - m`` unusable values of a pixel with ``m`` usable ones half with
    -inf, half (one more for an odd count) with +inf, so that the usable ones' median sits at
    :func:`_median_positions`: two positions for every ``m`` (22 and 23 for n = 46). A
    comparator neither of whose wires reaches those positions later is dropped (a backward
    pass): the values there are those of the full sort, with 304 comparators of 368 for n = 46.
    Running some dropped ones besides (as :func:`_sort_columns`' register blocks do) changes
    only values that never reach those positions.
    """
    full = _median_network(n)
    needed = np.zeros(n, dtype=np.bool_)
    for m in range(1, n + 1):
        low, high = _median_positions(n, m)
        needed[low] = True
        needed[high] = True
    keep = np.zeros(full.shape[0], dtype=np.bool_)
    for c in range(full.shape[0] - 1, -1, -1):
        i, j = full[c, 0], full[c, 1]
        if needed[i] or needed[j]:
            keep[c] = True
            needed[i] = True
            needed[j] = True
    return full[keep].copy()


@njit(cache=True, inline="always")
def _exchange(low, high):
    """The pair in order: a select on ``high < low`` each, one ``minpd`` and one ``maxpd``."""
    swap = high < low
    return (high if swap else low), (low if swap else high)


@njit(cache=True, inline="always")
def _sort_eight_rows(rows):
    """Sort the columns of ``rows`` (8, B): the phases 1, 2 and 4 of :func:`_median_network`
    (19 comparators), with the eight values of each column in registers, read and written once."""
    row0, row1, row2, row3 = rows[0], rows[1], rows[2], rows[3]
    row4, row5, row6, row7 = rows[4], rows[5], rows[6], rows[7]
    for p in range(rows.shape[1]):
        v0, v1, v2, v3 = row0[p], row1[p], row2[p], row3[p]
        v4, v5, v6, v7 = row4[p], row5[p], row6[p], row7[p]
        v0, v1 = _exchange(v0, v1)
        v2, v3 = _exchange(v2, v3)
        v4, v5 = _exchange(v4, v5)
        v6, v7 = _exchange(v6, v7)
        v0, v2 = _exchange(v0, v2)
        v1, v3 = _exchange(v1, v3)
        v4, v6 = _exchange(v4, v6)
        v5, v7 = _exchange(v5, v7)
        v1, v2 = _exchange(v1, v2)
        v5, v6 = _exchange(v5, v6)
        v0, v4 = _exchange(v0, v4)
        v1, v5 = _exchange(v1, v5)
        v2, v6 = _exchange(v2, v6)
        v3, v7 = _exchange(v3, v7)
        v2, v4 = _exchange(v2, v4)
        v3, v5 = _exchange(v3, v5)
        v1, v2 = _exchange(v1, v2)
        v3, v4 = _exchange(v3, v4)
        v5, v6 = _exchange(v5, v6)
        # Plus 0.0 as in _sort_columns: every zero is written as 0.0.
        row0[p], row1[p], row2[p], row3[p] = v0 + 0.0, v1 + 0.0, v2 + 0.0, v3 + 0.0
        row4[p], row5[p], row6[p], row7[p] = v4 + 0.0, v5 + 0.0, v6 + 0.0, v7 + 0.0


@njit(cache=True, inline="always")
def _sort_columns(values, network):
    """Sort each column of ``values`` (n, B) in place with ``network`` (:func:`_median_network`
    of n), or only put the values at the median positions in place (:func:`_center_network`):
    the compare-exchanges run across the columns with no branch, so they vectorise.

    Each whole block of eight rows is sorted first with its values in registers
    (:func:`_sort_eight_rows`); the network's other comparators then run one at a time, each
    reading and writing its two rows. The exchanges are bound by their stores (two per
    comparator and vector): the eight-row blocks store each value once for 19 comparators.

    The values are never NaN (the callers pad with infinities). Each exchange is a select on
    ``high < low``, which LLVM makes one ``minpd`` and one ``maxpd``, plus 0.0: without the
    addition it turns ``values[i, p] = high if swap else low`` into a store only where ``swap``,
    a masked vector store that AMD's Zen 3 microcodes (the median of a chip's extraction took 3x
    as long there with ``min`` and ``max``). ``np.minimum`` and ``np.maximum`` check for NaN
    besides (a compare and a blend each), which took the median 1.2x as long on Zen 4. The
    addition turns -0.0 into 0.0, the same value: the callers' values then sort as before, and
    the sign of a zero median is the only bit that can differ (it changes no flux:
    ``max(rate x, 0)``)."""
    n_eights = values.shape[0] // 8
    for block in range(n_eights):
        # One slice: rows indexed one by one each carry Numba's negative-index select, and
        # LLVM, unable to see eight rows of one array, left the loop scalar.
        _sort_eight_rows(values[8 * block : 8 * block + 8])
    for c in range(network.shape[0]):
        i, j, phase = network[c, 0], network[c, 1], network[c, 2]
        if phase <= 4 and i // 8 < n_eights:
            continue  # run by _sort_eight_rows
        for p in range(values.shape[1]):
            low, high = _exchange(values[i, p], values[j, p])
            values[i, p] = low + 0.0
            values[j, p] = high + 0.0


@njit(cache=True, inline="always")
def _block_median_rate(d, x, valid, network, ratios, count, rate):
    """``_median_rate`` of every pixel of a block ``(K, B)``: the same value, bit for bit but for
    the sign of a zero (:func:`_sort_columns` writes every zero as 0.0).

    The ratios of each pixel are sorted by ``network`` (:func:`_center_network` of K), unusable
    ones padded in turn with +inf and -inf, so that the median sits at one of two fixed
    positions and only the comparators that decide those run. The compare-exchanges run across
    the block's pixels with no branch, which SIMD-vectorises: about 5x faster than a
    quickselect per pixel, whose comparisons the CPU cannot predict. The float64 ratios are
    sorted themselves: with the pruned network, sorting their float32 roundings (eight to a
    vector) and finding the float64 values behind the median by a scan took 3-4 % longer (one
    thread, AMD EPYC Zen 3). ``ratios`` (K, B) and ``count`` (B,) are scratch.
    """
    K, B = d.shape
    for p in range(B):
        count[p] = 0
    for k in range(K):
        for p in range(B):
            ok = (valid[k, p] != 0) & (x[k, p] > 0.0)
            # Divided whether or not it is used, as in _block_differences (by 1 where not
            # used: no division by zero under Python's error model either).
            quotient = d[k, p] / (x[k, p] if ok else 1.0)
            # The pixel's unusable ones so far, k - count: +inf for the 1st, 3rd..., -inf for
            # the others. Equal values are interchangeable, so a usable +-inf ratio (an
            # overflow) changes nothing.
            pad = np.inf if (k - count[p]) & 1 == 0 else -np.inf
            ratios[k, p] = quotient if ok else pad
            count[p] += ok
    _sort_columns(ratios, network)
    # Both median values are in one of two adjacent rows: read as rows and chosen, so that the
    # loop vectorises.
    center = max((K - 2) // 2, 0)
    first_row = ratios[center]
    second_row = ratios[min(center + 1, K - 1)]
    for p in range(B):
        n = count[p]
        at_low, at_high = _median_positions(K, n)
        low = first_row[p] if at_low == center else second_row[p]
        high = first_row[p] if at_high == center else second_row[p]
        if n == 0:
            rate[p] = 0.0
        elif n % 2 == 1:
            rate[p] = max(low, 0.0)
        else:
            rate[p] = max(0.5 * (low + high), 0.0)


@njit(cache=True, inline="always")
def _gather_group_block(diffs, valid, x, use_pixel, p0, d, xb, ok):
    """Pixels ``p0 .. p0 + B - 1`` of one group's (P, K) layout into (K, B) block arrays.

    ``x`` (K,) is the group's design; a difference is usable (``ok``) where it is ``valid``,
    its pixel is in ``use_pixel`` and ``x`` is finite. Elsewhere, and past the last pixel,
    ``ok`` is False and ``d``, ``xb`` are 0.
    """
    P, K = diffs.shape
    B = d.shape[1]
    # Pixel by pixel, each pixel's row read in order: reading down the columns of (P, K) took
    # 1.6x as long.
    for i in range(B):
        p = p0 + i
        use = p < P and use_pixel[p]
        diff_row = diffs[p] if use else diffs[0]
        valid_row = valid[p] if use else valid[0]
        for k in range(K):
            good = use and np.isfinite(x[k]) and valid_row[k]
            ok[k, i] = good
            d[k, i] = diff_row[k] if good else 0.0
            xb[k, i] = x[k] if good else 0.0


@njit(cache=True)
def _group_median_rates(diffs, valid, x, use_pixel, network, rates):
    """``_median_rate`` of each pixel of one group in the (P, K) layout of the omega fit.

    ``diffs``, ``valid`` (P, K); ``x`` (K,), the group's design (a non-finite or non-positive
    element is skipped); ``use_pixel`` (P,), pixels to compute (``rates`` is left alone elsewhere).
    The pixels are transposed in blocks into the (K, B) layout of :func:`_block_median_rate`.
    """
    P, K = diffs.shape
    B = min(P, _GROUP_BLOCK)
    d = np.empty((K, B))
    xb = np.empty((K, B))
    ok = np.empty((K, B), dtype=np.uint8)
    sorted_ = np.empty((K, B))
    count = np.empty(B, dtype=np.int64)
    out = np.empty(B)
    for p0 in range(0, P, B):
        _gather_group_block(diffs, valid, x, use_pixel, p0, d, xb, ok)
        _block_median_rate(d, xb, ok, network, sorted_, count, out)
        for i in range(min(B, P - p0)):
            if use_pixel[p0 + i]:
                rates[p0 + i] = out[i]


@njit(cache=True, inline="always")
def _pass_step(xk, dk, ok, coupled, rate, s2, flux, rhs_is_residual, inv_prev, yx_prev, yd_prev):
    """One difference of :func:`_block_pass` for one pixel: ``(1 / pivot, L^-1 x, L^-1 rhs)``
    at k from their values at k - 1. ``ok``: the difference is usable; ``coupled``: so is
    difference k - 1."""
    alpha = max(rate * xk, 0.0) + 2.0 * s2 if ok else 1.0
    beta = -s2 if coupled else 0.0
    low = beta * inv_prev
    inv = 1.0 / (alpha - low * beta)
    yx = xk - low * yx_prev
    rhs = dk - flux * xk if rhs_is_residual else dk
    yd = rhs - low * yd_prev
    return inv, yx, yd


@njit(cache=True, inline="always")
def _block_pass(d, x, valid, s2, rate, rhs_is_residual, flux, sxx, sxd, state):
    """One GLS pass for a block of pixels, vectorised across pixels (the inner loops).

    Factorises ``C(rate)`` and forward-substitutes ``x`` and the right-hand side in one sweep over
    k, accumulating ``sxx = x^T C^-1 x`` and ``sxd = x^T C^-1 rhs`` per pixel. The right-hand side
    is ``d``, or ``d - flux x`` when ``rhs_is_residual`` (then ``sxd`` is the chi2 and ``sxx`` is
    not needed). Every pixel's recursion is independent, so working across pixels at each k
    hides the latency of the pivot division. ``state`` is a (3, B) scratch array. ``valid`` is
    best 0/1 bytes (uint8): the coupling of two differences is their bytes' ``&``, as in
    :func:`normal_equations_kernel`; combined as Python bools, LLVM's cost model kept the loops
    out of vectors (AMD EPYC Zen 3).

    Each visit of a pixel takes two differences, so that its state (the recursion's last values,
    the sums, its rate and noise) is loaded and stored once per two: 5 to 7 % faster over a
    whole extraction than one difference a visit, with each pixel's arithmetic and sums in the same
    order (the same bits).
    """
    K, B = d.shape
    inv_prev, yx_prev, yd_prev = state[0], state[1], state[2]
    # The first difference has no coupling to a previous one; done apart, the loops below read
    # valid[k - 1] with no branch and run in vectors.
    for p in range(B):
        ok = valid[0, p] != 0
        inv = 1.0 / (max(rate[p] * x[0, p], 0.0) + 2.0 * s2[p] if ok else 1.0)
        yx = x[0, p]
        yd = d[0, p] - flux[p] * x[0, p] if rhs_is_residual else d[0, p]
        sxx[p] = 0.0 + yx * yx * inv
        sxd[p] = 0.0 + (yx * yd * inv if not rhs_is_residual else yd * yd * inv)
        inv_prev[p] = inv
        yx_prev[p] = yx
        yd_prev[p] = yd
    residual = rhs_is_residual
    k = 1
    while k + 1 < K:
        for p in range(B):
            r, v, f = rate[p], s2[p], flux[p]
            b0, b1, b2 = valid[k - 1, p], valid[k, p], valid[k + 1, p]
            i1, x1, d1 = _pass_step(x[k, p], d[k, p], b1 != 0, (b1 & b0) != 0, r, v, f, residual,
                                    inv_prev[p], yx_prev[p], yd_prev[p])  # fmt: skip
            i2, x2, d2 = _pass_step(x[k + 1, p], d[k + 1, p], b2 != 0, (b2 & b1) != 0, r, v, f,
                                    residual, i1, x1, d1)  # fmt: skip
            if residual:
                sxd[p] = (sxd[p] + d1 * d1 * i1) + d2 * d2 * i2
            else:
                sxx[p] = (sxx[p] + x1 * x1 * i1) + x2 * x2 * i2
                sxd[p] = (sxd[p] + x1 * d1 * i1) + x2 * d2 * i2
            inv_prev[p] = i2
            yx_prev[p] = x2
            yd_prev[p] = d2
        k += 2
    if k < K:  # an odd number of differences after the first
        for p in range(B):
            i1, x1, d1 = _pass_step(x[k, p], d[k, p], valid[k, p] != 0,
                                    (valid[k, p] & valid[k - 1, p]) != 0, rate[p], s2[p], flux[p],
                                    residual, inv_prev[p], yx_prev[p], yd_prev[p])  # fmt: skip
            if residual:
                sxd[p] += d1 * d1 * i1
            else:
                sxx[p] += x1 * x1 * i1
                sxd[p] += x1 * d1 * i1


@njit(cache=True, inline="always")
def _block_differences(ramp, ok_read, omega, groups, dt, gain, p0, d, x, valid, count):
    """Read differences (e-) and design of a gathered block (:func:`_gather_block`), (K, B);
    ``gain`` (B,) is the block's own (:func:`_block_values`), ``groups`` the whole (n_pix,).

    A difference is ``valid`` where both its reads are usable and the pixel's omega element is
    finite; elsewhere ``d`` and ``x`` are 0. ``count`` (B,) is incremented by the valid ones.
    """
    K, B = d.shape
    # The block's runs of pixels of one group (a row's pixels of one fiber, or background: one
    # run in most blocks; a trace that drifts across rows makes a few): each run reads one
    # omega element per k, and its loop over pixels runs in vectors. A loop that read each
    # pixel's own element was a gather, twice as slow (2.4x under a condition, a masked gather:
    # AMD EPYC Zen 3), and took a chip's blocks of several groups 20 % longer to extract.
    block_groups = groups[p0 : p0 + B]
    run_end = np.empty(B, dtype=np.int64)
    n_runs = _runs(block_groups, run_end)
    for k in range(K):
        dtk = dt[k]
        start = 0
        for r in range(n_runs):
            end = run_end[r]
            # The run's rows as slices: indexed from the run's start, each index would carry
            # Numba's negative-index select, which keeps the loop out of vectors.
            _run_differences(omega[block_groups[start], k], dtk, ok_read[k, start:end],
                             ok_read[k + 1, start:end], ramp[k, start:end],
                             ramp[k + 1, start:end], gain[start:end], valid[k, start:end],
                             d[k, start:end], x[k, start:end], count[start:end])  # fmt: skip
            start = end


@njit(cache=True, inline="always")
def _runs(labels, run_end):
    """The runs of equal ``labels`` (B,): their number, and in ``run_end`` (B,) the end of each
    run, in order (the next one starts there)."""
    n_runs = 0
    start = 0
    for p in range(1, labels.shape[0] + 1):
        if p == labels.shape[0] or labels[p] != labels[start]:
            run_end[n_runs] = p
            n_runs += 1
            start = p
    return n_runs


@njit(cache=True, inline="always")
def _run_differences(w, dtk, ok_low, ok_up, low, up, gain, valid, d, x, count):
    """One difference of a run of :func:`_block_differences`'s pixels (one group: omega element
    ``w``), on the rows of its reads and outputs."""
    for p in range(d.shape[0]):
        ok, dv, xv = _difference(w, ok_low[p] & ok_up[p], up[p], low[p], gain[p], dtk)
        valid[p] = ok
        d[p] = dv
        x[p] = xv
        count[p] += ok


@njit(cache=True, inline="always")
def _difference(w, reads_ok, upper, lower, gain, dtk):
    """One difference of :func:`_block_differences`: ``(valid, d, x)``. ``reads_ok``: the
    ``&`` of its two reads' 0/1 bytes. The difference is computed whether or not it is used
    (the select keeps it): read inside the conditional, its reads became masked vector loads."""
    ok = (reads_ok != 0) & np.isfinite(w)
    difference = (upper - lower) * gain
    return ok, difference if ok else 0.0, w * dtk if ok else 0.0


@njit(cache=True, inline="always")
def _block_gls(d, x, valid, s2, rate, n_pass, flux, flux_var, chi2):
    """Eq-15 fits of a block's pixels (K, B): ``n_pass`` GLS passes from the photon noise at
    ``rate`` (updated in place), then chi2 with the photon noise at the final flux (eq 24).

    ``flux``, ``flux_var`` (from the last pass) and ``chi2`` are (B,) outputs.
    """
    B = d.shape[1]
    sxx = np.empty(B)
    sxd = np.empty(B)
    state = np.empty((3, B))
    for _ in range(n_pass):
        _block_pass(d, x, valid, s2, rate, False, flux, sxx, sxd, state)
        for p in range(B):
            flux[p] = sxd[p] / sxx[p]
            flux_var[p] = 1.0 / sxx[p]
            rate[p] = max(flux[p], 0.0)
    _block_pass(d, x, valid, s2, flux, True, flux, sxx, sxd, state)
    for p in range(B):
        chi2[p] = sxd[p]


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
    groups : (n_pix,) int32 row of ``omega`` for each pixel.
    dt : (K,) float64 read intervals.
    read_noise, gain, saturation : (n_pix,) float64, or (1,): one value for every pixel.
    flux, flux_var, chi2 : (n_pix,) float64 outputs, in e- per unit time (gain applied).
    n_diff, flags : (n_pix,) int64 outputs.

    The pixels are processed in blocks of ``_BLOCK``: each block's reads are copied out of the
    cube plane by plane (contiguous), and the tridiagonal recursions run across the block's
    pixels at each read difference. The block's masks are 0/1 bytes (:func:`_block_pass`).
    """
    N, n_pix = reads.shape
    K = N - 1
    n_blocks = (n_pix + _BLOCK - 1) // _BLOCK
    network = _center_network(K)
    for b in prange(n_blocks):
        p0 = b * _BLOCK
        B = min(p0 + _BLOCK, n_pix) - p0
        ramp = np.empty((N, B))
        ok_read = np.empty((N, B), dtype=np.uint8)
        pflags = np.empty(B, dtype=np.int64)
        gain_b = _block_values(gain, p0, B)
        _gather_block(reads, bad, use_mask, _block_values(saturation, p0, B), p0, ramp, ok_read,
                      pflags)  # fmt: skip
        d = np.empty((K, B))
        x = np.empty((K, B))
        valid = np.empty((K, B), dtype=np.uint8)
        s2 = np.empty(B)
        count = np.zeros(B, dtype=np.int64)
        noise_b = _block_values(read_noise, p0, B)
        for p in range(B):
            sigma = noise_b[p] * gain_b[p]
            s2[p] = sigma * sigma
        _block_differences(ramp, ok_read, omega, groups, dt, gain_b, p0, d, x, valid, count)
        rate = np.empty(B)
        _block_median_rate(d, x, valid, network, np.empty((K, B)), np.empty(B, np.int64), rate)
        fl = np.empty(B)
        var_last = np.empty(B)
        chi2_block = np.empty(B)
        _block_gls(d, x, valid, s2, rate, n_pass, fl, var_last, chi2_block)
        for p in range(B):
            q = p0 + p
            n_diff[q] = count[p]
            # No flux either where x^T C^-1 x = 0 (omega 0 on every usable difference).
            if count[p] < 2 or not var_last[p] < np.inf:
                flags[q] = pflags[p] | _TOO_FEW_DIFFS
                flux[q] = np.nan
                flux_var[q] = np.nan
                chi2[q] = np.nan
            else:
                flags[q] = pflags[p]
                flux[q] = fl[p]
                flux_var[q] = var_last[p]
                chi2[q] = chi2_block[p]


def prepare_diffs_kernel(reads, bad, use_mask, gain, saturation, diffs, valid, flags):
    """Read differences of a (N, G, P) cube into (G, P, K) layout, in electrons.

    ``gain``, ``saturation`` and ``flags`` are (G, P); ``bad`` is (N, G, P) when ``use_mask``.
    ``valid[g, p, k]`` is False for differences touching a bad read; there ``diffs`` is 0.
    """
    N, G, P = reads.shape
    _prepare_diffs_flat(
        np.ascontiguousarray(reads.reshape(N, G * P)),
        np.ascontiguousarray(bad.reshape(bad.shape[0], -1)), use_mask,
        _read_only(gain).reshape(-1), _read_only(saturation).reshape(-1),
        diffs.reshape(G * P, N - 1), valid.reshape(G * P, N - 1),
        flags.reshape(-1),
    )  # fmt: skip


def _read_only(values):
    """``values`` C-ordered float64 and read-only, in a view of its own (the caller's array keeps
    its flags). Numba compiles a kernel for each array layout and each mix of read-only and
    writeable arguments; with every argument in one form, all callers share one kernel."""
    view = np.ascontiguousarray(values, dtype=np.float64).view()
    view.flags.writeable = False
    return view


@njit(cache=True, parallel=True)
def _prepare_diffs_flat(reads, bad, use_mask, gain, saturation, diffs, valid, flags):
    """Read differences of a (N, n_pix) cube in (n_pix, K) layout, in electrons.

    ``valid[p, k]`` is False for differences touching a bad read; there ``diffs`` is 0.
    ``gain``, ``saturation`` and ``flags`` are (n_pix,).
    """
    N, n_pix = reads.shape
    K = N - 1
    # Blocks of _GROUP_BLOCK, not the extraction's _BLOCK: the write below reads the ramp down
    # its columns, which a block of 64 pixels keeps in L1 (1.6x faster over 300 x 2048 pixels).
    n_blocks = (n_pix + _GROUP_BLOCK - 1) // _GROUP_BLOCK
    for b in prange(n_blocks):
        p0 = b * _GROUP_BLOCK
        B = min(p0 + _GROUP_BLOCK, n_pix) - p0
        ramp = np.empty((N, B))
        ok_read = np.empty((N, B), dtype=np.bool_)
        pflags = np.empty(B, dtype=np.int64)
        gain_b = _block_values(gain, p0, B)
        _gather_block(reads, bad, use_mask, _block_values(saturation, p0, B), p0, ramp, ok_read,
                      pflags)  # fmt: skip
        for p in range(B):
            flags[p0 + p] = pflags[p]
            for k in range(K):
                ok = ok_read[k, p] and ok_read[k + 1, p]
                valid[p0 + p, k] = ok
                diffs[p0 + p, k] = (ramp[k + 1, p] - ramp[k, p]) * gain_b[p] if ok else 0.0


@njit(cache=True, inline="always")
def _gather_fit_block(diffs, valid, fit_pixel, flux, s2, g, p0, use, f, var, d, ok):
    """Pixels ``p0 .. p0 + B - 1`` of group ``g`` of a (G, P, K) layout into (K, B) blocks.

    ``use`` (B,) marks the fitted pixels (False past the last pixel); ``f``, ``var`` receive
    their flux and read-noise variance. A difference is usable (``ok``) where it is ``valid`` in
    a used pixel; there ``d`` is the difference, elsewhere 0. The group's design ``omega dt``
    is not copied per pixel (:func:`_sweep_group_block` reads it once per k): writing it
    transposed cost as much as the differences themselves.
    """
    P, K = diffs.shape[1], diffs.shape[2]
    B = use.shape[0]
    for i in range(B):
        p = p0 + i
        use[i] = p < P and fit_pixel[g, p]
        f[i] = flux[g, p] if use[i] else 0.0
        var[i] = s2[g, p] if use[i] else 0.0
    for i in range(B):
        p = p0 + i
        for k in range(K):
            good = use[i] and valid[g, p, k]
            ok[k, i] = good
            d[k, i] = diffs[g, p, k] if good else 0.0


@njit(cache=True, inline="always")
def _sweep_first(xk, dk, good, fk, vk):
    """Difference 0 of one pixel in :func:`_sweep_block`: ``(1 / pivot, r)``."""
    rk = dk - fk * xk if good else 0.0
    alpha = max(fk * xk, 0.0) + 2.0 * vk if good else 1.0
    return 1.0 / alpha, rk


@njit(cache=True, inline="always")
def _sweep_step(xk, dk, good, coupled, fk, vk, inv_prev, yx_prev, yr_prev):
    """Difference k >= 1 of one pixel in :func:`_sweep_block`: ``(low, 1 / pivot, L^-1 x,
    L^-1 r)`` at k from their values at k - 1. ``good``: the difference is usable; ``coupled``:
    so is difference k - 1. Scalars in and out, so that the loops calling it vectorise (an
    inlined helper that takes arrays leaves reference counting in the loop)."""
    rk = dk - fk * xk if good else 0.0
    alpha = max(fk * xk, 0.0) + 2.0 * vk if good else 1.0
    beta = -vk if coupled else 0.0
    lk = beta * inv_prev
    ik = 1.0 / (alpha - lk * beta)
    return lk, ik, xk - lk * yx_prev, rk - lk * yr_prev


@njit(cache=True, inline="always")
def _sweep_block(x, d, ok, f, var, low, inv, yx, yr, dd, gf):
    """The forward L D L^T sweep of each pixel's C (photon noise at ``f x``), with the forward
    substitutions of ``x`` and ``r = d - f x``, for a block of pixels: (K, B) arrays.

    ``x`` is 0 at unusable differences (they are decoupled: diagonal 1, no off-diagonal). Fills
    ``low`` (sub-diagonal of L), ``inv`` (1 / pivots), ``yx = L^-1 x``, ``yr = L^-1 r``, and per
    pixel ``dd = x^T C^-1 x`` and ``gf = x^T C^-1 r`` (B,). The recursion runs across the
    block's pixels at each k, which hides the latency of each pixel's chain of divisions; each
    pixel's sums keep the order of k. ``ok`` is best a 0/1 byte array (uint8), as in
    :func:`normal_equations_kernel`.
    """
    K, B = x.shape
    for i in range(B):
        xk = x[0, i]
        ik, rk = _sweep_first(xk, d[0, i], ok[0, i] != 0, f[i], var[i])
        low[0, i] = 0.0
        inv[0, i] = ik
        yx[0, i] = xk
        yr[0, i] = rk
        dd[i] = 0.0 + xk * xk * ik
        gf[i] = 0.0 + xk * rk * ik
    for k in range(1, K):
        for i in range(B):
            lk, ik, ax, ar = _sweep_step(x[k, i], d[k, i], ok[k, i] != 0,
                                         (ok[k, i] & ok[k - 1, i]) != 0, f[i], var[i],
                                         inv[k - 1, i], yx[k - 1, i], yr[k - 1, i])  # fmt: skip
            low[k, i] = lk
            inv[k, i] = ik
            yx[k, i] = ax
            yr[k, i] = ar
            dd[i] += ax * ax * ik
            gf[i] += ax * ar * ik


@njit(cache=True, inline="always")
def _sweep_group_block(x_g, d, ok, f, var, low, inv, yx, yr, dd, gf):
    """:func:`_sweep_block` for pixels that share one design ``x_g`` (K,), their group's
    ``omega dt``: a pixel's ``x`` is ``x_g`` at its usable differences, 0 elsewhere."""
    K, B = d.shape
    for i in range(B):
        good = ok[0, i] != 0
        xk = x_g[0] if good else 0.0
        ik, rk = _sweep_first(xk, d[0, i], good, f[i], var[i])
        low[0, i] = 0.0
        inv[0, i] = ik
        yx[0, i] = xk
        yr[0, i] = rk
        dd[i] = 0.0 + xk * xk * ik
        gf[i] = 0.0 + xk * rk * ik
    for k in range(1, K):
        xg = x_g[k]
        for i in range(B):
            good = ok[k, i] != 0
            lk, ik, ax, ar = _sweep_step(xg if good else 0.0, d[k, i], good,
                                         (ok[k, i] & ok[k - 1, i]) != 0, f[i], var[i],
                                         inv[k - 1, i], yx[k - 1, i], yr[k - 1, i])  # fmt: skip
            low[k, i] = lk
            inv[k, i] = ik
            yx[k, i] = ax
            yr[k, i] = ar
            dd[i] += ax * ax * ik
            gf[i] += ax * ar * ik


@njit(cache=True, inline="always")
def _back_block(low, inv, yx, yr, u, z, diag):
    """After :func:`_sweep_block`: ``u = C^-1 x``, ``z = C^-1 r``, and the diagonal of C^-1 by
    the same recursion (Takahashi): ``diag_k = 1/piv_k + low_{k+1}^2 diag_{k+1}``; (K, B)."""
    K, B = low.shape
    for i in range(B):
        u[K - 1, i] = yx[K - 1, i] * inv[K - 1, i]
        z[K - 1, i] = yr[K - 1, i] * inv[K - 1, i]
        diag[K - 1, i] = inv[K - 1, i]
    for k in range(K - 2, -1, -1):
        for i in range(B):
            lk = low[k + 1, i]
            u[k, i] = yx[k, i] * inv[k, i] - lk * u[k + 1, i]
            z[k, i] = yr[k, i] * inv[k, i] - lk * z[k + 1, i]
            diag[k, i] = inv[k, i] + lk * lk * diag[k + 1, i]


@njit(cache=True, inline="always")
def _walk_block(low, running, first, one_block):
    """The factors of C^-1 above its diagonal (spec section 1.5), for a block of pixels.

    ``(C^-1)_ij = (C^-1)_{i+1,j} (-low_{i+1})``, so within a coupled block ``(C^-1)_ij = diag_j
    R_j / R_i`` with ``R`` the prefix product of ``-low``: fills ``running`` (R) and ``first``
    (where each difference's block starts), (K, B). R restarts at each decoupled (masked)
    difference, and where it becomes tiny (entries across such a restart are 0, or below 1e-150
    relative). ``one_block`` (B,): whether the pixel is one block.
    """
    K, B = low.shape
    for i in range(B):
        running[0, i] = 1.0
        first[0, i] = 0
        one_block[i] = True
    for j in range(1, K):
        for i in range(B):
            ratio = -low[j, i]
            prod = running[j - 1, i] * ratio
            restart = (ratio == 0.0) | (prod < 1e-150)
            running[j, i] = 1.0 if restart else prod
            first[j, i] = j if restart else first[j - 1, i]
            one_block[i] = one_block[i] & (not restart)


@njit(cache=True, inline="always")
def _padding_block(g, p0, n, sqrt_d, gf_hat, e_hat):
    """Zero outputs for pixels ``p0 .. p0 + n - 1`` of group ``g`` (a block with no fit pixel)."""
    K = e_hat.shape[2]
    for p in range(p0, p0 + n):
        sqrt_d[g, p] = 0.0
        gf_hat[g, p] = 0.0
        for k in range(K):
            e_hat[g, p, k] = 0.0


@njit(cache=True, inline="always")
def _flux_scale_block(g, p0, n, use, dd, gf, sqrt_d, gf_hat, inv_sd):
    """``sqrt_d = sqrt(x^T C^-1 x)``, ``gf_hat = x^T C^-1 r / sqrt_d`` and ``inv_sd`` (B,) of a
    block's pixels after :func:`_sweep_block`; 0 for pixels not used."""
    for i in range(n):
        p = p0 + i
        if use[i]:
            sd = np.sqrt(dd[i])
            sqrt_d[g, p] = sd
            gf_hat[g, p] = gf[i] / sd
            inv_sd[i] = 1.0 / sd
        else:
            sqrt_d[g, p] = 0.0
            gf_hat[g, p] = 0.0
            inv_sd[i] = 0.0


@njit(cache=True, inline="always")
def _chi2_from_sweep(g, p0, n, use, yr, inv, total, out):
    """``out[g, p] = r^T C^-1 r = sum_k yr_k^2 / piv_k`` of a block's pixels after
    :func:`_sweep_block` (NaN for pixels not used); ``total`` (B,) scratch. Summed across the
    block's pixels at each k."""
    K = yr.shape[0]
    for i in range(n):
        total[i] = 0.0
    for k in range(K):
        for i in range(n):
            total[i] += yr[k, i] * yr[k, i] * inv[k, i]
    for i in range(n):
        out[g, p0 + i] = total[i] if use[i] else np.nan


@njit(cache=True, inline="always")
def _one_block_factors(n, use, one_block, ok, f, dt, running, diag, f2, left, right):
    """G's factors ``(f^2 dt_j / R_j, dt_j R_j diag_j)`` of a block's one-block pixels as the
    first ``n`` columns of ``left`` and ``right`` (at least (K, B)), zero for the other pixels;
    ``f2`` (B,) receives ``f^2``. Written across the block's pixels at each k."""
    K = running.shape[0]
    for i in range(n):
        f2[i] = f[i] * f[i]
    for j in range(K):
        dtj = dt[j]
        for i in range(n):
            keep = (use[i] & one_block[i] & ok[j, i]) != 0
            left[j, i] = f2[i] * dtj / running[j, i] if keep else 0.0
            right[j, i] = dtj * running[j, i] * diag[j, i] if keep else 0.0


@njit(cache=True, fastmath={"reassoc", "contract"})
def _upper_accumulate(a, b, n, acc):
    """``acc[i, j] += sum_{c < n} a[i, c] b[j, c]`` for ``j >= i``, by 2 x 4 tiles.

    ``a``, ``b`` (K4, B) and ``acc`` (K4, K4), K4 a multiple of 4 (pad with zero rows); entries
    below the diagonal of ``acc`` get partial sums and are not to be read. This replaces a BLAS
    product per group: called from Numba's threads, OpenBLAS builds that serialise concurrent
    level-3 calls (SciPy's 0.3.30 here) ran two threads' products slower than one thread's, and
    the sums of a block of pixels stay in registers (the block's rows are in L1/L2). The sums
    over c are reassociated (vectorised across c): the order of the additions, not their terms,
    differs from a loop's. A tile's 8 sums and its 6 rows are 14 vector registers, within
    AVX2's 16: 4 x 4 tiles (24) spilled there and ran 1.45x slower (AMD EPYC Zen 3).
    """
    K4 = a.shape[0]
    for i0 in range(0, K4, 2):
        a0, a1 = a[i0], a[i0 + 1]
        for j0 in range(i0 - i0 % 4, K4, 4):
            b0, b1, b2, b3 = b[j0], b[j0 + 1], b[j0 + 2], b[j0 + 3]
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = 0.0
            for c in range(n):
                x0, x1 = a0[c], a1[c]
                y0, y1, y2, y3 = b0[c], b1[c], b2[c], b3[c]
                s00 += x0 * y0
                s01 += x0 * y1
                s02 += x0 * y2
                s03 += x0 * y3
                s10 += x1 * y0
                s11 += x1 * y1
                s12 += x1 * y2
                s13 += x1 * y3
            acc[i0, j0] += s00
            acc[i0, j0 + 1] += s01
            acc[i0, j0 + 2] += s02
            acc[i0, j0 + 3] += s03
            acc[i0 + 1, j0] += s10
            acc[i0 + 1, j0 + 1] += s11
            acc[i0 + 1, j0 + 2] += s12
            acc[i0 + 1, j0 + 3] += s13


@njit(cache=True, fastmath={"reassoc", "contract"})
def _matvec_accumulate(a, v, n, out):
    """``out[k] += sum_{c < n} a[k, c] v[c]`` for the rows of ``a`` (K4, B) (reassociated)."""
    for k in range(a.shape[0]):
        row = a[k]
        total = 0.0
        for c in range(n):
            total += row[c] * v[c]
        out[k] += total


@njit(cache=True, fastmath={"reassoc", "contract"})
def _masked_matvec_accumulate(a, ok, v, n, out):
    """``out[k] += sum_{c < n} a[k, c] v[c]`` over the ``ok[k, c]`` entries (reassociated)."""
    for k in range(out.shape[0]):
        row = a[k]
        ok_row = ok[k]
        total = 0.0
        for c in range(n):
            total += row[c] * v[c] if ok_row[c] else 0.0
        out[k] += total


@njit(cache=True, parallel=True)
def normal_equations_kernel(
    diffs, valid, s2, dt, flux, omega, active, newton, fit_pixel, out_g, out_gw, e_hat, gf_hat,
    sqrt_d, out_sch, out_rhs, out_chi2,
):  # fmt: skip
    """Gauss-Newton normal equations of the time-variable model, and their Schur complement.

    For each active group g and fitted pixel p, with ``x = omega[g] * dt``, ``C_p`` built at
    ``(flux, omega)`` (the linearisation point) and ``r_p = d_p - flux_p x``:

    - ``sqrt_d[g, p] = sqrt(D_p)``, ``D_p = x^T C_p^-1 x`` (the flux block of H, diagonal);
    - ``e_hat[g, p] = E_p / sqrt(D_p)``, ``E_p = flux_p dt * (C_p^-1 x)`` (flux-omega block);
      where ``newton[g]``, ``E_p = dt * (flux_p C_p^-1 x - C_p^-1 r_p)``: the flux-omega block of
      the exact Hessian of the chi2 with C frozen (the model's cross derivative
      ``d2 m_pk / d flux_p d omega_k = dt_k`` times the weighted residual), the only block where
      it differs from Gauss-Newton's;
    - ``gf_hat[g, p] = (x^T C_p^-1 r_p) / sqrt(D_p)`` (the flux part of the gradient);
    - ``out_g[g] = sum_p flux_p^2 diag(dt) C_p^-1 diag(dt)`` (the omega block G, K x K);
    - ``out_gw[g] = sum_p flux_p dt * (C_p^-1 r_p)`` (the omega part of the gradient).

    The fluxes are eliminated here too (spec section 9.1): ``out_sch[g] = G - e_hat^T e_hat`` and
    ``out_rhs[g] = out_gw[g] - e_hat^T gf_hat``, the omega system before any element is pinned.
    Where ``out_chi2`` is ``(G, P)`` (not empty), it receives each fitted pixel's eq-24 chi2
    ``r_p^T C_p^-1 r_p`` from the same sweep (NaN for the others, and for inactive groups): at
    the solution, the fit's chi2 without a pass of its own (:func:`chi2_kernel`'s value to
    rounding).
    G needs the full inverse of each C_p; its columns are walked from the diagonal with the pivot
    ratios (spec section 1.5), K^2 operations per pixel, and accumulated without storing them.

    The pixels of a group are taken ``_GROUP_BLOCK`` at a time into (K, B) blocks, and every
    recursion runs across the block's pixels at each k (:func:`_sweep_group_block`, which
    reads the group's design ``x`` once per k, :func:`_back_block`, :func:`_walk_block`). Each
    block's products (G's one-block part, ``e_hat^T e_hat``, ``e_hat^T gf_hat``) are summed as
    the block is made (:func:`_upper_accumulate`), with no BLAS call from the threads.

    The block's masks are 0/1 bytes (uint8), combined with ``&`` on the bytes: LLVM's cost
    model kept the recursions out of vectors where they read bool arrays or combined Python
    bools, and the kernel took 1.3x as long (AMD EPYC Zen 3; the same bits either way).
    """
    G, P, K = diffs.shape
    B = min(P, _GROUP_BLOCK)
    K4 = (K + 3) // 4 * 4  # the rows of _upper_accumulate's blocks
    if out_chi2.shape[0] > 0:
        for g in range(G):
            if not active[g]:
                out_chi2[g, :] = np.nan
    # The threads split the active groups between them. A prange over every group that skips
    # the inactive ones splits all groups: where the active ones were contiguous (late
    # iterations), one thread had them all (2x slower).
    rows = np.flatnonzero(active)
    for i_row in prange(rows.size):
        g = rows[i_row]
        use = np.empty(B, dtype=np.uint8)
        f = np.empty(B)
        var = np.empty(B)
        x_g = np.empty(K)  # the group's design
        for k in range(K):
            x_g[k] = omega[g, k] * dt[k]
        d = np.empty((K, B))
        ok = np.empty((K, B), dtype=np.uint8)
        low = np.empty((K, B))  # sub-diagonal of L: low[k] = beta[k-1] / piv[k-1]
        inv = np.empty((K, B))  # 1 / piv
        yx = np.empty((K, B))
        yr = np.empty((K, B))
        u = np.empty((K, B))
        z = np.empty((K, B))
        diag = np.empty((K, B))  # diagonal of C^-1
        running = np.empty((K, B))
        first = np.empty((K, B), dtype=np.int64)
        one_block = np.empty(B, dtype=np.uint8)
        dd = np.empty(B)
        gf = np.empty(B)
        rr = np.empty(B)
        inv_sd = np.empty(B)
        gf_block = np.empty(B)
        # G's factors of the block's one-block pixels and the block's e_hat, (K4, B): the rows
        # past K stay zero.
        left = np.zeros((K4, B))
        right = np.zeros((K4, B))
        e_block = np.zeros((K4, B))
        f2 = np.empty(B)
        work = np.empty(K)
        acc = np.zeros((K, K))  # the pixels that are not one block, lower triangle
        acc_g = np.zeros((K4, K4))  # the one-block pixels, upper triangle
        gram = np.zeros((K4, K4))  # e_hat^T e_hat, upper triangle
        flux_part = np.zeros(K4)  # e_hat^T gf_hat
        accw = np.zeros(K)  # sum_p flux_p (C_p^-1 r_p), times dt at the end
        exact = newton[g]
        for p0 in range(0, P, B):
            n = min(B, P - p0)
            if not fit_pixel[g, p0 : p0 + n].any():  # padding: nothing to add
                _padding_block(g, p0, n, sqrt_d, gf_hat, e_hat)
                if out_chi2.shape[0] > 0:
                    out_chi2[g, p0 : p0 + n] = np.nan
                continue
            _gather_fit_block(diffs, valid, fit_pixel, flux, s2, g, p0, use, f, var, d, ok)
            _sweep_group_block(x_g, d, ok, f, var, low, inv, yx, yr, dd, gf)
            _back_block(low, inv, yx, yr, u, z, diag)
            _walk_block(low, running, first, one_block)
            _flux_scale_block(g, p0, n, use, dd, gf, sqrt_d, gf_hat, inv_sd)
            if out_chi2.shape[0] > 0:
                _chi2_from_sweep(g, p0, n, use, yr, inv, rr, out_chi2)
            for k in range(K):
                dtk = dt[k]
                if exact:
                    for i in range(n):
                        value = (f[i] * u[k, i] - z[k, i]) * dtk * inv_sd[i]
                        e_block[k, i] = value if ok[k, i] != 0 else 0.0
                else:
                    for i in range(n):
                        value = f[i] * dtk * u[k, i] * inv_sd[i]
                        e_block[k, i] = value if ok[k, i] != 0 else 0.0
            for i in range(n):
                p = p0 + i
                gf_block[i] = gf_hat[g, p]
                for k in range(K):
                    e_hat[g, p, k] = e_block[k, i]
            _masked_matvec_accumulate(z, ok, f, n, accw)
            _upper_accumulate(e_block, e_block, n, gram)
            _matvec_accumulate(e_block, gf_block, n, flux_part)
            # G gains the outer product (f^2 dt_i / R_i)(dt_j diag_j R_j) over i <= j within each
            # coupled block (_walk_block). For a pixel that is one block, the factors become
            # column i of `left` and `right`, summed by tiles; the other pixels are summed here.
            _one_block_factors(n, use, one_block, ok, f, dt, running, diag, f2, left, right)
            _upper_accumulate(left, right, n, acc_g)
            for i in range(n):
                if not use[i] or one_block[i]:
                    continue
                for j in range(K):
                    lj = f2[i] * dt[j] / running[j, i] if ok[j, i] else 0.0
                    rj = dt[j] * running[j, i] * diag[j, i] if ok[j, i] else 0.0
                    work[j] = lj
                    for m in range(first[j, i], j + 1):
                        acc[j, m] += work[m] * rj
        for j in range(K):
            out_gw[g, j] = dt[j] * accw[j]
            out_rhs[g, j] = out_gw[g, j] - flux_part[j]
            for i in range(j + 1):
                value = acc[j, i] + acc_g[i, j]
                out_g[g, i, j] = value
                out_g[g, j, i] = value
                # One triangle of the Gram matrix, so that the complement is exactly symmetric.
                reduced = value - gram[i, j]
                out_sch[g, i, j] = reduced
                out_sch[g, j, i] = reduced


@njit(cache=True, parallel=True)
def chord_gradient_kernel(diffs, valid, s2, dt, flux, omega, active, fit_pixel, e_hat, sqrt_d,
                          gf_hat, out_rhs):  # fmt: skip
    """The reduced gradient at a new point with an earlier point's flux elimination (a chord
    step of :func:`fit_omega_groups`): O(K) a pixel, where :func:`normal_equations_kernel` is
    O(K^2).

    For each active group g and fitted pixel p, with C_p, ``x`` and ``r_p`` at ``(flux,
    omega)`` and ``sqrt_d``, ``e_hat`` as :func:`normal_equations_kernel` left them at an
    earlier point (read only):

    - ``gf_hat[g, p] = (x^T C_p^-1 r_p) / sqrt_d[g, p]`` (0 where ``sqrt_d`` is 0);
    - ``out_rhs[g] = dt * sum_p flux_p C_p^-1 r_p - e_hat^T gf_hat``.

    With the earlier Schur complement, these give the step of the chord method: the gradient
    is the new point's (so the solution is the same), the matrix an approximation of its
    system's. Blocks of pixels as in :func:`normal_equations_kernel`, with the same sweep.
    """
    G, P, K = diffs.shape
    B = min(P, _GROUP_BLOCK)
    rows = np.flatnonzero(active)  # the threads split the active groups (normal_equations_kernel)
    for i_row in prange(rows.size):
        g = rows[i_row]
        use = np.empty(B, dtype=np.uint8)
        f = np.empty(B)
        var = np.empty(B)
        x_g = np.empty(K)
        for k in range(K):
            x_g[k] = omega[g, k] * dt[k]
        d = np.empty((K, B))
        ok = np.empty((K, B), dtype=np.uint8)
        low = np.empty((K, B))
        inv = np.empty((K, B))
        yx = np.empty((K, B))
        yr = np.empty((K, B))
        z = np.empty((K, B))  # C^-1 r
        dd = np.empty(B)
        gf = np.empty(B)
        gf_block = np.empty(B)
        accw = np.zeros(K)
        flux_part = np.zeros(K)
        for p0 in range(0, P, B):
            n = min(B, P - p0)
            if not fit_pixel[g, p0 : p0 + n].any():  # padding: gf_hat is 0 there already
                continue
            _gather_fit_block(diffs, valid, fit_pixel, flux, s2, g, p0, use, f, var, d, ok)
            _sweep_group_block(x_g, d, ok, f, var, low, inv, yx, yr, dd, gf)
            for i in range(B):
                z[K - 1, i] = yr[K - 1, i] * inv[K - 1, i]
            for k in range(K - 2, -1, -1):
                for i in range(B):
                    z[k, i] = yr[k, i] * inv[k, i] - low[k + 1, i] * z[k + 1, i]
            for i in range(n):
                p = p0 + i
                sd = sqrt_d[g, p]
                value = gf[i] / sd if use[i] and sd > 0.0 else 0.0
                gf_hat[g, p] = value
                gf_block[i] = value
            _masked_matvec_accumulate(z, ok, f, n, accw)
            for i in range(n):
                p = p0 + i
                v = gf_block[i]
                for k in range(K):
                    flux_part[k] += e_hat[g, p, k] * v
        for k in range(K):
            out_rhs[g, k] = dt[k] * accw[k] - flux_part[k]


@njit(cache=True, parallel=True)
def offset_reduce_kernel(a, m, b, dt, free_omega, free, last, rows, out_a, out_bm, out_b):
    """The offset blocks in ``z`` (``c = T z``, :class:`_Offsets`) for the groups ``rows``:
    ``out_a = T^T a T`` (the diagonal of pinned elements set to 1), ``out_bm = T^T m diag(dt)``
    (columns of fixed omega elements 0) and ``out_b = T^T b``.

    ``T`` keeps the free elements and puts ``-sum(z)`` at the last element with data ``L``, so
    ``(T^T x)_i = free_i (x_i - x_L)``: O(K^2) per segment rather than K x K products.
    ``a``, ``m`` (G, S, K, K); ``b`` (G, S, K); ``free_omega`` (G, K); ``free`` (G, S, K);
    ``last`` (G, S); outputs ``(len(rows), S, ...)``.
    """
    S, K = b.shape[1], b.shape[2]
    for i in prange(rows.size):
        g = rows[i]
        for s in range(S):
            L = last[g, s]
            for k in range(K):
                fk = free[g, s, k]
                out_b[i, s, k] = b[g, s, k] - b[g, s, L] if fk else 0.0
                for j in range(K):
                    if fk and free[g, s, j]:
                        out_a[i, s, k, j] = (
                            a[g, s, k, j] - a[g, s, L, j] - a[g, s, k, L] + a[g, s, L, L]
                        )
                    else:
                        out_a[i, s, k, j] = 1.0 if (k == j and not fk) else 0.0
                    if fk and free_omega[g, j]:
                        out_bm[i, s, k, j] = (m[g, s, k, j] - m[g, s, L, j]) * dt[j]
                    else:
                        out_bm[i, s, k, j] = 0.0


@njit(cache=True, parallel=True)
def adjusted_kernel(diffs, valid, offsets, segment, active, out):
    """``out = diffs - offsets[g, segment[g, p]]`` where ``valid``, else 0 (:class:`_Offsets`),
    for the ``active`` groups (the others are left as they are).

    ``diffs``, ``valid``, ``out`` (G, P, K); ``offsets`` (G, S, K); ``segment`` (G, P);
    ``active`` (G,).
    """
    G, P, K = diffs.shape
    rows = np.flatnonzero(active)  # the threads split the active groups (normal_equations_kernel)
    for i_row in prange(rows.size):
        g = rows[i_row]
        for p in range(P):
            s = segment[g, p]
            for k in range(K):
                out[g, p, k] = diffs[g, p, k] - offsets[g, s, k] if valid[g, p, k] else 0.0


@njit(cache=True, parallel=True)
def offset_flux_quad_kernel(e_hat, v, segment, ainv, bm, cov, out):
    """``out[g, p] = h^T cov[g] h + v_p . y`` with ``y = ainv[g, s] v_p`` and
    ``h = e_hat_p - bm[g, s]^T y``, ``s = segment[g, p]`` (:meth:`_Offsets.flux_quad`).

    ``e_hat``, ``v`` (G, P, K); ``ainv``, ``bm`` (G, S, K, K); ``cov`` (G, K, K); ``out`` (G, P).
    """
    G, P, K = e_hat.shape
    for g in prange(G):
        y = np.empty(K)
        h = np.empty(K)
        for p in range(P):
            s = segment[g, p]
            vy = 0.0
            for k in range(K):
                acc = 0.0
                for m in range(K):
                    acc += ainv[g, s, k, m] * v[g, p, m]
                y[k] = acc
                vy += v[g, p, k] * acc
            for m in range(K):
                acc = e_hat[g, p, m]
                for k in range(K):
                    acc -= y[k] * bm[g, s, k, m]
                h[m] = acc
            q = 0.0
            for k in range(K):
                acc = 0.0
                for m in range(K):
                    acc += cov[g, k, m] * h[m]
                q += h[k] * acc
            out[g, p] = q + vy


@njit(cache=True, parallel=True)
def offset_blocks_kernel(
    diffs, valid, s2, dt, flux, omega, segment, active, fit_pixel, out_a, out_m, out_b, ec_hat
):
    """Normal-equation blocks of the additive offsets ``c[g, s]`` (one per segment and difference).

    The model is ``d_p = flux_p x + c_s(p) + noise``; ``diffs`` must already have the current
    offsets subtracted (0 where invalid). With ``e_p = C_p^-1 x / sqrt(D_p)`` (the flux-offset block
    of H, scaled as ``e_hat`` in :func:`normal_equations_kernel`), for each active group g and
    segment s, summing over its fitted pixels p:

    - ``out_a[g, s] = sum_p (C_p^-1 - e_p e_p^T)``: the offset block after the fluxes are
      eliminated (K x K);
    - ``out_m[g, s] = sum_p flux_p (C_p^-1 - e_p e_p^T)``: times ``diag(dt)`` it is the
      offset-omega block after elimination;
    - ``out_b[g, s] = sum_p (C_p^-1 r_p - e_p gf_hat_p)``: the offset gradient after elimination;
    - ``ec_hat[g, p] = e_p``.

    Rows and columns of invalid differences get nothing. The cost per pixel is that of
    :func:`normal_equations_kernel` (the walk over C^-1).
    """
    G, P, K = diffs.shape
    rows = np.flatnonzero(active)  # the threads split the active groups (normal_equations_kernel)
    for i_row in prange(rows.size):
        g = rows[i_row]
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
        cr = np.empty(K)
        e = np.empty(K)
        out_a[g] = 0.0
        out_m[g] = 0.0
        out_b[g] = 0.0
        for p in range(P):
            if not fit_pixel[g, p]:
                ec_hat[g, p, :] = 0.0
                continue
            f = flux[g, p]
            s = segment[g, p]
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
            gf_hat = gf / sd
            _backward(low, piv, yx, u)
            _backward(low, piv, yr, cr)
            for k in range(K):
                e[k] = u[k] / sd if vmask[k] else 0.0
                ec_hat[g, p, k] = e[k]
                if vmask[k]:
                    out_b[g, s, k] += cr[k] - e[k] * gf_hat
            back[K - 1] = alpha[K - 1]
            for k in range(K - 2, -1, -1):
                back[k] = alpha[k] - beta[k] * beta[k] / back[k + 1]
            # Lower triangle [j, i], i <= j: C^-1 walked up each column from its diagonal with the
            # pivot ratios (the walk stops at a decoupled difference), then the rank-one term.
            for j in range(K):
                if not vmask[j]:
                    continue
                den = alpha[j]
                if j > 0:
                    den -= beta[j - 1] * beta[j - 1] / piv[j - 1]
                if j < K - 1:
                    den -= beta[j] * beta[j] / back[j + 1]
                value = 1.0 / den
                out_a[g, s, j, j] += value
                out_m[g, s, j, j] += f * value
                for i in range(j - 1, -1, -1):
                    value *= -beta[i] / piv[i]
                    if value == 0.0:
                        break
                    out_a[g, s, j, i] += value
                    out_m[g, s, j, i] += f * value
                for i in range(j + 1):
                    outer = e[i] * e[j]
                    out_a[g, s, j, i] -= outer
                    out_m[g, s, j, i] -= f * outer
        for s in range(out_a.shape[1]):
            for j in range(K):
                for i in range(j):
                    out_a[g, s, i, j] = out_a[g, s, j, i]
                    out_m[g, s, i, j] = out_m[g, s, j, i]


@njit(cache=True, parallel=True)
def chi2_kernel(diffs, valid, s2, x, flux, fit_pixel, out):
    """Eq-24 chi2 of every fitted pixel of a (G, P, K) layout, ``x`` of shape (G, K) or (1, K).

    :func:`_chi2_pixel`'s arithmetic, in its order, for ``_GROUP_BLOCK`` pixels at a time: the
    factorisation and the forward substitution run across the block's pixels at each k.
    """
    G, P, K = diffs.shape
    x_stride = 0 if x.shape[0] == 1 else 1
    B = min(P, _GROUP_BLOCK)
    for g in prange(G):
        xg = g * x_stride
        use = np.empty(B, dtype=np.bool_)
        f = np.empty(B)
        var = np.empty(B)
        r = np.empty((K, B))
        ok = np.empty((K, B), dtype=np.bool_)
        piv = np.empty(B)
        y = np.empty(B)
        chi2 = np.empty(B)
        for p0 in range(0, P, B):
            n = min(B, P - p0)
            for i in range(B):
                p = p0 + i
                use[i] = i < n and fit_pixel[g, p]
                f[i] = flux[g, p] if use[i] else 0.0
                var[i] = s2[g, p] if use[i] else 0.0
                for k in range(K):
                    good = use[i] and valid[g, p, k]
                    ok[k, i] = good
                    r[k, i] = diffs[g, p, k] - f[i] * x[xg, k] if good else 0.0
            for i in range(B):
                alpha = max(f[i] * x[xg, 0], 0.0) + 2.0 * var[i] if ok[0, i] else 1.0
                piv[i] = alpha
                y[i] = r[0, i]
                chi2[i] = 0.0 + y[i] * y[i] / piv[i]
            for k in range(1, K):
                x_k = x[xg, k]
                for i in range(B):
                    alpha = max(f[i] * x_k, 0.0) + 2.0 * var[i] if ok[k, i] else 1.0
                    beta = -var[i] if (ok[k - 1, i] and ok[k, i]) else 0.0
                    low = beta / piv[i]
                    pk = alpha - low * beta
                    yk = r[k, i] - low * y[i]
                    chi2[i] += yk * yk / pk
                    piv[i] = pk
                    y[i] = yk
            for i in range(n):
                out[g, p0 + i] = chi2[i] if use[i] else np.nan


@njit(cache=True, parallel=True)
def flux_quad_kernel(e_hat, cov, out):
    """``out[g, p] = e_hat[g, p]^T cov[g] e_hat[g, p]`` (the fluxes' variance from omega's), with
    one (P, K) x (K, K) product per group."""
    G, P, K = e_hat.shape
    for g in prange(G):
        product = np.dot(e_hat[g], cov[g])
        for p in range(P):
            total = 0.0
            for k in range(K):
                total += product[p, k] * e_hat[g, p, k]
            out[g, p] = total


@njit(cache=True, parallel=True)
def objective_change_kernel(
    diffs, valid, s2, dt, flux, omega, d_flux, d_omega, d_offsets, segment, factor, active,
    fit_pixel, out,
):  # fmt: skip
    """Change of each group's chi2, with C frozen at ``(flux, omega)``, over a trial step.

    ``out[g] = sum_p (m_p' - m_p)^T C_p^-1 (m_p' - m_p - 2 r_p)``: the chi2 at the trial point
    ``(flux + t d_flux, omega + t d_omega, offsets + t d_offsets)``, ``t = factor[g]``, minus the
    chi2 at ``(flux, omega)``,
    both weighted by ``C_p`` built at ``(flux, omega)``, with ``r_p = d_p - flux_p x`` (``diffs``
    have the current offsets removed). It is computed from the model change ``m' - m = df x +
    f dx + df dx + dc`` itself, never as the difference of two large sums, so that its sign is
    right even for a step near convergence. ``d_offsets`` is ``(G, S, K)`` with ``segment`` the
    ``(G, P)`` row of each pixel (``(G, 1, K)`` zeros without offsets).

    The pixels are taken ``_GROUP_BLOCK`` at a time, and each pixel's sweep
    (:func:`_weighted_change`'s arithmetic, in its order) runs across the block at each k.
    """
    G, P, K = diffs.shape
    B = min(P, _GROUP_BLOCK)
    out[:] = 0.0
    rows = np.flatnonzero(active)  # the threads split the active groups (normal_equations_kernel)
    for i_row in prange(rows.size):
        g = rows[i_row]
        use = np.empty(B, dtype=np.uint8)
        f = np.empty(B)
        var = np.empty(B)
        dm = np.empty((K, B))
        q = np.empty((K, B))
        ok = np.empty((K, B), dtype=np.uint8)
        inv = np.empty(B)
        ym = np.empty(B)
        yq = np.empty(B)
        change = np.empty(B)
        # omega dt and d_omega dt of the group, once (the same products as per difference).
        x_g = np.empty(K)
        dx_g = np.empty(K)
        t = factor[g]
        for k in range(K):
            x_g[k] = omega[g, k] * dt[k]
            dx_g[k] = (t * d_omega[g, k]) * dt[k]
        total = 0.0
        for p0 in range(0, P, B):
            n = min(B, P - p0)
            if not fit_pixel[g, p0 : p0 + n].any():
                continue
            for i in range(B):
                p = p0 + i
                use[i] = i < n and fit_pixel[g, p]
                f[i] = flux[g, p] if use[i] else 0.0
                var[i] = s2[g, p] if use[i] else 0.0
                if not use[i]:
                    for k in range(K):
                        ok[k, i] = 0
                        dm[k, i] = 0.0
                        q[k, i] = 0.0
                    continue
                df = t * d_flux[g, p]
                fi = f[i]
                # Rows as views: their indexing carries no negative-index checks.
                diff_row = diffs[g, p]
                valid_row = valid[g, p]
                offset_row = d_offsets[g, segment[g, p]]
                for k in range(K):
                    good = valid_row[k]
                    xk = x_g[k] if good else 0.0
                    dxk = dx_g[k] if good else 0.0
                    mk = df * xk + fi * dxk + df * dxk + t * offset_row[k] if good else 0.0
                    ok[k, i] = good
                    dm[k, i] = mk
                    q[k, i] = mk - 2.0 * (diff_row[k] - fi * xk) if good else 0.0
            _weighted_change_block(dm, q, x_g, ok, f, var, inv, ym, yq, change)
            for i in range(n):
                if use[i]:
                    total += change[i]
        out[g] = total


@njit(cache=True, inline="always")
def _weighted_change_block(dm, q, x_g, ok, f, var, inv, ym, yq, total):
    """:func:`_weighted_change` of a block of pixels, (K, B) arrays, across the pixels at each k;
    ``x_g`` (K,) is the group's design (``omega dt``), ``inv``, ``ym``, ``yq`` (B,) scratch,
    ``total`` (B,) out."""
    K, B = dm.shape
    x0 = x_g[0]
    for i in range(B):
        good = ok[0, i] != 0
        alpha = max(f[i] * x0, 0.0) + 2.0 * var[i] if good else 1.0
        ik = 1.0 / alpha
        inv[i] = ik
        ym[i] = dm[0, i]
        yq[i] = q[0, i]
        total[i] = 0.0 + dm[0, i] * q[0, i] * ik
    for k in range(1, K):
        xk = x_g[k]
        for i in range(B):
            good = ok[k, i] != 0
            alpha = max(f[i] * xk, 0.0) + 2.0 * var[i] if good else 1.0
            beta = -var[i] if (ok[k, i] & ok[k - 1, i]) != 0 else 0.0
            lk = beta * inv[i]
            ik = 1.0 / (alpha - lk * beta)
            a = dm[k, i] - lk * ym[i]
            b = q[k, i] - lk * yq[i]
            total[i] += a * b * ik
            inv[i] = ik
            ym[i] = a
            yq[i] = b


def equal_weight_kernel(
    reads, bad, use_mask, read_noise, gain, saturation, flux, flux_var, chi2, n_diff, flags
):
    """Equal-weight (OLS) slopes of a flattened cube, in electrons (vectorised NumPy).

    Parameters
    ----------
    reads : (N, n_pix) array in the caller's units; bad : (N, n_pix) bool, used if ``use_mask``.
    read_noise, gain, saturation : (n_pix,) float64, or (1,): one value for every pixel; in the
        caller's units.
    flux, flux_var, chi2 : (n_pix,) float64 outputs (e-, e-^2); n_diff, flags : (n_pix,) int64.
    """
    n_reads = reads.shape[0]
    counts = reads.astype(np.float64) * gain
    flags[:] = 0
    usable = np.isfinite(counts)
    flags[~usable.all(axis=0)] |= _NONFINITE_READ
    if use_mask:
        flags[bad.any(axis=0)] |= _MASKED_READ
        usable &= ~bad
    # An infinite read is a bad read, not the start of saturation (as in every other fit).
    saturated = np.logical_or.accumulate(np.isfinite(counts) & (counts >= saturation * gain))
    flags[saturated.any(axis=0)] |= _SATURATED
    usable &= ~saturated

    t = np.arange(n_reads, dtype=np.float64)[:, None]
    n_use = usable.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        t_mean = (usable * t).sum(axis=0) / n_use
        centered = np.where(usable, t - t_mean, 0.0)
        weights = centered / (centered**2).sum(axis=0)
        slope = (weights * np.where(usable, counts, 0.0)).sum(axis=0)
        # Photon increment i (between reads i and i+1) enters every later read.
        tail = np.cumsum(weights[::-1], axis=0)[::-1][1:]
        sigma_e = read_noise * gain
        var = sigma_e**2 * (weights**2).sum(axis=0) + np.maximum(slope, 0.0) * (tail**2).sum(axis=0)

    # Usable differences: both reads usable (for chi2 and n_diff).
    diff_ok = usable[1:] & usable[:-1]
    n_diff[:] = diff_ok.sum(axis=0)
    too_few = (n_use < 3) | (n_diff < 2)
    flags[too_few] |= _TOO_FEW_DIFFS
    slope[too_few] = np.nan
    var[too_few] = np.nan
    flux[:] = slope
    flux_var[:] = var
    # Eq-24 chi2 of the slope under the constant model, as for every other estimator.
    n_pix, K = counts.shape[1], n_reads - 1
    with np.errstate(invalid="ignore"):  # inf - inf at a non-finite read, not used (diff_ok)
        diffs = np.where(diff_ok, np.diff(counts, axis=0), 0.0).T.reshape(n_pix, 1, K)
    fit = np.isfinite(slope).reshape(n_pix, 1)
    out = np.empty((n_pix, 1))
    chi2_kernel(
        np.ascontiguousarray(diffs),
        np.ascontiguousarray(diff_ok.T).reshape(n_pix, 1, K),
        np.ascontiguousarray(np.broadcast_to(sigma_e**2, n_pix)).reshape(n_pix, 1),
        np.ones((1, K)),
        np.where(fit, slope.reshape(n_pix, 1), 0.0),
        fit,
        out,
    )
    chi2[:] = out[:, 0]


# --------------------------------------------------------------------------------------------
# Time-variable joint fit (NumPy orchestration of the kernels above)
# --------------------------------------------------------------------------------------------
def initial_guess(diffs, valid, s2, dt, fit_pixel, *, reference=False, ref_index=None,
                  pivot_ratio=None, flux_pixel=None):  # fmt: skip
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
        Element to fix to 1; default the argmax of the guess, as in the reference. A negative
        entry takes the argmax for that group.
    pivot_ratio : float, optional
        Threshold pivoting (:data:`PIVOT_RATIO`): a group's ``ref_index`` whose guess is below
        this fraction of the group's largest element is not fixed, the largest is (an element
        without data at ``ref_index`` is fixed all the same).
    flux_pixel : (G, P) bool, optional
        The pixels whose flux is guessed (step 5), among ``fit_pixel``; default all of them.
        A warm start (``fit_omega_groups``) needs only those it has no flux for.

    Returns
    -------
    omega : (G, K), 1 at ``ref_index``, NaN where no pixel has data.
    flux : (G, P), NaN for pixels that do not take part, or not in ``flux_pixel``.
    ref_index : (G,) int64
    """
    G, P, K = diffs.shape
    omega = np.full((G, K), np.nan)
    flux = np.full((G, P), np.nan)
    kstar = np.full(G, -1, dtype=np.int64) if ref_index is None else ref_index.astype(np.int64)
    floor_ratio = -np.inf if pivot_ratio is None else float(pivot_ratio)
    flux_pixel = fit_pixel if flux_pixel is None else fit_pixel & flux_pixel
    _initial_guess_kernel(diffs, valid, s2, dt, fit_pixel, flux_pixel, reference, floor_ratio,
                          omega, flux, kstar)  # fmt: skip
    return omega, flux, kstar


@njit(cache=True, inline="always")
def _guess_floor(s2, reference):
    """The initial guess's positivity floor for a pixel's fluxes and differences (e-).

    The reference's is ``CLAMP_FLOOR`` electrons. Default mode's is the same wherever the read
    noise is at least 1 e- (any detector in electrons), and ``CLAMP_FLOOR`` read-noise sigmas
    below it, so that reads in a tiny unit (a tiny gain) are not all floored to one value.
    """
    return CLAMP_FLOOR if reference else CLAMP_FLOOR * min(1.0, np.sqrt(s2))


# error_model="numpy": IEEE division without Python's zero-division checks (a weight whose
# square underflows is inf, not an exception).
@njit(cache=True, parallel=True, error_model="numpy")
def _initial_guess_kernel(diffs, valid, s2, dt, fit_pixel, flux_pixel, reference, pivot_ratio,
                          omega, flux, kstar):  # fmt: skip
    """The five steps of spec 2.6 for every group; ``kstar[g] < 0`` means take the argmax, and
    a ``kstar[g]`` whose guess is below ``pivot_ratio`` times the largest takes it too. Step 5
    (the fluxes) runs for the ``flux_pixel`` pixels only.

    The loops over k carry no branch (an unusable difference adds an exact 0), so that they
    run across the differences in vector registers; every sum keeps its order. Each weight
    takes two divisions, its ratios multiplied out: the spec's form, three divisions and a
    square root a difference in step 3, five and a square root in step 5, took twice as long
    (division throughput bounds these loops). With ``m = max(d, floor)``, ``t = m / d`` (1 for
    every difference above the floor) and ``q = read_term + max(d, 0)``, the difference's
    variance:

    - step 3, ``om_pix = d / a`` (``a = f0 dt``) of error ``|om_pix / m| sqrt(q)``: weight
      ``a^2 r`` and weighted value ``a d r``, ``r = t^2 / q``;
    - step 5, ``fl_pix = d / c`` (``c = omega dt``) of squared error ``fl_pix^2 (q / m^2 + e)``,
      ``e = (omega_err / omega)^2``: weight ``c^2 r`` and weighted value ``c d r``,
      ``r = t^2 / (q + e m^2)``.

    A difference weighs where its error is positive: ``d != 0`` and ``q > 0`` (or ``e > 0``).
    ``m`` is divided by ``d`` first: ``m^2 / (d^2 q)``, one division fewer, overflows where a
    large read noise and gain meet the reference mode's squared read term.

    Those conditions are 0/1 bytes combined with ``&``: as Python bools joined by ``and``, LLVM's
    cost model for AMD's Zen 3 kept the loops over k scalar, and the guess took 1.3x as long.
    """
    G, P, K = diffs.shape
    network = _center_network(K)
    for g in prange(G):
        f0 = np.empty(P)
        w_sum = np.zeros(K)
        w_om = np.zeros(K)
        seen = np.zeros(K, dtype=np.uint8)  # a usable difference in a fitted pixel
        # 1. Median rate per pixel; 2-3. inverse-variance weighted mean of d / (f0 dt) per k.
        _group_median_rates(diffs[g], valid[g], dt, fit_pixel[g], network, f0)
        for p in range(P):
            if not fit_pixel[g, p]:
                continue
            floor = _guess_floor(s2[g, p], reference)
            f0[p] = max(f0[p], floor)
            var = 2.0 * s2[g, p]
            read_term = var * var if reference else var
            for k in range(K):
                ok = np.uint8(valid[g, p, k])
                d = diffs[g, p, k]
                a = f0[p] * dt[k]
                m = max(d, floor)
                q = read_term + max(d, 0.0)
                weigh = (ok & np.uint8(d != 0.0) & np.uint8(q > 0.0)) != 0
                t = m / d
                r = t * t / q
                seen[k] |= ok
                w_sum[k] += a * a * r if weigh else 0.0
                w_om[k] += a * d * r if weigh else 0.0
        # 4. Normalise at the largest element (or the one asked for). An element whose usable
        # differences all weigh nothing (all exactly 0: no light) has data; its guess is the
        # floor.
        best = -1
        for k in range(K):
            if w_sum[k] > 0.0:
                omega[g, k] = max(w_om[k] / w_sum[k], CLAMP_FLOOR)
            elif seen[k]:
                omega[g, k] = CLAMP_FLOOR
            else:
                continue
            if best < 0 or omega[g, k] > omega[g, best]:
                best = k
        if kstar[g] >= 0 and best >= 0 and omega[g, kstar[g]] / omega[g, best] < pivot_ratio:
            kstar[g] = best
        if kstar[g] < 0:
            kstar[g] = max(best, 0)
        scale = omega[g, kstar[g]]
        for k in range(K):
            omega[g, k] /= scale
        # 5. Inverse-variance weighted mean of d / (omega dt) per pixel.
        # Per element: c = omega dt, and e = (omega_err / omega)^2, the normalised omega's
        # relative variance from step 3's weights (0 where it has none).
        design = np.empty(K)
        rel_var = np.zeros(K)
        for k in range(K):
            design[k] = omega[g, k] * dt[k]
            if w_sum[k] > 0.0:
                omega_err = w_sum[k] ** -0.5 / scale
                rel_var[k] = (omega_err / omega[g, k]) ** 2
        terms = np.empty((2, K))
        for p in range(P):
            if not flux_pixel[g, p]:
                continue
            floor = _guess_floor(s2[g, p], reference)
            var = 2.0 * s2[g, p]
            read_term = var * var if reference else var
            for k in range(K):
                d = diffs[g, p, k]
                c = design[k]
                m = max(d, floor)
                h = read_term + max(d, 0.0) + rel_var[k] * (m * m)
                weigh = (
                    np.uint8(valid[g, p, k])
                    & np.uint8(w_sum[k] > 0.0)
                    & np.uint8(d != 0.0)
                    & np.uint8(h > 0.0)
                ) != 0
                t = m / d
                r = t * t / h
                terms[0, k] = c * d * r if weigh else 0.0
                terms[1, k] = c * c * r if weigh else 0.0
            num = 0.0
            den = 0.0
            for k in range(K):
                num += terms[0, k]
                den += terms[1, k]
            flux[g, p] = max(num / den, floor) if den > 0.0 else f0[p] * scale


def _solve_spd(a, b):
    """Batched solve of SPD systems ``a x = b``; a group whose system is singular gets NaN."""
    try:
        return np.linalg.solve(a, b[..., None])[..., 0]
    except np.linalg.LinAlgError:
        out = np.full(b.shape, np.nan)
        for g in range(a.shape[0]):
            try:
                out[g] = np.linalg.solve(a[g], b[g])
            except np.linalg.LinAlgError:
                pass  # left NaN: the caller stops and flags this group
        return out


def _inverse_spd(a):
    """Batched inverse of SPD matrices; a singular one becomes NaN rather than failing all."""
    try:
        return np.linalg.inv(a)
    except np.linalg.LinAlgError:
        out = np.full(a.shape, np.nan)
        for g in range(a.shape[0]):
            try:
                out[g] = np.linalg.inv(a[g])
            except np.linalg.LinAlgError:
                pass
        return out


@njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def flux_step_kernel(e_hat, gf_hat, sqrt_d, d_omega, active, out):
    """``out[g, p] = (gf_hat[g, p] - e_hat[g, p] . d_omega[g]) / sqrt_d[g, p]``, 0 where
    ``sqrt_d`` is not positive; the product is 0 for the groups not ``active``. (Each product's
    sum over k is reassociated: vectorised, as BLAS's was.)"""
    G, P, K = e_hat.shape
    for g in prange(G):
        step = d_omega[g]
        for p in range(P):
            total = 0.0
            if active[g]:
                row = e_hat[g, p]
                for k in range(K):
                    total += row[k] * step[k]
            sd = sqrt_d[g, p]
            out[g, p] = (gf_hat[g, p] - total) / sd if sd > 0 else 0.0


@njit(cache=True, parallel=True, error_model="numpy")
def flux_step_summary_kernel(d_flux, fit_pixel, scale, rows, finite, largest):
    """For each group ``g = rows[i]`` of a flux step ``d_flux`` (G, P): ``finite[i]``, whether all
    of its row is finite, and ``largest[i]``, the largest ``|d_flux| / scale`` (0 outside the
    ``fit_pixel`` pixels; NaN if any quotient is NaN, as NumPy's ``max``)."""
    P = d_flux.shape[1]
    for i in prange(rows.shape[0]):
        g = rows[i]
        all_finite = True
        size = 0.0
        for p in range(P):
            value = d_flux[g, p]
            all_finite = all_finite and np.isfinite(value)
            quotient = abs(value if fit_pixel[g, p] else 0.0) / scale[g, p]
            size = np.maximum(size, quotient)  # NaN once any is NaN, as NumPy's max
        finite[i] = all_finite
        largest[i] = size


@njit(cache=True, parallel=True, error_model="numpy")
def flux_update_kernel(flux, d_flux, lam, rows, fit_pixel, previous, scale, relative, new_flux,
                       step):  # fmt: skip
    """The fluxes after a damped step, for each group ``g = rows[i]``: ``new_flux[i] = flux[g] +
    lam[i] d_flux[g]`` on the ``fit_pixel`` pixels (0 elsewhere), and ``step[i]``, the largest
    ``|new_flux[i] - previous[g]|`` (divided by ``scale[g]`` when ``relative``; NaN if any is NaN,
    as NumPy's ``max``). ``flux``, ``d_flux``, ``previous``, ``scale`` are (G, P)."""
    P = flux.shape[1]
    for i in prange(rows.shape[0]):
        g = rows[i]
        size = 0.0
        for p in range(P):
            value = flux[g, p] + lam[i] * d_flux[g, p] if fit_pixel[g, p] else 0.0
            new_flux[i, p] = value
            change = abs(value - previous[g, p])
            if relative:
                change = change / scale[g, p]
            size = np.maximum(size, change)
        step[i] = size


@njit(cache=True, parallel=True)
def flux_store_kernel(new_flux, rows, fit_pixel, floor, flux, previous, flux_lin):
    """For ``g = rows[i]``: ``flux[g] = previous[g] = new_flux[i]``, and ``flux_lin[g]`` its
    ``np.maximum`` with ``floor`` on the ``fit_pixel`` pixels (0 elsewhere; NaN stays NaN)."""
    P = new_flux.shape[1]
    for i in prange(rows.shape[0]):
        g = rows[i]
        for p in range(P):
            value = new_flux[i, p]
            flux[g, p] = value
            previous[g, p] = value
            flux_lin[g, p] = np.maximum(value, floor) if fit_pixel[g, p] else 0.0


class _Normal:
    """Buffers of the normal equations for (G, P, K), reused across iterations."""

    def __init__(self, G, P, K):
        self.g = np.zeros((G, K, K))
        self.gw = np.zeros((G, K))
        self.e_hat = np.zeros((G, P, K))
        self.gf_hat = np.zeros((G, P))
        self.sqrt_d = np.zeros((G, P))
        self.sch = np.zeros((G, K, K))
        self.rhs = np.zeros((G, K))

    def evaluate(self, diffs, valid, s2, dt, flux, omega, active, fit_pixel, newton=None,
                 chi2=None):  # fmt: skip
        """The normal equations at ``(flux, omega)`` for the ``active`` groups; ``newton``, (G,)
        bool: those groups get the exact Hessian's flux-omega block (see the kernel); ``chi2``,
        (G, P), optional: receives each fitted pixel's chi2 at that point.
        """
        if newton is None:
            newton = np.zeros(active.shape, dtype=bool)
        normal_equations_kernel(
            diffs, valid, s2, dt, flux, omega, active, newton, fit_pixel,
            self.g, self.gw, self.e_hat, self.gf_hat, self.sqrt_d, self.sch, self.rhs,
            np.empty((0, 0)) if chi2 is None else chi2,
        )  # fmt: skip

    def chord(self, diffs, valid, s2, dt, flux, omega, active, fit_pixel):
        """The ``active`` groups' right-hand side at ``(flux, omega)`` with their last
        :meth:`evaluate`'s flux elimination and Schur complement (:func:`chord_gradient_kernel`):
        :meth:`schur` and :meth:`flux_step` then give a chord step."""
        chord_gradient_kernel(diffs, valid, s2, dt, flux, omega, active, fit_pixel, self.e_hat,
                              self.sqrt_d, self.gf_hat, self.rhs)  # fmt: skip

    def schur(self, free):
        """Schur complement and right-hand side of each group's last :meth:`evaluate`, with the
        non-free elements pinned (identity)."""
        sch = self.sch.copy()
        rhs = self.rhs.copy()
        pinned = ~free
        sch[pinned[:, :, None] | pinned[:, None, :]] = 0.0
        G, K = free.shape
        diag = sch.reshape(G, K * K)[:, :: K + 1]
        diag[pinned] = 1.0
        rhs[pinned] = 0.0
        return sch, rhs

    def flux_step(self, d_omega, active=None):
        """Flux update from the omega update: ``(g_f - E . d_omega) / D`` (``active`` groups)."""
        if active is None:
            active = np.ones(d_omega.shape[0], dtype=bool)
        out = np.empty(self.gf_hat.shape)
        flux_step_kernel(self.e_hat, self.gf_hat, self.sqrt_d, d_omega, active, out)
        return out


class _Offsets:
    """Additive offsets ``c (G, S, K)``: one per (segment, difference), shared by the pixels of a
    segment (the 1/f nuisance term), eliminated from the Schur system after the fluxes.

    The model ``d_p = flux_p x + c_s(p)`` is unchanged by ``flux_p -> flux_p + a`` for the pixels of
    segment s with ``c_s -> c_s - a x``. The offsets are therefore constrained to sum to zero over
    the differences with data in each segment (the fluxes absorb the mean offset rate): ``c = T z``
    with ``z`` free except at the last element with data, where ``c_L = -sum(z)``.
    """

    def __init__(self, valid, fit_pixel, segment, n_segments):
        G, P, K = valid.shape
        S = n_segments
        self.segment = np.where(fit_pixel, segment, 0).astype(np.int64)
        self.rows = np.arange(G)[:, None]
        has = np.zeros((G, S, K), dtype=bool)
        np.logical_or.at(has, (self.rows, self.segment), valid & fit_pixel[..., None])
        self.has_data = has
        last = K - 1 - np.argmax(has[..., ::-1], axis=-1)  # (G, S)
        self.last = last
        self.free = has & (np.arange(K) != last[..., None])
        self.value = np.zeros((G, S, K))
        self.a = np.zeros((G, S, K, K))
        self.m = np.zeros((G, S, K, K))
        self.b = np.zeros((G, S, K))
        self.ec_hat = np.zeros((G, P, K))
        # The reduced blocks of the last :meth:`reduce`, per group (in z).
        self.bm = np.zeros((G, S, K, K))
        self.bb = np.zeros((G, S, K))
        self.ainv = np.zeros((G, S, K, K))

    def per_pixel(self, values):
        """``values (G, S, ...)`` at each pixel's segment: ``(G, P, ...)``."""
        return values[self.rows, self.segment]

    def adjusted(self, diffs, valid, active=None):
        """The differences with the current offsets removed (0 where invalid), for the
        ``active`` groups (default all; 0 for the others)."""
        out = np.zeros(diffs.shape)
        rows = np.ones(diffs.shape[0], dtype=bool) if active is None else active
        adjusted_kernel(diffs, valid, self.value, self.segment, rows, out)
        return out

    def evaluate(self, adjusted, valid, s2, dt, flux_cl, omega_cl, active, fit_pixel):
        """The offset blocks at the current point; ``adjusted`` is :meth:`adjusted`'s."""
        offset_blocks_kernel(
            adjusted, valid, s2, dt, flux_cl, omega_cl, self.segment, active, fit_pixel, self.a,
            self.m, self.b, self.ec_hat,
        )  # fmt: skip

    def reduce(self, sch, rhs, free, dt, active=None):
        """Eliminate the offsets from the omega system ``(sch, rhs)`` (second Schur complement),
        for the ``active`` groups (default all): a long-converging group does not make every
        iteration cost a full one. Keeps the blocks that :meth:`step` and :meth:`flux_quad` use.
        """
        rows = np.arange(sch.shape[0]) if active is None else np.flatnonzero(active)
        n, S, K = rows.size, self.b.shape[1], self.b.shape[2]
        a, bm, bb = np.empty((n, S, K, K)), np.empty((n, S, K, K)), np.empty((n, S, K))
        offset_reduce_kernel(self.a, self.m, self.b, dt, free, self.free, self.last, rows, a, bm,
                             bb)  # fmt: skip
        # A singular block gives NaN, which stops its group as broken down (NOT_CONVERGED).
        ainv = _inverse_spd(a.reshape(-1, *a.shape[-2:])).reshape(a.shape)
        w = ainv @ bm
        self.bm[rows], self.bb[rows], self.ainv[rows] = bm, bb, ainv
        # sum_s bm_s^T w_s and sum_s w_s^T bb_s as one (S K)-long product per group (BLAS).
        n, S, K = bb.shape
        stacked_bm = bm.reshape(n, S * K, K).swapaxes(-1, -2)
        sch, rhs = sch.copy(), rhs.copy()
        sch[rows] -= stacked_bm @ w.reshape(n, S * K, K)
        rhs[rows] -= (w.reshape(n, S * K, K).swapaxes(-1, -2) @ bb.reshape(n, S * K, 1))[..., 0]
        return sch, rhs

    def step(self, d_omega, active=None):
        """Offset update from the omega update, ``(G, S, K)`` (zero outside ``active``)."""
        rows = np.arange(d_omega.shape[0]) if active is None else np.flatnonzero(active)
        rhs = self.bb[rows] - (self.bm[rows] @ d_omega[rows][:, None, :, None])[..., 0]
        dz = (self.ainv[rows] @ rhs[..., None])[..., 0]
        # c = T dz: c_k = dz_k for the free k, c_L = -sum(dz) at the last element with data.
        dz = np.where(self.free[rows], dz, 0.0)
        dc = dz.copy()
        np.put_along_axis(dc, self.last[rows][..., None], -dz.sum(axis=-1, keepdims=True), axis=-1)
        dc = np.where(self.has_data[rows], dc, 0.0)
        out = np.zeros(self.value.shape)
        out[rows] = dc
        return out

    def flux_term(self, d_offsets, active=None):
        """``e_p . dc_s(p)`` per pixel, to subtract from the flux step's numerator (zero outside
        ``active``)."""
        rows = np.arange(d_offsets.shape[0]) if active is None else np.flatnonzero(active)
        at_pixels = d_offsets[rows[:, None], self.segment[rows]]  # (n, P, K)
        out = np.zeros(self.segment.shape)
        out[rows] = np.einsum("gpk,gpk->gp", self.ec_hat[rows], at_pixels)
        return out

    def flux_quad(self, e_hat, cov):
        """``zeta_p^T Cov zeta_p`` with both omega and the offsets marginalised, ``(G, P)``.

        With ``v = T^T e_p``, ``y = A^-1 v`` and ``h = e_hat_p - B^T y`` (B the offset-omega block
        in z), the quadratic form is ``h^T cov_omega h + v^T y``.
        """
        ec = self.ec_hat
        e_last = np.take_along_axis(ec, self.per_pixel(self.last)[..., None], axis=-1)
        v = np.where(self.per_pixel(self.free), ec - e_last, 0.0)
        quad = np.empty(e_hat.shape[:2])
        # One pass over the pixels, each with its own segment's blocks: O(P K^2) per group.
        offset_flux_quad_kernel(e_hat, v, self.segment, self.ainv, self.bm, cov, quad)
        return quad


def _single_blas_thread(func):
    """Run ``func`` with BLAS single-threaded.

    The joint fit makes many small products and solves (NumPy's, and one (P x K)(K x K)
    product per group in :func:`flux_quad_kernel` from Numba's threads); OpenBLAS's own threads
    then spin against each other and run them 10-100x slower.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with _blas_controller().limit(limits=1, user_api="blas"):
            return func(*args, **kwargs)

    return wrapper


@functools.cache
def _blas_controller():
    """The process's BLAS libraries, found once: ``threadpool_limits`` looks them up again at
    every call (1-2 ms, 0.05-0.1 s of a chip's fibers). Numba's np.dot calls SciPy's BLAS, a
    library of its own: it is loaded first, so that the limit reaches it too (otherwise the
    first call of a process runs it multi-threaded). A BLAS loaded later (torch's, Julia's)
    runs none of these kernels."""
    import scipy.linalg.cython_blas  # noqa: F401
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@_single_blas_thread
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


#: Default mode, threshold pivoting: the element fixed while iterating is at least this fraction
#: of the largest in magnitude. A requested ``ref_index`` below it in the initial guess is not
#: fixed (the largest is, and the solution is rescaled to ``ref_index`` at the end), and an
#: iterate where an element grows beyond its inverse is rescaled to fix that element instead.
PIVOT_RATIO = 0.5
#: Default mode. A group whose step shrinks by less than this factor in one iteration, or whose
#: step had to be damped, continues with Newton steps (the exact Hessian of the frozen-C chi2).
SLOW_CONTRACTION = 0.5
#: Default mode without segments: a Gauss-Newton group whose last step was below this (as the
#: tolerance measures it) takes chord steps: the gradient at the iterate, with the Schur
#: complement and flux elimination of its last full evaluation at the same pivot, for about a
#: quarter of the cost of a full evaluation. That system is about one step away from the
#: current one, so a chord step differs from the full step by about ``CHORD_STEP`` times its
#: size and the solution moves by about ``CHORD_STEP * rtol`` (1e-13 relative): within the
#: conformance vectors' 1e-12. A threshold of 1e-2 saved more (chords from the third
#: iteration) but moved the solution by up to 1e-10 relative.
CHORD_STEP = 1e-5
#: Halvings of the line search before it gives up.
MAX_HALVINGS = 40
#: Why a group's iteration stopped (``OmegaFit.stop_reason``; ``pyapred.solver.api.StopReason``).
STOP_CONVERGED, STOP_MAX_ITER, STOP_BREAKDOWN, STOP_LINE_SEARCH, STOP_EMPTY = range(5)


@_single_blas_thread
def fit_omega_groups(
    diffs, valid, s2, dt, fit_pixel, *, reference, rtol, max_iter, ref_index, segments=None,
    start=None, finish=True,
):  # fmt: skip
    """Gauss-Newton joint fit of omega and fluxes for G independent groups (spec 2.4-2.7, 9).

    ``reference=True`` is the reference implementation's iteration: full Gauss-Newton steps
    linearised at the values clamped at ``CLAMP_FLOOR``. Otherwise (``docs/model.md``,
    "Convergence"):

    - the linearisation point is the iterate itself, unclamped (the photon noise is
      ``max(f omega dt, 0)`` anyway), so that the iteration has one objective;
    - every step is line-searched: the largest of 1, 1/2, 1/4, ... that does not increase the
      chi2 with the covariances frozen at the current point (:func:`objective_change_kernel`);
    - a group whose steps shrink slowly (a low-signal, large-residual group, where Gauss-Newton
      converges linearly and slowly) or had to be damped takes Newton steps instead, whose
      Hessian adds the residual term; where that Hessian is not positive definite the group
      takes the Gauss-Newton step (not with ``segments``);
    - chord steps: a Gauss-Newton group whose last step was below ``CHORD_STEP`` keeps the
      Schur complement and flux elimination of its last full evaluation and recomputes only
      the gradient (:func:`chord_gradient_kernel`), not with ``segments``;
    - threshold pivoting: the element fixed to 1 while iterating is never below ``PIVOT_RATIO``
      times the largest in magnitude (a fixed difference with little light makes the
      parametrisation nearly singular: omega and the fluxes run off to large values, or must
      change sign through 0). A requested ``ref_index`` below it in the initial guess is not
      fixed, the guess's largest element is; an iterate where an element grows beyond
      ``1 / PIVOT_RATIO`` is rescaled (omega / c, fluxes * c) to fix that element instead. At
      the end the solution is rescaled to the requested ``ref_index``: the same point of the
      model, with the covariance evaluated in that normalisation. Without ``ref_index`` the
      element fixed at the end is returned (the guess's largest unless the fit moved it).

    ``segments`` (G, P) non-negative ints, optional: pixels of a group with the same label share
    an additive offset per read difference (:class:`_Offsets`), fitted jointly; not with
    ``reference``.

    ``start`` ``(omega (G, K), flux (G, P))``, optional: a warm start (a previous solution with the
    same ``ref_index``), used wherever it is finite in place of the initial guess, which still
    decides which elements have data.

    ``finish=False`` (default mode without ``segments`` only): stop at the solution, without
    the covariance, the fluxes' variance and the chi2 at it (NaN), nor the breakdown test on
    them; :func:`finish_groups` computes them later, the same bits. The jump search does not
    need them, and the groups whose mask it changes are fitted again.

    Returns a dict of the ``OmegaFit`` fields that are computed here (electron units): with the
    convergence report ``stop_reason`` (``STOP_*``), ``step_size`` (the last update, in the units
    of the convergence test) and ``damping`` (the line-search factor of the last update), and
    with ``offsets`` (G, S, K), NaN where a segment has no data, when ``segments`` is given.
    """
    if not finish and (reference or segments is not None):
        raise ValueError("finish=False: default mode without segments only")
    G, P, K = diffs.shape
    target = None if ref_index is None else np.asarray(ref_index, dtype=np.int64)
    # A warm start needs the guess's fluxes only where it has none.
    needs_flux = None if start is None else ~np.isfinite(start[1])
    if reference:
        omega, flux, kstar = initial_guess(
            diffs, valid, s2, dt, fit_pixel, reference=True, ref_index=target,
            flux_pixel=needs_flux,
        )  # fmt: skip
    else:
        omega, flux, kstar = _pivoted_guess(diffs, valid, s2, dt, fit_pixel, target, needs_flux)
    has_data = np.isfinite(omega)
    if start is not None:
        start_omega, start_flux = _start_at(start, kstar, kstar if target is None else target)
        # Groups whose start _start_at dropped (a new pivot without a positive start value):
        # their guessed fluxes, at the pivot chosen above (the same bits as guessed at once).
        dropped = np.flatnonzero((fit_pixel & ~np.isfinite(start_flux) & np.isnan(flux)).any(1))
        if dropped.size:
            flux[dropped] = initial_guess(
                diffs[dropped], valid[dropped], s2[dropped], dt, fit_pixel[dropped],
                reference=reference, ref_index=kstar[dropped],
            )[1]  # fmt: skip
        omega = np.where(has_data & np.isfinite(start_omega), start_omega, omega)
        flux = np.where(fit_pixel & np.isfinite(start_flux), start_flux, flux)
    free = has_data & (np.arange(K) != kstar[:, None])
    nonempty = fit_pixel.any(axis=1)
    floor = CLAMP_FLOOR if reference else -np.inf
    omega_lin = np.where(has_data, np.maximum(omega, floor), 0.0)
    flux_lin = np.where(fit_pixel, np.maximum(flux, floor), 0.0)
    prev_omega, prev_flux = omega_lin.copy(), flux_lin.copy()
    omega, flux = omega_lin.copy(), flux_lin.copy()
    scale = np.maximum(np.abs(flux_lin), np.sqrt(s2))
    tol = 1e-10 if reference else rtol
    min_iter = 3 if reference else 2
    active = nonempty.copy()
    n_iter = np.zeros(G, dtype=np.int64)
    converged = ~nonempty
    reason = np.where(nonempty, STOP_MAX_ITER, STOP_EMPTY).astype(np.int64)
    step_size = np.full(G, np.nan)
    damping = np.full(G, np.nan)
    newton = np.zeros(G, dtype=bool)
    last_step = np.full(G, np.inf)
    normal = _Normal(G, P, K)
    evaluated = np.zeros(G, dtype=bool)  # has a full evaluation at its current pivot
    offsets = None
    if segments is not None:
        offsets = _Offsets(valid, fit_pixel, segments, int(segments.max()) + 1)
        offset_scale = np.sqrt(s2.mean(axis=1))
    chords = not reference and offsets is None
    for it in range(max_iter):
        if not active.any():
            break
        # Chord steps (CHORD_STEP) where the group's last full evaluation is still close.
        chord = active & evaluated & ~newton & (last_step < CHORD_STEP) & chords
        full_step = active & ~chord
        if chord.any():
            normal.chord(diffs, valid, s2, dt, flux_lin, omega_lin, chord, fit_pixel)
        if full_step.any():
            sch, rhs = _evaluate(normal, offsets, diffs, valid, s2, dt, flux_lin, omega_lin,
                                 full_step, fit_pixel, free, newton & full_step)  # fmt: skip
            evaluated |= full_step
        else:
            sch, rhs = normal.schur(free)
        if (newton & active).any():
            _newton_or_gauss(normal, offsets, diffs, valid, s2, dt, flux_lin, omega_lin,
                             fit_pixel, free, newton & active, sch, rhs)  # fmt: skip
        d_omega = _solve_spd(sch[active], rhs[active])
        d_omega_all = _scatter(d_omega, active, (G, K))
        d_flux = normal.flux_step(d_omega_all, active)
        d_offsets = None
        if offsets is not None:
            d_offsets = offsets.step(d_omega_all, active)
            term = offsets.flux_term(d_offsets, active)
            with np.errstate(invalid="ignore", divide="ignore"):
                d_flux -= np.where(normal.sqrt_d > 0, term / normal.sqrt_d, 0.0)
        # The flux step stays (G, P), read by row in the kernels below: the loop's (n, P)
        # temporaries, one NumPy pass each, took 0.04 s more of a 300 x 2048 fit.
        rows = np.flatnonzero(active)
        flux_finite = np.empty(rows.size, dtype=bool)
        flux_size = np.empty(rows.size)
        flux_step_summary_kernel(d_flux, fit_pixel, scale, rows, flux_finite, flux_size)
        # A group whose system broke down (singular, non-finite: e.g. every flux clamped at the
        # floor) stops here, keeps its last finite iterate and stays flagged as not converged.
        broken = ~(np.isfinite(d_omega).all(axis=1) & flux_finite)
        if broken.any():
            reason[rows[broken]] = STOP_BREAKDOWN
            active[rows[broken]] = False
            d_omega, flux_size = d_omega[~broken], flux_size[~broken]
            if not active.any():
                break
        idx = np.flatnonzero(active)
        lam = np.ones(idx.size)
        if not reference:
            # The line search, where the full step is not already below the tolerance (a step
            # that small cannot matter, and its objective change is at the rounding level).
            full = np.maximum(np.where(free[idx], np.abs(d_omega), 0.0).max(axis=1), flux_size)
            search = full >= tol
            if search.any():
                lam[search] = _line_search(
                    diffs, valid, s2, dt, flux_lin, omega_lin, d_flux, d_omega_all, d_offsets,
                    offsets, idx[search], fit_pixel,
                )  # fmt: skip
        if offsets is not None:
            offsets.value[idx] += lam[:, None, None] * d_offsets[idx]
        new_omega = omega_lin[idx] + lam[:, None] * d_omega
        new_flux = np.empty((idx.size, P))
        step_flux = np.empty(idx.size)
        flux_update_kernel(flux_lin, d_flux, lam, idx, fit_pixel, prev_flux, scale, not reference,
                           new_flux, step_flux)  # fmt: skip
        step_omega = np.where(free[idx], np.abs(new_omega - prev_omega[idx]), 0.0).max(axis=1)
        done = (step_omega < tol) & (step_flux < tol) & (it + 1 >= min_iter) & (lam > 0)
        size = np.maximum(step_omega, step_flux)
        if offsets is not None:
            step_offsets = np.abs(lam[:, None, None] * d_offsets[idx]).max(axis=(1, 2))
            step_offsets = step_offsets / offset_scale[idx]
            done &= step_offsets < tol
            size = np.maximum(size, step_offsets)
        if not reference:
            # Dynamic pivoting: where an element has grown beyond 1 / PIVOT_RATIO times the
            # fixed one, the iterate is rescaled to fix the largest (in magnitude) instead.
            moved = _repivot(new_omega, new_flux, idx, has_data, fit_pixel, kstar, free, scale,
                             s2)  # fmt: skip
            done &= ~moved
            evaluated[idx[moved]] = False
        omega[idx] = new_omega
        prev_omega[idx] = new_omega
        omega_lin[idx] = np.where(has_data[idx], np.maximum(new_omega, floor), 0.0)
        flux_store_kernel(new_flux, idx, fit_pixel, floor, flux, prev_flux, flux_lin)
        n_iter[idx] = it + 1
        step_size[idx] = size
        damping[idx] = lam
        if not reference and offsets is None:
            slow = (lam < 1.0) | (size > SLOW_CONTRACTION * last_step[idx])
            newton[idx[slow]] = True
        last_step[idx] = size
        converged[idx[done]] = True
        reason[idx[done]] = STOP_CONVERGED
        stuck = idx[(lam == 0) & ~done]
        reason[stuck] = STOP_LINE_SEARCH
        active[idx[done]] = False
        active[stuck] = False

    # The convergence report (its arrays are updated in place below).
    report = {"ref_index": kstar, "n_iter": n_iter, "converged": converged, "has_data": has_data,
              "stop_reason": reason, "step_size": step_size, "damping": damping}  # fmt: skip
    if not reference:
        # Back to the requested normalisation where the group was pivoted (a rescaling of the
        # same solution: omega / c and flux * c, c = omega[target]); without one, the pivot
        # stays: the largest element of the guess, or of the solution where it moved.
        rescale = [] if target is None else np.flatnonzero(nonempty & (kstar != target))
        for g in rescale:
            c = omega[g, target[g]]
            if np.isfinite(c) and c != 0.0:
                omega[g] = np.where(has_data[g], omega[g] / c, 0.0)
                flux[g] = np.where(fit_pixel[g], flux[g] * c, 0.0)
                omega_lin[g], flux_lin[g] = omega[g], flux[g]
                kstar[g] = target[g]
            else:  # the requested element has no light at all: no normalisation to give
                converged[g] = False
                reason[g] = STOP_BREAKDOWN
        free = has_data & (np.arange(K) != kstar[:, None])
        if not finish:
            return report | {
                "omega": _returned_omega(omega, has_data, kstar, nonempty),
                "omega_cov": np.full((G, K, K), np.nan),
                "flux": np.where(fit_pixel, flux, np.nan),
                "flux_var": np.full((G, P), np.nan),
                "chi2": np.full((G, P), np.nan),
            }
        # The covariance and the chi2 at the returned solution (the reference keeps the
        # covariance from the linearisation before the last step, quirk Q3).
        chi2 = np.empty((G, P))
        sch, _ = _evaluate(normal, offsets, diffs, valid, s2, dt, flux_lin, omega_lin, nonempty,
                           fit_pixel, free, chi2=chi2)  # fmt: skip
    else:
        chi2 = None
        sch, _ = normal.schur(free)
    return _finished(normal, offsets, sch, diffs, valid, s2, dt, fit_pixel, omega, flux, report,
                     chi2)  # fmt: skip


@_single_blas_thread
def finish_groups(diffs, valid, s2, dt, fit_pixel, fit):
    """What ``fit_omega_groups(..., finish=False)`` left out, at its solution ``fit`` (its dict):
    the covariance, the fluxes' variance, the chi2 and the breakdown test. The same bits as
    ``finish=True``: each group's arithmetic depends on nothing but its own inputs.

    Returns the whole dict, as ``fit_omega_groups`` returns it.
    """
    G, P, K = diffs.shape
    has_data, kstar = fit["has_data"], fit["ref_index"]
    nonempty = fit_pixel.any(axis=1)
    # The iterate as the fit held it: 0 where an element or a pixel takes no part.
    omega = np.where(has_data, fit["omega"], 0.0)
    flux = np.where(fit_pixel, fit["flux"], 0.0)
    free = has_data & (np.arange(K) != kstar[:, None])
    normal = _Normal(G, P, K)
    chi2 = np.empty((G, P))
    sch, _ = _evaluate(normal, None, diffs, valid, s2, dt, flux, omega, nonempty, fit_pixel, free,
                       chi2=chi2)  # fmt: skip
    report = {key: fit[key].copy() for key in ("ref_index", "n_iter", "converged", "has_data",
                                               "stop_reason", "step_size", "damping")}  # fmt: skip
    return _finished(normal, None, sch, diffs, valid, s2, dt, fit_pixel, omega, flux, report,
                     chi2)  # fmt: skip


def _returned_omega(omega, has_data, kstar, nonempty):
    """The iterate ``omega`` as returned: NaN where an element has no data, exactly 1 at
    ``kstar`` (NaN for an empty group)."""
    out = np.where(has_data, omega, np.nan)
    out[np.arange(out.shape[0]), kstar] = np.where(nonempty, 1.0, np.nan)
    return out


def _finished(normal, offsets, sch, diffs, valid, s2, dt, fit_pixel, omega, flux, report,
              chi2=None):  # fmt: skip
    """``fit_omega_groups``' dict from the Schur complement ``sch`` at its solution ``(omega,
    flux)`` (the iterate, 0 where not used), with ``normal`` (and ``offsets``) evaluated there:
    omega's covariance, the fluxes' variance, the chi2, and the breakdown test, which updates
    ``report``'s ``converged`` and ``stop_reason``. ``chi2`` (G, P): the pixels' chi2 where that
    evaluation gave it (:meth:`_Normal.evaluate`), else computed here (the reference mode's last
    evaluation was at the clamped point)."""
    G, P, K = diffs.shape
    has_data, kstar = report["has_data"], report["ref_index"]
    nonempty = fit_pixel.any(axis=1)
    free = has_data & (np.arange(K) != kstar[:, None])
    cov = _inverse_spd(sch)
    cov[~(free[:, :, None] & free[:, None, :])] = 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        if offsets is None:
            quad = np.empty(fit_pixel.shape)
            flux_quad_kernel(normal.e_hat, cov, quad)
        else:
            quad = offsets.flux_quad(normal.e_hat, cov)
        flux_var = np.where(fit_pixel, (1.0 + quad) / normal.sqrt_d**2, np.nan)
    omega = _returned_omega(omega, has_data, kstar, nonempty)
    flux = np.where(fit_pixel, flux, np.nan)
    if chi2 is None:
        x = np.where(has_data, omega, 0.0) * dt
        chi2 = np.empty((G, P))
        fitted = diffs if offsets is None else offsets.adjusted(diffs, valid)
        chi2_kernel(fitted, valid, s2, x, np.where(fit_pixel, flux, 0.0), fit_pixel, chi2)
    # Nothing fails silently: a group whose results are not all finite (a singular covariance,
    # an overflow), or whose covariance has a negative variance (a singular system inverted,
    # as segments of one pixel each give), has not converged, whatever its steps did.
    finite = np.isfinite(cov).all(axis=(1, 2)) & np.isfinite(np.where(has_data, omega, 0)).all(1)
    finite &= (np.diagonal(cov, axis1=1, axis2=2) >= 0).all(axis=1)
    for value in (flux, flux_var, chi2):
        finite &= np.isfinite(np.where(fit_pixel, value, 0.0)).all(axis=1)
    broken = nonempty & ~finite
    converged, reason = report["converged"], report["stop_reason"]
    reason[broken & converged] = STOP_BREAKDOWN
    converged[broken] = False
    extra = {}
    if offsets is not None:
        extra["offsets"] = np.where(offsets.has_data, offsets.value, np.nan)
    return (
        extra
        | report
        | {
            "omega": omega,
            "omega_cov": cov,
            "flux": flux,
            "flux_var": flux_var,
            "chi2": chi2,
        }
    )


def _repivot(omega, flux, rows, has_data, fit_pixel, kstar, free, scale, s2):
    """Rescale in place the iterates ``omega``, ``flux`` (of the groups ``rows``) whose largest
    element in magnitude exceeds ``1 / PIVOT_RATIO``, to fix that element to 1 instead; update
    ``kstar``, ``free`` and the flux ``scale`` of the convergence test. Returns which rows moved.
    """
    size = np.where(has_data[rows], np.abs(omega), 0.0)
    moved = size.max(axis=1, initial=0.0) > 1.0 / PIVOT_RATIO
    for i in np.flatnonzero(moved):
        g = rows[i]
        k = int(np.argmax(size[i]))
        c = omega[i, k]
        omega[i] = np.where(has_data[g], omega[i] / c, 0.0)
        omega[i, k] = 1.0
        flux[i] = np.where(fit_pixel[g], flux[i] * c, 0.0)
        kstar[g] = k
        free[g] = has_data[g] & (np.arange(free.shape[1]) != k)
        scale[g] = np.maximum(np.abs(flux[i]), np.sqrt(s2[g]))
    return moved


def _pivoted_guess(diffs, valid, s2, dt, fit_pixel, target, flux_pixel=None):
    """The initial guess, fixed at ``target`` (G,) where that element's guess is at least
    ``PIVOT_RATIO`` of the group's largest (or has no data), else at the largest; the fluxes
    of the ``flux_pixel`` pixels (default all)."""
    if target is None:
        return initial_guess(diffs, valid, s2, dt, fit_pixel, flux_pixel=flux_pixel)
    return initial_guess(diffs, valid, s2, dt, fit_pixel, ref_index=target,
                         pivot_ratio=PIVOT_RATIO, flux_pixel=flux_pixel)  # fmt: skip


def _start_at(start, kstar, target):
    """A warm start (normalised at ``target``) rescaled to the pivots ``kstar``; NaN (unused)
    where the pivot's start value is not a positive number."""
    start_omega = np.array(start[0], dtype=np.float64)
    start_flux = np.array(start[1], dtype=np.float64)
    for g in np.flatnonzero(kstar != target):
        c = start_omega[g, kstar[g]]
        if np.isfinite(c) and c > 0.0:
            start_omega[g] /= c
            start_flux[g] *= c
        else:
            start_omega[g] = np.nan
            start_flux[g] = np.nan
    return start_omega, start_flux


def _newton_or_gauss(normal, offsets, diffs, valid, s2, dt, flux, omega, fit_pixel, free, newton,
                     sch, rhs):  # fmt: skip
    """Where the Newton system of a ``newton`` group is not positive definite (away from the
    solution the residual term can make it indefinite, and its step need not descend), put that
    group's Gauss-Newton system in ``sch``, ``rhs`` and ``normal`` instead."""
    rows = np.flatnonzero(newton)
    # The pinned elements' rows and columns are the identity: the whole matrix is PD exactly
    # when its free block is.
    ok = np.array([_positive_definite(a) for a in sch[rows]])
    if ok.all():
        return
    redo = np.zeros(newton.shape, dtype=bool)
    redo[rows[~ok]] = True
    sch_gn, rhs_gn = _evaluate(normal, offsets, diffs, valid, s2, dt, flux, omega, redo,
                               fit_pixel, free)  # fmt: skip
    sch[redo] = sch_gn[redo]
    rhs[redo] = rhs_gn[redo]


def _positive_definite(a):
    if not np.all(np.isfinite(a)):
        return False
    try:
        np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        return False
    return True


def _line_search(diffs, valid, s2, dt, flux, omega, d_flux, d_omega, d_offsets, offsets, rows,
                 fit_pixel):  # fmt: skip
    """Per group ``rows``: the largest of 1, 1/2, 1/4, ... (``MAX_HALVINGS`` halvings) whose step
    does not increase the chi2 with the covariances frozen at ``(flux, omega)``; 0 where none.

    ``d_flux (G, P)``, ``d_omega (G, K)`` and ``d_offsets (G, S, K)`` (or None) are the full
    steps; only the rows ``rows`` are read.
    """
    G, P, K = diffs.shape
    if offsets is None:
        fitted = diffs
        segment = np.zeros((G, P), dtype=np.int64)
        d_offsets = np.zeros((G, 1, K))
    else:
        searched = np.zeros(G, dtype=bool)
        searched[rows] = True
        fitted = offsets.adjusted(diffs, valid, searched)
        segment = offsets.segment
    lam = np.ones(rows.size)
    pending = np.ones(rows.size, dtype=bool)
    change = np.empty(G)
    for _ in range(MAX_HALVINGS + 1):
        act = np.zeros(G, dtype=bool)
        act[rows[pending]] = True
        factor = np.zeros(G)
        factor[rows] = lam
        objective_change_kernel(fitted, valid, s2, dt, flux, omega, d_flux, d_omega, d_offsets,
                                segment, factor, act, fit_pixel, change)  # fmt: skip
        pending &= ~(change[rows] <= 0.0)
        if not pending.any():
            return lam
        lam[pending] *= 0.5
    lam[pending] = 0.0
    return lam


def _evaluate(normal, offsets, diffs, valid, s2, dt, flux, omega, active, fit_pixel, free,
              newton=None, chi2=None):  # fmt: skip
    """Normal equations at the current point, reduced to omega: ``(schur, rhs)``; ``newton``
    groups get the exact Hessian's flux-omega block (not with offsets); ``chi2`` (G, P),
    optional, receives the fitted pixels' chi2 there."""
    fitted = diffs if offsets is None else offsets.adjusted(diffs, valid, active)
    normal.evaluate(fitted, valid, s2, dt, flux, omega, active, fit_pixel, newton, chi2)
    sch, rhs = normal.schur(free)
    if offsets is None:
        return sch, rhs
    offsets.evaluate(fitted, valid, s2, dt, flux, omega, active, fit_pixel)
    return offsets.reduce(sch, rhs, free, dt, active)


def _scatter(values, where, shape):
    out = np.zeros(shape)
    out[where] = values
    return out


@_single_blas_thread
def gibbs(diffs, valid, s2, dt, fit_pixel, omega, flux, kstar, burn_in, noise):
    """Gibbs sampler of one group (spec section 4) with the exact omega conditional (2.3).

    Each sweep draws every flux from ``N(mu_p, 1/D_p)`` given omega, rebuilds the covariances,
    then draws the free omega elements from ``N(omega_S + G_SS^-1 g_S, G_SS^-1)``: the exact
    conditional, including the coupling to the fixed element that the reference drops (Q6).
    Raw draws are stored; the positivity clamp applies only to the sampler state.

    ``noise`` holds the standard normal draws, ``(burn_in + n_samples, P + n_free)``: per sweep the
    P flux draws, then the free omega elements' draws. Drawing them up front with one
    ``rng.standard_normal`` call gives the same stream as drawing them sweep by sweep, and lets the
    Julia twin reproduce the chain exactly.

    Returns ``(omega_samples (n_samples, K), flux_samples (n_samples, P))``.
    """
    _, P, K = diffs.shape
    free = np.isfinite(omega[0]) & (np.arange(K) != kstar)
    omega_cl = np.where(np.isfinite(omega), np.maximum(omega, CLAMP_FLOOR), 0.0)
    flux_cl = np.where(fit_pixel, np.maximum(flux, CLAMP_FLOOR), 0.0)
    normal = _Normal(1, P, K)
    everything = np.ones(1, dtype=bool)
    n_samples = noise.shape[0] - burn_in
    out_omega = np.empty((n_samples, K))
    out_flux = np.empty((n_samples, P))
    idx = np.flatnonzero(free)
    for s in range(noise.shape[0]):
        normal.evaluate(diffs, valid, s2, dt, flux_cl, omega_cl, everything, fit_pixel)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = flux_cl + np.where(fit_pixel, normal.gf_hat / normal.sqrt_d, 0.0)
            sd = np.where(fit_pixel, 1.0 / normal.sqrt_d, 0.0)
        new_flux = np.where(fit_pixel, mean + sd * noise[s, :P], np.nan)
        flux_cl = np.where(fit_pixel, np.maximum(new_flux, CLAMP_FLOOR), 0.0)
        normal.evaluate(diffs, valid, s2, dt, flux_cl, omega_cl, everything, fit_pixel)
        precision = normal.g[0][np.ix_(idx, idx)]
        chol = np.linalg.cholesky(precision)
        # Mean omega_S + P^-1 g and covariance P^-1 = L^-T L^-1: draw L^-T (L^-1 g + z).
        half = np.linalg.solve(chol, normal.gw[0, idx])
        draw = omega_cl[0, idx] + np.linalg.solve(chol.T, half + noise[s, P : P + idx.size])
        new_omega = np.where(np.isfinite(omega[0]), omega_cl[0], np.nan)
        new_omega[idx] = draw
        omega_cl[0, idx] = np.maximum(draw, CLAMP_FLOOR)
        if s >= burn_in:
            out_omega[s - burn_in] = new_omega
            out_flux[s - burn_in] = new_flux[0]
    return out_omega, out_flux
