"""Numba kernel for rebuilding raw reads: one pass per read instead of five NumPy passes."""

from __future__ import annotations

import numpy as np

from ..jit import njit


@njit(cache=True)
def accumulate_read(
    current: np.ndarray, residual: np.ndarray, avg: np.ndarray, out: np.ndarray
) -> tuple[int, int]:
    """``current += residual + avg`` (int64), ``out[...] = current``; return its min and max.

    Parameters
    ----------
    current : ndarray, int64, ``(ny, nx)``
        The previous read; updated in place to this read.
    residual : ndarray, integer, ``(ny, nx)``
        This read's stored residual (native byte order).
    avg : ndarray, int64, ``(ny, nx)``
        The average read difference.
    out : ndarray, ``(ny, nx)``
        Receives this read, cast to its dtype (the caller checks the returned range).
    """
    low = np.iinfo(np.int64).max
    high = np.iinfo(np.int64).min
    ny, nx = current.shape
    for y in range(ny):
        for x in range(nx):
            value = current[y, x] + np.int64(residual[y, x]) + avg[y, x]
            current[y, x] = value
            out[y, x] = value
            low = min(low, value)
            high = max(high, value)
    return low, high
