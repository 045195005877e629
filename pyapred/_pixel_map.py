"""Numba kernel of :func:`pyapred.traces.pixel_fibre_map`: which trace dominates each pixel.

Pure numerics (arrays in, arrays out). Imported by :mod:`pyapred.traces` when a map is built, so
that ``import pyapred`` does not load Numba.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


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
def pixel_map_kernel(y_centre, sigma, bright, reach, halfwidth, fibre, purity):
    """Every traced column's pixels: the trace whose profile dominates, and by how much.

    Each column is independent; its pixels are accumulated in contiguous buffers and its traces
    are read from column-major inputs, because they are visited row by row.

    Parameters
    ----------
    y_centre, sigma, bright : (n_columns, n_fibres) float64
        0-based trace centres and Gaussian widths (pixels), and each trace's brightness.
    reach : int
        Rows from ``rint(y_centre)`` to visit on each side.
    halfwidth : float
        A fibre can own a pixel whose centre is within ``halfwidth * sigma`` of its trace.
    fibre : (ny, n_columns) int32, out
        The owning fibre, or -1 (background). Ties go to the fibre seen first, in the order
        offset from the rounded centre (outer), then fibre.
    purity : (ny, n_columns) float32, out
        The owner's share of the light of all traces in the pixel; 0 for background.
    """
    n_columns, n_fibres = y_centre.shape
    ny = fibre.shape[0]
    for c in prange(n_columns):
        owner = np.full(ny, -1, dtype=np.int32)
        best = np.zeros(ny)
        total = np.zeros(ny)
        # The profile's CDF at each pixel edge, computed once: a pixel's top edge is the next
        # one's bottom edge.
        lower = np.empty(n_fibres)
        for f in range(n_fibres):
            base = np.rint(y_centre[c, f])
            lower[f] = _ndtr((base - reach - 0.5 - y_centre[c, f]) * (1.0 / sigma[c, f]))
        for offset in range(-reach, reach + 1):
            for f in range(n_fibres):
                centre = y_centre[c, f]
                row = np.rint(centre) + offset
                upper = _ndtr((row + 0.5 - centre) * (1.0 / sigma[c, f]))
                light = (upper - lower[f]) * bright[c, f]
                lower[f] = upper
                if row < 0 or row >= ny:
                    continue
                r = int(row)
                total[r] += light
                if abs(row - centre) <= halfwidth * sigma[c, f] and light > best[r]:
                    best[r] = light
                    owner[r] = f
        for r in range(ny):
            fibre[r, c] = owner[r]
            purity[r, c] = best[r] / total[r] if owner[r] >= 0 else 0.0
