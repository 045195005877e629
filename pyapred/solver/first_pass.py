"""Numba kernel of the pipeline's first pass over a chip: robust rates, jumps and saturation.

Pure numerics (arrays in, arrays out). Imported by :mod:`pyapred.exposure.prepare` when a chip is
prepared, so that ``import pyapred`` does not load Numba.
"""

from __future__ import annotations

import numpy as np

from ..jit import njit, prange
from ._numpy import _median_network, _read_only, _runs, _sort_columns

#: Pixels of a row processed together.
_BLOCK = 256


@njit(cache=True, parallel=True)
def first_pass_kernel(reads, shape_index, shapes, inv_gain, var_read, saturation, threshold,
                      rate, saturated, jump_bits):  # fmt: skip
    """One pass over every pixel of a chip, in blocks of a row's pixels (blocks in parallel).

    Parameters
    ----------
    reads : (N, ny, nx) float or uint16
        DN.
    shape_index : (ny, nx) int
        Row of ``shapes`` giving the pixel's expected light curve.
    shapes : (n_shapes, N - 1) float
        Expected read differences per unit rate (mean 1).
    inv_gain, var_read, saturation : (ny, nx) float, or (1, 1): one value for every pixel
        1/gain (DN/e-), twice the single-read variance (DN^2), saturation level (DN).
    threshold : float
        Jump threshold in sigmas of a difference.
    rate : (ny, nx) float32, out
        Sum of the usable differences that are not jumps under a rough level (the median of at
        most ``_N_ROUGH`` evenly spaced shape-scaled ones), over the sum of their shapes; the
        rough level if none, 0 if no difference is usable.
    saturated : (ny, nx) bool, out
        A read reached ``saturation`` (or was not finite); it and later reads are unusable.
    jump_bits : (ny, nx, n_words) uint64, out
        Bit k set when difference k exceeds ``rate * shape_k`` by ``threshold`` sigmas.

    Every step runs across the block's pixels at each difference, which the compiler
    vectorises; the rough median sorts its values with a network (no unpredictable branches).
    """
    n_reads, ny, nx = reads.shape
    K = n_reads - 1
    thr2 = threshold * threshold
    n_blocks = (nx + _BLOCK - 1) // _BLOCK
    network = _median_network(_N_ROUGH)
    for task in prange(ny * n_blocks):
        y = task // n_blocks
        x0 = (task % n_blocks) * _BLOCK
        B = min(_BLOCK, nx - x0)
        # The block's calibration, copied out once: the loops below then read it contiguously
        # in vectors whatever its layout (a scalar comes as a stride-0 view).
        sat = np.empty(B)
        inv_g = np.empty(B)
        var_r = np.empty(B)
        for i in range(B):  # a (1, 1) map: one value for every pixel
            x = x0 + i
            sat[i] = saturation[min(y, saturation.shape[0] - 1), min(x, saturation.shape[1] - 1)]
            inv_g[i] = inv_gain[min(y, inv_gain.shape[0] - 1), min(x, inv_gain.shape[1] - 1)]
            var_r[i] = var_read[min(y, var_read.shape[0] - 1), min(x, var_read.shape[1] - 1)]
        # One read of the cube: the differences, and the first unusable read of each pixel (not
        # finite, or at or above saturation).
        n_good = np.full(B, n_reads, dtype=np.int64)
        previous = np.empty(B)
        first_read = reads[0, y, x0 : x0 + B]
        for i in range(B):
            value = float(first_read[i])
            previous[i] = value
            if not np.isfinite(value) or value >= sat[i]:
                n_good[i] = 0
        diff = np.empty((K, B))
        for k in range(K):
            plane = reads[k + 1, y, x0 : x0 + B]
            for i in range(B):
                value = float(plane[i])
                diff[k, i] = value - previous[i]
                previous[i] = value
                unusable = (not np.isfinite(value)) | (value >= sat[i])
                # The first unusable read: np.minimum stores every element (a store only where
                # the value changes is a masked vector store, microcoded on AMD's Zen 3).
                n_good[i] = np.minimum(n_good[i], k + 1 if unusable else n_reads)
        # Each pixel's light-curve shape. The block's runs of pixels of one shape (a row's pixels
        # of one fiber, or background: one run, or a few where a trace drifts across the row)
        # read one element per k, and their loops run in vectors, on slices of the run (an
        # index from the run's start would carry Numba's negative-index select). Each pixel's
        # element, gathered, took blocks of several shapes 1.5x as long. The shapes and the
        # scaled differences are not stored: read and divided where used.
        block_shapes = shape_index[y, x0 : x0 + B]
        run_end = np.empty(B, dtype=np.int64)
        n_runs = _runs(block_shapes, run_end)
        # A rough level from the median of at most _N_ROUGH evenly spaced differences (cheap,
        # and robust to a jump), then the level of the differences that are not jumps under it.
        rough_values = np.empty((_N_ROUGH, B))
        n_rough = np.empty(B, dtype=np.int64)
        all_usable = True
        for i in range(B):
            n_rough[i] = min(max(n_good[i] - 1, 0), _N_ROUGH)
            all_usable = all_usable & (n_good[i] == n_reads)
        if all_usable and K >= _N_ROUGH:
            # The common block: every pixel takes the same differences, read across each run
            # in vectors (pixel by pixel, each index's integer division took 10 % of the pass).
            for m in range(_N_ROUGH):
                k = (m * K) // _N_ROUGH
                start = 0
                for r in range(n_runs):
                    end = run_end[r]
                    _scaled(diff[k, start:end], shapes[block_shapes[start], k],
                            rough_values[m, start:end])  # fmt: skip
                    start = end
        else:
            for i in range(B):
                n_diff = max(n_good[i] - 1, 0)
                row = shapes[block_shapes[i]]
                for m in range(_N_ROUGH):
                    k = (m * n_diff) // n_rough[i] if m < n_rough[i] else 0
                    rough_values[m, i] = diff[k, i] / row[k] if m < n_rough[i] else np.inf
        _sort_columns(rough_values, network)
        rough = np.empty(B)
        for i in range(B):
            n = n_rough[i]
            if n == 0:
                rough[i] = 0.0
            elif n % 2 == 1:
                rough[i] = rough_values[n // 2, i]
            else:
                rough[i] = 0.5 * (rough_values[n // 2 - 1, i] + rough_values[n // 2, i])
        # The level is the kept differences' sum over their shapes' sum: the mean of the
        # scaled differences weighted by the shape, so that a difference whose shape is near 0
        # (a thick cloud) counts for little instead of dividing its noise by that shape.
        total = np.zeros(B)
        weight = np.zeros(B)
        start = 0
        for r in range(n_runs):
            end = run_end[r]
            _kept_sums(diff[:, start:end], shapes[block_shapes[start]], rough[start:end],
                       inv_g[start:end], var_r[start:end], n_good[start:end], thr2,
                       total[start:end], weight[start:end])  # fmt: skip
            start = end
        level = np.empty(B)
        for i in range(B):
            level[i] = total[i] / weight[i] if weight[i] > 0 else rough[i]
            rate[y, x0 + i] = level[i]
            saturated[y, x0 + i] = n_good[i] < n_reads
            for w in range(jump_bits.shape[2]):
                jump_bits[y, x0 + i, w] = 0
        # The jumps under the final level: tested across the block (in vectors), then set as
        # bits for the few pixels that have one.
        flagged = np.empty((K, B), dtype=np.bool_)
        any_jump = np.zeros(B, dtype=np.bool_)
        start = 0
        for r in range(n_runs):
            end = run_end[r]
            _flag_jumps(diff[:, start:end], shapes[block_shapes[start]], level[start:end],
                        inv_g[start:end], var_r[start:end], n_good[start:end], thr2,
                        flagged[:, start:end], any_jump[start:end])  # fmt: skip
            start = end
        for i in range(B):
            if any_jump[i]:
                for k in range(K):
                    if flagged[k, i]:
                        jump_bits[y, x0 + i, k // 64] |= np.uint64(1) << np.uint64(k % 64)


@njit(cache=True, inline="always")
def _scaled(diff, shape_k, out):
    """``out = diff / shape_k`` over a run of pixels (its rows' slices)."""
    for i in range(diff.shape[0]):
        out[i] = diff[i] / shape_k


@njit(cache=True, inline="always")
def _kept_sums(diff, shape, rough, inv_g, var_r, n_good, thr2, total, weight):
    """A run of pixels of one ``shape`` (K,), their differences ``diff`` (K, n): each usable
    difference that is no jump under ``rough`` added to the pixel's ``total``, and its shape
    element to ``weight``, in the order of k."""
    for k in range(diff.shape[0]):
        s = shape[k]
        for i in range(diff.shape[1]):
            model = rough[i] * s
            jump = _is_jump(diff[k, i] - model, model, inv_g[i], var_r[i], thr2)
            keep = (k + 1 < n_good[i]) & (not jump)
            total[i] += diff[k, i] if keep else 0.0
            weight[i] += s if keep else 0.0


@njit(cache=True, inline="always")
def _flag_jumps(diff, shape, level, inv_g, var_r, n_good, thr2, flagged, any_jump):
    """A run of pixels of one ``shape`` (K,), their differences ``diff`` (K, n): ``flagged``
    (K, n) where a usable difference is a jump under ``level``, and ``any_jump`` raised."""
    for k in range(diff.shape[0]):
        s = shape[k]
        for i in range(diff.shape[1]):
            model = level[i] * s
            jump = _is_jump(diff[k, i] - model, model, inv_g[i], var_r[i], thr2)
            hit = jump & (k + 1 < n_good[i])
            flagged[k, i] = hit
            any_jump[i] |= hit


@njit(cache=True, inline="always")
def _is_jump(excess, model, inv_gain, var_read, thr2):
    """``excess > threshold * noise(model)`` (``thr2`` is the threshold squared), decided on the
    squares: ``excess > 0`` and ``excess^2 > threshold^2 noise^2``.

    The same decision as ``excess > sqrt(threshold^2 noise^2)`` but where the two sides lie
    within rounding of each other (about 1e-16 relative); a negative or NaN variance is no jump,
    as its square root (NaN) was. The square root took a quarter of the first pass: vector
    square roots issue one every few cycles (a 47-read chip 0.46 s -> 0.37 s, one thread, Zen 4).
    """
    variance = thr2 * (max(model, 0.0) * inv_gain + var_read)
    return (excess > 0.0) & (variance >= 0.0) & (excess * excess > variance)


#: Differences in the first pass's rough median.
_N_ROUGH = 9


def _calibration(value, shape: tuple) -> np.ndarray:
    """A calibration map as :func:`first_pass_kernel` takes it: float64, C-ordered and read-only,
    ``shape``, or ``(1, 1)`` where it is one number (no chip-sized copy of it)."""
    values = np.broadcast_to(np.asarray(value, np.float64), shape)
    if values.size and not any(values.strides):
        values = np.full((1, 1), values.flat[0])
    return _read_only(values)


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
    # Every argument in one form (C order, int32 indices, read-only maps): Numba compiles the
    # kernel once for each mix of types, layouts and read-only flags.
    first_pass_kernel(
        np.ascontiguousarray(reads), np.ascontiguousarray(shape_index, dtype=np.int32),
        np.ascontiguousarray(shapes, dtype=np.float64), _calibration(inv_gain, full),
        _calibration(var_read, full), _calibration(saturation, full), float(threshold), rate,
        saturated, bits,
    )  # fmt: skip
    rows, cols, words = np.nonzero(bits)
    # The set bits of each nonzero word, in order (rows, columns, then k ascending).
    words_le = bits[rows, cols, words].astype("<u8")  # bytes least significant first
    unpacked = np.unpackbits(words_le.view(np.uint8).reshape(-1, 8), axis=1,
                             bitorder="little")  # fmt: skip
    which, bit = np.nonzero(unpacked)
    jumps = np.stack([64 * words[which] + bit, rows[which], cols[which]], axis=1)
    return rate, saturated, jumps.astype(np.int64).reshape(-1, 3)
