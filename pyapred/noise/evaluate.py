"""Statistics that compare two sets of noise images (e.g. generated against held-out darks).

- :func:`pqmass`: the PQMass two-sample test (Lemos et al. 2024), a NumPy/SciPy re-implementation
  of ``pqm.pqm_chi2`` (chi2 with ``num_refs - 1`` degrees of freedom under the null).
- :func:`row_mean_std`: the standard deviation of per-row means, the statistic that sees 1/f row
  offsets (PQMass alone missed a 14 % error in them).
- :func:`psd_slope`: the log-log slope of the power spectrum of time-ordered rows.
"""

from __future__ import annotations

import numpy as np

__all__ = ["pqmass", "psd_slope", "row_mean_std"]


def pqmass(x, y, *, num_refs: int = 100, re_tessellation: int = 1, rng=None) -> np.ndarray:
    """PQMass chi2 of two samples: about ``num_refs - 1`` (std ``sqrt(2 (num_refs - 1))``) when
    they come from one distribution, larger when they differ, near 0 for duplicates.

    Reference points are drawn from the pooled samples; every other sample goes to its nearest
    reference (Euclidean); the 2 x ``num_refs`` table of counts gets a chi2 test of independence
    (no continuity correction), rescaled to ``num_refs - 1`` degrees of freedom where cells are
    empty.

    Parameters
    ----------
    x, y : array_like, ``(n_x, ...)`` and ``(n_y, ...)``
        Samples (each flattened to a vector).
    num_refs : int
        Reference points (Voronoi cells).
    re_tessellation : int
        Independent draws of the references; one chi2 per draw.
    rng : numpy.random.Generator or int, optional

    Returns
    -------
    ndarray, ``(re_tessellation,)``
    """
    from scipy.spatial.distance import cdist
    from scipy.stats import chi2_contingency

    rng = np.random.default_rng(rng)
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x, y: expected samples of one size, got {x.shape[1]} and {y.shape[1]}")
    if num_refs < 2 or num_refs >= len(x) + len(y):
        raise ValueError(f"num_refs: expected 2 .. {len(x) + len(y) - 1}, got {num_refs}")
    pooled = np.concatenate([x, y])
    out = np.empty(re_tessellation)
    for i in range(re_tessellation):
        pick = rng.permutation(len(pooled))
        refs, rest = pick[:num_refs], pick[num_refs:]
        nearest = np.argmin(cdist(pooled[rest], pooled[refs]), axis=1)
        from_x = rest < len(x)
        table = np.stack(
            [
                np.bincount(nearest[from_x], minlength=num_refs),
                np.bincount(nearest[~from_x], minlength=num_refs),
            ]
        )
        table = table[:, table.sum(axis=0) > 0]
        statistic, _, dof, _ = chi2_contingency(table, correction=False)
        out[i] = statistic * (num_refs - 1) / dof if dof > 0 else 0.0
    return out


def row_mean_std(images) -> float:
    """Standard deviation of the row means of ``images (n, ny, nx)`` (rows along the last axis)."""
    images = np.asarray(images, dtype=np.float64)
    return float(images.mean(axis=-1).std())


def psd_slope(images, *, band: tuple[float, float] = (0.01, 0.25)) -> float:
    """Log-log slope of the mean power spectrum of ``images (n, ny, nx)`` read row after row.

    Each image is flattened in C order (the time order of one output whose rows are read left
    to right, without row overheads; :func:`~pyapred.noise.time_order` gives that order) and its
    periodogram is averaged over images. ``band`` is in cycles per pixel (Nyquist = 0.5).
    """
    from scipy import signal

    images = np.asarray(images, dtype=np.float64)
    streams = images.reshape(images.shape[0], -1)
    f, psd = signal.welch(streams, nperseg=min(4096, streams.shape[1]), axis=-1)
    psd = psd.mean(axis=0)
    keep = (f >= band[0]) & (f <= band[1])
    return float(np.polyfit(np.log(f[keep]), np.log(psd[keep]), 1)[0])
