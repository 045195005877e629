"""The exposure pipeline: per-fiber omega, model choice and full-chip extraction.

One direction of flow, per chip (or jointly over the R, G and B chips):

1. :func:`prepare_chip` finds cosmic rays and saturated pixels, maps every pixel to its fiber and
   chooses each fiber's omega-fit pixels (:mod:`pyapred.traces`);
2. one batched :func:`~pyapred.solver.fit_omega` call fits omega for every fiber;
3. :func:`choose_models` decides per fiber between the constant and the time-variable model
   (a chi-squared comparison and the paper's 3.5 % amplitude threshold) and lends faint fibers
   the inverse-covariance weighted mean omega of the bright ones;
4. one :func:`~pyapred.solver.extract_fluxes` call per chip extracts every pixel with its fiber's
   omega (background pixels with the constant model).

Units follow the solver: reads in DN with ``gain`` in e-/DN, fluxes in DN per read interval.
Extraction uses omega normalised to mean 1, so every flux is the exposure-averaged flux whatever
the model (the same normalisation as the constant model and ApogeeReduction.jl's ``dimage``).
Arrays are ``(n_reads, ny, nx)`` C order; fiber indices are 0-based (``300 - fiberId``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from .solver import Flag, FluxFit, OmegaFit, extract_fluxes, fit_constant, fit_omega
from .traces import (
    FitPixels,
    PixelMap,
    Traces,
    pixel_fiber_map,
    select_fit_pixels,
    trace_brightness,
)

__all__ = [
    "MODEL_BORROWED",
    "MODEL_CONSTANT",
    "MODEL_NAMES",
    "MODEL_TIME_VARIABLE",
    "ChipExposure",
    "ChipResult",
    "ExposureResult",
    "FiberFits",
    "FitOptions",
    "PreparedChip",
    "choose_models",
    "correct_1f",
    "fit_exposure",
    "fit_files",
    "load_chip",
    "match_inputs",
    "prepare_chip",
    "truth_metrics",
    "write_result",
]

#: Per-fiber model codes (``FiberFits.model``).
MODEL_CONSTANT, MODEL_TIME_VARIABLE, MODEL_BORROWED = 0, 1, 2
MODEL_NAMES = ("constant", "time_variable", "borrowed")
_ROUGH_COLUMNS = 512


@dataclass(frozen=True)
class ChipExposure:
    """The reads of one chip and what is needed to fit them.

    Attributes
    ----------
    name : str
        Chip name ("R", "G" or "B").
    reads : ndarray, ``(n_reads, ny, nx)``
        Raw reads in DN (float32 keeps memory at one cube).
    read_noise : float or ndarray ``(ny, nx)``
        Single-read sigma, DN.
    gain : float or ndarray ``(ny, nx)``
        e-/DN.
    saturation : float or ndarray ``(ny, nx)``, optional
        DN; a read at or above it and every later read are masked.
    read_times : ndarray, ``(n_reads,)``, optional
        Seconds from the first read (for plots; the reads are taken as equally spaced).
    telescope, mjd : optional
        Checked for consistency across the chips of one call.
    source : str
        File name used in error messages.
    writable : bool
        The pipeline may overwrite ``reads`` in place: :func:`correct_1f` then corrects float
        reads without a copy (:func:`load_chip` sets it).
    timing : dict, optional
        What the product records of the exposure's timing, for ``pyapred guider``:
        ``read_times_tai_mjd`` (the reads' start times, TAI MJD) and the header cards
        ``DATE-OBS``, ``TIMESYS``, ``INTOFF``, ``INTDELAY``, ``NREAD`` and ``CONFIGID`` present
        (:func:`load_chip` fills it from the file).
    """

    name: str
    reads: np.ndarray
    read_noise: float | np.ndarray
    gain: float | np.ndarray = 1.0
    saturation: float | np.ndarray | None = None
    read_times: np.ndarray | None = None
    telescope: str | None = None
    mjd: int | None = None
    source: str = "<memory>"
    writable: bool = False
    timing: dict | None = None


@dataclass(frozen=True)
class FitOptions:
    """Settings of :func:`fit_exposure` (the defaults are the ``pyapred fit`` defaults).

    Attributes
    ----------
    model : {"auto", "constant", "time-variable"}
        ``"auto"`` chooses per fiber; the others force one model on every traced fiber.
    joint_chips : bool
        Fit one omega per fiber from the pixels of all chips together.
    min_snr, core_halfwidth, min_purity, max_fit_pixels
        Omega-fit pixel selection (:func:`pyapred.traces.select_fit_pixels`).
    map_halfwidth : float
        Pixels further than this many sigmas from every trace are background.
    min_fit_pixels : int
        Fibers with fewer fit pixels borrow omega.
    max_omega_error : float
        Fibers whose median omega error exceeds this borrow omega.
    p_value : float
        The time-variable model is chosen when the chi-squared improvement has a probability
        below this under the constant model ...
    amplitude_threshold : float
        ... and the equivalent amplitude of omega is at least this (the paper's 3.5 %).
    jump_threshold : float
        Cosmic-ray detection threshold on a difference's excess, in sigmas.
    keep_constant : bool
        Also extract every pixel with the constant model (for comparisons and plots).
    keep_fit_reads : bool
        Keep the fit pixels' reads in the result (``PreparedChip.fit_reads``, for the ramp
        plots); without them the result is smaller by about a quarter of a cube per chip.
    max_iter : int
        Gauss-Newton iteration limit.
    jump_search : bool
        Alternate the omega fit with the time-variable jump search
        (``fit_omega(jump_search=True)``), so that cosmic rays the first pass missed in the fit
        pixels do not bias omega.
    correct_1f : {"none", "refpix", "rowmedian"}
        Correct correlated (1/f) read noise with the reference pixels before anything else
        (:func:`correct_1f`); needs raw reads with the reference output.
    """

    model: Literal["auto", "constant", "time-variable"] = "auto"
    joint_chips: bool = False
    min_snr: float = 30.0
    core_halfwidth: float = 0.5
    min_purity: float = 0.95
    max_fit_pixels: int | None = None
    map_halfwidth: float = 2.5
    min_fit_pixels: int = 20
    max_omega_error: float = 0.05
    p_value: float = 1e-3
    amplitude_threshold: float = 0.035
    jump_threshold: float = 8.0
    keep_constant: bool = False
    keep_fit_reads: bool = True
    max_iter: int = 50
    jump_search: bool = True
    correct_1f: Literal["none", "refpix", "rowmedian"] = "none"

    def __post_init__(self):
        if self.model not in ("auto", "constant", "time-variable"):
            raise ValueError(
                f"model: expected 'auto', 'constant' or 'time-variable', got {self.model!r}"
            )
        if self.correct_1f not in ("none", "refpix", "rowmedian"):
            raise ValueError(
                f"correct_1f: expected 'none', 'refpix' or 'rowmedian', got {self.correct_1f!r}"
            )


@dataclass(frozen=True)
class PreparedChip:
    """A chip after cosmic-ray detection and pixel selection (the omega fit's inputs).

    Attributes
    ----------
    name : str
    shape : tuple
        ``(n_reads, ny, nx)``.
    traces : Traces
    pixel_map : PixelMap
    fit_pixels : FitPixels
    fit_reads : ndarray, float32 or float64, ``(n_reads, n_fibers, n_pix)``, or None
        Reads of the fit pixels; padding is NaN. None after the fit unless
        ``FitOptions.keep_fit_reads``.
    fit_read_noise, fit_gain : ndarray, ``(n_fibers, n_pix)``
    jumps : ndarray, int64, ``(n_jumps, 3)``
        ``(read, row, column)`` of every read masked after a detected jump.
    saturated : ndarray of bool, ``(ny, nx)``
    rate : ndarray, float32, ``(ny, nx)``
        Robust rate estimate, DN per read: the mean of the shape-corrected differences that are
        not jumps. ``pixel_map``, ``saturated`` and ``rate`` are None once the chip was written
        by :func:`fit_to_product`.
    omega_rough : ndarray, ``(n_fibers, K)``
        Per-fiber shape of the differences used by the jump detector (mean 1).
    """

    name: str
    shape: tuple
    traces: Traces
    pixel_map: PixelMap
    fit_pixels: FitPixels
    fit_reads: np.ndarray
    fit_read_noise: np.ndarray
    fit_gain: np.ndarray
    jumps: np.ndarray
    saturated: np.ndarray
    rate: np.ndarray
    omega_rough: np.ndarray


@dataclass(frozen=True)
class FiberFits:
    """Per-fiber omega fits and model decisions (one chip, or all chips jointly).

    Attributes
    ----------
    omega_fit : ndarray, ``(n_fibers, K)``
        Fitted omega, ``omega_fit[:, ref_index] == 1``; NaN for fibers not fitted.
    omega_cov : ndarray, ``(n_fibers, K, K)``
        Its covariance (zeros for fibers not fitted).
    omega : ndarray, ``(n_fibers, K)``
        The omega used for extraction, normalised to mean 1: ones for constant-model fibers, the
        fit for time-variable fibers, the bright-fiber mean for borrowed fibers.
    model : ndarray of int, ``(n_fibers,)``
        ``MODEL_CONSTANT``, ``MODEL_TIME_VARIABLE`` or ``MODEL_BORROWED``.
    delta_chi2 : ndarray, ``(n_fibers,)``
        Constant-model minus time-variable chi2 over the fit pixels (the decision statistic).
    p_value : ndarray, ``(n_fibers,)``
        Probability of ``delta_chi2`` under the constant model (chi2 with the free elements of
        omega as degrees of freedom).
    amplitude : ndarray, ``(n_fibers,)``
        Equivalent amplitude ``sqrt(12 (var(omega) - mean(sigma_omega^2)))`` of the mean-1 fit: the
        paper's A for ``omega ~ U(1 - A, 1)``, debiased for noise.
    chi2_dof_constant, chi2_dof_variable : ndarray, ``(n_fibers,)``
        chi2/dof of the two models over the fit pixels.
    n_fit_pixels : ndarray of int, ``(n_fibers,)``
    flags : ndarray of int, ``(n_fibers,)``
        Group flags of the fit plus ``BORROWED_OMEGA``, ``FALLBACK_CONSTANT``, ``FPI_FIBER``.
    ref_index : int
        The read difference fixed to 1 in every fiber's ``omega_fit``.
    bright : ndarray of bool, ``(n_fibers,)``
        Fibers that constrain their own omega.
    borrowed_omega, borrowed_cov : ndarray, ``(K,)``, ``(K, K)``
        The bright-fiber mean lent to faint fibers (``ref_index`` normalisation).
    fit : OmegaFit or None
        The raw batched fit (per-pixel joint fluxes and chi2), None with ``model="constant"``.
    pixel_chi2_constant : ndarray, ``(n_fibers, n_pix)``
        Constant-model chi2 of each fit pixel (NaN for padding).
    """

    omega_fit: np.ndarray
    omega_cov: np.ndarray
    omega: np.ndarray
    model: np.ndarray
    delta_chi2: np.ndarray
    p_value: np.ndarray
    amplitude: np.ndarray
    chi2_dof_constant: np.ndarray
    chi2_dof_variable: np.ndarray
    n_fit_pixels: np.ndarray
    flags: np.ndarray
    ref_index: int
    bright: np.ndarray
    borrowed_omega: np.ndarray
    borrowed_cov: np.ndarray
    fit: OmegaFit | None = None
    pixel_chi2_constant: np.ndarray | None = None

    def omega_error(self) -> np.ndarray:
        """Marginal omega errors, ``(n_fibers, K)``, from the diagonal of ``omega_cov``."""
        return np.sqrt(np.maximum(np.diagonal(self.omega_cov, axis1=1, axis2=2), 0.0))


@dataclass(frozen=True)
class ChipResult:
    """Extracted fluxes of one chip.

    Attributes
    ----------
    flux, flux_var, chi2, n_diff, flags : ndarray, ``(ny, nx)``
        As in :class:`~pyapred.solver.FluxFit` (DN per read interval; ``n_diff`` as int16), plus
        the pipeline's pixel flags ``JUMP_DETECTED`` and ``BACKGROUND``. None once written to a
        product by :func:`fit_to_product`.
    fiber : ndarray of int16, ``(ny, nx)``
        Fiber whose omega each pixel used; -1 for background and reference columns.
    constant : FluxFit or None
        Every pixel with the constant model (``FitOptions.keep_constant``).
    fibers : FiberFits
        The fits this chip's extraction used (shared by all chips with ``joint_chips``).
    prepared : PreparedChip
    """

    flux: np.ndarray
    flux_var: np.ndarray
    chi2: np.ndarray
    n_diff: np.ndarray
    flags: np.ndarray
    fiber: np.ndarray
    constant: FluxFit | None
    fibers: FiberFits
    prepared: PreparedChip


@dataclass
class ExposureResult:
    """Everything :func:`fit_exposure` produced, by chip name.

    Attributes
    ----------
    chips : dict of str to ChipResult
    fibers : dict of str to FiberFits
        By chip name, or the single key ``"joint"`` with ``joint_chips``.
    options : FitOptions
    read_times : ndarray, ``(n_reads,)``
    """

    chips: dict
    fibers: dict
    options: FitOptions
    read_times: np.ndarray
    meta: dict = field(default_factory=dict)

    def problems(self) -> list[str]:
        """Human-readable list of flagged fit problems (fallbacks to the constant model)."""
        out = []
        for key, fits in self.fibers.items():
            bad = np.flatnonzero(fits.flags & Flag.FALLBACK_CONSTANT)
            if bad.size:
                out.append(
                    f"{key}: omega fit failed for fibers {bad.tolist()}; constant model used"
                )
        return out

    def summary(self) -> dict:
        """A JSON-ready summary: model counts, borrowed fibers, chi2/dof, problems."""
        fibers = {}
        for key, fits in self.fibers.items():
            counts = {
                name: int(np.sum(fits.model == code)) for code, name in enumerate(MODEL_NAMES)
            }
            bright = fits.bright
            fibers[key] = {
                "models": counts,
                "bright_fibers": int(bright.sum()),
                "median_fit_pixels": float(np.median(fits.n_fit_pixels[bright]))
                if bright.any()
                else 0.0,
                "median_chi2_dof_constant": _nanmedian(fits.chi2_dof_constant[bright]),
                "median_chi2_dof_variable": _nanmedian(fits.chi2_dof_variable[bright]),
                "median_omega_error": _nanmedian(
                    np.nanmedian(_free(fits.omega_error(), fits.ref_index), axis=1)[bright]
                )
                if bright.any()
                else None,
            }
        return {
            "options": {k: v for k, v in self.options.__dict__.items()},
            "chips": sorted(self.chips),
            "fibers": fibers,
            "cosmic_rays": {k: int(c.prepared.jumps.shape[0]) for k, c in self.chips.items()},
            "timings_s": self.meta.get("timings_s", {}),
            "problems": self.problems(),
        }


def _nanmedian(values) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else None


def _free(array: np.ndarray, ref_index: int) -> np.ndarray:
    """Drop the fixed element along the last axis."""
    return np.delete(array, ref_index, axis=-1)


# --------------------------------------------------------------------------------------------
# Step 1: cosmic rays, saturation, pixel selection
# --------------------------------------------------------------------------------------------
def _pixel_values(value, rows, cols) -> np.ndarray:
    value = np.asarray(value, dtype=np.float64)
    return value[rows, cols] if value.ndim == 2 else np.broadcast_to(value, np.shape(rows))


def _rough_omega(core_diffs: np.ndarray) -> np.ndarray:
    """Per-fiber shape of the differences (mean 1), robust to cosmic rays and faint pixels.

    ``core_diffs`` is ``(K, n_fibers, n_columns)`` in DN of the trace-center pixels.
    """
    level = np.median(core_diffs, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = core_diffs / level
    weight = level > 0.5 * np.nanmax(np.where(np.isfinite(level), level, 0), axis=1, keepdims=True)
    ratio = np.where(weight[None] & np.isfinite(ratio), ratio, np.nan)
    shape = _nanmedian_last_axis(ratio).T
    shape = np.where(np.isfinite(shape) & (shape > 0), shape, 1.0)
    return shape / shape.mean(axis=1, keepdims=True)


def _nanmedian_last_axis(values: np.ndarray) -> np.ndarray:
    """``np.nanmedian(values, axis=-1)`` (NaN where all are NaN), by one sort: ten times faster
    than NumPy's, which goes through masked arrays for short rows."""
    ordered = np.sort(values, axis=-1)  # NaN sort last
    n = np.count_nonzero(~np.isnan(values), axis=-1)[..., None]
    low = np.take_along_axis(ordered, np.maximum(n - 1, 0) // 2, axis=-1)[..., 0]
    high = np.take_along_axis(ordered, np.minimum(n // 2, values.shape[-1] - 1), axis=-1)[..., 0]
    return np.where(n[..., 0] > 0, (low + high) / 2, np.nan)


@contextlib.contextmanager
def _quiet():
    """Silence NumPy's empty-slice warnings: all-NaN rows (padding, unfitted fibers) are expected
    and handled by the caller."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def prepare_chip(chip: ChipExposure, traces: Traces, options: FitOptions) -> PreparedChip:
    """Detect jumps and saturation, map pixels to fibers and choose the omega-fit pixels.

    Parameters
    ----------
    chip : ChipExposure
    traces : Traces
        The chip's traces; ``traces.n_columns`` columns from x = 0 are traced.
    options : FitOptions

    Returns
    -------
    PreparedChip
    """
    reads = chip.reads
    if reads.ndim != 3 or reads.shape[0] < 3:
        from .errors import InputError

        raise InputError(chip.source, "reads", "a (n_reads >= 3, ny, nx) cube", str(reads.shape))
    n_reads, ny, nx = reads.shape
    traces.check_geometry(ny, nx, source=f"traces for chip {chip.name}")
    K = n_reads - 1
    nc = traces.n_columns
    gain = np.asarray(chip.gain, dtype=np.float64)
    sigma = np.asarray(chip.read_noise, dtype=np.float64)
    saturation = np.inf if chip.saturation is None else np.asarray(chip.saturation, np.float64)

    # Shape of each fiber's light curve from its trace-center pixels (for the jump detector);
    # a rough shape needs no more than _ROUGH_COLUMNS columns.
    step = max(1, nc // _ROUGH_COLUMNS)
    center_rows = np.clip(np.rint(traces.y_center[:, ::step]).astype(np.int64), 0, ny - 1)
    cols = np.broadcast_to(np.arange(0, nc, step), center_rows.shape)
    core = np.asarray(reads[:, center_rows, cols], dtype=np.float32)  # exact for raw DN
    core_sat = np.logical_or.accumulate(core >= _pixel_values(saturation, center_rows, cols), 0)
    core_diffs = np.diff(core, axis=0)
    del core
    core_diffs[core_sat[1:]] = np.nan
    omega_rough = _rough_omega(core_diffs)
    shape_table = np.vstack([omega_rough, np.ones((1, K))])  # last row: background
    coarse_map = pixel_fiber_map(traces, ny, halfwidth=options.map_halfwidth).fiber

    # One pass over the chip: robust rate, jumps and saturation (a Numba kernel, rows in parallel).
    from .solver.first_pass import first_pass

    shape_index = np.full((ny, nx), traces.n_fibers, dtype=np.int32)  # last row: background
    shape_index[:, :nc] = np.where(coarse_map >= 0, coarse_map, traces.n_fibers)
    var_read = 2.0 * np.broadcast_to(sigma, (ny, nx)) ** 2
    inv_gain = 1.0 / np.broadcast_to(gain, (ny, nx))
    rate, saturated, jumps = first_pass(
        reads, shape_index, shape_table, inv_gain, var_read, saturation, options.jump_threshold
    )
    jumps[:, 0] += 1  # a jump in difference k masks read k + 1
    has_jump = np.zeros((ny, nx), dtype=bool)
    has_jump[jumps[:, 1], jumps[:, 2]] = True

    # Pixel map with this exposure's brightness, and the fit pixels.
    brightness = trace_brightness(traces, rate[:, :nc])
    pixel_map = pixel_fiber_map(traces, ny, brightness, halfwidth=options.map_halfwidth)
    signal = np.maximum(rate[:, :nc], 0.0) * np.broadcast_to(gain, (ny, nx))[:, :nc] * K
    noise_e2 = var_read[:, :nc] / inv_gain[:, :nc] ** 2
    snr = signal / np.sqrt(signal + noise_e2)
    fit_pixels = select_fit_pixels(
        traces,
        pixel_map,
        snr,
        bad=(saturated | has_jump)[:, :nc],
        core_halfwidth=options.core_halfwidth,
        min_purity=options.min_purity,
        min_snr=options.min_snr,
        max_pixels=options.max_fit_pixels,
    )
    # Kept in the reads' own float type (float32 from raw files: exact, half the memory).
    fit_reads = np.asarray(
        reads[:, fit_pixels.rows, fit_pixels.cols], dtype=np.result_type(reads.dtype, np.float32)
    )
    fit_reads[:, ~fit_pixels.valid] = np.nan
    return PreparedChip(
        name=chip.name,
        shape=reads.shape,
        traces=traces,
        pixel_map=pixel_map,
        fit_pixels=fit_pixels,
        fit_reads=fit_reads,
        fit_read_noise=np.ascontiguousarray(_pixel_values(sigma, fit_pixels.rows, fit_pixels.cols)),
        fit_gain=np.ascontiguousarray(_pixel_values(gain, fit_pixels.rows, fit_pixels.cols)),
        jumps=jumps.astype(np.int64),
        saturated=saturated,
        rate=rate,
        omega_rough=omega_rough,
    )


# --------------------------------------------------------------------------------------------
# Steps 2-3: omega fits and model choice
# --------------------------------------------------------------------------------------------
def _fit_fibers(prepared: list[PreparedChip], options: FitOptions) -> FiberFits:
    """One batched omega fit over the fibers, from the fit pixels of one or more chips.

    The chips in ``prepared`` are replaced by their :func:`_after_fit` versions as soon as their
    fit reads are taken, so that (unless they are kept) the fit does not hold two copies.
    """
    first = prepared[0]
    excluded = first.traces.excluded
    K = first.shape[0] - 1
    n_fibers = first.traces.n_fibers
    if any(p.shape[0] != first.shape[0] or p.traces.n_fibers != n_fibers for p in prepared):
        raise ValueError("joint chips: expected the same number of reads and fibers on every chip")

    def joined(values, axis):
        return values[0] if len(values) == 1 else np.concatenate(values, axis=axis)

    reads = joined([p.fit_reads for p in prepared], 2)
    sigma = joined([p.fit_read_noise for p in prepared], 1)
    gain = joined([p.fit_gain for p in prepared], 1)
    valid = joined([p.fit_pixels.valid for p in prepared], 1)
    prepared[:] = [_after_fit(p, options) for p in prepared]
    mask = np.broadcast_to(~valid, reads.shape)
    n_pix = valid.sum(axis=1)
    flags = np.where(excluded, int(Flag.FPI_FIBER), 0).astype(np.int64)
    # A common reference read: where the exposure is most transparent.
    rough = np.mean([p.omega_rough for p in prepared], axis=0)
    ref_index = int(np.argmax(np.median(rough[~excluded] if (~excluded).any() else rough, 0)))
    if options.model == "constant":
        nan = np.full((n_fibers, K), np.nan)
        return FiberFits(
            omega_fit=nan, omega_cov=np.zeros((n_fibers, K, K)), omega=np.ones((n_fibers, K)),
            model=np.zeros(n_fibers, np.int64), delta_chi2=np.full(n_fibers, np.nan),
            p_value=np.full(n_fibers, np.nan), amplitude=np.full(n_fibers, np.nan),
            chi2_dof_constant=np.full(n_fibers, np.nan),
            chi2_dof_variable=np.full(n_fibers, np.nan), n_fit_pixels=n_pix, flags=flags,
            ref_index=ref_index, bright=np.zeros(n_fibers, bool), borrowed_omega=np.ones(K),
            borrowed_cov=np.zeros((K, K)),
        )  # fmt: skip
    # Only fibers that can be bright are fitted; the others are padding-only groups.
    todo = np.flatnonzero(~excluded & (n_pix >= max(options.min_fit_pixels, 1)))
    P = max(int(n_pix[todo].max(initial=1)), 1)
    sub = (slice(None), todo, slice(0, P))
    mask = np.ascontiguousarray(mask[sub])
    reads = reads[sub]
    with _quiet():
        const = fit_constant(reads, sigma[todo, :P], gain=gain[todo, :P], mask=mask)
        fit = fit_omega(
            reads, sigma[todo, :P], gain=gain[todo, :P], mask=mask, ref_index=ref_index,
            max_iter=options.max_iter, jump_search=options.jump_search,
        )  # fmt: skip
    fit, const = _scatter(fit, const, todo, n_fibers, ref_index)
    return choose_models(fit, const, n_pix, excluded, options, flags)


def _scatter(fit: OmegaFit, const: FluxFit, todo: np.ndarray, n_fibers: int, ref_index: int):
    """Full-size fits from the fits of fibers ``todo``; the others are empty groups."""

    def spread(value, fill):
        out = np.full((n_fibers,) + value.shape[1:], fill, dtype=value.dtype)
        out[todo] = value
        return out

    K, P = fit.omega.shape[1], fit.flux.shape[1]
    nan = np.nan
    full = OmegaFit(
        omega=spread(fit.omega, nan),
        omega_cov=spread(fit.omega_cov, 0.0),
        ref_index=np.full(n_fibers, ref_index, dtype=np.int64),
        flux=spread(fit.flux, nan),
        flux_var=spread(fit.flux_var, nan),
        chi2=spread(fit.chi2, nan),
        n_diff=spread(fit.n_diff, 0),
        inflation=spread(fit.inflation, nan),
        n_iter=spread(fit.n_iter, 0),
        converged=spread(fit.converged, False),
        flags=spread(fit.flags, int(Flag.NOT_IN_OMEGA_FIT)),
        group_flags=spread(fit.group_flags, int(Flag.EMPTY_GROUP)),
    )
    const_full = FluxFit(
        flux=spread(const.flux, nan),
        flux_var=spread(const.flux_var, nan),
        chi2=spread(const.chi2, nan),
        n_diff=spread(const.n_diff, 0),
        flags=spread(const.flags, 0),
    )
    assert full.omega.shape == (n_fibers, K) and full.flux.shape == (n_fibers, P)
    return full, const_full


def _equivalent_amplitude(omega: np.ndarray, error: np.ndarray) -> np.ndarray:
    """``sqrt(12 (var - noise))`` of omega normalised to mean 1, per row (free elements only)."""
    with np.errstate(invalid="ignore", divide="ignore"), _quiet():
        mean = np.nanmean(omega, axis=-1, keepdims=True)
        scaled, err = omega / mean, error / mean
        excess = np.nanvar(scaled, axis=-1) - np.nanmean(err**2, axis=-1)
    return np.sqrt(12.0 * np.maximum(excess, 0.0))


def _weighted_mean_omega(omega, cov, use, ref_index):
    """Inverse-covariance weighted mean of the omegas of the ``use`` fibers (ref normalisation)."""
    K = omega.shape[1]
    free = np.flatnonzero(np.arange(K) != ref_index)
    ok = use & np.all(np.isfinite(omega), axis=1)
    if not ok.any():
        return np.ones(K), np.zeros((K, K))
    sub = cov[ok][:, free[:, None], free[None, :]]
    precision = np.linalg.inv(sub)
    total = precision.sum(axis=0)
    mean_cov = np.linalg.inv(total)
    mean = mean_cov @ np.einsum("fij,fj->i", precision, omega[ok][:, free])
    out = np.ones(K)
    out[free] = mean
    out_cov = np.zeros((K, K))
    out_cov[free[:, None], free[None, :]] = mean_cov
    return out, out_cov


def _significance(omega, cov, ref_index):
    """chi2 of an omega against the ones-vector (the constant model at the same reference read,
    as in the paper's quartz-flat null test) and its p-value."""
    from scipy.stats import chi2

    free = np.flatnonzero(np.arange(omega.size) != ref_index)
    sub = cov[free[:, None], free[None, :]]
    if not np.all(np.isfinite(omega)) or not np.any(sub):
        return 0.0, 1.0
    # Element ref is exactly 1: the constant model is omega = 1 everywhere.
    resid = omega[free] - 1.0
    stat = float(resid @ np.linalg.solve(sub, resid))
    return stat, float(chi2.sf(stat, free.size))


def choose_models(
    fit: OmegaFit,
    constant: FluxFit,
    n_fit_pixels: np.ndarray,
    excluded: np.ndarray,
    options: FitOptions,
    flags: np.ndarray | None = None,
) -> FiberFits:
    """Decide per fiber between the constant and the time-variable model; lend faint fibers omega.

    A fiber is *bright* when it has at least ``min_fit_pixels`` fit pixels, its fit converged with
    every omega element constrained, and its median omega error is at most ``max_omega_error``.
    With ``model="auto"`` a bright fiber gets the time-variable model when ``p_value`` of the
    chi2 improvement is below ``options.p_value`` and its equivalent amplitude reaches
    ``options.amplitude_threshold``; otherwise the constant model. Other fibers (except excluded
    ones) borrow the inverse-covariance weighted mean omega of the bright fibers, which are all
    fitted with the same reference read, when that mean passes the same two tests. A fiber whose
    fit failed falls back to the constant model and is flagged ``FALLBACK_CONSTANT``.

    Parameters
    ----------
    fit : OmegaFit
        Batched fit, ``(n_fibers, ...)``, all with one ``ref_index``.
    constant : FluxFit
        Constant-model fit of the same pixels, ``(n_fibers, n_pix)``.
    n_fit_pixels : ndarray of int, ``(n_fibers,)``
    excluded : ndarray of bool, ``(n_fibers,)``
        FPI fibers: always the constant model.
    options : FitOptions
    flags : ndarray of int, ``(n_fibers,)``, optional
        Initial fiber flags.

    Returns
    -------
    FiberFits
    """
    from scipy.stats import chi2 as chi2_dist

    n_fibers, K = fit.omega.shape
    ref_index = int(fit.ref_index[0])
    flags = (np.zeros(n_fibers, np.int64) if flags is None else flags.copy()) | fit.group_flags
    in_fit = ~(fit.flags & Flag.NOT_IN_OMEGA_FIT).astype(bool)
    with np.errstate(invalid="ignore", divide="ignore"), _quiet():
        chi2_tv = np.where(in_fit, fit.chi2, 0.0).sum(axis=1)
        chi2_c = np.where(in_fit, constant.chi2, 0.0).sum(axis=1)
        dof = np.where(in_fit, fit.n_diff - 1, 0).sum(axis=1)
        delta = chi2_c - chi2_tv
        free = np.sum(np.isfinite(fit.omega), axis=1) - 1
        p_value = chi2_dist.sf(delta, np.maximum(free, 1))
        error = np.sqrt(np.maximum(np.diagonal(fit.omega_cov, axis1=1, axis2=2), 0.0))
        median_error = np.nanmedian(np.where(np.arange(K) == ref_index, np.nan, error), axis=1)
    amplitude = _equivalent_amplitude(_free(fit.omega, ref_index), _free(error, ref_index))
    failed = (fit.group_flags & (Flag.NOT_CONVERGED | Flag.OMEGA_ELEMENT_NO_DATA)).astype(bool)
    failed &= n_fit_pixels >= options.min_fit_pixels
    failed &= ~excluded
    flags[failed] |= Flag.FALLBACK_CONSTANT
    bright = (
        ~excluded
        & ~failed
        & (n_fit_pixels >= options.min_fit_pixels)
        & ~(fit.group_flags & Flag.EMPTY_GROUP).astype(bool)
        & (median_error <= options.max_omega_error)
    )
    significant = (p_value < options.p_value) & (amplitude >= options.amplitude_threshold)

    borrowed, borrowed_cov = _weighted_mean_omega(fit.omega, fit.omega_cov, bright, ref_index)
    _, borrowed_p = _significance(borrowed, borrowed_cov, ref_index)
    borrowed_amp = _equivalent_amplitude(
        _free(borrowed, ref_index),
        np.sqrt(np.maximum(np.diag(_free_cov(borrowed_cov, ref_index)), 0)),
    )
    borrow_significant = bool(
        borrowed_p < options.p_value and borrowed_amp >= options.amplitude_threshold
    )

    faint = ~bright & ~excluded & ~failed
    model = np.full(n_fibers, MODEL_CONSTANT, dtype=np.int64)
    if options.model == "time-variable":
        model[bright] = MODEL_TIME_VARIABLE
        model[faint & bright.any()] = MODEL_BORROWED
    else:
        model[bright & significant] = MODEL_TIME_VARIABLE
        if borrow_significant:
            model[faint] = MODEL_BORROWED
    flags[model == MODEL_BORROWED] |= Flag.BORROWED_OMEGA

    omega_used = np.ones((n_fibers, K))
    tv = model == MODEL_TIME_VARIABLE
    omega_used[tv] = fit.omega[tv] / np.nanmean(fit.omega[tv], axis=1, keepdims=True)
    omega_used[model == MODEL_BORROWED] = borrowed / borrowed.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        chi2_dof_c = chi2_c / dof
        chi2_dof_tv = chi2_tv / dof
    return FiberFits(
        omega_fit=fit.omega,
        omega_cov=fit.omega_cov,
        omega=omega_used,
        model=model,
        delta_chi2=delta,
        p_value=p_value,
        amplitude=amplitude,
        chi2_dof_constant=chi2_dof_c,
        chi2_dof_variable=chi2_dof_tv,
        n_fit_pixels=np.asarray(n_fit_pixels, dtype=np.int64),
        flags=flags,
        ref_index=ref_index,
        bright=bright,
        borrowed_omega=borrowed,
        borrowed_cov=borrowed_cov,
        fit=fit,
        pixel_chi2_constant=np.where(in_fit, constant.chi2, np.nan),
    )


def _free_cov(cov: np.ndarray, ref_index: int) -> np.ndarray:
    return np.delete(np.delete(cov, ref_index, axis=0), ref_index, axis=1)


# --------------------------------------------------------------------------------------------
# Step 4: extraction
# --------------------------------------------------------------------------------------------
def _extract_chip(
    chip: ChipExposure, prepared: PreparedChip, fibers: FiberFits, options: FitOptions
) -> ChipResult:
    """Every pixel of the chip with its fiber's omega, in one extract_fluxes call."""
    n_reads, ny, nx = chip.reads.shape
    n_fibers, K = fibers.omega.shape
    nc = prepared.traces.n_columns
    fiber = np.full((ny, nx), -1, dtype=np.int16)
    fiber[:, :nc] = prepared.pixel_map.fiber
    groups = np.where(fiber >= 0, fiber, n_fibers)
    table = np.vstack([fibers.omega, np.ones((1, K))])

    def extract(reads, read_noise, gain, saturation, groups, mask=None):
        return extract_fluxes(reads, read_noise, table, groups=groups, gain=gain, mask=mask,
                              saturation=saturation)  # fmt: skip

    result = _masked_at_jumps(extract, chip, prepared.jumps, groups)
    constant = None
    if options.keep_constant:
        constant = _masked_at_jumps(_without_groups(fit_constant), chip, prepared.jumps, groups)
    flags = result.flags.copy()
    flags[fiber < 0] |= Flag.BACKGROUND
    if prepared.jumps.size:
        _, row, col = prepared.jumps.T
        flags[row, col] |= Flag.JUMP_DETECTED
    return ChipResult(
        flux=result.flux,
        flux_var=result.flux_var,
        chi2=result.chi2,
        n_diff=result.n_diff.astype(np.int16),
        flags=flags,
        fiber=fiber,
        constant=constant,
        fibers=fibers,
        prepared=prepared,
    )


def _masked_at_jumps(fit: Callable, chip: ChipExposure, jumps: np.ndarray, groups: np.ndarray):
    """``fit`` of every pixel of the chip with the reads after a jump masked.

    The whole chip is fitted with no mask, then the pixels with a jump again with theirs: every
    pixel is fitted on its own, so the result is that of one masked fit, without a cube-sized
    mask or writing into the reads (which may be raw uint16).

    ``fit(reads, read_noise, gain, saturation, groups, mask=None)`` returns a FluxFit.
    """
    ny, nx = chip.reads.shape[1:]
    saturation = np.inf if chip.saturation is None else chip.saturation
    result = fit(chip.reads, chip.read_noise, chip.gain, saturation, groups)
    if not jumps.size:
        return result
    read, row, col = jumps.T
    pixels, index = np.unique(row * nx + col, return_inverse=True)
    rows, cols = np.divmod(pixels, nx)
    mask = np.zeros((chip.reads.shape[0], pixels.size), dtype=bool)
    mask[read, index] = True

    def at_pixels(value):
        return np.broadcast_to(np.asarray(value, dtype=np.float64), (ny, nx))[rows, cols]

    redo = fit(chip.reads[:, rows, cols], at_pixels(chip.read_noise), at_pixels(chip.gain),
               at_pixels(saturation), groups[rows, cols], mask=mask)  # fmt: skip
    for name in ("flux", "flux_var", "chi2", "n_diff", "flags"):
        getattr(result, name)[rows, cols] = getattr(redo, name)
    return result


def _without_groups(fit: Callable) -> Callable:
    """``fit(reads, read_noise, **kwargs)`` in :func:`_masked_at_jumps`'s calling convention."""

    def call(reads, read_noise, gain, saturation, groups, mask=None):
        return fit(reads, read_noise, gain=gain, saturation=saturation, mask=mask)

    return call


# --------------------------------------------------------------------------------------------
# The whole exposure
# --------------------------------------------------------------------------------------------
ChipSource = ChipExposure | Callable[[], ChipExposure]


def _load(source: ChipSource) -> ChipExposure:
    return source() if callable(source) else source


def _check_consistent(chip: ChipExposure, seen: dict) -> None:
    from .errors import InputError

    for key in ("telescope", "mjd"):
        value = getattr(chip, key)
        if value is None:
            continue
        if key in seen and seen[key][0] != value:
            raise InputError(
                chip.source,
                key,
                f"{seen[key][0]!r} like {seen[key][1]} (one exposure per call)",
                repr(value),
            )
        seen.setdefault(key, (value, chip.source))
    if "n_reads" in seen and seen["n_reads"][0] != chip.reads.shape[0]:
        raise InputError(
            chip.source, "reads", f"{seen['n_reads'][0]} reads like {seen['n_reads'][1]}",
            str(chip.reads.shape[0]),
        )  # fmt: skip
    seen.setdefault("n_reads", (chip.reads.shape[0], chip.source))


def fit_exposure(
    chips: Mapping[str, ChipSource],
    traces: Mapping[str, Traces],
    options: FitOptions | None = None,
    *,
    progress: bool = False,
    on_chip: Callable[[str, ChipResult], ChipResult] | None = None,
) -> ExposureResult:
    """Fit omega for every fiber, choose models, and extract every pixel of every chip.

    Parameters
    ----------
    chips : mapping of str to ChipExposure or callable
        By chip name. A zero-argument callable is called when the chip is needed, so that only
        one chip's cube is in memory at a time (with ``joint_chips`` each chip is loaded twice:
        once for the fit pixels, once for extraction).
    traces : mapping of str to Traces
        The same keys as ``chips``.
    options : FitOptions, optional
    progress : bool
        Show a progress bar (tqdm) over the steps.
    on_chip : callable, optional
        ``on_chip(name, chip_result)`` is called as soon as a chip is extracted; what it returns
        is kept in the result in place of ``chip_result`` (:func:`fit_to_product` writes the
        images and keeps the rest).

    Returns
    -------
    ExposureResult
    """
    options = options or FitOptions()
    keep = on_chip or (lambda name, chip_result: chip_result)
    names = list(chips)
    missing = [n for n in names if n not in traces]
    if missing:
        raise ValueError(f"traces: no traces for chips {missing}")
    if options.correct_1f != "none":  # each chip corrected as it is loaded
        chips = {name: _corrected_1f(chips[name], traces[name], options) for name in names}
    steps = (2 * len(names)) if options.joint_chips else len(names)
    bar = _progress(steps, progress)
    seen: dict = {}
    timings: dict = {}
    results, fibers, read_times, timing = {}, {}, None, None
    if options.joint_chips:
        prepared = {}
        for name in names:
            with _timed(timings, "load"):
                chip = _load(chips[name])
            _check_consistent(chip, seen)
            read_times = chip.read_times if read_times is None else read_times
            timing = chip.timing if timing is None else timing
            with _timed(timings, "prepare"):
                prepared[name] = prepare_chip(chip, traces[name], options)
            del chip
            bar.update()
        chips_prepared = list(prepared.values())
        del prepared
        with _timed(timings, "fit_omega"):
            joint = _fit_fibers(chips_prepared, options)
        fibers["joint"] = joint
        prepared = dict(zip(names, chips_prepared, strict=True))
        for name in names:
            with _timed(timings, "load"):
                chip = _load(chips[name])
            with _timed(timings, "extract"):
                extracted = _extract_chip(chip, prepared[name], joint, options)
            del chip
            with _timed(timings, "write"):
                results[name] = keep(name, extracted)
            del extracted
            _return_freed_memory()
            bar.update()
    else:
        for name in names:
            with _timed(timings, "load"):
                chip = _load(chips[name])
            _check_consistent(chip, seen)
            read_times = chip.read_times if read_times is None else read_times
            timing = chip.timing if timing is None else timing
            with _timed(timings, "prepare"):
                prep = prepare_chip(chip, traces[name], options)
            chip_prepared = [prep]
            del prep
            with _timed(timings, "fit_omega"):
                fibers[name] = _fit_fibers(chip_prepared, options)
            (prep,) = chip_prepared
            with _timed(timings, "extract"):
                extracted = _extract_chip(chip, prep, fibers[name], options)
            del chip
            with _timed(timings, "write"):
                results[name] = keep(name, extracted)
            del extracted
            _return_freed_memory()
            bar.update()
    bar.close()
    n_reads = seen["n_reads"][0]
    if read_times is None:
        read_times = np.arange(n_reads, dtype=np.float64)
    return ExposureResult(
        chips=results, fibers=fibers, options=options, read_times=read_times,
        meta={"timings_s": {k: round(v, 3) for k, v in timings.items()}, "timing": timing},
    )  # fmt: skip


def _return_freed_memory() -> None:
    """Give freed heap memory back to the system between chips (glibc's ``malloc_trim``).

    glibc keeps what the kernels freed in its arenas; the next chip's cube would come on top.
    """
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def correct_1f(
    chip: ChipExposure, traces: Traces | None, method: str = "refpix", *, halfwidth: float = 2.5
) -> ChipExposure:
    """Remove correlated (1/f) read noise from a chip's reads (:func:`pyapred.noise.refcorr`).

    The science columns are corrected in place when ``chip.writable`` (as :func:`load_chip`
    returns it), else in a float copy; the read noise is raised by the reference output's own
    white noise, which the correction adds (:func:`pyapred.noise.reference_read_variance`).

    Parameters
    ----------
    chip : ChipExposure
        Raw reads ``(n_reads, ny, 2560)`` of chip rows 0 to ``ny - 1``, reference output included.
    traces : Traces or None
        For ``"rowmedian"`` (unused otherwise): pixels further than ``halfwidth`` sigmas from
        every trace (the background of :func:`pyapred.traces.pixel_fiber_map`) give each row's
        median.
    method : {"refpix", "rowmedian", "none"}
    halfwidth : float

    Returns
    -------
    ChipExposure
    """
    from .noise.hxrg import CHIP_ROWS, OUTPUT_COLUMNS, REFERENCE_BORDER
    from .noise.refcorr import SCIENCE, refcorr_inplace

    if method == "none":
        return chip
    reads = chip.reads
    _, ny, nx = reads.shape
    if nx != SCIENCE + OUTPUT_COLUMNS or ny > CHIP_ROWS:
        from .errors import InputError

        raise InputError(
            chip.source, "reads", f"raw reads (n_reads, ny <= 2048, 2560) with the reference "
            f"output, for 1/f correction {method!r}", str(reads.shape),
        )  # fmt: skip
    if not (chip.writable and reads.dtype.kind == "f"):
        reads = np.array(reads, dtype=np.result_type(reads.dtype, np.float32))
    background = None
    if method == "rowmedian":
        nc = min(traces.n_columns, SCIENCE)
        background = np.zeros((ny, SCIENCE), dtype=bool)
        background[:, :nc] = pixel_fiber_map(traces, ny, halfwidth=halfwidth).fiber[:, :nc] < 0
        background[:, :REFERENCE_BORDER] = background[:, SCIENCE - REFERENCE_BORDER :] = False
        background[:REFERENCE_BORDER] = background[CHIP_ROWS - REFERENCE_BORDER :] = False
    added = refcorr_inplace(reads, method=method, saturation=chip.saturation, background=background)
    read_noise = np.sqrt(np.asarray(chip.read_noise, dtype=np.float64) ** 2 + added)
    return dataclasses.replace(chip, reads=reads, read_noise=read_noise, writable=True)


def _corrected_1f(source: ChipSource, traces: Traces, options: FitOptions) -> Callable:
    """A loader of the corrected chip. A chip corrected in the caller's own array (in memory,
    ``writable``) is kept, so that ``joint_chips``' second load does not correct it twice."""
    kept = []

    def load() -> ChipExposure:
        if kept:
            return kept[0]
        chip = correct_1f(
            _load(source), traces, options.correct_1f, halfwidth=options.map_halfwidth
        )
        if chip.reads is getattr(source, "reads", None):
            kept.append(chip)
        return chip

    return load


def _after_fit(prepared: PreparedChip, options: FitOptions) -> PreparedChip:
    """Drop the fit pixels' reads once fitted, unless asked to keep them."""
    if options.keep_fit_reads:
        return prepared
    return dataclasses.replace(prepared, fit_reads=None)


@contextlib.contextmanager
def _timed(totals: dict, name: str):
    """Add the wall-clock seconds of the block to ``totals[name]``."""
    start = time.perf_counter()
    yield
    totals[name] = totals.get(name, 0.0) + time.perf_counter() - start


def _progress(total: int, enabled: bool):
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc="pyapred fit", unit="step")
        except ImportError:  # pragma: no cover - tqdm is a dependency
            pass

    class _Silent:
        def update(self, n=1):
            pass

        def close(self):
            pass

    return _Silent()


# --------------------------------------------------------------------------------------------
# Files: raw .apz or ar3Dcal in, product out
# --------------------------------------------------------------------------------------------
#: Default saturation level, DN (apogee_drp's ``satval``), when a file has no SATURATE card.
DEFAULT_SATURATION_DN = 55000.0


def _header_number(path, header, keyword: str, given, option: str, default=None) -> float:
    """``given`` (from ``option``), else the header card ``keyword`` or ``default``; > 0."""
    from .errors import InputError

    field_name = option if given is not None else f"header keyword {keyword}"
    value = given if given is not None else header.get(keyword, default)
    if value is None:
        raise InputError(path, field_name, f"a number (or pass {option})", "nothing")
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (np.isfinite(number) and number > 0):
        raise InputError(path, field_name, "a finite number > 0", repr(value))
    return number


def load_chip(
    path,
    *,
    gain: float | None = None,
    read_noise: float | None = None,
    saturation: float | None = None,
) -> ChipExposure:
    """Read one chip from a raw ``.apz`` or an ApogeeReduction.jl ``ar3Dcal`` file.

    Raw files: reads as uint16 DN, the detector's type (float32 for a file with reads outside
    [0, 65535]); ``gain`` (e-/DN), ``read_noise`` (single-read DN) and
    ``saturation`` (DN) from the arguments, else from the ``GAIN``, ``RDNOISE`` and ``SATURATE``
    header cards (written by ``pyapred simulate``); saturation defaults to
    :data:`DEFAULT_SATURATION_DN`. ar3Dcal files: ApogeeReduction.jl's zero-pointed reads with
    its ``gainMat`` and ``sqrt(readVarMat)`` maps (no saturation masking unless given).

    Parameters
    ----------
    path : str or os.PathLike
    gain, read_noise, saturation : float, optional

    Returns
    -------
    ChipExposure
    """
    from .errors import ReadRangeError
    from .io import parse_ar_name, read_apz, read_ar3dcal

    path = Path(path)
    if path.suffix == ".h5":
        cal = read_ar3dcal(path)
        name = parse_ar_name(path)
        raw = cal.exposure
        return ChipExposure(
            name=name.chip,
            reads=raw.reads,
            read_noise=np.sqrt(cal.read_var) if read_noise is None else read_noise,
            gain=cal.gain if gain is None else gain,
            saturation=saturation,
            read_times=(raw.read_times - raw.read_times[0]).sec,
            telescope=name.telescope,
            mjd=name.mjd,
            source=str(path),
            writable=True,
            timing=_timing(raw.read_times, getattr(raw, "header", None)),
        )
    try:  # the raw type: half the memory of float32, and exact
        raw = read_apz(path, dtype=np.uint16)
    except ReadRangeError:  # a read outside [0, 65535] (not from the detector's 16-bit ADC)
        raw = read_apz(path, dtype=np.float32)
    header = raw.header
    return ChipExposure(
        name=raw.name.chip_color,
        reads=raw.reads,
        read_noise=_header_number(path, header, "RDNOISE", read_noise, "--read-noise"),
        gain=_header_number(path, header, "GAIN", gain, "--gain"),
        saturation=_header_number(
            path, header, "SATURATE", saturation, "--saturation", DEFAULT_SATURATION_DN
        ),
        read_times=(raw.read_times - raw.read_times[0]).sec,
        telescope=raw.telescope,
        mjd=raw.mjd,
        source=str(path),
        writable=True,
        timing=_timing(raw.read_times, header),
    )


#: Exposure header cards a product keeps for ``pyapred guider`` (with the reads' TAI times).
TIMING_CARDS = ("DATE-OBS", "TIMESYS", "INTOFF", "INTDELAY", "NREAD", "CONFIGID")


def _timing(read_times, header) -> dict:
    """``ChipExposure.timing`` from a file's read times (astropy Time) and header."""
    timing = {"read_times_tai_mjd": np.asarray(read_times.tai.mjd, dtype=np.float64)}
    for card in TIMING_CARDS:
        if header is not None and card in header:
            value = header[card]
            timing[card] = value.item() if isinstance(value, np.generic) else value
    return timing


def _identify(path) -> tuple[str, str, int, int]:
    """``(chip, telescope, mjd, exposure)`` from a raw or ar3Dcal file name."""
    from .errors import InputError
    from .io import parse_apz_name, parse_ar_name

    ar = parse_ar_name(path)
    if ar is not None:
        if ar.stage != "ar3Dcal":
            raise InputError(path, "file name", "a raw .apz or an ar3Dcal_*.h5 file", ar.stage)
        return ar.chip, ar.telescope, ar.mjd, ar.exposure
    name = parse_apz_name(path)
    return name.chip_color, name.telescope, name.mjd, name.exposure


def match_inputs(inputs, trace_paths) -> dict:
    """Pair input files with trace files by chip, checking that they are one exposure.

    Parameters
    ----------
    inputs : sequence of paths
        Raw ``.apz`` or ``ar3Dcal`` files, one per chip, of one exposure.
    trace_paths : sequence of paths
        One trace file per chip, named ``*Trace*_{tele}_{mjd}[_{EXP4}]_{chip}.h5``; with a
        single input, a single trace file whose name does not give a chip is accepted too.

    Returns
    -------
    dict of str to (input path, trace path)
        By chip name, in R, G, B order.

    Raises
    ------
    InputError
        Exposures of different telescopes, nights or numbers, a chip given twice, or a chip
        without a trace file.
    """
    from .errors import InputError
    from .traces import parse_trace_file_name

    chips: dict = {}
    first = None
    for path in inputs:
        chip, telescope, mjd, exposure = _identify(path)
        key = (telescope, mjd, exposure)
        if first is None:
            first = (key, path)
        elif key != first[0]:
            raise InputError(
                path,
                "file name",
                f"the exposure of {first[1]} (telescope, MJD, number {first[0]}); "
                "one exposure per call",
                str(key),
            )
        if chip in chips:
            raise InputError(path, "chip", f"one file per chip; {chip} is also {chips[chip]}")
        chips[chip] = path
    traces: dict = {}
    for path in trace_paths:
        parsed = parse_trace_file_name(path)
        if parsed is not None:
            traces[parsed[2]] = path
        elif len(trace_paths) == 1 and len(chips) == 1:
            traces[next(iter(chips))] = path  # one of each: the name need not say the chip
        else:
            raise InputError(path, "file name", "traceMain_{tele}_{mjd}_{R|G|B}.h5")
    out = {}
    for chip in sorted(chips, key="RGB".index):
        if chip not in traces:
            raise InputError(chips[chip], "traces", f"a trace file for chip {chip}", "none given")
        out[chip] = (chips[chip], traces[chip])
    return out


def fit_files(
    inputs,
    trace_paths,
    options: FitOptions | None = None,
    *,
    gain: float | None = None,
    read_noise: float | None = None,
    saturation: float | None = None,
    progress: bool = False,
    on_chip: Callable[[str, ChipResult], ChipResult] | None = None,
) -> ExposureResult:
    """:func:`fit_exposure` on files: one raw ``.apz`` or ``ar3Dcal`` file and trace file per chip.

    Chips are read one at a time (twice with ``joint_chips``), so at most one cube is in memory.
    See :func:`match_inputs` and :func:`load_chip` for the arguments, :func:`fit_exposure` for
    ``on_chip``.
    """
    from .traces import read_trace_file

    pairs = match_inputs(list(inputs), list(trace_paths))
    traces = {chip: read_trace_file(tr) for chip, (_, tr) in pairs.items()}

    def loader(name, path, trace_path):
        def load():
            chip = load_chip(path, gain=gain, read_noise=read_noise, saturation=saturation)
            # Checked here too, so that the error names the trace file.
            traces[name].check_geometry(*chip.reads.shape[1:], source=str(trace_path))
            return chip

        return load

    chips = {chip: loader(chip, path, tr) for chip, (path, tr) in pairs.items()}
    result = fit_exposure(chips, traces, options, progress=progress, on_chip=on_chip)
    result.meta["inputs"] = [str(path) for path, _ in pairs.values()]
    result.meta["traces"] = [str(tr) for _, tr in pairs.values()]
    return result


def write_result(result: ExposureResult, path, *, overwrite: bool = False, backend="numpy"):
    """Write an :class:`ExposureResult` as a pyapred product (:func:`pyapred.io.write_product`).

    Per chip the flux, inverse variance, chi2 and flag images; per fiber group (chip name or
    ``"joint"``) omega as fitted (``ref_index`` normalisation; ones with zero covariance for fibers
    not fitted, the bright-fiber mean for borrowed fibers), its covariance, the model and the
    flags. The decision statistics go to the metadata as ``{group}_delta_chi2``,
    ``{group}_p_value``, ``{group}_amplitude`` and ``{group}_n_fit_pixels`` arrays; the inputs
    and trace files are hashed (``input_files``, ``input_sha256``) and the settings stored as
    ``fit_options`` (:func:`fit_options_json`).

    Returns
    -------
    pathlib.Path
    """
    from .io import ChipImages, write_product

    chips = {name: ChipImages.from_fit(chip) for name, chip in result.chips.items()}
    fibers, meta, inputs = _product_parts(result)
    return write_product(
        path, chips=chips, fibers=fibers, inputs=inputs,
        backend=backend, metadata=meta, overwrite=overwrite,
    )  # fmt: skip


def fit_to_product(
    inputs, trace_paths, path, options: FitOptions | None = None, *, overwrite: bool = False,
    backend: str = "numpy", **fit_kwargs,
) -> tuple[ExposureResult, Path]:  # fmt: skip
    """:func:`fit_files` then :func:`write_result`, writing each chip's images as soon as the chip
    is extracted (HDF5 products; ``.fits`` falls back to writing at the end).

    Only one chip's images are then in memory at a time: in the returned result each chip's
    ``flux``, ``flux_var``, ``chi2``, ``n_diff`` and ``flags``, and its prepared ``pixel_map``,
    ``saturated`` and ``rate`` images, are None (read the product back with
    :func:`pyapred.io.read_product`). The product appears only when the whole exposure is done.

    Parameters
    ----------
    inputs, trace_paths, options
        As in :func:`fit_files`.
    path : str or os.PathLike
        The product.
    overwrite : bool, optional
    backend : str, optional
        Recorded in the product's metadata.
    **fit_kwargs
        More :func:`fit_files` arguments (``gain``, ``read_noise``, ``saturation``, ``progress``).

    Returns
    -------
    result : ExposureResult
    path : pathlib.Path
    """
    from .io import ChipImages, ProductWriter
    from .io.product import is_fits_path

    path = Path(path)
    if is_fits_path(path):
        result = fit_files(inputs, trace_paths, options, **fit_kwargs)
        return result, write_result(result, path, overwrite=overwrite, backend=backend)
    with ProductWriter(path, overwrite=overwrite) as writer:

        def write_chip(name: str, chip: ChipResult) -> ChipResult:
            writer.add_chip(name, ChipImages.from_fit(chip))
            images = dict.fromkeys(("flux", "flux_var", "chi2", "n_diff", "flags"))
            maps = dict.fromkeys(("pixel_map", "saturated", "rate"))
            prepared = dataclasses.replace(chip.prepared, **maps)
            return dataclasses.replace(chip, prepared=prepared, **images)

        result = fit_files(inputs, trace_paths, options, on_chip=write_chip, **fit_kwargs)
        fibers, meta, all_inputs = _product_parts(result)
        writer.finish(fibers=fibers, inputs=all_inputs, backend=backend, metadata=meta)
    return result, path


def _product_parts(result: ExposureResult) -> tuple[dict, dict, list]:
    """The fiber results, the metadata and the hashed inputs of a product (:func:`write_result`)."""
    from .io import FiberResults

    fibers, meta = {}, {}
    for key, fits in result.fibers.items():
        n, K = fits.omega.shape
        omega = np.where(np.isfinite(fits.omega_fit), fits.omega_fit, 1.0)
        cov = np.where(np.isfinite(fits.omega_fit)[:, :, None], fits.omega_cov, 0.0)
        borrowed = fits.model == MODEL_BORROWED
        omega[borrowed] = fits.borrowed_omega
        cov[borrowed] = fits.borrowed_cov
        fibers[key] = FiberResults(
            fiber_index=np.arange(n),
            omega=omega,
            omega_cov=cov,
            ref_index=np.full(n, fits.ref_index),
            model=tuple(MODEL_NAMES[m] for m in fits.model),
            flags=fits.flags,
        )
        for stat in ("delta_chi2", "p_value", "amplitude", "n_fit_pixels"):
            meta[f"{key}_{stat}"] = np.asarray(getattr(fits, stat))
    meta["model_option"] = result.options.model
    meta["joint_chips"] = bool(result.options.joint_chips)
    meta["fit_options"] = fit_options_json(result.options)
    meta["flux_normalisation"] = "exposure mean (omega scaled to mean 1 for extraction)"
    meta.update(result.meta.get("timing") or {})
    inputs = [*result.meta.get("inputs", ()), *result.meta.get("traces", ())]
    return fibers, meta, inputs


def fit_options_json(options: FitOptions) -> str:
    """The settings of a fit as canonical JSON (the product's ``fit_options``; resume compares it).

    ``keep_constant`` and ``keep_fit_reads`` are left out: they change what is kept in memory,
    not the product.
    """
    import json

    settings = dataclasses.asdict(options)
    for key in ("keep_constant", "keep_fit_reads"):
        settings.pop(key)
    return json.dumps(settings, sort_keys=True)


# --------------------------------------------------------------------------------------------
# Comparison with a simulation's truth
# --------------------------------------------------------------------------------------------
def truth_metrics(result: ExposureResult, omega, flux: Mapping[str, np.ndarray], *, min_flux=None):
    """How well a fit recovered a simulation: omega z-scores and flux biases in sigma.

    Parameters
    ----------
    result : ExposureResult
    omega : ndarray, ``(n_fibers, K)``
        True omega (any normalisation per fiber).
    flux : mapping of str to ndarray ``(ny, nx)``
        True exposure-averaged flux per chip, in the units of the fit (DN per read).
    min_flux : float or mapping of str to float, optional
        Pixels at least this bright (units of ``flux``; per chip if a mapping) are "bright";
        default the 90th percentile of the traced pixels.

    Returns
    -------
    dict
        ``omega[group]``: ``z_std``, ``z_median``, ``n_fibers`` over bright fibers' free elements;
        ``borrowed[group]``: the same for the borrowed omega against borrowed fibers' truth, plus
        ``chi2_dof``, its Mahalanobis distance to that truth per degree of freedom (about 1 when
        its covariance is right; the z-scores of its elements are positively correlated, so
        their std is below 1 even then);
        ``flux[chip]``: ``variable_bias`` and ``constant_bias`` (median z of bright pixels),
        ``variable_z_std``, ``n_pixels``, and ``borrowed_bias`` over borrowed fibers' pixels.
    """
    omega = np.asarray(omega, dtype=np.float64)
    out: dict = {"omega": {}, "borrowed": {}, "flux": {}}
    for key, fits in result.fibers.items():
        if fits.fit is None:
            continue
        ref = fits.ref_index
        truth = omega / omega[:, ref : ref + 1]
        error = fits.omega_error()
        free = np.arange(truth.shape[1]) != ref
        with np.errstate(invalid="ignore", divide="ignore"):
            z = ((fits.omega_fit - truth) / error)[fits.bright][:, free]
        z = z[np.isfinite(z)]
        out["omega"][key] = {
            "z_std": float(np.std(z)) if z.size else None,
            "z_median": float(np.median(z)) if z.size else None,
            "n_fibers": int(fits.bright.sum()),
        }
        borrowed = fits.model == MODEL_BORROWED
        if borrowed.any():
            b_err = np.sqrt(np.maximum(np.diag(fits.borrowed_cov), 0.0))[free]
            diff = fits.borrowed_omega[free] - truth[borrowed][:, free]
            bz = diff / b_err
            # The elements share the bright fibers' errors (positively correlated), so their z
            # scatter is below 1 even when the covariance is right; chi2/dof tests the whole of it.
            whitened = np.linalg.solve(_free_cov(fits.borrowed_cov, ref), diff.T).T
            out["borrowed"][key] = {
                "chi2_dof": float(np.mean(np.sum(diff * whitened, axis=1)) / diff.shape[1]),
                "z_std": float(np.std(bz)),
                "z_median": float(np.median(bz)),
                "n_fibers": int(borrowed.sum()),
            }
    bad = int(Flag.SATURATED | Flag.JUMP_DETECTED | Flag.TOO_FEW_DIFFS | Flag.NONFINITE_READ)
    for name, chip in result.chips.items():
        if name not in flux:
            continue
        true = np.asarray(flux[name], dtype=np.float64)
        traced = (chip.fiber >= 0) & ((chip.flags & bad) == 0)
        threshold = min_flux.get(name) if isinstance(min_flux, Mapping) else min_flux
        if threshold is None:
            threshold = np.percentile(true[traced], 90)
        bright = traced & (true >= threshold)
        fiber_model = np.where(chip.fiber >= 0, chip.fibers.model[np.maximum(chip.fiber, 0)], -1)
        entry = {"n_pixels": int(bright.sum()), "min_flux": float(threshold)}
        with np.errstate(invalid="ignore", divide="ignore"):
            z = (chip.flux - true) / np.sqrt(chip.flux_var)
            entry["variable_bias"] = float(np.median(z[bright]))
            entry["variable_z_std"] = float(np.std(z[bright]))
            on_borrowed = traced & (fiber_model == MODEL_BORROWED) & (true > 0)
            if on_borrowed.any():
                entry["borrowed_bias"] = float(np.median(z[on_borrowed]))
            if chip.constant is not None:
                zc = (chip.constant.flux - true) / np.sqrt(chip.constant.flux_var)
                entry["constant_bias"] = float(np.median(zc[bright]))
        out["flux"][name] = entry
    return out
