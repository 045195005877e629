"""Public numerical API: optimal up-the-ramp fluxes, constant and time-variable illumination.

Arrays in, arrays out, no I/O. Conventions shared by every function:

- ``reads`` has shape ``(n_reads, *pixel_shape)``, read index first (C order, as ``(n_reads, ny,
  nx)`` for a chip). Any real dtype; big-endian data (FITS) is converted, never modified in place.
- ``read_noise`` is the single-read sigma (not CDS), in the units of ``reads``, broadcastable to
  ``pixel_shape``.
- ``gain`` is e-/DN, broadcastable to ``pixel_shape``. With ``gain=1`` the reads are electrons.
  Otherwise they are DN, and fluxes come back in DN per read interval (variances in DN^2), as in
  ApogeeReduction.jl. The statistics themselves are always computed in electrons.
- ``mask`` is optional, bool, the shape of ``reads``; True marks a bad read. A bad read removes
  the two differences that use it.
- ``saturation`` is optional, in the units of ``reads``; the first read at or above it and every
  later read are masked.
- ``read_times`` is optional, ``(n_reads,)``, strictly increasing. The default is uniform spacing
  in units of one read interval; fluxes are per unit of ``read_times``.
- Flags are bits of :class:`pyapred.solver.Flag`.
- ``backend`` picks the implementation: ``"numpy"`` (Numba kernels, the default), ``"julia"``
  (the APRampFit package through juliacall; :class:`pyapred.JuliaBackendError` where Julia is
  missing) or ``"auto"`` (Julia where it loads, else NumPy, logged once). Both run the same
  algorithm and reproduce the same conformance vectors (``docs/julia.md``).

The algorithms follow ``docs/model.md``, which summarises ``../shared/docs/math-spec.md``.
"""

from __future__ import annotations

import enum
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

from ._flags import Flag

__all__ = [
    "FluxFit",
    "JumpResult",
    "OmegaFit",
    "OmegaSamples",
    "StopReason",
    "extract_fluxes",
    "find_jumps",
    "fit_constant",
    "fit_equal_weight",
    "fit_omega",
    "initial_guess",
    "sample_omega",
]

CLAMP_FLOOR = 1e-10


class StopReason(enum.IntEnum):
    """Why the joint fit of a group stopped (``OmegaFit.stop_reason``; ``docs/model.md``)."""

    #: Every step of the last update below the tolerance.
    CONVERGED = 0
    #: ``max_iter`` iterations without converging (group flag ``NOT_CONVERGED``).
    MAX_ITER = 1
    #: The system was singular or not finite (``NOT_CONVERGED``); the last finite iterate is kept.
    BREAKDOWN = 2
    #: No step along the search direction decreased the objective (``NOT_CONVERGED``).
    LINE_SEARCH = 3
    #: No pixel to fit (``EMPTY_GROUP``).
    EMPTY = 4


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FluxFit:
    """Per-pixel fluxes from one ramp model.

    Attributes
    ----------
    flux : ndarray, float64, ``pixel_shape``
        Flux per read interval (per unit of ``read_times``): e- when ``gain=1``, else DN.
        NaN only where ``flags`` has ``TOO_FEW_DIFFS``.
    flux_var : ndarray, float64, ``pixel_shape``
        Variance of ``flux`` (e-^2 or DN^2 per read interval^2).
    chi2 : ndarray, float64, ``pixel_shape``
        Data-model chi-squared of the read differences (eq 24); ``n_diff - 1`` degrees of freedom.
    n_diff : ndarray, int64, ``pixel_shape``
        Number of read differences used.
    flags : ndarray, int64, ``pixel_shape``
        Bits of :class:`~pyapred.solver.Flag`.
    """

    flux: np.ndarray
    flux_var: np.ndarray
    chi2: np.ndarray
    n_diff: np.ndarray
    flags: np.ndarray

    def __repr__(self) -> str:
        """Shapes and key figures (a line, never whole arrays)."""
        from .reprs import count_flags, finite_median, fmt, shape_of

        flux = np.asarray(self.flux, dtype=np.float64)
        dof = np.asarray(self.n_diff) - 1
        with np.errstate(invalid="ignore", divide="ignore"):
            chi2_dof = np.where(dof > 0, self.chi2 / np.where(dof > 0, dof, 1), np.nan)
        finite = 100.0 * np.count_nonzero(np.isfinite(flux)) / max(flux.size, 1)
        return (
            f"FluxFit: pixel_shape {shape_of(flux)}; flux median {fmt(finite_median(flux))} "
            f"per read interval ({finite:.1f} % finite); median chi2/dof "
            f"{fmt(finite_median(chi2_dof))}; {count_flags(self.flags)}"
        )


@dataclass(frozen=True)
class OmegaFit:
    """Joint time-variable fit of omega and the fluxes of one or many pixel groups.

    Shapes are given for ``n_groups`` groups of ``n_pix`` pixels; for a single group
    (``reads`` of shape ``(n_reads, n_pix)``) the leading ``n_groups`` axis is absent.

    Attributes
    ----------
    omega : ndarray, float64, ``(n_groups, K)``
        Transparency factor of each read difference, ``omega[ref_index] == 1``. Elements with no
        usable data are NaN (group flag ``OMEGA_ELEMENT_NO_DATA``).
    omega_cov : ndarray, float64, ``(n_groups, K, K)``
        Marginal covariance of omega (fluxes marginalised). The row and column of the fixed
        element, and of elements with no data, are 0.
    ref_index : ndarray, int64, ``(n_groups,)``
        Index of the element fixed to 1.
    flux : ndarray, float64, ``(n_groups, n_pix)``
        Joint fluxes, per read interval, at ``omega``'s normalisation. NaN for pixels left out.
    flux_var : ndarray, float64, ``(n_groups, n_pix)``
        Marginal flux variances (omega marginalised).
    chi2 : ndarray, float64, ``(n_groups, n_pix)``
        Eq-24 chi2 of each fitted pixel at the solution.
    n_diff : ndarray, int64, ``(n_groups, n_pix)``
        Differences used per pixel.
    inflation : ndarray, float64, ``(n_groups,)``
        Error-inflation factor ``sqrt(sum chi2 / sum (n_diff - 1))`` over the fitted pixels.
        With ``segments``, the denominator also loses the offsets' degrees of freedom (per
        segment, its differences with data less one) and omega's free elements; NaN where none
        are left.
    n_iter : ndarray, int64, ``(n_groups,)``
        Gauss-Newton iterations performed.
    converged : ndarray, bool, ``(n_groups,)``
    flags : ndarray, int64, ``(n_groups, n_pix)``
        Pixel flags.
    group_flags : ndarray, int64, ``(n_groups,)``
        Group flags (``NOT_CONVERGED``, ``OMEGA_ELEMENT_NO_DATA``, ``EMPTY_GROUP``).
    offsets : ndarray, float64, ``(n_groups, n_segments, K)``, or None
        With ``segments``: the fitted additive offset of each segment and read difference (units
        of ``reads``), summing to 0 over the differences of a segment; NaN where a segment has
        no data. None otherwise.
    stop_reason : ndarray, int64, ``(n_groups,)``
        Convergence report: why the iteration stopped, a :class:`StopReason` code.
    step_size : ndarray, float64, ``(n_groups,)``
        Convergence report: the size of the last update, as the convergence test measures it
        (below ``rtol`` when converged); NaN for an empty group.
    damping : ndarray, float64, ``(n_groups,)``
        Convergence report: the line-search factor of the last update (1 for a full step, 0
        where no step decreased the objective; always 1 in ``mode="reference"``); NaN for an
        empty group.
    jump_mask : ndarray of bool, ``(n_groups, n_pix, K)``, or None
        With ``jump_search``: the read differences the jump search masked (True), so that a
        later fit of the same pixels (:func:`fit_omega_chromatic`) uses the same data. None
        otherwise.
    """

    omega: np.ndarray
    omega_cov: np.ndarray
    ref_index: np.ndarray
    flux: np.ndarray
    flux_var: np.ndarray
    chi2: np.ndarray
    n_diff: np.ndarray
    inflation: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray
    flags: np.ndarray
    group_flags: np.ndarray
    offsets: np.ndarray | None = None
    stop_reason: np.ndarray | None = None
    step_size: np.ndarray | None = None
    damping: np.ndarray | None = None
    jump_mask: np.ndarray | None = None

    def normalized(self) -> tuple[np.ndarray, np.ndarray]:
        """Omega scaled to mean 1 per group, with its covariance propagated to that scale.

        ``omega`` is fitted with element ``ref_index`` fixed to 1, so fluxes extracted with it
        (:func:`extract_fluxes`) are at the transparency of that read difference (by default
        the most transparent one). Scaled to mean 1, omega gives the exposure-averaged fluxes
        instead: the normalisation of :func:`fit_constant`, of ``pyapred fit`` (whose stages
        extract with omega scaled this way) and of ApogeeReduction.jl's ``dimage``. The joint
        fluxes ``flux`` are exposure-averaged when multiplied by ``np.nanmean(omega, axis=-1)``
        (per group).

        Returns
        -------
        omega : ndarray, float64, ``(K,)`` or ``(n_groups, K)``
            ``omega / mean(omega)`` over each group's finite elements (dimensionless; NaN
            elements stay NaN, a group with none stays all NaN).
        omega_cov : ndarray, float64, ``(K, K)`` or ``(n_groups, K, K)``
            ``J omega_cov J^T``, the first-order propagation of the scaling, with
            ``J = (I - omega_n 1^T / n) / mean(omega)`` over the ``n`` finite elements. Its
            rows sum to 0 (the mean is fixed); rows and columns of NaN elements are 0.
        """
        omega = np.asarray(self.omega, dtype=np.float64)
        K = omega.shape[-1]
        finite = np.isfinite(omega)
        n = finite.sum(axis=-1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(finite, omega, 0.0).sum(axis=-1, keepdims=True) / n
            scaled = omega / mean
            use = finite.astype(np.float64)[..., None, :]
            jac = np.eye(K) * use - np.where(finite, scaled, 0.0)[..., :, None] * use / n[..., None]
            jac = np.where(finite[..., :, None], jac / mean[..., None], 0.0)
            cov = jac @ np.asarray(self.omega_cov, dtype=np.float64) @ np.swapaxes(jac, -1, -2)
        return scaled, np.where(np.isfinite(cov), cov, 0.0)

    def _summary(self) -> list[tuple[str, str]]:
        """(name, value) pairs for ``__repr__`` and ``_repr_html_``."""
        from .reprs import finite_median, fmt

        omega = np.atleast_2d(self.omega)
        G, K = omega.shape
        P = np.shape(self.flux)[-1]
        ref = np.unique(np.atleast_1d(self.ref_index))
        has_data = ~(np.atleast_1d(self.group_flags) & Flag.EMPTY_GROUP).astype(bool)
        converged = np.atleast_1d(self.converged) & has_data
        variance = np.diagonal(np.reshape(self.omega_cov, (G, K, K)), axis1=1, axis2=2)
        error = np.sqrt(np.maximum(variance, 0.0))
        error = np.where(np.arange(K) == np.atleast_1d(self.ref_index)[:, None], np.nan, error)
        # An empty group's covariance is zeros, and so is an element's without data: no error.
        error = np.where(has_data[:, None] & np.isfinite(omega), error, np.nan)
        bits = [
            f"{flag.name} {n}"
            for flag in (Flag.NOT_CONVERGED, Flag.OMEGA_ELEMENT_NO_DATA, Flag.EMPTY_GROUP)
            if (n := int(np.count_nonzero(np.atleast_1d(self.group_flags) & flag)))
        ]
        fitted = ~(np.asarray(self.flags) & Flag.NOT_IN_OMEGA_FIT).astype(bool)
        iters = np.atleast_1d(self.n_iter)[has_data]
        values = omega[np.isfinite(omega)]
        span = f"{fmt(values.min())}..{fmt(values.max())}" if values.size else "-"
        return [
            ("groups x pixels", f"{G} x {P}"),
            ("read differences K", str(K)),
            ("ref_index", str(ref[0]) if ref.size == 1 else f"{ref.min()}..{ref.max()}"),
            ("converged", f"{int(converged.sum())} of {int(has_data.sum())} groups with data"),
            ("median iterations", fmt(np.median(iters) if iters.size else None, "g")),
            ("group flags", ", ".join(bits) or "none"),
            ("pixels fitted", f"{int(np.count_nonzero(fitted))} of {fitted.size}"),
            ("omega (reference = 1)", f"median {fmt(finite_median(values))}, range {span}"),
            ("median omega error", fmt(finite_median(error))),
            ("median inflation", fmt(finite_median(self.inflation))),
        ]

    def __repr__(self) -> str:
        """Shapes, convergence and key figures (a few lines, never whole arrays)."""
        return "OmegaFit: " + "; ".join(f"{name} {value}" for name, value in self._summary())

    def _repr_html_(self) -> str:
        from .reprs import html_table

        return html_table(["OmegaFit", ""], [list(item) for item in self._summary()])


@dataclass(frozen=True)
class OmegaSamples:
    """Gibbs samples of omega and the fluxes of one pixel group.

    Attributes
    ----------
    omega_samples : ndarray, ``(n_samples, K)``
        Raw draws (before the positivity clamp), burn-in removed.
    flux_samples : ndarray, ``(n_samples, n_pix)``
    omega_mean, omega_cov : ndarray, ``(K,)`` and ``(K, K)``
        Sample mean and covariance (fixed element: mean 1, covariance row and column 0).
    flux : FluxFit
        Eq-15 fluxes extracted with ``omega_mean``.
    ref_index : int
    group_flags : int
        :class:`Flag` bits of the group, those of the :func:`fit_omega` start: an omega element
        with no usable difference (``OMEGA_ELEMENT_NO_DATA``) is NaN in ``omega_samples`` and
        ``omega_mean``.
    """

    omega_samples: np.ndarray
    flux_samples: np.ndarray
    omega_mean: np.ndarray
    omega_cov: np.ndarray
    flux: FluxFit
    ref_index: int
    group_flags: int = 0

    def __repr__(self) -> str:
        """Shapes and key figures (a few lines, never whole arrays)."""
        from .reprs import fmt, quiet_nanmedian

        n_samples, K = np.shape(self.omega_samples)
        error = np.sqrt(np.maximum(np.diag(self.omega_cov), 0.0))
        error[self.ref_index] = np.nan
        return (
            f"OmegaSamples: {n_samples} samples of K = {K} omega elements and "
            f"{np.shape(self.flux_samples)[-1]} pixel fluxes; ref_index {self.ref_index}; "
            f"omega_mean range {fmt(np.nanmin(self.omega_mean))}.."
            f"{fmt(np.nanmax(self.omega_mean))}, median posterior sigma "
            f"{fmt(quiet_nanmedian(error))}\n  flux: {self.flux!r}"
        )


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------
#: The magnitudes the arithmetic takes: gains, read noises and read intervals within it, and
#: reads a float32 can hold, keep every square and quotient of the fits finite (no detector comes
#: near either end); outside, variances overflow or underflow to inf or 0 and fluxes become NaN or
#: inf without a flag.
SCALE_RANGE = (1e-30, 1e30)
MAX_READ = float(np.finfo(np.float32).max)


#: The largest count an option takes: the kernels hold counts in int64.
MAX_COUNT = 2**62
#: The largest jump threshold (sigma): its square and its chi2 tail stay finite in float64.
_MAX_THRESHOLD = 1e6


def _count(value, name: str, minimum: int) -> int:
    """An integer option (a NumPy integer or a whole float too), ``minimum`` to
    :data:`MAX_COUNT`; else a ValueError naming it (NaN, 1e20, "3", an array)."""
    whole = isinstance(value, (int, np.integer)) or (
        isinstance(value, (float, np.floating)) and float(value).is_integer()
    )
    if isinstance(value, (bool, np.bool_)) or not (whole and minimum <= value <= MAX_COUNT):
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _positive(value, name: str) -> float:
    """A finite number > 0 (``rtol``), else a ValueError naming it."""
    number = value if isinstance(value, (int, float, np.integer, np.floating)) else None
    if isinstance(value, (bool, np.bool_)) or number is None or not 0 < number < np.inf:
        raise ValueError(f"{name}: expected a finite value > 0, got {value!r}")
    return float(number)


def _flag(value, name: str) -> bool:
    """A True/False option: a bool (NumPy's too) or 0 or 1; else a ValueError naming it."""
    if isinstance(value, (bool, np.bool_)) or (
        isinstance(value, (int, np.integer)) and value in (0, 1)
    ):
        return bool(value)
    raise ValueError(f"{name}: expected True or False, got {value!r}")


def _real_array(value, name: str) -> np.ndarray:
    """``value`` as a float64 array; strings, complex numbers or ragged lists are a ValueError
    naming it (NumPy's own message names no argument)."""
    try:
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise TypeError(array.dtype)
        return array.astype(np.float64, copy=False)
    except (TypeError, ValueError):
        found = f"dtype {array.dtype}" if "array" in locals() else type(value).__name__
        raise ValueError(f"{name}: expected real numbers, got {found}") from None


def _as_reads(reads, min_ndim: int = 1, max_ndim: int | None = None) -> np.ndarray:
    if isinstance(reads, np.ma.MaskedArray):  # np.asarray would drop its mask silently
        raise ValueError(
            "reads: expected a plain array, got a masked array: pass reads.data, and its mask "
            "as mask=np.ma.getmaskarray(reads) (True = bad read)"
        )
    try:
        reads = np.asarray(reads)
    except ValueError:  # a ragged list
        raise ValueError(
            "reads: expected a (n_reads, *pixel_shape) array, got a ragged list"
        ) from None
    if reads.dtype.kind not in "fiu":
        raise ValueError(f"reads: expected a real numeric array, got dtype {reads.dtype}")
    if reads.ndim < min_ndim or (max_ndim is not None and reads.ndim > max_ndim):
        want = f"{min_ndim}" if max_ndim == min_ndim else f"{min_ndim} to {max_ndim or 'any'}"
        raise ValueError(
            f"reads: expected {want} dimensions (n_reads, *pixel_shape), got shape {reads.shape}"
        )
    if reads.shape[0] < 3:
        raise ValueError(f"reads: expected n_reads >= 3 along axis 0, got shape {reads.shape}")
    if not reads.dtype.isnative:
        reads = reads.astype(reads.dtype.newbyteorder("="))
    if reads.dtype == np.float64 and reads.size:  # float32 and integers are inside by type
        largest = max(np.max(reads), -np.min(reads))  # two plain passes: the usual case
        if not largest <= MAX_READ:  # non-finite reads are masked and flagged, not refused
            finite = np.isfinite(reads)
            largest = max(np.max(reads, where=finite, initial=0.0),
                          -np.min(reads, where=finite, initial=0.0))  # fmt: skip
        if largest > MAX_READ:
            raise ValueError(
                f"reads: expected values a float32 can hold (within +-{MAX_READ:.3g}), found "
                f"{largest:.3g}"
            )
    # uint16, the raw detector type, goes to the kernels as it is: a float64 copy of a raw cube
    # would be 4x its size.
    if reads.dtype not in (np.float32, np.float64, np.uint16):
        reads = reads.astype(np.float64)
    return reads


def _as_ref_index(ref_index, n_groups: int, K: int) -> np.ndarray:
    """``ref_index`` as (n_groups,) int64: whole numbers in [0, K), one or one per group."""
    expected = f"whole numbers in [0, {K}), one or {n_groups} (one per group)"
    try:
        values = np.broadcast_to(np.asarray(ref_index), (n_groups,))
        whole = values.dtype.kind in "iu" or (
            values.dtype.kind == "f" and np.all(np.isfinite(values) & (values == np.round(values)))
        )
    except (ValueError, TypeError):
        whole = False
    if not whole or np.any((values < 0) | (values >= K)):
        raise ValueError(f"ref_index: expected {expected}, got {ref_index!r}")
    return values.astype(np.int64)


def _pixel_map(value, name: str, pixel_shape: tuple, *, positive: bool = True) -> np.ndarray:
    """Broadcast a per-pixel parameter to ``pixel_shape`` as float64, checking its range."""
    given = _real_array(value, name)
    try:
        arr = np.broadcast_to(given, pixel_shape)
    except ValueError:
        raise ValueError(
            f"{name}: shape {given.shape} does not broadcast to the pixel shape {pixel_shape}"
        ) from None
    low, high = SCALE_RANGE
    # The extremes alone (no chip-sized temporaries); a NaN makes them NaN and fails.
    if positive and arr.size and not (low <= arr.min() and arr.max() <= high):
        raise ValueError(f"{name}: expected finite values > 0, within [{low:g}, {high:g}], "
                         f"{_where_not(given, (given >= low) & (given <= high))}")  # fmt: skip
    return arr


def _where_not(values: np.ndarray, good: np.ndarray) -> str:
    """Where a map breaks its rule, for an error: ``"got nan at index (3, 7) and 2 more"``."""
    bad = np.flatnonzero(~np.asarray(good))
    if not bad.size:
        return "got none"
    value = f"{float(values.flat[bad[0]]):g}"
    if values.ndim == 0:
        return f"got {value}"
    at = tuple(int(i) for i in np.unravel_index(bad[0], values.shape))
    more = f" and {bad.size - 1} more" if bad.size > 1 else ""
    return f"got {value} at index {at}{more}"


def _as_mask(mask, shape: tuple) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise ValueError(f"mask: expected a bool array, got dtype {mask.dtype}")
    if mask.shape != shape:
        raise ValueError(f"mask: expected the shape of reads {shape}, got {mask.shape}")
    return mask


def _saturation_map(saturation, pixel_shape: tuple) -> np.ndarray:
    if saturation is None:
        return np.broadcast_to(np.inf, pixel_shape)
    sat = _real_array(saturation, "saturation")
    if np.any(np.isnan(sat)):
        raise ValueError(f"saturation: expected numbers (inf for none), "
                         f"{_where_not(sat, ~np.isnan(sat))}")  # fmt: skip
    try:
        return np.broadcast_to(sat, pixel_shape)
    except ValueError:
        raise ValueError(
            f"saturation: shape {sat.shape} does not broadcast to the pixel shape {pixel_shape}"
        ) from None


def read_intervals(read_times, n_reads: int) -> np.ndarray:
    """Read intervals ``dt`` (length ``n_reads - 1``) from optional read times.

    Parameters
    ----------
    read_times : array_like or None
        ``(n_reads,)`` strictly increasing times; None means unit spacing.
    n_reads : int

    Returns
    -------
    ndarray, float64, ``(n_reads - 1,)``
    """
    if read_times is None:
        return np.ones(n_reads - 1)
    times = _real_array(read_times, "read_times")
    if times.shape != (n_reads,):
        raise ValueError(f"read_times: expected shape ({n_reads},), got {times.shape}")
    dt = np.diff(times)
    low, high = SCALE_RANGE
    if not np.all((dt >= low) & (dt <= high)):  # NaN fails too
        raise ValueError(
            f"read_times: expected finite, strictly increasing values, {low:g} to {high:g} apart"
        )
    return dt


def _flat(array: np.ndarray, n_lead: int) -> np.ndarray:
    """Reshape to ``(*leading, n_pix)`` without copying when possible."""
    return array.reshape(array.shape[:n_lead] + (-1,))


def _ravel_pixels(value: np.ndarray) -> np.ndarray:
    """A per-pixel map flat, float64 ``(n_pix,)``; ``(1,)`` where it is one number broadcast
    (every stride 0), which the kernels take as one value for every pixel: a chip-sized copy of
    one number would be 42 MB of memory for each of gain, read noise and saturation.

    Always read-only, as a map that needs no copy is (the read-only broadcast view of
    :func:`_pixel_map`): Numba compiles a kernel for each mix of read-only and writeable
    arguments, so one number, a map and a converted map share one compiled kernel.
    """
    if value.size and not any(value.strides):
        flat = np.full(1, value.flat[0], dtype=np.float64)
    else:
        flat = np.ascontiguousarray(value, dtype=np.float64).reshape(-1)
    flat.flags.writeable = False  # our own copy where it was writeable
    return flat


Backend = Literal["numpy", "julia", "auto"]


def _flux_outputs(n_pix: int) -> tuple[np.ndarray, ...]:
    """Output arrays ``(flux, flux_var, chi2, n_diff, flags)`` of the per-pixel kernels."""
    floats = [np.empty(n_pix) for _ in range(3)]
    return (*floats, np.empty(n_pix, dtype=np.int64), np.empty(n_pix, dtype=np.int64))


def _flux_fit(out, gain_flat: np.ndarray, pixel_shape: tuple) -> FluxFit:
    """A FluxFit from kernel outputs in electrons, converted to the units of the reads."""
    flux, flux_var, chi2, n_diff, flags = out
    # In place: the outputs are this call's own, and a chip's worth of new arrays costs page
    # faults that take longer than the division.
    np.divide(flux, gain_flat, out=flux)
    for start in range(0, flux_var.size, 1 << 18):  # gain**2 in pieces: no chip-sized temporary
        part = slice(start, start + (1 << 18))
        gain_part = gain_flat if gain_flat.size == 1 else gain_flat[part]
        np.divide(flux_var[part], gain_part**2, out=flux_var[part])
    return FluxFit(
        flux=flux.reshape(pixel_shape),
        flux_var=flux_var.reshape(pixel_shape),
        chi2=chi2.reshape(pixel_shape),
        n_diff=n_diff.reshape(pixel_shape),
        flags=flags.reshape(pixel_shape),
    )


def _pixel_inputs(reads, read_noise, gain, mask, saturation):
    """Checked per-pixel inputs of the flattened-cube kernels.

    Returns ``(reads2d (N, n_pix), bad, use_mask, sigma, gain, saturation)``, the last three
    flat float64 ``(n_pix,)``, or ``(1,)`` where the value is one number
    (:func:`_ravel_pixels`); ``bad`` is a dummy ``(1, 1)`` array when there is no mask.
    """
    pixel_shape = reads.shape[1:]
    sigma = _pixel_map(read_noise, "read_noise", pixel_shape)
    gain_map = _pixel_map(gain, "gain", pixel_shape)
    mask = _as_mask(mask, reads.shape)
    sat = _saturation_map(saturation, pixel_shape)
    bad = _flat(mask, 1) if mask is not None else np.zeros((1, 1), dtype=np.bool_)
    # C order always (a copy only where the input is another layout): Numba compiles a kernel for
    # each array layout, about 30 s each for the extraction, so that every caller shares one.
    return (_kernel_view(_flat(reads, 1)), _kernel_view(bad), mask is not None,
            _ravel_pixels(sigma), _ravel_pixels(gain_map), _ravel_pixels(sat))  # fmt: skip


def _kernel_view(array: np.ndarray) -> np.ndarray:
    """``array`` in C order (a copy only where it is another layout), as a read-only view.

    Numba compiles a kernel for each array layout and for each mix of read-only and writeable
    arguments (about 30 s each for the extraction): a memory-mapped cube (``np.load(...,
    mmap_mode="r")``, a FITS file opened read-only) or a broadcast mask compiled the kernels
    again. Read-only always, every caller shares one compiled kernel.
    """
    view = np.ascontiguousarray(array).view()
    view.flags.writeable = False
    return view


def _omega_rows(omega, groups, K: int, pixel_shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Check ``omega`` ((K,) or (n_groups, K)) and ``groups``; return omega 2-D and flat groups.

    The groups are int32 (half the memory of int64: a chip's map is 21 MB), the one integer
    type the kernels are compiled for.
    """
    omega2d = np.atleast_2d(_real_array(omega, "omega"))
    if omega2d.ndim != 2 or omega2d.shape[1] != K:
        raise ValueError(
            f"omega: expected shape ({K},) or (n_groups, {K}), got {np.shape(omega)} (K = n_reads "
            f"- 1, from axis 0 of reads: are the reads (n_reads, *pixel_shape)?)"
        )
    # A NaN or inf element masks its difference; a finite one beyond SCALE_RANGE overflowed
    # the variances (omega 1e160 gave flux 0 and variance 0, unflagged). The extremes alone:
    # a chromatic table holds millions of rows.
    finite = np.isfinite(omega2d)
    high = SCALE_RANGE[1]
    if omega2d.size and not (
        omega2d.max(where=finite, initial=0.0) <= high
        and omega2d.min(where=finite, initial=0.0) >= -high
    ):
        raise ValueError(f"omega: expected values within +-{high:g} (a NaN or inf element masks "
                         "its difference)")  # fmt: skip
    if groups is None:
        if omega2d.shape[0] != 1:
            raise ValueError("groups: required when omega has one row per group")
        return omega2d, np.zeros(int(np.prod(pixel_shape)), dtype=np.int32)
    groups_arr = np.asarray(groups)
    if groups_arr.dtype.kind not in "iu" or groups_arr.shape != pixel_shape:
        raise ValueError(
            f"groups: expected integers of the pixel shape {pixel_shape}, "
            f"got {groups_arr.dtype} {groups_arr.shape}"
        )
    if groups_arr.size and (groups_arr.min() < 0 or groups_arr.max() >= omega2d.shape[0]):
        raise ValueError(f"groups: expected values in [0, {omega2d.shape[0]})")
    return omega2d, np.ascontiguousarray(groups_arr, dtype=np.int32).reshape(-1)


def backend_kernels(backend: str = "numpy"):
    """The kernels of ``backend``: ``_numpy`` or the Julia bridge (same functions, same arrays).

    ``"julia"`` raises :class:`pyapred.JuliaBackendError` where Julia cannot be loaded; ``"auto"``
    uses Julia where it loads and NumPy otherwise, logging the choice once.
    """
    if backend == "numpy":
        # Numba is imported on first use only: ``import pyapred`` stays light.
        from . import _numpy

        return _numpy
    if backend in ("julia", "auto"):
        from . import _julia

        return _julia.kernels() if backend == "julia" else _julia.auto_kernels()
    raise ValueError(f"backend: expected 'numpy', 'julia' or 'auto', got {backend!r}")


def _jump_backend(backend: str = "numpy"):
    """The jump-search kernels of ``backend`` (``find_jumps_kernel``, ``fit_omega_with_jumps``).

    :mod:`._jumps` where :func:`backend_kernels` picks NumPy (``"auto"`` without Julia included),
    the Julia bridge, whose functions of those names call APRampFit's twins, where it picks Julia.
    """
    from . import _julia

    kernels = backend_kernels(backend)
    if kernels is _julia:
        return kernels
    from . import _jumps

    return _jumps


# --------------------------------------------------------------------------------------------
# Constant model and extraction with omega fixed
# --------------------------------------------------------------------------------------------
def fit_constant(
    reads,
    read_noise,
    *,
    gain=1.0,
    mask=None,
    read_times=None,
    saturation=None,
    n_pass: int = 2,
    backend: Backend = "numpy",
) -> FluxFit:
    """Brandt (2024) optimal constant-flux fit of every pixel's ramp.

    Generalised least squares on the read differences with their tridiagonal covariance,
    ``C = diag(f dt) + sigma^2 T``, solved in O(K) per pixel. The first pass evaluates the photon
    noise at the median difference rate (clipped at 0); each further pass re-evaluates it at the
    previous estimate, which removes Brandt's covariance bias to first order.

    Parameters
    ----------
    reads : array_like, ``(n_reads, *pixel_shape)``
        Up-the-ramp reads (e- if ``gain=1``, else DN).
    read_noise : array_like
        Single-read noise sigma, units of ``reads``, broadcastable to ``pixel_shape``.
    gain : float or array_like, optional
        e-/DN, broadcastable to ``pixel_shape``.
    mask : ndarray of bool, optional
        ``reads.shape``; True = bad read.
    read_times : array_like, optional
        ``(n_reads,)``; default unit spacing.
    saturation : float or array_like, optional
        Saturation level in the units of ``reads``.
    n_pass : int, optional
        Number of GLS passes (covariance refreshes); 2 as in Brandt (2024) and ApogeeReduction.jl.
    backend : {"numpy", "julia", "auto"}, optional
        Implementation to run (module docstring).

    Returns
    -------
    FluxFit
        Arrays of shape ``pixel_shape``.

    Examples
    --------
    >>> import numpy as np
    >>> from pyapred import fit_constant, simulate_ramps
    >>> sim = simulate_ramps(np.full(1000, 50.0), 15.0, n_reads=20, rng=np.random.default_rng(1))
    >>> fit = fit_constant(sim.reads, 15.0)
    >>> bool(abs(np.mean(fit.flux) - 50.0) < 0.5)
    True
    """
    reads = _as_reads(reads)
    return extract_fluxes(
        reads,
        read_noise,
        np.ones(reads.shape[0] - 1),
        gain=gain,
        mask=mask,
        read_times=read_times,
        saturation=saturation,
        n_pass=n_pass,
        backend=backend,
    )


def extract_fluxes(
    reads,
    read_noise,
    omega,
    *,
    groups=None,
    gain=1.0,
    mask=None,
    read_times=None,
    saturation=None,
    n_pass: int = 2,
    backend: Backend = "numpy",
) -> FluxFit:
    """Optimal fluxes with a fixed transparency vector omega (the paper's eq 15), per pixel.

    Each pixel is fitted independently with the model ``d_k = f omega_k dt_k`` and covariance
    ``diag(max(a, 0) max(omega_k, 0) dt_k) + sigma^2 T``, the rate ``a`` clipped at 0 before it
    meets omega (Brandt's recipe; a negative omega element carries no photon noise);
    ``omega = 1`` is exactly :func:`fit_constant`. The first pass evaluates the photon noise at
    the median of ``d_k / (omega_k dt_k)`` (the reference code uses the median of ``d_k``, quirk
    Q7; both agree for ``omega = 1``).

    Parameters
    ----------
    reads : array_like, ``(n_reads, *pixel_shape)``
    read_noise : array_like
        Single-read sigma in the units of ``reads``, broadcastable to ``pixel_shape``.
    omega : array_like, ``(K,)`` or ``(n_groups, K)``, ``K = n_reads - 1``
        Transparency factors, finite ones within +-1e30 (``SCALE_RANGE``). A non-finite element
        masks that difference for the pixels using it.
    groups : array_like of int, ``pixel_shape``, optional
        Row of ``omega`` used by each pixel; required when ``omega`` is 2-D.
    gain, mask, read_times, saturation, n_pass, backend
        As in :func:`fit_constant`.

    Returns
    -------
    FluxFit
        Arrays of shape ``pixel_shape``; fluxes at omega's normalisation.
    """
    reads = _as_reads(reads)
    n_reads = reads.shape[0]
    pixel_shape = reads.shape[1:]
    K = n_reads - 1
    omega2d, groups_flat = _omega_rows(omega, groups, K, pixel_shape)
    n_pass = _count(n_pass, "n_pass", 1)
    dt = read_intervals(read_times, n_reads)
    reads2d, bad, use_mask, sigma, gain_flat, sat = _pixel_inputs(
        reads, read_noise, gain, mask, saturation
    )
    out = _flux_outputs(reads2d.shape[1])
    backend_kernels(backend).extract_kernel(
        reads2d, bad, use_mask, np.ascontiguousarray(omega2d), groups_flat, dt, sigma, gain_flat,
        sat, n_pass, *out,
    )  # fmt: skip
    return _flux_fit(out, gain_flat, pixel_shape)


# --------------------------------------------------------------------------------------------
# Equal-weight baseline
# --------------------------------------------------------------------------------------------
def fit_equal_weight(
    reads, read_noise, *, gain=1.0, mask=None, saturation=None, backend: Backend = "numpy"
) -> FluxFit:
    """Equal-weight (ordinary least-squares) slope of Rauscher et al. (2007).

    The slope of counts against read index, fitted to the usable reads, with its exact variance
    under the ramp noise model: ``sigma^2 sum_j w_j^2 + f sum_i (sum_{j>i} w_j)^2`` for slope
    weights ``w``. For a full ramp this is Rauscher's eq 1 (spec section 6). The photon term uses
    ``max(f, 0)``, so the variance stays positive (the reference plugs in a negative slope, Q9).
    ``chi2`` is the eq-24 chi2 of the slope against the optimal covariance, so that every model's
    fit quality is measured the same way.

    Parameters
    ----------
    reads, read_noise, gain, mask, saturation, backend
        As in :func:`fit_constant`; reads are equally spaced.

    Returns
    -------
    FluxFit
    """
    reads = _as_reads(reads)
    pixel_shape = reads.shape[1:]
    reads2d, bad, use_mask, sigma, gain_flat, sat = _pixel_inputs(
        reads, read_noise, gain, mask, saturation
    )
    out = _flux_outputs(reads2d.shape[1])
    kernels = backend_kernels(backend)
    kernels.equal_weight_kernel(reads2d, bad, use_mask, sigma, gain_flat, sat, *out)
    return _flux_fit(out, gain_flat, pixel_shape)


# --------------------------------------------------------------------------------------------
# Time-variable model
# --------------------------------------------------------------------------------------------
def _group_inputs(reads, read_noise, gain, mask, read_times, saturation, backend):
    """Validate fit_omega/sample_omega inputs and build the (G, P, K) difference layout."""
    reads = _as_reads(reads, 2, 3)
    single = reads.ndim == 2
    cube = reads[:, None, :] if single else reads
    pixel_shape = cube.shape[1:]
    # Checked against the caller's own pixel shape (a single group's (n_pix,)), so that a wrong
    # one is named as given, then given the group axis.
    sigma = _pixel_map(read_noise, "read_noise", reads.shape[1:]).reshape(pixel_shape)
    gain_map = _pixel_map(gain, "gain", reads.shape[1:]).reshape(pixel_shape)
    mask = _as_mask(mask, reads.shape)
    sat = _saturation_map(saturation, reads.shape[1:]).reshape(pixel_shape)
    dt = read_intervals(read_times, reads.shape[0])
    G, P = pixel_shape
    if P == 0:
        raise ValueError(
            f"reads: expected at least one pixel (n_pix >= 1) along the last axis, got shape "
            f"{reads.shape}"
        )
    K = reads.shape[0] - 1
    diffs = np.empty((G, P, K))
    valid = np.empty((G, P, K), dtype=np.bool_)
    flags = np.empty((G, P), dtype=np.int64)
    bad = (mask[:, None, :] if single else mask) if mask is not None else np.zeros((1, 1, 1), bool)
    gain_map = np.ascontiguousarray(gain_map)
    backend_kernels(backend).prepare_diffs_kernel(
        _kernel_view(cube), _kernel_view(bad), mask is not None, gain_map,
        np.ascontiguousarray(sat), diffs, valid, flags,
    )  # fmt: skip
    s2 = (sigma * gain_map) ** 2
    return single, diffs, valid, flags, np.ascontiguousarray(s2), dt, gain_map


def _fit_pixels(valid, flags):
    """Pixels with at least 2 usable differences take part; flag the others."""
    # einsum counts the bytes in one pass: 1.5x faster than NumPy's sum along a short last axis
    # (0.018 -> 0.012 s on 300 x 2048 x 46).
    n_diff = np.einsum("...k->...", valid.view(np.uint8), dtype=np.int64)
    fit = n_diff >= 2
    flags = flags | np.where(fit, 0, int(Flag.TOO_FEW_DIFFS | Flag.NOT_IN_OMEGA_FIT))
    return fit, n_diff, flags


def fit_omega(
    reads,
    read_noise,
    *,
    gain=1.0,
    mask=None,
    read_times=None,
    saturation=None,
    ref_index=None,
    rtol: float = 1e-8,
    max_iter: int = 50,
    mode: Literal["default", "reference"] = "default",
    backend: Backend = "numpy",
    jump_search: bool = False,
    jump_threshold: float = 4.5,
    segments=None,
) -> OmegaFit:
    """Joint fit of the shared transparency vector omega and per-pixel fluxes (time-variable model).

    Model: read difference ``k`` of pixel ``p`` is ``f_p omega_k dt_k`` plus photon and read noise,
    with ``omega[ref_index] = 1``. Gauss-Newton on the linearised model; at each iteration the
    per-pixel fluxes are eliminated exactly by a Schur complement, so the only dense system is
    ``(K-1) x (K-1)`` and memory is O(P K) per group (spec section 9). In ``mode="default"``
    every step is line-searched so that it never increases the chi2 (covariances frozen at the
    current point), slowly converging (faint) groups take Newton steps, and the element fixed
    while iterating is never small (threshold pivoting; the result is rescaled to ``ref_index``
    at the end): ``docs/model.md``, "Modes, convergence and the reference implementation".
    Every group reports ``n_iter``, ``stop_reason``, ``step_size`` and ``damping``.

    Parameters
    ----------
    reads : array_like, ``(n_reads, n_pix)`` or ``(n_reads, n_groups, n_pix)``
        One group of pixels sharing omega, or many groups fitted independently in one call.
        Fully masked pixels are padding and are ignored.
    read_noise, gain, saturation : array_like
        Broadcastable to ``reads.shape[1:]``; as in :func:`fit_constant`.
    mask : ndarray of bool, optional
        ``reads.shape``; True = bad read.
    read_times : array_like, optional
        ``(n_reads,)``; default unit spacing.
    ref_index : int or array_like of int, optional
        Element of omega fixed to 1, per group or for all (a common reference read for all fibers);
        default the argmax of the initial guess, as in the reference (in ``mode="default"``, the
        largest element of the solution where the fit moved it beyond twice that one).
    rtol : float, optional
        ``mode="default"`` convergence: every omega step < rtol and every flux step < rtol times
        ``max(flux, read noise)``.
    max_iter : int, optional
    mode : {"default", "reference"}
        ``"reference"`` reproduces the reference implementation exactly: its initial-guess weights
        (quirk Q1), full Gauss-Newton steps linearised at the values clamped at 1e-10 (the
        unclamped ones are returned and tested), absolute tolerance 1e-10 on both blocks, at
        least 3 iterations, and the covariance from the last linearisation (Q3). ``"default"``
        uses the corrected weights, the relative tolerance, the covariance at the solution, and
        the safeguarded iteration above (unclamped linearisation, line search, Newton steps for
        slow groups, pivoting).
    backend : {"numpy", "julia", "auto"}, optional
        As in :func:`fit_constant`. With ``jump_search=True`` the alternation of fit and search
        runs on that backend too (Julia: APRampFit's ``fit_omega_with_jumps``).
    jump_search : bool, optional
        Alternate the fit with a jump (cosmic-ray) search in the fitted pixels (:func:`find_jumps`
        with the current omega), masking what it finds and refitting, until the jump mask is
        stable (at most 3 searches). Off by default here; the exposure pipeline turns it on, so
        that cosmic rays in the fit pixels do not bias omega. Flagged pixels get
        ``JUMP_DETECTED`` and a smaller ``n_diff``. The first search uses the first fit's omega:
        one jump whose charge rivals the group's whole signal in its difference (5000 e- among
        20 pixels of 300 e-) pulls that element so far that the difference is flagged in every
        pixel, and the element is left without data (NaN, ``OMEGA_ELEMENT_NO_DATA``). The
        pipeline's fit pixels are free of such jumps (its first pass drops pixels with 8-sigma
        jumps); in a notebook, mask them first (:func:`find_jumps` with a rough omega).
    jump_threshold : float, optional
        Threshold of the jump search in sigma, as in :func:`find_jumps`.
    segments : array_like of int, optional
        Broadcastable to ``reads.shape[1:]``, labels ``0 .. n_segments - 1``: pixels of a group
        with the same label share one additive offset per read difference, fitted jointly
        (``d = f omega dt + c``, the correlated (1/f) read-noise nuisance term; label pixels by
        row and 512-column output, see ``docs/noise.md``). The offsets are eliminated inside the
        same Schur framework (per-pixel cost of the same order), omega's covariance marginalises
        them, and the joint fluxes absorb each segment's mean offset rate. With ``jump_search``
        the search judges each difference against the model including its segment's fitted
        offset. Not with ``mode="reference"``.

    Returns
    -------
    OmegaFit
        Fluxes in the units of ``reads`` per read interval.

    Examples
    --------
    >>> import numpy as np
    >>> from pyapred import fit_omega, simulate_ramps
    >>> rng = np.random.default_rng(0)
    >>> omega = np.linspace(1.0, 0.7, 20)
    >>> sim = simulate_ramps(rng.uniform(800, 1200, 200), 15.0, omega=omega, rng=rng)
    >>> fit = fit_omega(sim.reads, 15.0)
    >>> bool(fit.converged)
    True
    >>> bool(np.allclose(fit.omega, omega / omega[fit.ref_index], atol=0.01))
    True
    """
    _check_mode(mode)
    rtol = _positive(rtol, "rtol")
    max_iter = _count(max_iter, "max_iter", 1)
    jump_search = _flag(jump_search, "jump_search")  # "no" ran the search
    single, diffs, valid, flags, s2, dt, gain_map = _group_inputs(
        reads, read_noise, gain, mask, read_times, saturation, backend
    )
    G, P, K = diffs.shape
    kstar = None if ref_index is None else _as_ref_index(ref_index, G, K)
    fit_pixel, n_diff, flags = _fit_pixels(valid, flags)
    options = dict(
        reference=mode == "reference", rtol=float(rtol), max_iter=int(max_iter), ref_index=kstar
    )
    if segments is not None:
        if mode == "reference":
            raise ValueError("segments: not available with mode='reference'")
        options["segments"] = _segment_labels(segments, single, (G, P))
    jump_mask = None
    if jump_search:
        threshold = _check_threshold(jump_threshold, "jump_threshold")
        res, n_diff, flags, jump_mask = _fit_omega_with_jumps(
            diffs, valid, s2, dt, fit_pixel, flags, threshold, options, backend
        )
    else:
        res = backend_kernels(backend).fit_omega_groups(diffs, valid, s2, dt, fit_pixel, **options)
    report = _convergence_report(res, fit_pixel.any(axis=1))
    dof = np.where(fit_pixel, n_diff - 1, 0).sum(axis=1)
    if segments is not None:
        # Each segment's offsets take one degree of freedom per difference with data, less one
        # for their sum-to-zero constraint (NaN offsets: differences without data), and omega
        # its free elements (which the paper's factor, without offsets, leaves in: negligible
        # there, not where the offsets leave a few per pixel). Where none is left (segments of
        # one pixel each; one of 2 pixels), the model fits the data exactly whatever they are:
        # degenerate, however its iteration ended.
        per_segment = np.isfinite(res["offsets"]).sum(axis=2)
        free_omega = np.maximum(res["has_data"].sum(axis=1) - 1, 0)
        dof = dof - np.maximum(per_segment - 1, 0).sum(axis=1) - free_omega
        res["converged"], report["stop_reason"] = _degenerate(
            (dof <= 0) & fit_pixel.any(axis=1), res["converged"], report["stop_reason"]
        )
    else:
        # The paper's factor keeps omega's free elements in its denominator (negligible for a
        # fiber's pixels), but where they take every degree of freedom (one pixel: K - 1 of
        # each) the fit is exact whatever the data: degenerate, no inflation (it was 0).
        free_omega = np.maximum(res["has_data"].sum(axis=1) - 1, 0)
        exact = (dof - free_omega <= 0) & fit_pixel.any(axis=1)
        res["converged"], report["stop_reason"] = _degenerate(
            exact, res["converged"], report["stop_reason"]
        )
        dof = np.where(exact, 0, dof)
    inflation = _inflation(res["chi2"], dof)
    group_flags = np.zeros(G, dtype=np.int64)
    group_flags[~res["converged"]] |= Flag.NOT_CONVERGED
    group_flags[~res["has_data"].all(axis=1)] |= Flag.OMEGA_ELEMENT_NO_DATA
    group_flags[~fit_pixel.any(axis=1)] |= Flag.EMPTY_GROUP
    out = OmegaFit(
        omega=res["omega"],
        omega_cov=res["omega_cov"],
        ref_index=res["ref_index"],
        flux=res["flux"] / gain_map,
        flux_var=res["flux_var"] / gain_map**2,
        chi2=res["chi2"],
        n_diff=n_diff,
        inflation=inflation,
        n_iter=res["n_iter"],
        converged=res["converged"],
        flags=flags,
        group_flags=group_flags,
        offsets=None if segments is None else res["offsets"] / gain_map.mean(axis=1)[:, None, None],
        jump_mask=jump_mask,
        **report,
    )
    if single:
        out = OmegaFit(**{k: None if v is None else v[0] for k, v in out.__dict__.items()})
    return out


@dataclass(frozen=True)
class ChromaticFit:
    """Joint fit of a chromatic omega, ``omega_k (1 + gamma_k c)``, and per-pixel fluxes.

    ``c`` is each pixel's normalised wavelength coordinate (the stages use -1 at the bluest and
    +1 at the reddest column of the chips fitted together), so ``2 gamma_k`` is the red-to-blue
    difference of read difference ``k``'s transparency relative to the reference read. Shapes as
    in :class:`OmegaFit` (the leading ``n_groups`` axis absent for a single group).

    Attributes
    ----------
    omega : ndarray, float64, ``(n_groups, K)``
        Transparency at ``c = 0``, ``omega[ref_index] == 1``; NaN without data.
    gamma : ndarray, float64, ``(n_groups, K)``
        Chromatic slope, ``gamma[ref_index] == 0`` (otherwise degenerate with the fluxes' own
        spectral shape); 0 for an element seen at a single coordinate, NaN without data or
        where omega is 0 (the group then flagged ``OMEGA_ELEMENT_NO_DATA``).
    cov : ndarray, float64, ``(n_groups, 2K, 2K)``
        Covariance of ``(omega, gamma)`` stacked (fluxes marginalised); rows and columns of
        fixed elements are 0. :meth:`omega_cov` and :meth:`gamma_cov` are its blocks.
    ref_index : ndarray, int64, ``(n_groups,)``
    flux, flux_var, chi2 : ndarray, float64, ``(n_groups, n_pix)``
        Joint fluxes per read interval at the normalisation of ``omega_at(c)`` (reference read:
        1 at ``c = 0``), their marginal variances, and each pixel's eq-24 chi2.
    n_diff : ndarray, int64, ``(n_groups, n_pix)``
    flags, group_flags : ndarray, int64
        As in :class:`OmegaFit`; ``OMEGA_ELEMENT_NO_DATA`` also where an element of omega is 0
        (its gamma undefined).
    n_iter : ndarray, int64, ``(n_groups,)``
    converged : ndarray, bool, ``(n_groups,)``
    stop_reason : ndarray, int64, ``(n_groups,)``
        A :class:`StopReason` code.
    delta_chi2 : ndarray, float64, ``(n_groups,)``
        Achromatic minus chromatic chi2 over the fitted pixels (the likelihood-ratio statistic;
        the same differences in both fits).
    dof : ndarray, int64, ``(n_groups,)``
        Its degrees of freedom: the free elements of ``gamma``.
    p_value : ndarray, float64, ``(n_groups,)``
        Probability of ``delta_chi2 / inflation**2`` under the achromatic model (chi2 with
        ``dof`` degrees of freedom; dividing by the chromatic fit's ``inflation**2`` makes it an
        F-like test that over-dispersed noise does not turn into false detections).
    amplitude : ndarray, float64, ``(n_groups,)``
        Equivalent chromatic amplitude: ``sqrt(12 (var(2 gamma) - mean(sigma_2gamma^2)))`` over
        the free elements and the reference (the peak-to-peak red-to-blue difference of a
        uniformly spread one, debiased for noise; the analogue of the paper's A).
    inflation : ndarray, float64, ``(n_groups,)``
        ``sqrt(sum chi2 / sum (n_diff - 1))`` of the chromatic fit.
    """

    omega: np.ndarray
    gamma: np.ndarray
    cov: np.ndarray
    ref_index: np.ndarray
    flux: np.ndarray
    flux_var: np.ndarray
    chi2: np.ndarray
    n_diff: np.ndarray
    flags: np.ndarray
    group_flags: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray
    stop_reason: np.ndarray
    delta_chi2: np.ndarray
    dof: np.ndarray
    p_value: np.ndarray
    amplitude: np.ndarray
    inflation: np.ndarray

    def omega_cov(self) -> np.ndarray:
        """Covariance of ``omega``, ``(..., K, K)``."""
        K = np.shape(self.omega)[-1]
        return np.asarray(self.cov)[..., :K, :K]

    def gamma_cov(self) -> np.ndarray:
        """Covariance of ``gamma``, ``(..., K, K)``."""
        K = np.shape(self.omega)[-1]
        return np.asarray(self.cov)[..., K:, K:]

    def gamma_error(self) -> np.ndarray:
        """Marginal errors of ``gamma``, ``(..., K)`` (0 for fixed elements)."""
        return np.sqrt(np.maximum(np.diagonal(self.gamma_cov(), axis1=-2, axis2=-1), 0.0))

    def omega_at(self, coordinate) -> np.ndarray:
        """Each pixel's own omega, ``omega * (1 + gamma * c)``.

        Parameters
        ----------
        coordinate : array_like
            ``(n_groups, n_pix)`` (or ``(n_pix,)`` for a single group) wavelength coordinates.

        Returns
        -------
        ndarray, ``coordinate.shape + (K,)``
        """
        c = np.asarray(coordinate, dtype=np.float64)[..., None]
        omega = np.asarray(self.omega)[..., None, :]
        gamma = np.nan_to_num(np.asarray(self.gamma))[..., None, :]
        return omega * (1.0 + gamma * c)

    def __repr__(self) -> str:
        """Convergence and the test's outcome (a line, never whole arrays)."""
        from .reprs import finite_median, fmt

        has_data = ~(np.atleast_1d(self.group_flags) & Flag.EMPTY_GROUP).astype(bool)
        converged = np.atleast_1d(self.converged) & has_data
        p = np.atleast_1d(self.p_value)
        groups = f"{converged.size} group" + ("" if converged.size == 1 else "s")
        return (
            f"ChromaticFit: {groups}, {int(converged.sum())} of {int(has_data.sum())} with data "
            "converged; "
            f"median |gamma| {fmt(finite_median(np.abs(self.gamma)))}; p < 0.001 in "
            f"{int(np.count_nonzero(p < 1e-3))}; median amplitude "
            f"{fmt(finite_median(self.amplitude))}"
        )


def fit_omega_chromatic(
    reads,
    read_noise,
    coordinate,
    *,
    start: OmegaFit | None = None,
    gain=1.0,
    mask=None,
    read_times=None,
    saturation=None,
    ref_index=None,
    rtol: float = 1e-8,
    max_iter: int = 50,
    jump_search: bool = False,
    jump_threshold: float = 4.5,
    backend: Backend = "numpy",
) -> ChromaticFit:
    """Joint fit of a chromatic omega and the fluxes, tested against the achromatic fit.

    Model: read difference ``k`` of pixel ``p`` is ``f_p omega_k (1 + gamma_k c_p) dt_k``, with
    ``c_p`` the pixel's normalised wavelength coordinate, ``omega[ref_index] = 1`` and
    ``gamma[ref_index] = 0``. It is linear in ``(omega, omega * gamma)``, so the fluxes are
    eliminated by the Schur complement as in :func:`fit_omega` and the dense system is
    ``2(K-1) x 2(K-1)``. Gauss-Newton with a line search on the chi2 (covariances frozen at the
    current point) starts from the achromatic solution; the covariance is evaluated at the
    solution (``docs/model.md``, "Chromatic transparency").

    Parameters
    ----------
    reads, read_noise, gain, mask, read_times, saturation
        As in :func:`fit_omega`.
    coordinate : array_like
        Broadcastable to ``reads.shape[1:]``: each pixel's normalised wavelength coordinate,
        dimensionless (about -1 .. 1 over the fitted wavelength range).
    start : OmegaFit, optional
        The achromatic fit of the same pixels (with the same inputs): the starting point, its
        reference read, its jump mask, and the null model of the test. Default: it is computed
        here with :func:`fit_omega` (``ref_index``, ``jump_search``, ``jump_threshold``,
        ``backend``).
    ref_index, jump_search, jump_threshold
        Passed to :func:`fit_omega` when ``start`` is not given.
    rtol, max_iter
        Convergence of the chromatic iteration, as in :func:`fit_omega`.
    backend : {"numpy", "julia", "auto"}
        As in :func:`fit_omega` (Julia: APRampFit's ``fit_chromatic_groups``).

    Returns
    -------
    ChromaticFit
        Fluxes in the units of ``reads`` per read interval.

    Examples
    --------
    >>> import numpy as np
    >>> from pyapred import fit_omega_chromatic
    >>> rng = np.random.default_rng(1)
    >>> K, c = 20, np.linspace(-1, 1, 400)
    >>> omega, gamma = np.linspace(1.0, 0.7, K), np.linspace(0.0, -0.05, K)
    >>> rate = 5000 * omega * (1 + gamma * c[:, None])  # (n_pix, K), e- per read interval
    >>> counts = np.cumsum(rng.poisson(rate), axis=1).T  # (K, n_pix)
    >>> reads = np.vstack([np.zeros(c.size), counts]) + rng.normal(0, 15, (K + 1, c.size))
    >>> fit = fit_omega_chromatic(reads, 15.0, c)
    >>> bool(fit.p_value < 1e-6)
    True
    """
    from scipy.special import chdtrc  # chi2's survival function, without scipy.stats's import

    rtol = _positive(rtol, "rtol")
    max_iter = _count(max_iter, "max_iter", 1)
    jump_search = _flag(jump_search, "jump_search")
    if start is None:
        start = fit_omega(
            reads, read_noise, gain=gain, mask=mask, read_times=read_times,
            saturation=saturation, ref_index=ref_index, jump_search=jump_search,
            jump_threshold=jump_threshold, backend=backend,
        )  # fmt: skip
    elif not isinstance(start, OmegaFit):  # (an AttributeError on its .omega, before)
        raise TypeError(
            f"start: expected an OmegaFit (fit_omega's result), got {type(start).__name__}"
        )
    single, diffs, valid, flags, s2, dt, gain_map = _group_inputs(
        reads, read_noise, gain, mask, read_times, saturation, backend
    )
    G, P, K = diffs.shape
    coord = _real_array(coordinate, "coordinate")  # complex lost its imaginary part, "abc"...
    try:
        coord = np.broadcast_to(coord[None] if single and coord.ndim else coord, (G, P))
    except ValueError:
        raise ValueError(
            f"coordinate: expected a shape broadcastable to {np.shape(reads)[1:]}, got "
            f"{np.shape(coordinate)}"
        ) from None
    high = SCALE_RANGE[1]
    if not (np.isfinite(coord).all() and np.abs(coord).max(initial=0.0) <= high):
        # 1e200 overflowed inside the fit (RuntimeWarnings, then NOT_CONVERGED).
        raise ValueError(f"coordinate: expected finite values within +-{high:g} (the stages use "
                         f"-1 to +1), {_where_not(coord, np.abs(coord) <= high)}")  # fmt: skip

    def grouped(value):
        value = np.asarray(value)
        return value[None] if single else value

    s_omega, s_flux = grouped(start.omega), grouped(start.flux)
    if s_omega.shape != (G, K) or s_flux.shape != (G, P):
        # In the caller's shapes: a single group's have no group axis.
        want_omega, want_flux = ((K,), (P,)) if single else ((G, K), (G, P))
        raise ValueError(
            f"start: expected an OmegaFit of the same pixels, omega {want_omega} and flux "
            f"{want_flux}, got {np.shape(start.omega)} and {np.shape(start.flux)}"
        )
    if start.jump_mask is not None:
        valid &= ~grouped(start.jump_mask)
    fit_pixel = ~(grouped(start.flags) & Flag.NOT_IN_OMEGA_FIT).astype(bool)
    fit_pixel &= valid.sum(axis=-1) >= 2
    kstar = np.asarray(grouped(start.ref_index)).reshape(-1)
    if kstar.shape != (G,) or not ((kstar >= 0) & (kstar < K) & (kstar % 1 == 0)).all():
        raise ValueError(f"start: expected a ref_index of 0 to {K - 1} per group, got "
                         f"{start.ref_index!r}")  # fmt: skip
    kstar = kstar.astype(np.int64)
    _check_start_chi2(start, grouped(start.chi2), s_omega, s_flux * gain_map, diffs, valid, s2,
                      dt, fit_pixel, backend)  # fmt: skip
    res = _chromatic_backend(backend).fit_chromatic_groups(
        diffs, valid, s2, dt, fit_pixel, coord, s_omega, s_flux * gain_map, kstar,
        rtol=float(rtol), max_iter=int(max_iter),
    )  # fmt: skip
    n_diff = valid.sum(axis=-1).astype(np.int64)
    # An omega element with no data (NaN) or fitted to exactly 0 leaves its gamma undefined
    # (slope / 0 was +-inf, with no flag): NaN, and the group flagged below.
    undetermined = ~np.isfinite(res["omega"]) | (res["omega"] == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        gamma = np.where(undetermined, np.nan, res["slope"] / res["omega"])
        # (omega, gamma) = (a, b / a): the covariance of (a, b) by the Jacobian of that map.
        jac = np.zeros((G, 2 * K, 2 * K))
        idx = np.arange(K)
        jac[:, idx, idx] = 1.0
        jac[:, K + idx, idx] = np.nan_to_num(-res["slope"] / res["omega"] ** 2)
        jac[:, K + idx, K + idx] = np.nan_to_num(1.0 / res["omega"])
        cov = jac @ res["cov"] @ np.swapaxes(jac, 1, 2)
        dof_pix = np.where(fit_pixel, n_diff - 1, 0).sum(axis=1)
        # omega and gamma are fitted jointly over all the pixels: they take degrees of freedom
        # too, which a group of 20-50 pixels does not make negligible (the p-values came out
        # too small there, 11 % below 0.05 under the null at 20 pixels and 20 differences).
        resid_dof = dof_pix - res["free"].sum(axis=1)
        inflation = _inflation(res["chi2"], resid_dof)
        achromatic = np.where(fit_pixel, grouped(start.chi2), 0.0).sum(axis=1)
        delta = achromatic - np.where(fit_pixel, res["chi2"], 0.0).sum(axis=1)
        dof = res["free"][:, K:].sum(axis=1).astype(np.int64)
        # No evidence: no chi2 decrease; a decrease where the achromatic fit already matches the
        # data to rounding (noise-free data: both chi2 are rounding, their ratio meaningless; it
        # was p = 0 on reads of zeros); no degrees of freedom left to measure the noise with.
        no_evidence = (delta <= 0) | (achromatic <= 1e-10 * dof_pix) | (resid_dof <= 0)
        statistic = np.where(no_evidence, 0.0, delta / inflation**2)
        p_value = np.where(dof > 0, chdtrc(np.maximum(dof, 1), statistic), 1.0)
        error = np.sqrt(np.maximum(np.diagonal(cov[:, K:, K:], axis1=1, axis2=2), 0.0))
        free_b = res["free"][:, K:] | (idx[None, :] == kstar[:, None])
        doubled = np.where(free_b, 2.0 * gamma, np.nan)
        with warnings.catch_warnings():  # an empty group's all-NaN row: NaN, flagged below
            warnings.simplefilter("ignore", RuntimeWarning)
            excess = np.nanvar(doubled, axis=1) - np.nanmean(
                np.where(free_b, 2 * error, np.nan) ** 2, axis=1
            )
        amplitude = np.sqrt(12.0 * np.maximum(excess, 0.0))
    nonempty = fit_pixel.any(axis=1)
    # A group with nothing to fit is EMPTY_GROUP with its omega elements NaN, not unconverged:
    # fit_omega's flags for it. One with no degrees of freedom left (fewer differences than
    # fluxes, omega and gamma elements) fits its data exactly whatever they are: degenerate.
    converged, stop_reason = _degenerate(
        nonempty & (resid_dof <= 0), res["converged"], res["stop_reason"]
    )
    converged = converged | ~nonempty
    group_flags = np.zeros(G, dtype=np.int64)
    group_flags[~converged] |= Flag.NOT_CONVERGED
    group_flags[undetermined.any(axis=1)] |= Flag.OMEGA_ELEMENT_NO_DATA
    group_flags[~nonempty] |= Flag.EMPTY_GROUP
    flags = flags | grouped(start.flags)
    out = ChromaticFit(
        omega=res["omega"],
        gamma=gamma,
        cov=cov,
        ref_index=kstar,
        flux=res["flux"] / gain_map,
        flux_var=res["flux_var"] / gain_map**2,
        chi2=res["chi2"],
        n_diff=n_diff,
        flags=flags,
        group_flags=group_flags,
        n_iter=res["n_iter"],
        converged=converged,
        stop_reason=stop_reason,
        delta_chi2=np.where(nonempty, delta, np.nan),
        dof=dof,
        p_value=np.where(nonempty, p_value, np.nan),
        amplitude=np.where(nonempty, amplitude, np.nan),
        inflation=inflation,
    )
    if single:
        out = ChromaticFit(**{k: v[0] for k, v in out.__dict__.items()})
    return out


def _check_start_chi2(start, chi2, omega, flux, diffs, valid, s2, dt, fit_pixel, backend):
    """Refuse a ``start`` whose chi2 is not that of its omega and fluxes on these inputs.

    The chromatic test compares the chromatic chi2 with the start's: a start fitted with another
    gain gave p = 1e-20 on achromatic data, one with another mask a delta-chi2 of -3e5.
    ``chi2``, ``omega`` (G, K) and ``flux`` (G, P, e-) are the start's, with the group axis.
    """
    x = np.where(np.isfinite(omega), omega, 0.0) * dt
    again = np.empty(fit_pixel.shape)
    backend_kernels(backend).chi2_kernel(
        diffs, valid, s2, x, np.where(fit_pixel, flux, 0.0), fit_pixel, again
    )
    stated = np.asarray(chi2, dtype=np.float64)
    # Its own fit computes it in another order: rounding apart, the same.
    differs = fit_pixel & np.isfinite(stated)
    differs &= ~(np.abs(again - stated) <= 1e-6 * np.maximum(np.abs(stated), 1.0))
    if differs.any():
        where = np.argwhere(differs)[0]
        at = tuple(int(i) for i in where[1:]) if np.ndim(start.chi2) == 1 else tuple(
            int(i) for i in where)  # fmt: skip
        raise ValueError(
            f"start: expected fit_omega's result on these reads, read noise, gain, mask and "
            f"read times (without segments): at pixel {at} its chi2 is "
            f"{float(stated[tuple(where)]):.6g}, its omega and flux give "
            f"{float(again[tuple(where)]):.6g} here"
        )


def _chromatic_backend(backend: str = "numpy"):
    """The chromatic fit of ``backend``: :mod:`._chromatic`, or the Julia bridge's twin."""
    from . import _julia

    kernels = backend_kernels(backend)
    if kernels is _julia:
        return kernels
    from . import _chromatic

    return _chromatic


def _inflation(chi2: np.ndarray, dof: np.ndarray) -> np.ndarray:
    """Error-inflation factor ``sqrt(sum chi2 / dof)`` per group of ``chi2 (G, P)``; NaN where
    no degrees of freedom are left."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(dof > 0, np.sqrt(np.nansum(chi2, axis=1) / dof), np.nan)


def _degenerate(degenerate, converged, stop_reason) -> tuple[np.ndarray, np.ndarray]:
    """``(converged, stop_reason)`` with the ``degenerate`` groups (no degrees of freedom left:
    the model fits any data exactly) not converged, stop reason ``BREAKDOWN`` where the
    iteration had ended as converged. New arrays: the Julia bridge's may be read-only."""
    reason = np.where(degenerate & converged, StopReason.BREAKDOWN, stop_reason)
    return converged & ~degenerate, reason.astype(np.int64)


def _convergence_report(res: dict, nonempty: np.ndarray) -> dict:
    """``stop_reason``, ``step_size`` and ``damping`` of a kernel result; from ``converged``
    alone (the sizes NaN) for a backend that does not report them."""
    if "stop_reason" in res:
        return {key: res[key] for key in ("stop_reason", "step_size", "damping")}
    reason = np.where(res["converged"], StopReason.CONVERGED, StopReason.MAX_ITER)
    reason = np.where(nonempty, reason, StopReason.EMPTY).astype(np.int64)
    nan = np.full(reason.shape, np.nan)
    return {"stop_reason": reason, "step_size": nan, "damping": nan.copy()}


def _segment_labels(segments, single: bool, shape: tuple) -> np.ndarray:
    """Validate fit_omega's ``segments``: int labels in [0, P) of shape ``(G, P)``."""
    labels = np.asarray(segments)
    if single and labels.ndim >= 1:
        labels = labels[None]
    try:
        labels = np.broadcast_to(labels, shape)
    except ValueError:
        raise ValueError(
            f"segments: expected a shape broadcastable to {shape[1:] if single else shape}, "
            f"got {np.shape(segments)}"
        ) from None
    if labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
        raise ValueError("segments: expected non-negative integer labels")
    # The offsets are (G, largest label + 1, K): labels are ranks, at most one per pixel (a
    # label of 1e9 asked for tens of GiB).
    if labels.size and labels.max() >= shape[-1]:
        raise ValueError(
            f"segments: expected labels 0 .. {shape[-1] - 1} (ranks: at most one segment per "
            f"pixel), got {labels.max()}"
        )
    return np.ascontiguousarray(labels, dtype=np.int64)


def initial_guess(
    reads,
    read_noise,
    *,
    gain=1.0,
    mask=None,
    read_times=None,
    saturation=None,
    mode: Literal["default", "reference"] = "default",
    backend: Backend = "numpy",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The five-step initial guess of omega and the fluxes (spec section 2.6).

    Parameters
    ----------
    reads, read_noise, gain, mask, read_times, saturation, backend
        As in :func:`fit_omega`.
    mode : {"default", "reference"}
        ``"reference"`` keeps the reference's ``(2 sigma^2)^2`` error term (quirk Q1).

    Returns
    -------
    omega : ndarray, ``(K,)`` or ``(n_groups, K)``
        Normalised so that ``omega[ref_index] == 1``; NaN where no pixel has data.
    flux : ndarray, ``(n_pix,)`` or ``(n_groups, n_pix)``
        In the units of ``reads`` per read interval; NaN for pixels with < 2 usable differences.
    ref_index : ndarray of int64, ``()`` or ``(n_groups,)``
    """
    _check_mode(mode)  # a misspelt mode ran the default one
    single, diffs, valid, flags, s2, dt, gain_map = _group_inputs(
        reads, read_noise, gain, mask, read_times, saturation, backend
    )
    fit_pixel, _, _ = _fit_pixels(valid, flags)
    omega, flux, kstar = backend_kernels(backend).initial_guess(
        diffs, valid, s2, dt, fit_pixel, reference=mode == "reference"
    )
    flux = flux / gain_map
    return (omega[0], flux[0], kstar[0]) if single else (omega, flux, kstar)


def sample_omega(
    reads,
    read_noise,
    n_samples: int,
    *,
    burn_in: int,
    rng: np.random.Generator,
    gain=1.0,
    mask=None,
    read_times=None,
    saturation=None,
    ref_index: int | None = None,
    backend: Backend = "numpy",
) -> OmegaSamples:
    """Gibbs sampler of omega and the fluxes of one pixel group (paper appendix A).

    Starts from the Gauss-Newton solution (:func:`fit_omega`) and alternates the exact Gaussian
    conditionals of the fluxes given omega and of omega given the fluxes, each with the
    covariances rebuilt from the current state (spec sections 2.3 and 4). At low
    signal-to-noise (fluxes near the read noise per read) the samples are not calibrated:
    use :func:`fit_omega`'s covariance there (``docs/model.md``, "Sampling").

    Parameters
    ----------
    reads : array_like, ``(n_reads, n_pix)``
    read_noise, gain, mask, read_times, saturation
        As in :func:`fit_omega`.
    n_samples : int
        Samples kept after ``burn_in``.
    burn_in : int
        Sweeps discarded first.
    rng : numpy.random.Generator
    ref_index : int, optional

    Returns
    -------
    OmegaSamples
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError("rng: expected a numpy.random.Generator")
    # Counts as every option takes them (int() took 2.5 as 2 and True as 1).
    n_samples = _count(n_samples, "n_samples", 2)
    burn_in = _count(burn_in, "burn_in", 0)
    reads = _as_reads(reads, 2, 2)
    start = fit_omega(
        reads, read_noise, gain=gain, mask=mask, read_times=read_times,
        saturation=saturation, ref_index=ref_index, backend=backend,
    )  # fmt: skip
    if start.group_flags & Flag.EMPTY_GROUP:
        raise ValueError("reads: no pixel has 2 or more usable differences")
    _, diffs, valid, flags, s2, dt, gain_map = _group_inputs(
        reads, read_noise, gain, mask, read_times, saturation, backend
    )
    fit_pixel, _, _ = _fit_pixels(valid, flags)
    n_free = int(np.sum(np.isfinite(start.omega))) - 1
    noise = rng.standard_normal((int(burn_in) + int(n_samples), diffs.shape[1] + n_free))
    omega_s, flux_s = backend_kernels(backend).gibbs(
        diffs, valid, s2, dt, fit_pixel, start.omega[None], (start.flux * gain_map[0])[None],
        int(start.ref_index), int(burn_in), noise,
    )  # fmt: skip
    flux_s = flux_s / gain_map[0]
    omega_mean = omega_s.mean(axis=0)
    omega_cov = np.cov(omega_s, rowvar=False)
    omega_cov[~np.isfinite(omega_cov)] = 0.0
    omega_cov[start.ref_index, :] = 0.0
    omega_cov[:, start.ref_index] = 0.0
    flux = extract_fluxes(
        reads, read_noise, omega_mean, gain=gain, mask=mask, read_times=read_times,
        saturation=saturation, backend=backend,
    )  # fmt: skip
    return OmegaSamples(
        omega_samples=omega_s,
        flux_samples=flux_s,
        omega_mean=omega_mean,
        omega_cov=omega_cov,
        flux=flux,
        ref_index=int(start.ref_index),
        group_flags=int(start.group_flags),
    )


# --------------------------------------------------------------------------------------------
# Jump (cosmic-ray) search
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JumpResult:
    """Jumps found in every pixel's ramp, and the fluxes with them masked.

    ``K = n_reads - 1``; difference ``k`` is ``reads[k + 1] - reads[k]``.

    Attributes
    ----------
    diff_mask_bits : ndarray, uint8, ``(K, ceil(n_pix / 8))``
        The updated mask, on differences, 8 pixels to a byte as ``np.packbits(diff_mask.reshape(K,
        -1), axis=1)`` (``n_pix`` pixels in C order): a bit is set where a difference is not used,
        because it touches a masked, non-finite or saturated read, its omega element is not
        finite, or it holds a jump.
    jump_index : ndarray, int64, ``(n, 1 + len(pixel_shape))``
        The flagged differences, one row ``(k, *pixel index)`` each, in the order of
        ``np.argwhere(jumps)``. Jumps are rare, so they are kept as a list: two arrays of the
        cube's size would be almost all 0.
    jump_charge : ndarray, float64, ``(n,)``
        Fitted jump of each row of ``jump_index`` (e- when ``gain=1``, else DN), the charge
        added to that difference beyond the model.
    n_jumps : ndarray, int64, ``pixel_shape``
        Number of differences flagged per pixel.
    flux : FluxFit
        Eq-15 fluxes from the differences left (``~diff_mask``), as :func:`extract_fluxes` fits
        them. Its flags add ``JUMP_DETECTED`` and ``FEW_CLEAN_DIFFS`` to the usual bits.

    The dense views ``diff_mask``, ``jumps`` (bool, ``(K, *pixel_shape)``, True where the search
    flagged a jump) and ``jump_size`` (float64, the same shape, 0 where no jump was flagged) are
    built on first use. Kept dense, they would take 2.5 times the memory of a float32 cube.
    """

    diff_mask_bits: np.ndarray
    jump_index: np.ndarray
    jump_charge: np.ndarray
    n_jumps: np.ndarray
    flux: FluxFit

    @property
    def diff_shape(self) -> tuple[int, ...]:
        """``(K, *pixel_shape)``, the shape of the dense views."""
        return (self.diff_mask_bits.shape[0], *np.shape(self.n_jumps))

    @cached_property
    def diff_mask(self) -> np.ndarray:
        """bool, ``(K, *pixel_shape)``: True where a difference is not used."""
        bits = np.unpackbits(self.diff_mask_bits, axis=1, count=self.n_jumps.size)
        return bits.view(bool).reshape(self.diff_shape)

    @cached_property
    def jumps(self) -> np.ndarray:
        """bool, ``(K, *pixel_shape)``: True where the search flagged a jump."""
        dense = np.zeros(self.diff_shape, dtype=bool)
        dense[tuple(self.jump_index.T)] = True
        return dense

    @cached_property
    def jump_size(self) -> np.ndarray:
        """float64, ``(K, *pixel_shape)``: each flagged jump's charge, 0 elsewhere."""
        dense = np.zeros(self.diff_shape)
        dense[tuple(self.jump_index.T)] = self.jump_charge
        return dense

    def __repr__(self) -> str:
        """Shapes and key figures (a few lines, never whole arrays)."""
        from .reprs import finite_median, fmt, shape_of

        return (
            f"JumpResult: pixel_shape {shape_of(self.n_jumps)}, K = {self.diff_shape[0]} "
            f"differences; {len(self.jump_charge)} jumps in "
            f"{int(np.count_nonzero(self.n_jumps))} pixels, median jump size "
            f"{fmt(finite_median(self.jump_charge))}; "
            f"{int(self.flux.n_diff.size * self.diff_shape[0] - self.flux.n_diff.sum())} "
            f"differences unused\n  flux: {self.flux!r}"
        )


def _check_mode(mode) -> None:
    """The omega fit's ``mode``: "default" or "reference" (APRampFit's ``check_mode``)."""
    if mode not in ("default", "reference"):
        raise ValueError(f"mode: expected 'default' or 'reference', got {mode!r}")


def _check_threshold(threshold, name: str = "threshold") -> float:
    number = threshold if isinstance(threshold, (int, float, np.integer, np.floating)) else None
    if (
        isinstance(threshold, (bool, np.bool_))
        or number is None
        or not (0 < number <= _MAX_THRESHOLD)
    ):
        raise ValueError(
            f"{name}: expected a value > 0 (sigma), at most {_MAX_THRESHOLD:g}, got {threshold!r}"
        )
    return float(number)


def find_jumps(
    reads,
    read_noise,
    *,
    omega=None,
    gain=1.0,
    mask=None,
    threshold: float = 4.5,
    max_jumps: int | None = None,
    groups=None,
    read_times=None,
    saturation=None,
    two_adjacent: bool = False,
    backend: Backend = "numpy",
) -> JumpResult:
    """Find jumps (cosmic rays) in every pixel's ramp, under the constant or time-variable model.

    Brandt's likelihood search (spec section 1.6, ``docs/jumps.md``). For every clean difference
    ``k`` the ramp is refitted with a free jump in that difference, model ``f x + b e_k`` with
    ``x = omega * dt`` (``omega = 1``: the constant model). The difference whose jump lowers chi2
    most is masked if the drop exceeds ``threshold**2``, and the search repeats on that pixel
    until nothing passes or at most 3 clean differences are left. Each refit is closed-form from
    one O(K) tridiagonal solve. The covariance is evaluated at the median difference rate, as in
    Brandt's code; a pixel where that search flags anything is searched again from the start
    with the covariance at the GLS rate of the differences left clean (the median's low draws
    made false alarms where read noise rules). With ``omega`` given, a dip in the sky is part of
    the model, not a jump.

    Parameters
    ----------
    reads : array_like, ``(n_reads, *pixel_shape)``
    read_noise : array_like
        Single-read sigma in the units of ``reads``, broadcastable to ``pixel_shape``.
    omega : array_like, ``(K,)`` or ``(n_groups, K)``, optional
        Transparency factors, as in :func:`extract_fluxes`; default all 1 (constant model).
    gain : float or array_like, optional
        e-/DN, broadcastable to ``pixel_shape``.
    mask : ndarray of bool, optional
        ``reads.shape``; True = bad read. Differences touching it are never searched.
    threshold : float, optional
        Significance in sigma: a single jump needs a chi2 drop above ``threshold**2`` (20.25), a
        pair of adjacent jumps the chi2 (2 dof) value of the same tail probability (23.8).
    max_jumps : int, optional
        Stop a pixel's search after this many flagged differences; default no limit.
    groups : array_like of int, ``pixel_shape``, optional
        Row of ``omega`` used by each pixel; required when ``omega`` is 2-D.
    read_times : array_like, optional
        ``(n_reads,)``; default unit spacing.
    saturation : float or array_like, optional
        Saturation level in the units of ``reads``.
    two_adjacent : bool, optional
        Also search for jumps in two adjacent differences (one bad read). Brandt's code does this
        only for resultants of several reads; APOGEE's single reads need one-difference jumps only.
    backend : {"numpy", "julia", "auto"}, optional
        As in :func:`fit_constant`. Julia runs the search, the final fit and the jump sizes in
        APRampFit's ``find_jumps_kernel!``, pixel by pixel (NumPy screens blocks of pixels
        first; both flag the same differences). The chi2 thresholds are computed here, in
        Python, for both backends.

    Returns
    -------
    JumpResult
        The mask packed, the jumps as a list (dense views on first read), per-pixel arrays of
        ``pixel_shape``; fluxes at omega's normalisation.

    Examples
    --------
    >>> import numpy as np
    >>> from pyapred import find_jumps, simulate_ramps
    >>> sim = simulate_ramps(np.full(500, 100.0), 15.0, n_reads=30, cosmic_ray_rate=0.005,
    ...                      cosmic_ray_charge=(2000, 5000), rng=np.random.default_rng(3))
    >>> res = find_jumps(sim.reads, 15.0)
    >>> bool(np.array_equal(res.jumps, sim.jumps > 0))
    True
    """
    from . import _jumps

    reads = _as_reads(reads)
    n_reads = reads.shape[0]
    pixel_shape = reads.shape[1:]
    K = n_reads - 1
    if omega is None:
        omega = np.ones(K)
    omega2d, groups_flat = _omega_rows(omega, groups, K, pixel_shape)
    thr_one, thr_two = _jumps.chi2_thresholds(_check_threshold(threshold))
    max_jumps = _jumps.NO_LIMIT if max_jumps is None else _count(max_jumps, "max_jumps", 0)
    two_adjacent = _flag(two_adjacent, "two_adjacent")
    dt = read_intervals(read_times, n_reads)
    reads2d, bad, use_mask, sigma, gain_flat, sat = _pixel_inputs(
        reads, read_noise, gain, mask, saturation
    )
    n_pix = reads2d.shape[1]
    omega2d = np.ascontiguousarray(omega2d)
    kernels = _jump_backend(backend)
    diff_bits = np.empty((K, (n_pix + 7) // 8), dtype=np.uint8)
    n_jumps = np.empty(n_pix, dtype=np.int64)
    out = _flux_outputs(n_pix)
    inputs = (reads2d, bad, use_mask, omega2d, groups_flat, dt, sigma, gain_flat, sat)
    # Jumps are rare: the search writes no (K, n_pix) arrays of where and how big (almost all 0,
    # and costlier than the search); the few pixels with jumps get them after.
    not_wanted = np.empty((K, 0), dtype=np.bool_), np.empty((K, 0))
    kernels.find_jumps_kernel(
        *inputs, thr_one, thr_two, bool(two_adjacent), int(max_jumps), 2, diff_bits, *not_wanted,
        n_jumps, *out,
    )  # fmt: skip
    with_jumps = np.flatnonzero(n_jumps)
    jumps = np.empty((K, with_jumps.size), dtype=np.bool_)
    jump_size = np.empty((K, with_jumps.size))
    kernels.jump_sizes_kernel(*inputs, with_jumps, diff_bits, out[0], jumps, jump_size)
    k, column = np.nonzero(jumps)
    pixel = with_jumps[column]
    jump_index = np.column_stack(
        (k, *(np.unravel_index(pixel, pixel_shape) if pixel_shape else ()))
    ).astype(np.int64)
    return JumpResult(
        diff_mask_bits=diff_bits,
        jump_index=jump_index,
        jump_charge=jump_size[k, column] / (gain_flat if gain_flat.size == 1 else gain_flat[pixel]),
        n_jumps=n_jumps.reshape(pixel_shape),
        flux=_flux_fit(out, gain_flat, pixel_shape),
    )


def _fit_omega_with_jumps(diffs, valid, s2, dt, fit_pixel, flags, threshold, options, backend):
    """fit_omega's joint fit alternated with the jump search: ``(res, n_diff, flags, jump_mask)``.

    The alternation runs on ``backend`` (``_jumps.fit_omega_with_jumps`` or its Julia twin);
    ``n_diff`` and the jump flags are derived here from what it returns, for both backends.
    """
    from . import _jumps

    res, used, n_jumps = _jump_backend(backend).fit_omega_with_jumps(
        diffs, valid, s2, dt, fit_pixel, threshold=threshold, max_rounds=3, **options
    )
    n_diff = used.sum(axis=-1).astype(np.int64)
    flags = flags | np.where(n_jumps > 0, int(Flag.JUMP_DETECTED), 0)
    flags |= np.where(fit_pixel & (n_diff <= _jumps.MIN_CLEAN_DIFFS), int(Flag.FEW_CLEAN_DIFFS), 0)
    return res, n_diff, flags, valid & ~used
