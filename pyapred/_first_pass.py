"""Numba kernel of the pipeline's first pass over a chip: robust rates, jumps and saturation.

Pure numerics (arrays in, arrays out). Imported by :mod:`pyapred.pipeline` when a chip is
prepared, so that ``import pyapred`` does not load Numba.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


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
        Median of the shape-scaled usable differences (0 if none).
    saturated : (ny, nx) bool, out
        A read reached ``saturation`` (or was not finite); it and later reads are unusable.
    jump_bits : (ny, nx, n_words) uint64, out
        Bit k set when difference k exceeds ``rate * shape_k`` by ``threshold`` sigmas.
    """
    n_reads, ny, nx = reads.shape
    K = n_reads - 1
    for y in prange(ny):
        # The row's ramps, pixel-major: contiguous reads of the cube, contiguous ramps after.
        ramps = np.empty((nx, n_reads))
        for j in range(n_reads):
            for x in range(nx):
                ramps[x, j] = reads[j, y, x]
        scaled = np.empty(K)
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
            level = np.median(scaled[:n_diff]) if n_diff > 0 else 0.0
            rate[y, x] = level
            for w in range(jump_bits.shape[2]):
                jump_bits[y, x, w] = 0
            for k in range(n_diff):
                model = level * shape[k]
                noise = np.sqrt(max(model, 0.0) * inv_gain[y, x] + var_read[y, x])
                if (ramp[k + 1] - ramp[k]) - model > threshold * noise:
                    jump_bits[y, x, k // 64] |= np.uint64(1) << np.uint64(k % 64)


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
