"""Transparency that depends on wavelength: the chips' wavelengths and the seeing's colour.

The chromatic time-variable model (:func:`pyapred.solver.fit_omega_chromatic`) writes each
pixel's transparency as ``omega_k (1 + gamma_k c)``, with ``c`` a normalised wavelength
coordinate: -1 at the bluest and +1 at the reddest column of the chips fitted together
(:func:`wavelength_coordinate`). This module holds what gives that coordinate and what predicts
gamma from a physical cause:

- the wavelength of each column, linear per chip (:data:`CHIP_WAVELENGTH_UM`; APOGEE's
  dispersion runs along the columns, wavelength decreasing with the column);
- the PSF coupling into a fiber (:func:`fiber_coupling`), at a seeing FWHM that scales as
  ``lambda ** -0.2`` (:func:`seeing_fwhm`): when the seeing changes during an exposure, the red
  and blue ends of a spectrum lose light differently, whereas a cloud is grey;
- the model's ``(omega, gamma)`` of any transparency history given at several wavelengths
  (:func:`linear_in_coordinate`), used for simulation truth and for the guider's prediction.

NumPy only: the simulator, the exposure stages and the guider all use it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "CHIP_WAVELENGTH_UM",
    "FIBER_DIAMETER_ARCSEC",
    "GUIDER_WAVELENGTH_UM",
    "SEEING_POWER",
    "chip_wavelength",
    "chromatic_transparency",
    "coordinate_span",
    "fiber_coupling",
    "linear_in_coordinate",
    "seeing_fwhm",
    "wavelength_coordinate",
]

#: Vacuum wavelength (micron) at the first and the last science column (0 and 2047) of each
#: chip; linear in between (the DR17 wavelength solutions are linear to a few percent of a
#: chip's span, enough for a coordinate that only has to order the pixels and scale gamma).
CHIP_WAVELENGTH_UM = {"R": (1.6965, 1.6475), "G": (1.6440, 1.5860), "B": (1.5808, 1.5145)}

#: Fiber diameter on the sky, arcsec, per telescope. APO: 3.0, the value the paper uses (section
#: IV). LCO: 1.3, the 120 micron APOGEE fiber core at the du Pont plate scale (f/7.5, 2.5 m:
#: 11.0 arcsec/mm; Wilson et al. 2019, PASP 131, 055001). The same core at the Sloan plate scale
#: (217.7358 mm/deg, guider header ``PLATSCAL``) is 1.98 arcsec; pass ``diameter=2.0`` for it.
FIBER_DIAMETER_ARCSEC = {"apo": 3.0, "lco": 1.3}

#: Seeing FWHM scales as wavelength to this power (Kolmogorov turbulence, large outer scale).
SEEING_POWER = -0.2

#: Effective wavelength (micron) at which the guider cameras measure the seeing FWHM.
GUIDER_WAVELENGTH_UM = 0.65


def chip_wavelength(chip: str, n_columns: int = 2048) -> np.ndarray:
    """Wavelength of each science column of a chip, micron, ``(n_columns,)``.

    Parameters
    ----------
    chip : {"R", "G", "B"}
    n_columns : int
        Number of science columns; a smaller simulated chip spans the same wavelengths.
    """
    if chip not in CHIP_WAVELENGTH_UM:
        raise ValueError(f"chip: expected one of {sorted(CHIP_WAVELENGTH_UM)}, got {chip!r}")
    first, last = CHIP_WAVELENGTH_UM[chip]
    return np.linspace(first, last, int(n_columns))


def coordinate_span(chips: Sequence[str]) -> tuple[float, float]:
    """Bluest and reddest wavelength (micron) of the given chips: where ``c`` is -1 and +1."""
    ends = [w for chip in chips for w in chip_wavelength(chip, 2)]
    return float(min(ends)), float(max(ends))


def wavelength_coordinate(wavelength, span: tuple[float, float]) -> np.ndarray:
    """Normalised coordinate ``c = 2 (lambda - blue) / (red - blue) - 1`` of each wavelength.

    Parameters
    ----------
    wavelength : array_like
        Micron.
    span : (float, float)
        ``(blue, red)`` from :func:`coordinate_span`.
    """
    blue, red = span
    return 2.0 * (np.asarray(wavelength, dtype=np.float64) - blue) / (red - blue) - 1.0


def fiber_coupling(fwhm, diameter: float) -> np.ndarray:
    """Fraction of a centered circular Gaussian PSF inside a circular fiber.

    ``1 - 2**(-(D / FWHM)**2)``, i.e. ``1 - exp(-R**2 / (2 sigma**2))`` with ``R = D/2`` and
    ``FWHM = 2 sqrt(2 ln 2) sigma`` (the guider's flux-in-fiber model,
    :mod:`pyapred.guider.fiber_flux`).

    Parameters
    ----------
    fwhm : array_like
        Seeing FWHM, arcsec.
    diameter : float
        Fiber diameter on the sky, arcsec.

    Returns
    -------
    ndarray, the shape of ``fwhm``
    """
    fwhm = np.asarray(fwhm, dtype=np.float64)
    try:
        size = float(diameter)
    except (TypeError, ValueError):
        size = float("nan")
    if not 0 < size < float("inf"):  # NaN fails too
        raise ValueError(f"diameter: expected a finite fiber size > 0 (arcsec), got {diameter!r}")
    if np.any(fwhm <= 0):  # a NaN FWHM (no measurement) stays NaN
        raise ValueError("fwhm: expected seeing > 0 (arcsec)")
    return -np.expm1(-np.log(2.0) * (size / fwhm) ** 2)


def seeing_fwhm(fwhm, wavelength, reference: float = GUIDER_WAVELENGTH_UM) -> np.ndarray:
    """Seeing FWHM at ``wavelength`` from the FWHM measured at ``reference`` (micron).

    ``fwhm`` and ``wavelength`` broadcast: ``fwhm[..., None]`` against a ``(n,)`` wavelength
    array gives ``(..., n)``.
    """
    scale = (np.asarray(wavelength, dtype=np.float64) / reference) ** SEEING_POWER
    return np.asarray(fwhm, dtype=np.float64) * scale


def chromatic_transparency(transparency, fwhm, wavelength, *, diameter: float,
                           reference: float = GUIDER_WAVELENGTH_UM) -> np.ndarray:  # fmt: skip
    """Light entering a fiber at each wavelength: ``T * coupling(FWHM(lambda))``.

    Parameters
    ----------
    transparency, fwhm : array_like, ``(..., K)``
        Grey transparency and seeing FWHM (arcsec, at ``reference``) per read difference.
    wavelength : array_like, ``(n,)``
        Micron.
    diameter : float
        Fiber diameter, arcsec.
    reference : float
        Wavelength of ``fwhm``, micron.

    Returns
    -------
    ndarray, ``(..., K, n)``
    """
    fwhm_at = seeing_fwhm(np.asarray(fwhm)[..., None], wavelength, reference)
    return np.asarray(transparency, dtype=np.float64)[..., None] * fiber_coupling(fwhm_at, diameter)


def linear_in_coordinate(omega_lambda, coordinate, ref_index: int) -> tuple[np.ndarray, np.ndarray]:
    """The chromatic model's ``(omega, gamma)`` closest to a transparency given per wavelength.

    The model is ``omega_k (1 + gamma_k c)`` relative to the reference read, whose own
    wavelength dependence the fluxes absorb; so each ``omega_lambda[..., k, :] /
    omega_lambda[..., ref_index, :]`` is fitted by a straight line in ``c`` (least squares over
    the given wavelengths), ``a_k + b_k c``, and ``omega = a``, ``gamma = b / a``.

    Parameters
    ----------
    omega_lambda : array_like, ``(..., K, n)``
        Transparency per read difference at ``n`` wavelengths.
    coordinate : array_like, ``(n,)``
        Their normalised coordinates.
    ref_index : int

    Returns
    -------
    omega, gamma : ndarray, ``(..., K)``
        ``omega[..., ref_index] == 1``, ``gamma[..., ref_index] == 0``.
    """
    values = np.asarray(omega_lambda, dtype=np.float64)
    ratio = values / values[..., ref_index : ref_index + 1, :]
    c = np.asarray(coordinate, dtype=np.float64)
    design = np.column_stack([np.ones_like(c), c])  # (n, 2)
    coef = np.linalg.lstsq(design, np.moveaxis(ratio, -1, 0).reshape(c.size, -1), rcond=None)[0]
    a, b = (part.reshape(ratio.shape[:-1]) for part in coef)
    return a, b / a
