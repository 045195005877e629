"""Numba kernel of :func:`pyapred.traces.pixel_fiber_map`: which trace dominates each pixel.

Pure numerics (arrays in, arrays out). Imported by :mod:`pyapred.traces` when a map is built, so
that ``import pyapred`` does not load Numba.
"""

from __future__ import annotations

import math

import numpy as np

from ..jit import njit, prange


@njit(cache=True, inline="always")
def _ndtr(a):
    """The standard normal CDF, computed as scipy.special.ndtr (Cephes) computes it."""
    x = a * 0.7071067811865476
    z = abs(x)
    if z < 0.7071067811865476:
        return 0.5 + 0.5 * math.erf(x)
    y = 0.5 * math.erfc(z)
    return 1.0 - y if x > 0 else y


@njit(cache=True, parallel=True)
def pixel_map_kernel(y_center, sigma, bright, reach, halfwidth, fiber, purity):
    """Every traced column's pixels: the trace whose profile dominates, and by how much.

    Each column is independent; its pixels are accumulated in contiguous buffers and its traces
    are read from column-major inputs, because they are visited row by row.

    Parameters
    ----------
    y_center, sigma, bright : (n_columns, n_fibers) float64
        0-based trace centers and Gaussian widths (pixels), and each trace's brightness.
    reach : int
        Rows from ``rint(y_center)`` to visit on each side.
    halfwidth : float
        A fiber can own a pixel whose center is within ``halfwidth * sigma`` of its trace.
    fiber : (ny, n_columns) int32, out
        The owning fiber, or -1 (background). Ties go to the fiber seen first, in the order
        offset from the rounded center (outer), then fiber.
    purity : (ny, n_columns) float32, out
        The owner's share of the light of all traces in the pixel; 0 for background.
    """
    n_columns, n_fibers = y_center.shape
    ny = fiber.shape[0]
    for c in prange(n_columns):
        owner = np.full(ny, -1, dtype=np.int32)
        best = np.zeros(ny)
        total = np.zeros(ny)
        # The profile's CDF at each pixel edge, computed once: a pixel's top edge is the next
        # one's bottom edge.
        lower = np.empty(n_fibers)
        for f in range(n_fibers):
            base = np.rint(y_center[c, f])
            lower[f] = _ndtr((base - reach - 0.5 - y_center[c, f]) * (1.0 / sigma[c, f]))
        for offset in range(-reach, reach + 1):
            for f in range(n_fibers):
                center = y_center[c, f]
                row = np.rint(center) + offset
                upper = _ndtr((row + 0.5 - center) * (1.0 / sigma[c, f]))
                light = (upper - lower[f]) * bright[c, f]
                lower[f] = upper
                if row < 0 or row >= ny:
                    continue
                r = int(row)
                total[r] += light
                if abs(row - center) <= halfwidth * sigma[c, f] and light > best[r]:
                    best[r] = light
                    owner[r] = f
        for r in range(ny):
            fiber[r, c] = owner[r]
            purity[r, c] = best[r] / total[r] if owner[r] >= 0 else 0.0
