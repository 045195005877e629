"""Simulated up-the-ramp data with known truth (spec section 7.1).

Counts of pixel p at read j are ``sum_{i<j} Poisson(f_p omega_i dt_i) + Normal(0, sigma_p^2)``:
read 0 holds read noise only. Everything is drawn from the ``numpy.random.Generator`` you pass,
so a seed reproduces a data set exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .noise import HxrgNoise

__all__ = [
    "SimulatedChip",
    "SimulatedExposure",
    "SimulatedRamps",
    "exposure_omega",
    "omega_cloud",
    "omega_drift",
    "omega_uniform",
    "simulate_exposure",
    "simulate_exposure_files",
    "simulate_ramps",
    "write_simulated_apz",
    "write_simulated_exposure",
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
        Single-read sigma in e- (:attr:`read_noise_dn` in DN, the units of ``reads``: the fits
        take ``fit_constant(sim.reads, sim.read_noise_dn, gain=sim.gain)``).
    gain : float
        e-/DN.
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

    @property
    def read_noise_dn(self) -> np.ndarray:
        """Single-read sigma in DN, ``pixel_shape``: the units of ``reads``, which the fits take
        with ``gain=sim.gain`` (``read_noise`` is in e-)."""
        return np.asarray(self.read_noise, dtype=np.float64) / self.gain

    def __repr__(self) -> str:
        """Shapes and key figures (a few lines, never whole arrays)."""
        from .solver.reprs import finite_median, fmt

        n_reads = self.reads.shape[0]
        flux = np.asarray(self.flux, dtype=np.float64)
        return (
            f"SimulatedRamps: {n_reads} reads x pixel_shape {self.reads.shape[1:]}; true flux "
            f"{fmt(flux.min())}..{fmt(flux.max())} e-/read (median {fmt(np.median(flux))}) at "
            f"omega = 1; omega {fmt(self.omega.min())}..{fmt(self.omega.max())} (mean "
            f"{fmt(self.omega.mean())}: exposure-averaged flux = flux x mean); reads in DN; "
            f"read noise {fmt(finite_median(self.read_noise))} e- (read_noise_dn "
            f"{fmt(finite_median(self.read_noise_dn))} DN); gain {fmt(self.gain)} e-/DN; "
            f"{int(np.count_nonzero(self.jumps))} cosmic rays; "
            f"{int(np.count_nonzero(self.saturated[-1]))} pixels saturated"
        )


#: Most counts :func:`simulate_ramps` draws in one read difference (NumPy's Poisson sampler
#: refuses means near 1e19; a detector holds about 1e5).
MAX_EXPECTED_COUNTS = 1e15


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
    n_diff = _count(n_diff, "n_diff")
    if not 0.0 <= amplitude <= 1.0:
        raise ValueError(f"amplitude: expected a value in [0, 1], got {amplitude}")
    return 1.0 - amplitude * rng.uniform(0.0, 1.0, n_diff)


def _count(value, name: str, low: int = 1) -> int:
    """``value`` as a whole number of at least ``low``; a ValueError naming ``name`` otherwise
    (NumPy's errors for 5.5 or -1 named nothing)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or (
            value < low):  # fmt: skip
        raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    return int(value)


def omega_cloud(n_diff: int, depth: float, start: int, length: int) -> np.ndarray:
    """A passing cloud: transparency ``1 - depth`` for differences ``start .. start+length-1``.

    Parameters
    ----------
    n_diff : int
        Read differences (``n_reads - 1``).
    depth : float
        Fraction of the light the cloud takes, in [0, 1).
    start, length : int
        First difference under the cloud (0-based) and how many; the window lies inside
        ``[0, n_diff)``.

    Returns
    -------
    ndarray, ``(n_diff,)``
        1 outside the cloud.
    """
    n_diff = _count(n_diff, "n_diff")
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

    Parameters
    ----------
    n_diff : int
        Read differences (``n_reads - 1``).
    amplitude : float
        Deepest loss of light, in [0, 1).
    periods : float, optional
        Cosine periods over the exposure (0.5: one dip to ``1 - amplitude`` at the end).
    phase : float, optional
        Phase in radians.

    Returns
    -------
    ndarray, ``(n_diff,)``
        Between ``1 - amplitude`` and 1.
    """
    n_diff = _count(n_diff, "n_diff")
    if not 0.0 <= amplitude < 1.0:
        raise ValueError(f"amplitude: expected a value in [0, 1), got {amplitude}")
    periods = float(_finite_array(periods, "periods", scalar=True))  # inf gave NaN everywhere
    phase = float(_finite_array(phase, "phase", scalar=True))
    t = np.linspace(0.0, 1.0, n_diff)
    return 1.0 - amplitude * 0.5 * (1.0 - np.cos(2.0 * np.pi * periods * t + phase))


def _finite_array(
    value, name: str, *, low: float | None = None, positive: bool = False, scalar: bool = False
) -> np.ndarray:
    """``value`` as finite float64 (one number with ``scalar``), at least ``low`` (above it with
    ``positive``); else a ValueError naming it (NumPy's "lam value too large" named nothing)."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected real numbers, got {value!r}") from None
    if scalar and array.ndim:
        raise ValueError(f"{name}: expected one number, got shape {array.shape}")
    bad = ~np.isfinite(array)
    if low is not None:
        bad |= (array <= low) if positive else (array < low)
    if bad.any():
        bound = "" if low is None else f" {'>' if positive else '>='} {low:g}"
        raise ValueError(f"{name}: expected finite values{bound}, got {array[bad].flat[0]!r}")
    return array


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
    if not isinstance(rng, np.random.Generator):  # an int was an AttributeError (.poisson)
        raise TypeError(
            f"rng: expected a numpy.random.Generator (np.random.default_rng(seed)), got "
            f"{type(rng).__name__}"
        )
    flux = _finite_array(flux, "flux", low=0.0)
    if n_reads is not None:
        n_reads = _count(n_reads, "n_reads", 2)
    if omega is None:
        if n_reads is None:
            raise ValueError("n_reads: required when omega is not given")
        omega = np.ones(n_reads - 1)
    omega = _finite_array(omega, "omega", low=0.0)
    if n_reads is None:
        n_reads = omega.size + 1
    if omega.shape != (n_reads - 1,):
        raise ValueError(f"omega: expected shape ({n_reads - 1},), got {omega.shape}")
    if n_reads < 2:
        raise ValueError(f"n_reads: expected >= 2, got {n_reads}")
    # NaN or 0 made every read NaN or inf; a negative read noise or gain was taken as it was.
    read_noise = _finite_array(read_noise, "read_noise", low=0.0)
    gain = float(_finite_array(gain, "gain", low=0.0, positive=True, scalar=True))
    try:
        sigma = np.broadcast_to(read_noise, flux.shape)
    except ValueError:
        raise ValueError(
            f"read_noise: expected a shape broadcastable to flux {flux.shape}, got "
            f"{read_noise.shape}"
        ) from None
    if read_times is None:
        dt = np.ones(n_reads - 1)
    else:
        times = _finite_array(read_times, "read_times")
        dt = np.diff(times)
        if times.shape != (n_reads,) or not (dt > 0).all():
            raise ValueError(
                f"read_times: expected {n_reads} increasing times, got shape {times.shape}"
                + ("" if times.shape != (n_reads,) else " not increasing")
            )
    cosmic_ray_rate = float(_finite_array(cosmic_ray_rate, "cosmic_ray_rate", low=0.0,
                                          scalar=True))  # fmt: skip
    if cosmic_ray_rate > 1.0:  # a probability per difference: 2 was taken as 1
        raise ValueError(f"cosmic_ray_rate: expected a probability in [0, 1], got "
                         f"{cosmic_ray_rate!r}")  # fmt: skip
    charge = _finite_array(cosmic_ray_charge, "cosmic_ray_charge", low=0.0)
    if charge.shape != (2,) or not charge[0] <= charge[1]:  # (a negative charge: no jump)
        raise ValueError(f"cosmic_ray_charge: expected (low, high), got {cosmic_ray_charge!r}")
    cosmic_ray_charge = (float(charge[0]), float(charge[1]))
    if saturation is not None:
        saturation = float(_finite_array(saturation, "saturation", low=0.0, positive=True,
                                         scalar=True))  # fmt: skip
    expand = (slice(None),) + (None,) * flux.ndim
    expected = flux[None] * (omega * dt)[expand]
    if expected.size and expected.max() > MAX_EXPECTED_COUNTS:  # NumPy: "lam value too large"
        raise ValueError(
            f"flux: expected at most {MAX_EXPECTED_COUNTS:g} counts per read difference (flux "
            f"x omega x interval), got {expected.max():.3g}"
        )
    photons = rng.poisson(expected).astype(np.float64)
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


# --------------------------------------------------------------------------------------------
# Whole exposures: 300 fibers on Gaussian traces, three chips
# --------------------------------------------------------------------------------------------
CHIPS = ("R", "G", "B")
N_FIBERS_FULL = 300
#: Single-read noise of a simulated exposure, DN (the default of :func:`simulate_exposure`).
READ_NOISE_DN = 8.0
#: Start of a simulated integration: this many hours after 0h UTC of the night's MJD (the SDSS
#: MJD of a time is floor(MJD + 0.3), so a start at 04:00 UTC belongs to that night).
START_HOUR_UTC = 4.0
#: APOGEE read interval (INTOFF), seconds.
READ_INTERVAL_S = 10.647
SCENARIOS = ("clouds", "seeing", "stable", "seeing-change", "seeing-change-clouds")
#: Scenarios whose transparency depends on wavelength (a seeing change seen through the fiber).
CHROMATIC_SCENARIOS = ("seeing-change", "seeing-change-clouds")


@dataclass(frozen=True)
class SimulatedChip:
    """One chip of a simulated exposure and its truth.

    Attributes
    ----------
    reads : ndarray, float32, ``(n_reads, ny, nx)``
        Raw reads in DN: whole numbers with a pedestal, clipped at ``saturation``. Columns
        ``n_columns ..`` are the reference output (read noise only).
    traces : pyapred.traces.Traces
        The true trace geometry, ``(n_fibers, n_columns)``.
    flux : ndarray, float64, ``(ny, nx)``
        Exposure-averaged true flux, e- per read interval: ``sum_f light_f mean(omega_f)``. This is
        what an unbiased estimator with omega normalised to mean 1 recovers.
    fiber_flux : ndarray, float64, ``(n_fibers, n_columns)``
        Total light of each trace per column at ``omega = 1``, e- per read interval.
    cosmic_rays : ndarray, int64, ``(n_hits, 3)``
        ``(difference index, row, column)`` of every cosmic-ray hit.
    gain : float
        e-/DN.
    read_noise : float
        Single-read sigma, DN.
    saturation : float
        Clipping level, DN.
    """

    reads: np.ndarray
    traces: object
    flux: np.ndarray
    fiber_flux: np.ndarray
    cosmic_rays: np.ndarray
    gain: float
    read_noise: float
    saturation: float

    def __repr__(self) -> str:
        """Shapes and key figures (a line, never whole arrays)."""
        from .solver.reprs import fmt

        n_fibers, n_columns = np.shape(self.fiber_flux)
        return (
            f"SimulatedChip: reads {self.reads.shape} DN; {n_fibers} fibers x {n_columns} "
            f"traced columns; exposure-averaged flux up to {fmt(np.max(self.flux))} e-/read; "
            f"{len(self.cosmic_rays)} cosmic rays; gain {fmt(self.gain)} e-/DN, read noise "
            f"{fmt(self.read_noise)} DN, saturation {fmt(self.saturation)} DN"
        )


@dataclass(frozen=True)
class SimulatedExposure:
    """A simulated three-chip exposure under a changing sky.

    Attributes
    ----------
    chips : dict of str to SimulatedChip
        Keyed by chip name ("R", "G", "B").
    omega : ndarray, ``(n_fibers, n_reads - 1)``
        True transparency of every fiber per read difference (ones for the FPI fibers).
    fiber_type : ndarray of str, ``(n_fibers,)``
        "science", "sky" or "fpi", by 0-based fiber index.
    read_times : ndarray, ``(n_reads,)``
        Seconds from the first read.
    scenario : str
    telescope : str
    seed : int
    transparency, fwhm : ndarray, ``(n_fibers, n_reads - 1)``, or None
        With a seeing change (:data:`CHROMATIC_SCENARIOS`): the grey transparency and the seeing
        FWHM (arcsec, at the guider's wavelength) of each fiber per read difference, from which
        every pixel's transparency follows (:meth:`omega_at`); ``omega`` is then its value at
        the middle of the three chips' wavelengths. None for an achromatic exposure.
    diameter : float or None
        Fiber diameter on the sky, arcsec, with ``fwhm``.
    """

    chips: dict
    omega: np.ndarray
    fiber_type: np.ndarray
    read_times: np.ndarray
    scenario: str
    telescope: str
    seed: int
    transparency: np.ndarray | None = None
    fwhm: np.ndarray | None = None
    diameter: float | None = None

    def omega_at(self, wavelength) -> np.ndarray:
        """True transparency of every fiber per read difference at each wavelength.

        Parameters
        ----------
        wavelength : array_like, ``(n,)``
            Micron.

        Returns
        -------
        ndarray, ``(n_fibers, K, n)``
            ``omega`` repeated when the exposure is achromatic; the FPI fibers are 1.
        """
        from .chromatic import chromatic_transparency

        wavelength = np.atleast_1d(np.asarray(wavelength, dtype=np.float64))
        if self.fwhm is None:
            return np.repeat(self.omega[:, :, None], wavelength.size, axis=2)
        out = chromatic_transparency(self.transparency, self.fwhm, wavelength,
                                     diameter=self.diameter)  # fmt: skip
        out[self.fiber_type == "fpi"] = 1.0
        return out

    def chromatic_truth(self, ref_index: int, chips=CHIPS) -> tuple[np.ndarray, np.ndarray]:
        """The chromatic model's true ``(omega, gamma)`` for a fit of ``chips`` together.

        The coordinate runs from -1 to 1 over those chips' wavelengths
        (:func:`pyapred.chromatic.coordinate_span`), the reference read is ``ref_index``: the
        straight line in the coordinate closest to each difference's transparency relative to
        the reference read (:func:`pyapred.chromatic.linear_in_coordinate`), over every
        column.

        Returns
        -------
        omega, gamma : ndarray, ``(n_fibers, K)``
        """
        from .chromatic import (
            chip_wavelength,
            coordinate_span,
            linear_in_coordinate,
            wavelength_coordinate,
        )

        wavelength = np.concatenate([chip_wavelength(chip, 256) for chip in chips])
        coordinate = wavelength_coordinate(wavelength, coordinate_span(chips))
        return linear_in_coordinate(self.omega_at(wavelength), coordinate, ref_index)

    def __repr__(self) -> str:
        """Shapes and key figures (a few lines, never whole arrays)."""
        from .solver.reprs import fmt

        types, counts = np.unique(self.fiber_type, return_counts=True)
        kinds = ", ".join(f"{n} {t}" for t, n in zip(types, counts, strict=True))
        lines = [
            f"SimulatedExposure: scenario {self.scenario!r}, telescope {self.telescope}, seed "
            f"{self.seed}; {len(self.read_times)} reads over {fmt(self.read_times[-1], '.1f')} s; "
            f"{self.omega.shape[0]} fibers ({kinds}); true omega {fmt(self.omega.min())}.."
            f"{fmt(self.omega.max())}"
        ]
        lines += [f"  {name}: {chip!r}" for name, chip in self.chips.items()]
        return "\n".join(lines)


def exposure_omega(
    scenario: str, n_fibers: int, n_diff: int, rng: np.random.Generator, depth: float = 0.6
) -> np.ndarray:
    """Per-fiber transparency of a built-in scenario, ``(n_fibers, n_diff)``.

    ``"clouds"``: a smooth cloud passes mid-exposure, the same for every fiber (clouds are grey
    and cover the whole field), dimming by up to ``depth``. ``"seeing"``: a seeing drift that
    changes each fiber's coupling by its own amplitude, ``depth * U(0.3, 1)``. ``"stable"``: ones.
    """
    t = (np.arange(n_diff) + 0.5) / n_diff
    if scenario == "clouds":
        shape = 1.0 - depth * np.exp(-0.5 * ((t - 0.5) / 0.2) ** 2)
        return np.broadcast_to(shape, (n_fibers, n_diff)).copy()
    if scenario == "seeing":
        amplitude = depth * rng.uniform(0.3, 1.0, n_fibers)
        return 1.0 - amplitude[:, None] * t[None, :] ** 1.5
    if scenario == "stable":
        return np.ones((n_fibers, n_diff))
    raise ValueError(f"scenario: expected one of {SCENARIOS}, got {scenario!r}")


def _seeing_change(scenario, n_fibers, n_diff, depth, fwhm, telescope):
    """Grey transparency, seeing FWHM (n_fibers, n_diff) and fiber diameter of a seeing change."""
    from .chromatic import FIBER_DIAMETER_ARCSEC

    t = (np.arange(n_diff) + 0.5) / n_diff
    start, end = (float(v) for v in fwhm)
    if not (start > 0 and end > 0):
        raise ValueError(f"fwhm: expected two values > 0, got {fwhm}")
    seeing = np.broadcast_to(start + (end - start) * t, (n_fibers, n_diff)).copy()
    grey = np.ones((n_fibers, n_diff))
    if scenario == "seeing-change-clouds":
        grey = exposure_omega("clouds", n_fibers, n_diff, None, depth)
    return grey, seeing, FIBER_DIAMETER_ARCSEC[telescope]


def _fiber_spectra(fiber_type, n_columns, rng):
    """Total light per column of every trace (e-/read): continuum x blaze x absorption lines."""
    n_fibers = fiber_type.size
    x = np.linspace(-1.0, 1.0, n_columns)
    level = np.where(
        fiber_type == "science",
        np.exp(rng.uniform(np.log(100.0), np.log(15000.0), n_fibers)),
        rng.uniform(2.0, 10.0, n_fibers),
    )
    blaze = 1.0 - 0.3 * x**2
    spectra = level[:, None] * blaze[None, :]
    n_lines = max(1, n_columns // 40)
    centers = rng.uniform(0, n_columns, (n_fibers, n_lines))
    depths = rng.uniform(0.0, 0.6, (n_fibers, n_lines))
    cols = np.arange(n_columns)
    for j in range(n_lines):
        spectra *= 1.0 - depths[:, j, None] * np.exp(
            -0.5 * ((cols - centers[:, j, None]) / 1.5) ** 2
        )
    # FPI: a comb of bright lines on a faint floor.
    fpi = fiber_type == "fpi"
    comb = 30.0 + 8000.0 * np.exp(-0.5 * ((cols % 24 - 12) / 1.2) ** 2)
    spectra[fpi] = comb
    return spectra


#: Rows between neighbouring simulated traces, and the rows above the first and below the last.
TRACE_SPACING, TRACE_MARGIN = 6.6, 25.0


def chip_rows(n_fibers: int) -> int:
    """Rows of a simulated chip of ``n_fibers`` fibers: 2048 for 300, fewer for fewer."""
    if n_fibers == N_FIBERS_FULL:
        return 2048
    return int(np.ceil(2 * TRACE_MARGIN + (n_fibers - 1) * TRACE_SPACING))


def simulation_bytes(
    *,
    n_fibers: int,
    n_columns: int,
    ref_columns: int,
    n_reads: int,
    n_chips: int,
    streamed: bool,
    one_over_f: HxrgNoise | None = None,
) -> int:
    """Peak memory of simulating an exposure and writing its files, in bytes: an estimate, for
    refusing before the work (``pyapred simulate``, ``pyapred demo``).

    Measured in units of one chip's float32 cube: 2.5 with :func:`simulate_exposure_files`
    (one chip at a time; 1.03 GB for a 0.42 GB cube, 20 reads), 3.1 per chip with
    :func:`simulate_exposure` and :func:`write_simulated_exposure` (9.3 for three,
    ``benchmarks/bench_simulate.py``); plus :func:`~pyapred.noise.hxrg.simulate_hxrg_bytes` for
    the 1/f noise of one chip (3.77 GB measured with it at 20 reads, 3.7 estimated).
    """
    ny = chip_rows(n_fibers)
    cube = n_reads * ny * (n_columns + ref_columns) * 4
    total = 2.5 * cube if streamed else 3.1 * n_chips * cube
    if one_over_f is not None:
        from .noise.hxrg import simulate_hxrg_bytes

        total += simulate_hxrg_bytes(n_reads, one_over_f, rows=slice(0, ny))
    return int(total)


def simulate_exposure(
    scenario: str = "clouds",
    *,
    seed: int = 0,
    n_fibers: int = 300,
    n_columns: int = 2048,
    ref_columns: int = 512,
    n_reads: int = 33,
    chips: tuple[str, ...] = CHIPS,
    telescope: str = "apo",
    omega=None,
    depth: float = 0.6,
    gain: float = 1.9,
    read_noise: float = READ_NOISE_DN,
    pedestal: float = 1000.0,
    saturation: float = 55000.0,
    dark_rate: float = 0.05,
    cosmic_ray_rate: float = 2e-5,
    sky_fraction: float = 0.12,
    fwhm: tuple[float, float] = (1.2, 3.6),
) -> SimulatedExposure:
    """Simulate a whole APOGEE exposure: fibers on Gaussian traces, three chips, a changing sky.

    Fiber ``i`` (0-based index, fiberId ``300 - i``) lies on a gently curved trace about 6.6 rows
    from its neighbours, with a Gaussian profile of width 1.0-1.2 rows. About ``sky_fraction`` of
    the fibers are faint sky fibers (2-10 e-/read per column), the FPI fibers of ``telescope``
    carry a stable line comb, and the rest are stars with log-uniform brightness from 100 to
    15000 e-/read per column (the brightest saturate). Cosmic rays (200-5000 e-) hit at random.

    Parameters
    ----------
    scenario : {"clouds", "seeing", "stable", "seeing-change", "seeing-change-clouds"}
        Built-in transparency pattern (:func:`exposure_omega`); ignored when ``omega`` is given.
        ``"seeing-change"``: the seeing FWHM goes linearly from ``fwhm[0]`` to ``fwhm[1]`` over
        the exposure, and each pixel receives the light the guider's flux-in-fiber model
        (:func:`pyapred.chromatic.fiber_coupling`) lets into the fiber at its own wavelength
        (FWHM scaling as wavelength**-0.2): a chromatic transparency, the same for every
        science fiber. ``"seeing-change-clouds"``: the same with the grey ``"clouds"`` cloud.
    seed : int
        Seeds everything; the same seed gives the same exposure.
    n_fibers, n_columns, ref_columns, n_reads : int
        Geometry; ``ny`` is 2048 for 300 fibers and scales with ``n_fibers``. Columns beyond
        ``n_columns`` are the reference output.
    chips : tuple of str
    telescope : {"apo", "lco"}
    omega : array_like, optional
        ``(n_reads - 1,)`` shared by all fibers, or ``(n_fibers, n_reads - 1)``.
    depth : float
        Depth of the built-in pattern.
    gain, read_noise, pedestal, saturation
        e-/DN, DN, DN, DN.
    dark_rate, cosmic_ray_rate : float
        e-/read per pixel; hits per pixel per read difference.
    sky_fraction : float
    fwhm : (float, float)
        Seeing FWHM (arcsec, at the guider's wavelength) at the start and the end of the
        seeing-change scenarios. The default, 1.2 to 3.6 arcsec through a 3 arcsec APO fiber,
        changes the red-to-blue transparency difference by 3 % over the exposure.

    Returns
    -------
    SimulatedExposure
    """
    exposure, chips = _exposure_stream(
        scenario, seed=seed, n_fibers=n_fibers, n_columns=n_columns, ref_columns=ref_columns,
        n_reads=n_reads, chips=chips, telescope=telescope, omega=omega, depth=depth, gain=gain,
        read_noise=read_noise, pedestal=pedestal, saturation=saturation, dark_rate=dark_rate,
        cosmic_ray_rate=cosmic_ray_rate, sky_fraction=sky_fraction, fwhm=fwhm,
    )  # fmt: skip
    return replace(exposure, chips=dict(chips))


def _exposure_stream(
    scenario, *, seed, n_fibers, n_columns, ref_columns, n_reads, chips, telescope, omega, depth,
    gain, read_noise, pedestal, saturation, dark_rate, cosmic_ray_rate, sky_fraction, fwhm,
) -> tuple[SimulatedExposure, Iterator[tuple[str, SimulatedChip]]]:  # fmt: skip
    """The exposure without its chips, and an iterator that simulates them one at a time.

    Every random number comes from one generator in one order, whether the chips are kept
    (:func:`simulate_exposure`) or written and dropped one by one
    (:func:`simulate_exposure_files`): both give the same chips, bit for bit.
    """
    from .traces import Traces, fpi_fiber_indices

    if n_fibers < 1 or n_columns < 1 or n_reads < 3:
        raise ValueError("n_fibers, n_columns >= 1 and n_reads >= 3 expected")
    rng = np.random.default_rng(seed)
    K = n_reads - 1
    fiber_type = np.full(n_fibers, "science", dtype=object)
    sky = rng.uniform(size=n_fibers) < sky_fraction
    fiber_type[sky] = "sky"
    fpi = [i for i in fpi_fiber_indices(telescope) if i < n_fibers]
    fiber_type[fpi] = "fpi"
    fiber_type = fiber_type.astype(str)
    transparency = seeing = diameter = None
    if omega is None and scenario in CHROMATIC_SCENARIOS:
        transparency, seeing, diameter = _seeing_change(scenario, n_fibers, K, depth, fwhm,
                                                        telescope)  # fmt: skip
        omega = None
    elif omega is None:
        omega = exposure_omega(scenario, n_fibers, K, rng, depth)
    if omega is not None:
        omega = np.broadcast_to(np.asarray(omega, dtype=np.float64), (n_fibers, K)).copy()
        omega[fiber_type == "fpi"] = 1.0  # the FPI lamp does not see the sky
    spacing = TRACE_SPACING
    ny = chip_rows(n_fibers)
    first = 0.5 * (ny - (n_fibers - 1) * spacing)
    x = np.linspace(-1.0, 1.0, n_columns)

    exposure = SimulatedExposure(
        chips={},
        omega=omega,
        fiber_type=fiber_type,
        read_times=np.arange(n_reads) * READ_INTERVAL_S,
        scenario=scenario if scenario in SCENARIOS else "custom",
        telescope=telescope,
        seed=seed,
        transparency=transparency,
        fwhm=seeing,
        diameter=diameter,
    )
    if seeing is not None:
        from .chromatic import coordinate_span

        exposure = replace(
            exposure, omega=exposure.omega_at(np.mean(coordinate_span(CHIPS)))[..., 0]
        )

    def simulate_chip(c: int) -> SimulatedChip:
        y_center = first + spacing * np.arange(n_fibers)[:, None] + 1.5 * x[None, :] ** 2 - 0.5 * c
        sigma = 1.0 + 0.2 * rng.uniform(size=(n_fibers, 1)) + 0.05 * x[None, :] ** 2
        traces = Traces(y_center=y_center, sigma=sigma, excluded=fiber_type == "fpi")
        spectra = _fiber_spectra(fiber_type, n_columns, rng)
        if seeing is None:
            weights = exposure.omega
        else:  # every column at its own wavelength: (n_fibers, K, n_columns)
            from .chromatic import chip_wavelength

            weights = exposure.omega_at(chip_wavelength(chips[c], n_columns))
        return _simulate_chip(
            traces, spectra, weights, ny, n_columns + ref_columns, rng,
            gain=gain, read_noise=read_noise, pedestal=pedestal, saturation=saturation,
            dark_rate=dark_rate, cosmic_ray_rate=cosmic_ray_rate,
        )  # fmt: skip

    def simulate_chips() -> Iterator[tuple[str, SimulatedChip]]:
        for c, name in enumerate(chips):
            # Yielded, not kept: the caller may drop the chip before the next one is made.
            yield name, simulate_chip(c)

    return exposure, simulate_chips()


def _simulate_chip(traces, spectra, omega, ny, nx, rng, *, gain, read_noise, pedestal,
                   saturation, dark_rate, cosmic_ray_rate) -> SimulatedChip:  # fmt: skip
    n_fibers, n_columns = traces.y_center.shape
    K = omega.shape[1]
    # Weights of each fiber per difference: (n_fibers, K, 1), or per column when chromatic.
    omega = omega[:, :, None] if omega.ndim == 2 else omega
    base = np.rint(traces.y_center).astype(np.int64)
    cols = np.broadcast_to(np.arange(n_columns), base.shape)
    index, light = [], []
    for offset in range(-5, 6):
        rows = base + offset
        inside = (rows >= 0) & (rows < ny)
        index.append(np.where(inside, rows * nx + cols, 0))
        light.append(np.where(inside, traces.profile(rows) * spectra, 0.0))
    index = np.stack(index)  # (n_offsets, n_fibers, n_columns)
    light = np.stack(light)

    def expected(weights):  # weights (n_fibers, 1) or (n_fibers, n_columns)
        image = np.bincount(index.ravel(), (light * weights[None]).ravel(), minlength=ny * nx)
        return image.reshape(ny, nx)

    dark = np.zeros((ny, nx))
    dark[:, :n_columns] = dark_rate
    flux = expected(omega.mean(axis=1)) + dark
    reads = np.empty((K + 1, ny, nx), dtype=np.float32)
    counts = np.zeros((ny, nx))
    noise_e = read_noise * gain
    reads[0] = np.rint(pedestal + rng.normal(0.0, read_noise, (ny, nx)))
    hits = []
    for k in range(K):
        counts += rng.poisson(expected(omega[:, k]) + dark)
        n_hit = rng.binomial(ny * n_columns, cosmic_ray_rate)
        if n_hit:
            r = rng.integers(0, ny, n_hit)
            col = rng.integers(0, n_columns, n_hit)
            np.add.at(counts, (r, col), rng.uniform(200.0, 5000.0, n_hit))
            hits.append(np.column_stack([np.full(n_hit, k), r, col]))
        noise = rng.standard_normal((ny, nx), dtype=np.float32) * np.float32(noise_e)
        reads[k + 1] = np.rint(pedestal + (counts + noise) / gain)
    for k in range(K + 1):  # read by read: the same numbers as one draw of the whole block
        reads[k, :, n_columns:] = np.rint(
            pedestal + rng.normal(0.0, read_noise, (ny, nx - n_columns))
        )
    np.minimum(reads, np.float32(saturation), out=reads)
    cosmic = np.concatenate(hits) if hits else np.zeros((0, 3), dtype=np.int64)
    return SimulatedChip(
        reads=reads,
        traces=traces,
        flux=flux,
        fiber_flux=spectra,
        cosmic_rays=cosmic.astype(np.int64),
        gain=float(gain),
        read_noise=float(read_noise),
        saturation=float(saturation),
    )


def write_simulated_apz(
    directory,
    reads,
    *,
    telescope: str = "apo",
    chip: str = "a",
    mjd: int = 60781,
    exposure: int = 1,
    date_obs: str | None = None,
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
        Folder for the file (made if missing).
    reads : array_like, ``(n_reads, ny, nx)``
        Counts in DN, e.g. ``SimulatedRamps.reads`` of a chip-shaped ``flux``; ``nx = 2560``
        for a full chip with its reference output.
    telescope, chip, mjd, exposure
        Give the file name ``{apR|asR}-{chip}-{(mjd - 55562) * 10000 + exposure:08d}.apz``;
        ``mjd`` is the SDSS MJD of the night.
    date_obs : str, optional
        Start of the integration; default 04:00 UTC of the night ``mjd``.
    timesys : str
        The time scale of ``date_obs``: "UTC" or "TAI".
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
    counts = _raw_counts(reads, bias, one_over_f, rng)
    return _write_raw(
        directory, counts, telescope=telescope, chip=chip, mjd=mjd, exposure=exposure,
        date_obs=_night_start(mjd) if date_obs is None else date_obs, timesys=timesys,
        header=header, overwrite=overwrite,
    )  # fmt: skip


def _night_start(mjd: int) -> str:
    """``DATE-OBS`` (UTC, ISO) of a simulated integration of the SDSS night ``mjd``: 04:00 UTC
    of that day (:data:`START_HOUR_UTC`), so that the file's times and its name's night agree
    (``docs/formats.md``: the night of a time is ``floor(MJD + 0.3)``)."""
    from astropy.time import Time

    return Time(mjd + START_HOUR_UTC / 24.0, format="mjd", scale="utc", precision=3).isot


def _raw_counts(
    reads, bias: float, one_over_f: HxrgNoise | None, rng, *, consume: bool = False,
    saturation: float | None = None,
) -> np.ndarray:  # fmt: skip
    """The reads as the detector's ADC gives them: plus ``bias``, rounded, clipped, uint16.

    Converted read by read (one read in float64 at a time), with the same numbers as a
    conversion of the whole cube; with ``one_over_f``, the H2RG noise cube is added first.
    With ``saturation`` (the level ``reads`` are clipped at, as :func:`simulate_exposure`
    clips them after its white read noise) the 1/f noise is clipped the same way: a read at
    the level stays there, the others stay below it. Added after the clip, it left about half
    of the clipped reads a few DN below the level, where ``pyapred fit`` (whose saturation level
    is the file's ``SATURATE``, the same) does not mask them: near-zero differences in bright
    pixels (``docs/noise.md``, "Which route when").
    With ``consume`` (a streamed chip, dropped right after) the counts are written over the
    reads' own memory instead of a new cube.
    """
    reads = np.asarray(reads)
    if reads.ndim != 3:
        raise ValueError(f"reads: expected shape (n_reads, ny, nx), got {reads.shape}")
    if one_over_f is not None:
        from .noise import simulate_hxrg

        if reads.shape[-1] != 2560:
            raise ValueError(f"reads: one_over_f needs (n_reads, ny, 2560), got {reads.shape}")
        noisy = simulate_hxrg(reads.shape[0], one_over_f, rows=slice(0, reads.shape[1]), rng=rng)
        noisy += reads  # in place: x + y == y + x exactly
        if saturation is not None:
            for k in range(reads.shape[0]):  # read by read: no second cube of booleans
                np.minimum(noisy[k], saturation, out=noisy[k])
                noisy[k][reads[k] >= saturation] = saturation
        reads = noisy
    if consume and reads.flags.c_contiguous and reads.dtype.itemsize >= 2:
        # Read k's counts fill bytes [2 k P, 2 (k + 1) P) of the buffer (P pixels a read), which
        # hold reads < k + 1 only: each read is converted (into a temporary) before any of its
        # bytes are overwritten, so one cube serves both (a chip's peak memory).
        counts = reads.reshape(-1).view(np.uint16)[: reads.size].reshape(reads.shape)
    else:
        counts = np.empty(reads.shape, dtype=np.uint16)
    for k in range(reads.shape[0]):
        counts[k] = np.clip(np.round(reads[k].astype(np.float64) + bias), 0, 65535)
    return counts


def _write_raw(directory, counts, *, telescope, chip, mjd, exposure, date_obs, timesys, header,
               overwrite):  # fmt: skip
    """Write uint16 counts as ``{apR|asR}-{chip}-NNNNNNNN.apz`` with APOGEE's headers."""
    from pathlib import Path

    from .io.apz import ApzName, make_headers, write_apz

    exposure_header, read_headers = make_headers(
        counts.shape[0], date_obs=date_obs, chip=chip, timesys=timesys, extra=header
    )
    path = Path(directory) / ApzName.from_night(telescope, chip, mjd, exposure).filename
    return write_apz(path, counts, read_headers, header=exposure_header, overwrite=overwrite)


def write_simulated_exposure(
    sim: SimulatedExposure,
    directory,
    *,
    mjd: int = 60781,
    exposure: int = 1,
    overwrite: bool = False,
    one_over_f: HxrgNoise | None = None,
) -> dict:
    """Write a simulated exposure as the instrument and ApogeeReduction.jl would, plus its truth.

    Per chip: the raw ``apR-{a|b|c}-NNNNNNNN.apz`` (exposure header with ``GAIN`` e-/DN,
    ``RDNOISE`` DN and ``SATURATE`` DN cards that ``pyapred fit`` reads) and a
    ``traceMain_{tele}_{mjd}_{chip}.h5`` trace file. The truth goes to
    ``truth_{tele}_{mjd}_{EXP4}.npz``: ``omega`` ``(n_fibers, K)``, ``fiber_type``,
    ``read_times`` (with a seeing change also ``transparency``, ``fwhm`` and ``diameter``,
    :class:`SimulatedExposure`), and per chip ``{chip}_flux`` (exposure-averaged e-/read, float32),
    ``{chip}_fiber_flux`` and ``{chip}_cosmic_rays``. Every file is written atomically.

    Parameters
    ----------
    sim : SimulatedExposure
    directory : str or os.PathLike
        Created if missing.
    mjd, exposure : int
        SDSS MJD and exposure number within the night (they set the file names).
    overwrite : bool
    one_over_f : pyapred.noise.HxrgNoise, optional
        H2RG read noise in DN added to every chip's raw file (:func:`write_simulated_apz`; the
        chips need 2048 + 512 columns), seeded by ``sim.seed`` and the chip. The exposure already
        has white read noise, so ``white=0`` adds only the correlated part. It is clipped at
        the chip's saturation level as the white read noise is: a clipped read stays at it.

    Returns
    -------
    dict
        ``{"apz": [paths], "traces": [paths], "truth": path}``, chips in ``sim.chips`` order.
    """
    return _write_chips(
        replace(sim, chips={}), iter(sim.chips.items()), list(sim.chips), directory, mjd=mjd,
        exposure=exposure, overwrite=overwrite, one_over_f=one_over_f,
    )  # fmt: skip


def simulate_exposure_files(
    directory,
    scenario: str = "clouds",
    *,
    mjd: int = 60781,
    exposure: int = 1,
    overwrite: bool = False,
    one_over_f: HxrgNoise | None = None,
    progress: Callable[[str], None] | None = None,
    **settings,
) -> dict:
    """Simulate an exposure and write its files one chip at a time (``pyapred simulate``).

    The files of ``write_simulated_exposure(simulate_exposure(scenario, **settings), ...)``,
    bit for bit, with one chip in memory at a time: each chip is simulated, its trace file
    written, its float32 cube turned into raw counts (in the cube's own memory) and dropped, its
    raw file written (one read at a time), before the next one is made. The full size (33 reads
    of 2048 x 2560 pixels) peaks at 1.9 times one chip's float32 cube instead of 9.3
    (``benchmarks/bench_simulate.py``), while a chip is simulated.

    Parameters
    ----------
    directory : str or os.PathLike
        Created if missing.
    scenario : str
        As in :func:`simulate_exposure`.
    mjd, exposure, overwrite, one_over_f
        As in :func:`write_simulated_exposure`.
    progress : callable, optional
        Called with a short message as each chip starts and is written.
    **settings
        The other keywords of :func:`simulate_exposure` (``seed``, ``n_fibers``, ...).

    Returns
    -------
    dict
        ``{"apz": [paths], "traces": [paths], "truth": path}``, as
        :func:`write_simulated_exposure`.
    """
    import inspect

    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(simulate_exposure).parameters.items()
        if name != "scenario"
    }
    unknown = set(settings) - set(defaults)
    if unknown:
        raise TypeError(f"simulate_exposure_files: unknown settings {sorted(unknown)}")
    settings = {**defaults, **settings}
    sim, chips = _exposure_stream(scenario, **settings)
    return _write_chips(
        sim, chips, list(settings["chips"]), directory, mjd=mjd, exposure=exposure,
        overwrite=overwrite, one_over_f=one_over_f, progress=progress, streamed=True,
    )  # fmt: skip


def _write_chips(sim, chips, names, directory, *, mjd, exposure, overwrite, one_over_f,
                 progress=None, streamed=False):  # fmt: skip
    """Write each ``(name, chip)`` of ``chips`` (chips ``names``) as it comes, then the truth.

    A chip's float32 cube is dropped as soon as its raw counts are made, before they are
    written, so that a streamed chip is never in memory twice; with ``streamed`` (chips made
    for this call alone) the counts are even written over the cube's own memory.
    """
    from pathlib import Path

    from .io.atomic import atomic_path
    from .traces import trace_file_name, write_trace_file

    say = progress or (lambda message: None)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    letters = {"R": "a", "G": "b", "B": "c"}
    apz, traces = [], []
    truth = {
        "omega": sim.omega,
        "fiber_type": sim.fiber_type,
        "read_times": sim.read_times,
        "scenario": sim.scenario,
        "seed": sim.seed,
    }
    if sim.fwhm is not None:  # what every pixel's transparency follows from (omega_at)
        truth.update(transparency=sim.transparency, fwhm=sim.fwhm, diameter=sim.diameter)
    try:
        chip_iter = iter(chips)
        for index, expected in enumerate(names):
            step = f"chip {expected} ({index + 1} of {len(names)})"
            say(f"{step}: simulating")
            name, chip = next(chip_iter)
            say(f"{step}: writing")
            cards = {
                "GAIN": (chip.gain, "e-/DN (simulated)"),
                "RDNOISE": (chip.read_noise, "single-read noise, DN (simulated)"),
                "SATURATE": (chip.saturation, "saturation level, DN (simulated)"),
                "EXPTYPE": "OBJECT",
                "IMAGETYP": "Object",
            }
            traces.append(
                write_trace_file(
                    directory / trace_file_name(sim.telescope, mjd, name),
                    chip.traces,
                    # DN per read, as the format says (it was e- per read): the column's light
                    # at omega = 1, the flux of the profile.
                    height=chip.fiber_flux / chip.gain,
                    overwrite=overwrite,
                )
            )
            truth[f"{name}_flux"] = chip.flux.astype(np.float32)
            truth[f"{name}_fiber_flux"] = chip.fiber_flux
            truth[f"{name}_cosmic_rays"] = chip.cosmic_rays
            truth[f"{name}_gain"] = chip.gain
            counts = _raw_counts(
                chip.reads, 0.0, one_over_f, (sim.seed, "RGB".index(name)), consume=streamed,
                saturation=chip.saturation,
            )  # fmt: skip
            del chip  # a streamed chip's cube is freed here, before its raw file is written
            _release_freed_memory()
            apz.append(
                _write_raw(
                    directory, counts, telescope=sim.telescope, chip=letters[name], mjd=mjd,
                    exposure=exposure, date_obs=_night_start(mjd), timesys="UTC", header=cards,
                    overwrite=overwrite,
                )
            )  # fmt: skip
            del counts
            _release_freed_memory()
        say("truth file: writing")  # the chips' exposure-averaged fluxes, omega, cosmic rays
        truth_path = directory / f"truth_{sim.telescope}_{mjd}_{exposure:04d}.npz"
        with atomic_path(truth_path, overwrite=overwrite) as tmp:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, **truth)
    except BaseException:  # Ctrl-C, a full disk: no partial exposure is left (the rerun
        for path in (*apz, *traces):  # refused the files it had written)
            Path(path).unlink(missing_ok=True)
        raise
    return {"apz": apz, "traces": traces, "truth": truth_path}


def _release_freed_memory() -> None:
    """Give the heap memory freed by a chip back to the system (glibc's ``malloc_trim``), so
    that the next chip's arrays do not come on top of it."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass
