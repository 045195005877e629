"""Numba kernel of :func:`pyapred.exposure.prepare.prepare_chip`'s fit reads.

Imported when a chip is prepared, so that ``import pyapred`` does not load Numba.
"""

from __future__ import annotations

from ..jit import njit, prange


@njit(cache=True, parallel=True)
def gather_planes(reads, flat, out):
    """``out[j, i] = reads[j].ravel()[flat[i]]``, converted to ``out``'s type.

    ``reads`` (n_reads, ny, nx) C-contiguous, native byte order; ``flat`` (n,) indices into a
    plane; ``out`` (n_reads, n). The planes are shared among the threads. NumPy's fancy index,
    plane by plane, took 7x longer (a chip's 300 x 2048 fit pixels, 47 uint16 reads: 0.30 s).
    """
    for j in prange(reads.shape[0]):
        plane = reads[j].ravel()
        row = out[j]
        for i in range(flat.size):
            row[i] = plane[flat[i]]
