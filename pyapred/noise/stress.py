"""The 1/f stress test of the time-variable model: four cases on identical simulated exposures.

Each exposure is a band of chip rows lit by fiber-like traces: a fiber covers ``rows_per_fiber``
adjacent rows over the inner 2040 columns (all four outputs), with random pixel fluxes, under a
shared transparency ``omega`` (a passing cloud). One omega is fitted per fiber, with element 0
fixed to 1 (with the jump search, as the exposure pipeline fits), in these ways:

- ``"no_1f"``: white read noise only (the model's assumptions hold);
- ``"uncorrected"``: white + 1/f read noise (:func:`~pyapred.noise.simulate_hxrg`), fitted as is;
- ``"refcorr"``: the same reads after :func:`~pyapred.noise.refcorr_reads`, fitted with the read
  noise raised by the reference output's own white noise
  (:func:`~pyapred.noise.reference_read_variance`);
- ``"nuisance"``: the same reads fitted with one offset per readout segment and read difference
  (``fit_omega(..., segments=...)``, labelled by :func:`~pyapred.noise.segments.readout_keys`
  as the exposure pipeline labels them);
- ``"refcorr_nuisance"``: both;
- ``"rowmedian"``: ``refcorr`` with ``method="rowmedian"``, the unlit columns of the band as the
  inter-fiber pixels (real APOGEE rows through a trace have none; ``docs/noise.md``).

Each case reports the z-scores ``(omega_hat - omega_true) / sigma_hat`` of the free elements.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .hxrg import OUTPUT_COLUMNS, HxrgNoise, simulate_hxrg
from .refcorr import refcorr_reads, reference_read_variance
from .segments import DEFAULT_SEGMENT_COLUMNS, readout_keys, readout_segments

__all__ = ["CASES", "StressResult", "stress_test"]

CASES = ("no_1f", "uncorrected", "refcorr", "nuisance", "refcorr_nuisance", "rowmedian")
CORRECTED = ("refcorr", "refcorr_nuisance", "rowmedian")
INNER = slice(4, 2044)  # science columns off the reference border
#: Cases fitted with the nuisance term: each readout segment needs 2 or more lit pixels.
NUISANCE = ("nuisance", "refcorr_nuisance")


def fewest_segment_pixels(column_step: int, segment_columns: int) -> int:
    """The fewest lit pixels of one fiber row in any readout segment that has one.

    With one, the segment's offsets take all of that pixel's data: the fit is degenerate (its
    z-scores came out NaN). The nuisance cases need 2 or more.
    """
    lit = np.arange(INNER.start, INNER.stop, column_step)
    counts = np.bincount(lit // segment_columns)  # segment_columns divides an output's 512
    return int(counts[counts > 0].min())


@dataclass(frozen=True)
class StressResult:
    """z-scores of omega per case.

    Attributes
    ----------
    z : dict of str to ndarray, ``(n_exposures, n_fibers, K - 1)``
        ``(omega_hat - omega_true) / sqrt(omega_cov)`` of the free elements, per case.
    omega : ndarray, ``(K,)``
        The true omega (element 0 = 1).
    """

    z: dict = field(default_factory=dict)
    omega: np.ndarray | None = None

    def summary(self) -> dict[str, tuple[float, float, float]]:
        """Per case: ``(mean z = bias in sigma, std of z, standard error of the bias)``.

        The z-scores of one fiber are correlated (every element shares the error of the fixed
        one), so the standard error comes from the scatter of the per-fiber means.
        """
        out = {}
        for case, z in self.z.items():
            per_fiber = z.reshape(-1, z.shape[-1]).mean(axis=1)
            error = per_fiber.std(ddof=1) / np.sqrt(per_fiber.size)
            out[case] = (float(z.mean()), float(z.std()), float(error))
        return out


def _cloud(n_diff: int) -> np.ndarray:
    k = np.arange(n_diff)
    return 1.0 - 0.3 * np.exp(-0.5 * ((k - 0.6 * n_diff) / (0.15 * n_diff)) ** 2)


def stress_test(
    n_exposures: int = 4,
    *,
    n_fibers: int = 8,
    rows_per_fiber: int = 2,
    n_reads: int = 11,
    column_step: int = 1,
    flux: tuple[float, float] = (100.0, 600.0),
    noise: HxrgNoise | None = None,
    cases: tuple[str, ...] = CASES,
    refcorr_options: dict | None = None,
    segment_columns: int = DEFAULT_SEGMENT_COLUMNS,
    rng: np.random.Generator | int | None = None,
) -> StressResult:
    """Run the four-case comparison (plus two more corrected cases) on simulated exposures.

    Parameters
    ----------
    n_exposures : int
        Independent exposures (each with new fluxes, photon noise and read noise).
    n_fibers, rows_per_fiber : int
        Fibers per exposure and the rows each covers; the band starts at chip row 4.
    n_reads : int
        Reads per exposure (K = n_reads - 1 differences).
    column_step : int
        A fiber's fitted pixels are every ``column_step``-th inner column of its rows (all four
        outputs); the others stay dark. Fewer pooled pixels mean a larger statistical error of
        omega, against which a residual common offset matters less.
    flux : (float, float)
        Range of the pixel fluxes, e- per read at omega = 1 (uniform).
    noise : HxrgNoise, optional
        Read noise in e-; default ``HxrgNoise(white=10, c_pink=6, u_pink=3, acn=2,
        read_time=0)`` (compressed timing).
    cases : tuple of str
        Subset of :data:`CASES`.
    refcorr_options : dict, optional
        Keywords of :func:`~pyapred.noise.refcorr` other than ``method`` and ``background``
        (default: its defaults).
    segment_columns : int, optional
        Columns per nuisance segment (:func:`~pyapred.noise.segments.readout_keys`); default
        ``FitOptions.segment_columns``'s.
    rng : numpy.random.Generator or int, optional

    Returns
    -------
    StressResult
    """
    from ..simulate import simulate_ramps
    from ..solver.api import fit_omega

    unknown = set(cases) - set(CASES)
    if unknown:
        raise ValueError(f"cases: expected names from {CASES}, got {sorted(unknown)}")
    if not 1 <= column_step <= INNER.stop - INNER.start:
        raise ValueError(
            f"column_step: expected 1 to {INNER.stop - INNER.start} (the inner columns), got "
            f"{column_step!r}"
        )
    fewest = fewest_segment_pixels(column_step, segment_columns)
    if set(NUISANCE) & set(cases) and fewest < 2:
        raise ValueError(
            f"column_step, segment_columns: expected 2 or more lit pixels in every readout "
            f"segment for the nuisance cases, got {fewest} (a lit column every {column_step}, "
            f"{segment_columns} columns a segment)"
        )
    noise = noise or HxrgNoise(white=10.0, c_pink=6.0, u_pink=3.0, acn=2.0, read_time=0.0)
    white_only = HxrgNoise(**{**noise.__dict__, "c_pink": 0.0, "u_pink": 0.0, "acn": 0.0})
    rng = np.random.default_rng(rng)
    n_rows = n_fibers * rows_per_fiber
    rows = slice(4, 4 + n_rows)
    omega = _cloud(n_reads - 1)
    lit = np.arange(INNER.start, INNER.stop, column_step)
    n_cols = lit.size
    # Segment of each fitted pixel, labelled as the exposure pipeline labels its fit pixels.
    pixel_rows = np.arange(4, 4 + n_rows).reshape(n_fibers, rows_per_fiber, 1)
    pixel_rows = np.broadcast_to(pixel_rows, (n_fibers, rows_per_fiber, n_cols))
    pixel_cols = np.broadcast_to(lit, pixel_rows.shape)
    keys = readout_keys(pixel_rows, pixel_cols, columns=segment_columns)
    segments = readout_segments(keys.reshape(n_fibers, -1))
    dark = np.zeros((n_rows, 4 * OUTPUT_COLUMNS), dtype=bool)  # unlit inner columns
    dark[:, INNER] = True
    dark[:, lit] = False
    options = refcorr_options or {}
    z = {case: [] for case in cases}
    for _ in range(n_exposures):
        pixel_flux = np.zeros((n_rows, 2560))
        pixel_flux[:, lit] = rng.uniform(*flux, (n_rows, n_cols))
        signal = simulate_ramps(pixel_flux, 0.0, omega=omega, rng=rng).reads
        seed = int(rng.integers(2**63))
        one_over_f = signal + simulate_hxrg(n_reads, noise, rows=rows, rng=seed)
        data = {
            "no_1f": signal + simulate_hxrg(n_reads, white_only, rows=rows, rng=seed),
            "uncorrected": one_over_f,
            "nuisance": one_over_f,
        }
        read_noise = dict.fromkeys(cases, noise.white)
        if set(CORRECTED) & set(cases):
            if {"refcorr", "refcorr_nuisance"} & set(cases):
                refpix = refcorr_reads(one_over_f, rows=rows, **options)
                data["refcorr"] = data["refcorr_nuisance"] = refpix
            if "rowmedian" in cases:
                data["rowmedian"] = refcorr_reads(
                    one_over_f, rows=rows, method="rowmedian", background=dark, **options
                )
            # Fitted with the read noise that the correction leaves.
            added = reference_read_variance(
                np.diff(one_over_f, axis=0), ref_filter=options.get("ref_filter", 3)
            )
            for case in set(CORRECTED) & set(cases):
                read_noise[case] = np.sqrt(noise.white**2 + added)
        for case in cases:
            reads = data[case][..., lit]  # (n_reads, n_rows, n_cols)
            groups = reads.reshape(n_reads, n_fibers, rows_per_fiber * n_cols)
            labels = segments if case in NUISANCE else None
            # As the exposure pipeline fits (FitOptions' default jump_search).
            fit = fit_omega(
                groups, read_noise[case], ref_index=0, segments=labels, jump_search=True
            )
            sigma = np.sqrt(np.diagonal(fit.omega_cov, axis1=1, axis2=2))[:, 1:]
            z[case].append((fit.omega[:, 1:] - omega[1:]) / sigma)
    return StressResult(z={case: np.array(v) for case, v in z.items()}, omega=omega)
