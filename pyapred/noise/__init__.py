"""Correlated (1/f) read noise: simulation with APOGEE clocking and reference correction.

- :func:`simulate_hxrg`: H2RG read noise (white, correlated and per-output 1/f, alternating-column
  noise) on the APOGEE clock, for a chip with its reference output.
- :func:`refcorr`: reference-pixel correction of read differences before the ramp fit
  (:func:`refcorr_inplace` for a cube, :func:`reference_read_variance` for the noise it adds).
- :mod:`pyapred.noise.stress`: the four-case 1/f stress test of the omega fit.
- :mod:`pyapred.noise.evaluate`: PQMass, row-mean std and spectral slope of noise samples.

The time-variable fit that tolerates the remaining row offsets is ``fit_omega(...,
segments=...)`` in :mod:`pyapred.solver`. See ``docs/noise.md``.
"""

from .hxrg import HxrgNoise, reference_pixels, simulate_hxrg, time_order
from .refcorr import refcorr, refcorr_inplace, refcorr_reads, reference_read_variance

__all__ = [
    "HxrgNoise",
    "reference_pixels",
    "reference_read_variance",
    "refcorr",
    "refcorr_inplace",
    "refcorr_reads",
    "simulate_hxrg",
    "time_order",
]
