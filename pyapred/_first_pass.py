"""Numba kernel of the pipeline's first pass over a chip: robust rates, jumps and saturation.

Pure numerics (arrays in, arrays out). Imported by :mod:`pyapred.pipeline` when a chip is
prepared, so that ``import pyapred`` does not load Numba.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .solver._numpy import _select


@njit(cache=True, parallel=True)
def first_pass_kernel(reads, shape_index, shapes, inv_gain, var_read, saturation, threshold,
                      rate, saturated, jump_bits):  # fmt: skip
    """One pass over every pixel of a chip, row by row (rows in parallel).

    Parameters
    ----------
    reads : (N, ny, nx) float
        DN.
    shape_index : (ny, nx) int
        Row of ``shapes`` giving the pixel's expected light curve.
    shapes : (n_shapes, N - 1) float
        Expected read differences per unit rate (mean 1).
    inv_gain, var_read, saturation : (ny, nx) float
        1/gain (DN/e-), twice the single-read variance (DN^2), saturation level (DN).
    threshold : float
        Jump threshold in sigmas of a difference.
    rate : (ny, nx) float32, out
        Mean of the shape-scaled usable differences that are not jumps under a rough level (the
        median of at most ``_N_ROUGH`` evenly spaced ones); 0 if none.
    saturated : (ny, nx) bool, out
        A read reached ``saturation`` (or was not finite); it and later reads are unusable.
    jump_bits : (ny, nx, n_words) uint64, out
        Bit k set when difference k exceeds ``rate * shape_k`` by ``threshold`` sigmas.
    """
    n_reads, ny, nx = reads.shape
    K = n_reads - 1
    thr2 = threshold * threshold
    for y in prange(ny):
        # The row's ramps, pixel-major: contiguous reads of the cube, contiguous ramps after.
        ramps = np.empty((nx, n_reads))
        for j in range(n_reads):
            for x in range(nx):
                ramps[x, j] = reads[j, y, x]
        scaled = np.empty(K)
        work = np.empty(K)
        for x in range(nx):
            ramp = ramps[x]
            limit = saturation[y, x]
            n_good = n_reads
            for j in range(n_reads):
                if not np.isfinite(ramp[j]) or ramp[j] >= limit:
                    n_good = j
                    break
            saturated[y, x] = n_good < n_reads
            n_diff = max(n_good - 1, 0)
            shape = shapes[shape_index[y, x]]
            for k in range(n_diff):
                scaled[k] = (ramp[k + 1] - ramp[k]) / shape[k]
            # A rough level from the median of at most _N_ROUGH evenly spaced differences (cheap,
            # and robust to a jump), then the mean of the differences that are not jumps under it.
            n_rough = min(n_diff, _N_ROUGH)
            for i in range(n_rough):
                work[i] = scaled[(i * n_diff) // n_rough]
            rough = _median(work, n_rough)
            total, count = 0.0, 0
            for k in range(n_diff):
                excess = (ramp[k + 1] - ramp[k]) - rough * shape[k]
                if not _is_jump(excess, rough * shape[k], inv_gain[y, x], var_read[y, x], thr2):
                    total += scaled[k]
                    count += 1
            level = total / count if count > 0 else rough
            rate[y, x] = level
            for w in range(jump_bits.shape[2]):
                jump_bits[y, x, w] = 0
            for k in range(n_diff):
                excess = (ramp[k + 1] - ramp[k]) - level * shape[k]
                if _is_jump(excess, level * shape[k], inv_gain[y, x], var_read[y, x], thr2):
                    jump_bits[y, x, k // 64] |= np.uint64(1) << np.uint64(k % 64)


@njit(cache=True, inline="always")
def _is_jump(excess, model, inv_gain, var_read, thr2):
    """``excess > threshold * noise(model)`` (``thr2`` is the threshold squared)."""
    return excess > np.sqrt(thr2 * (max(model, 0.0) * inv_gain + var_read))


#: Differences in the first pass's rough median.
_N_ROUGH = 9


@njit(cache=True, inline="always")
def _median(values, n):
    """Median of ``values[:n]`` (0 when n == 0); reorders ``values``."""
    if n == 0:
        return 0.0
    upper = _select(values, n, n // 2)
    if n % 2 == 1:
        return upper
    lower = values[0]
    for i in range(1, n // 2):
        lower = max(lower, values[i])
    return 0.5 * (lower + upper)


def first_pass(reads, shape_index, shapes, inv_gain, var_read, saturation, threshold):
    """Run :func:`first_pass_kernel`; return ``rate``, ``saturated`` and the jumps.

    Returns
    -------
    rate : (ny, nx) float32
    saturated : (ny, nx) bool
    jumps : (n_jumps, 3) int64
        ``(k, row, column)`` of every difference ``k`` flagged as a jump.
    """
    n_reads, ny, nx = reads.shape
    K = n_reads - 1
    rate = np.empty((ny, nx), dtype=np.float32)
    saturated = np.empty((ny, nx), dtype=np.bool_)
    bits = np.empty((ny, nx, max(1, -(-K // 64))), dtype=np.uint64)
    full = (ny, nx)
    first_pass_kernel(
        reads, np.ascontiguousarray(shape_index), np.ascontiguousarray(shapes, dtype=np.float64),
        np.broadcast_to(np.asarray(inv_gain, np.float64), full),
        np.broadcast_to(np.asarray(var_read, np.float64), full),
        np.broadcast_to(np.asarray(saturation, np.float64), full),
        float(threshold), rate, saturated, bits,
    )  # fmt: skip
    rows, cols, words = np.nonzero(bits)
    jumps = []
    for r, c, w in zip(rows.tolist(), cols.tolist(), words.tolist(), strict=True):
        word = int(bits[r, c, w])
        jumps.extend((64 * w + b, r, c) for b in range(64) if word >> b & 1)
    return rate, saturated, np.array(jumps, dtype=np.int64).reshape(-1, 3)
