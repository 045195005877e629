"""Numba kernel of :func:`pyapred.traces.select_fit_pixels`: each fiber's candidates, ranked.

Pure numerics (arrays in, arrays out). Imported by :mod:`pyapred.traces` when fit pixels are
chosen, so that ``import pyapred`` does not load Numba.
"""

from __future__ import annotations

import numpy as np

from ..jit import njit, prange


@njit(cache=True, parallel=True)
def fit_pixel_kernel(y_center, excluded, fiber, purity, snr, bad, use_bad, reach, core_halfwidth,
                     min_purity, min_snr, rows, cols, ok):  # fmt: skip
    """Every fiber's candidate pixels, usable ones first by falling S/N, the rest after.

    A fiber's candidates are the rows ``rint(y_center) + offset``, ``offset`` from ``-reach`` to
    ``reach`` (outer), of every traced column (inner); a candidate is usable where its center
    lies within ``core_halfwidth`` rows of the trace center on the chip, the fiber owns it with
    at least ``min_purity`` of the light, its S/N (NaN read as 0) is at least ``min_snr``, it is
    not ``bad`` and the fiber is not ``excluded``. The candidates are ranked by a stable sort of
    their S/N, descending (-inf where not usable): ties keep the candidates' order.

    Parameters
    ----------
    y_center : (n_fibers, n_columns) float64
        0-based trace centers.
    excluded : (n_fibers,) bool
    fiber, purity : (ny, n_columns)
        The pixel map (:func:`pyapred.traces.pixel_fiber_map`).
    snr : (ny, >= n_columns) float64
    bad : (ny, >= n_columns) bool, read where ``use_bad``
    rows, cols : (n_fibers, (2 reach + 1) n_columns) int64, out
        The ranked candidates' coordinates (rows clipped to the chip).
    ok : (n_fibers, (2 reach + 1) n_columns) bool, out
        Whether each ranked candidate is usable.
    """
    n_fibers, nc = y_center.shape
    ny = fiber.shape[0]
    n_cand = (2 * reach + 1) * nc
    for f in prange(n_fibers):
        key = np.empty(n_cand)
        cand_rows = np.empty(n_cand, dtype=np.int64)
        usable = np.empty(n_cand, dtype=np.bool_)
        for o in range(2 * reach + 1):
            offset = o - reach
            for c in range(nc):
                i = o * nc + c
                raw = np.int64(np.rint(y_center[f, c])) + offset
                row = min(max(raw, 0), ny - 1)
                value = snr[row, c]
                if np.isnan(value):  # NaN reads as 0 (an infinite S/N ranks as NumPy's largest)
                    value = 0.0
                good = (
                    abs(raw - y_center[f, c]) <= core_halfwidth
                    and raw == row
                    and fiber[row, c] == f
                    and purity[row, c] >= min_purity
                    and value >= min_snr
                    and not (use_bad and bad[row, c])
                    and not excluded[f]
                )
                cand_rows[i] = row
                usable[i] = good
                key[i] = -value if good else np.inf
        order = np.argsort(key, kind="mergesort")
        for j in range(n_cand):
            i = order[j]
            rows[f, j] = cand_rows[i]
            cols[f, j] = i % nc
            ok[f, j] = usable[i]
