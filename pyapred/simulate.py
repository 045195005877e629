"""Simulated up-the-ramp data with known truth (spec section 7.1).

Counts of pixel p at read j are ``sum_{i<j} Poisson(f_p omega_i dt_i) + Normal(0, sigma_p^2)``:
read 0 holds read noise only. Everything is drawn from the ``numpy.random.Generator`` you pass,
so a seed reproduces a data set exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .noise import HxrgNoise

__all__ = [
    "SimulatedRamps",
    "omega_cloud",
    "omega_drift",
    "omega_uniform",
    "simulate_ramps",
    "write_simulated_apz",
]


@dataclass(frozen=True)
class SimulatedRamps:
    """Simulated reads and the truth behind them.

    Attributes
    ----------
    reads : ndarray, float64, ``(n_reads, *pixel_shape)``
        In DN (electrons divided by ``gain``).
    flux : ndarray, ``pixel_shape``
        True flux, e- per read interval at ``omega = 1``.
    omega : ndarray, ``(n_reads - 1,)``
    read_noise : ndarray, ``pixel_shape``
        Single-read sigma in e-.
    gain : float
    jumps : ndarray, float64, ``(n_reads - 1, *pixel_shape)``
        Cosmic-ray charge (e-) added in each read difference; 0 where none.
    saturated : ndarray of bool, ``(n_reads, *pixel_shape)``
        Reads clipped at the saturation level.
    """

    reads: np.ndarray
    flux: np.ndarray
    omega: np.ndarray
    read_noise: np.ndarray
    gain: float
    jumps: np.ndarray
    saturated: np.ndarray


def omega_uniform(n_diff: int, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """Independent factors ``omega_k ~ U(1 - amplitude, 1)``, the paper's amplitude-A pattern.

    Parameters
    ----------
    n_diff : int
        Number of read differences K.
    amplitude : float
        A in [0, 1].
    rng : numpy.random.Generator

    Returns
    -------
    ndarray, ``(n_diff,)``
    """
    if not 0.0 <= amplitude <= 1.0:
        raise ValueError(f"amplitude: expected a value in [0, 1], got {amplitude}")
    return 1.0 - amplitude * rng.uniform(0.0, 1.0, n_diff)


def omega_cloud(n_diff: int, depth: float, start: int, length: int) -> np.ndarray:
    """A passing cloud: transparency ``1 - depth`` for differences ``start .. start+length-1``.

    Returns
    -------
    ndarray, ``(n_diff,)``
    """
    if not 0.0 <= depth < 1.0:
        raise ValueError(f"depth: expected a value in [0, 1), got {depth}")
    if start < 0 or length < 0 or start + length > n_diff:
        raise ValueError(
            f"start, length: expected a window inside [0, {n_diff}), got {start}, {length}"
        )
    omega = np.ones(n_diff)
    omega[start : start + length] = 1.0 - depth
    return omega


def omega_drift(
    n_diff: int, amplitude: float, periods: float = 0.5, phase: float = 0.0
) -> np.ndarray:
    """A smooth seeing drift: ``1 - amplitude * (1 - cos(2 pi periods t + phase)) / 2``.

    ``t`` runs from 0 to 1 over the exposure.

    Returns
    -------
    ndarray, ``(n_diff,)``
    """
    if not 0.0 <= amplitude < 1.0:
        raise ValueError(f"amplitude: expected a value in [0, 1), got {amplitude}")
    t = np.linspace(0.0, 1.0, n_diff)
    return 1.0 - amplitude * 0.5 * (1.0 - np.cos(2.0 * np.pi * periods * t + phase))


def simulate_ramps(
    flux,
    read_noise,
    *,
    rng: np.random.Generator,
    n_reads: int | None = None,
    omega=None,
    read_times=None,
    gain: float = 1.0,
    cosmic_ray_rate: float = 0.0,
    cosmic_ray_charge: tuple[float, float] = (200.0, 5000.0),
    saturation: float | None = None,
) -> SimulatedRamps:
    """Simulate up-the-ramp reads of pixels under a time-variable transparency.

    Parameters
    ----------
    flux : array_like
        True flux of each pixel, e- per read interval; its shape is ``pixel_shape``.
    read_noise : array_like
        Single-read sigma in e-, broadcastable to ``pixel_shape``.
    rng : numpy.random.Generator
    n_reads : int, optional
        Number of reads; default ``len(omega) + 1``.
    omega : array_like, optional
        ``(n_reads - 1,)`` transparency factors; default all 1 (constant flux).
    read_times : array_like, optional
        ``(n_reads,)``; the expected counts in difference k are ``f omega_k (t_{k+1} - t_k)``.
    gain : float, optional
        e-/DN; the reads are returned in DN.
    cosmic_ray_rate : float, optional
        Probability that a cosmic ray hits a pixel in one read difference.
    cosmic_ray_charge : (float, float), optional
        Range of the uniform cosmic-ray charge, e-.
    saturation : float, optional
        Full well in e-; reads above it are clipped to it.

    Returns
    -------
    SimulatedRamps
    """
    flux = np.asarray(flux, dtype=np.float64)
    if omega is None:
        if n_reads is None:
            raise ValueError("n_reads: required when omega is not given")
        omega = np.ones(n_reads - 1)
    omega = np.asarray(omega, dtype=np.float64)
    if n_reads is None:
        n_reads = omega.size + 1
    if omega.shape != (n_reads - 1,):
        raise ValueError(f"omega: expected shape ({n_reads - 1},), got {omega.shape}")
    if n_reads < 2:
        raise ValueError(f"n_reads: expected >= 2, got {n_reads}")
    if np.any(flux < 0) or np.any(omega < 0):
        raise ValueError("flux, omega: expected non-negative values")
    sigma = np.broadcast_to(np.asarray(read_noise, dtype=np.float64), flux.shape)
    dt = np.ones(n_reads - 1) if read_times is None else np.diff(np.asarray(read_times, float))
    expand = (slice(None),) + (None,) * flux.ndim
    photons = rng.poisson(flux[None] * (omega * dt)[expand]).astype(np.float64)
    jumps = np.zeros_like(photons)
    if cosmic_ray_rate > 0:
        hit = rng.uniform(size=photons.shape) < cosmic_ray_rate
        jumps[hit] = rng.uniform(*cosmic_ray_charge, size=int(hit.sum()))
    counts = np.zeros((n_reads,) + flux.shape)
    counts[1:] = np.cumsum(photons + jumps, axis=0)
    counts += rng.normal(size=counts.shape) * sigma
    saturated = np.zeros(counts.shape, dtype=bool)
    if saturation is not None:
        # A pixel that reaches full well stays there for the rest of the ramp.
        saturated = np.logical_or.accumulate(counts >= saturation, axis=0)
        counts = np.where(saturated, saturation, counts)
    return SimulatedRamps(
        reads=counts / gain,
        flux=flux,
        omega=omega,
        read_noise=np.array(sigma),
        gain=float(gain),
        jumps=jumps,
        saturated=saturated,
    )


def write_simulated_apz(
    directory,
    reads,
    *,
    telescope: str = "apo",
    chip: str = "a",
    mjd: int = 60781,
    exposure: int = 1,
    date_obs: str = "2025-04-20T04:00:00.000",
    timesys: str = "UTC",
    bias: float = 10000.0,
    header: dict | None = None,
    overwrite: bool = False,
    one_over_f: HxrgNoise | None = None,
    rng: np.random.Generator | int | None = None,
):
    """Write simulated reads as a raw ``apR-``/``asR-`` ``.apz`` file, as the instrument would.

    The reads are offset by ``bias``, rounded to whole DN and clipped to the uint16 range, like
    a real detector's ADC; the file name, headers and layout follow ``pyapred.io.apz``.

    Parameters
    ----------
    directory : str or os.PathLike
        Folder for the file (it must exist).
    reads : array_like, ``(n_reads, ny, nx)``
        Counts in DN, e.g. ``SimulatedRamps.reads`` of a chip-shaped ``flux``; ``nx = 2560``
        for a full chip with its reference output.
    telescope, chip, mjd, exposure
        Give the file name ``{apR|asR}-{chip}-{(mjd - 55562) * 10000 + exposure:08d}.apz``;
        ``mjd`` is the SDSS MJD of the night.
    date_obs, timesys : str
        Start of the integration and its time scale ("UTC" or "TAI").
    bias : float
        DN added before rounding (a detector's pedestal keeps counts positive).
    header : dict, optional
        Extra exposure-header cards (``EXPTYPE``, ``CONFIGID``, ...).
    overwrite : bool
    one_over_f : pyapred.noise.HxrgNoise, optional
        Add H2RG read noise with APOGEE clocking (white, 1/f and alternating-column noise, in DN)
        from :func:`pyapred.noise.simulate_hxrg`; needs ``nx = 2560`` and the rows from 0.
    rng : numpy.random.Generator or int, optional
        Randomness of ``one_over_f``.

    Returns
    -------
    pathlib.Path
        The file written; ``pyapred.io.read_apz`` returns exactly the quantised counts.
    """
    from pathlib import Path

    from .io.apz import ApzName, make_headers, write_apz

    reads = np.asarray(reads, dtype=np.float64)
    if one_over_f is not None:
        from .noise import simulate_hxrg

        if reads.ndim != 3 or reads.shape[-1] != 2560:
            raise ValueError(f"reads: one_over_f needs (n_reads, ny, 2560), got {reads.shape}")
        reads = reads + simulate_hxrg(
            reads.shape[0], one_over_f, rows=slice(0, reads.shape[1]), rng=rng
        )
    counts = np.clip(np.round(reads + bias), 0, 65535)
    counts = counts.astype(np.uint16)
    exposure_header, read_headers = make_headers(
        counts.shape[0], date_obs=date_obs, chip=chip, timesys=timesys, extra=header
    )
    path = Path(directory) / ApzName.from_night(telescope, chip, mjd, exposure).filename
    return write_apz(path, counts, read_headers, header=exposure_header, overwrite=overwrite)
