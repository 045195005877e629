"""Stage 3, extract a chip: every pixel's flux with its fiber's omega fixed.

:func:`extract_chip` extracts every pixel of a chip in one :func:`pyapred.solver.extract_fluxes`
call (each pixel with the omega of the fiber it belongs to, background pixels with the constant
model), the pixels with a detected jump again with their reads after the jump masked. Arrays
in, a frozen :class:`ChipResult` out; no file I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import expect_type
from ..solver import Flag, FluxFit, extract_fluxes, fit_constant
from .fibers import FiberFits
from .inputs import ChipExposure
from .options import FitOptions
from .prepare import PreparedChip

__all__ = ["ChipResult", "extract_chip"]


@dataclass(frozen=True)
class ChipResult:
    """Extracted fluxes of one chip.

    Attributes
    ----------
    flux, flux_var, chi2, n_diff, flags : ndarray, ``(ny, nx)``
        As in :class:`~pyapred.solver.FluxFit` (DN per read interval; ``n_diff`` as int16), plus
        the pipeline's pixel flags ``JUMP_DETECTED`` and ``BACKGROUND``. None once written to a
        product by :func:`run_exposure` with ``product=``.
    fiber : ndarray of int16, ``(ny, nx)``
        Fiber whose omega each pixel used; -1 for background and reference columns.
    constant : FluxFit or None
        Every pixel with the constant model (``FitOptions.keep_constant``).
    fibers : FiberFits
        The fits this chip's extraction used (shared by all chips with ``joint_chips``).
    prepared : PreparedChip
    problems : tuple of str
        :func:`chip_problems`' line where most traced pixels have no flux (kept with the
        images written).
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
    problems: tuple[str, ...] = ()

    def __repr__(self) -> str:
        """Shapes and key figures (a few lines, never whole arrays)."""
        from ..solver.reprs import count_flags, finite_median, fmt

        if self.flux is None:
            images = f"images {self.fiber.shape} written to the product (not kept)"
        else:
            traced = self.fiber >= 0
            images = (
                f"images {self.flux.shape}; median flux of traced pixels "
                f"{fmt(finite_median(self.flux[traced]))} DN/read; "
                f"{count_flags(self.flags, ignore=Flag.BACKGROUND)}"
            )
        constant = "kept" if self.constant is not None else "not kept"
        return (
            f"ChipResult {self.prepared.name}: {images}; constant model {constant}\n"
            f"  prepared: {self.prepared!r}\n  fibers: {self.fibers!r}"
        )


def extract_chip(
    chip: ChipExposure, prepared: PreparedChip, fibers: FiberFits, options: FitOptions
) -> ChipResult:
    """Every pixel of the chip with its fiber's omega: one ``extract_fluxes`` call, then the
    pixels with a first-pass jump again with the jump's read masked.

    Parameters
    ----------
    chip : ChipExposure
        The chip's reads ``(n_reads, ny, nx)``, DN, and calibration.
    prepared : PreparedChip
        The same chip after :func:`~pyapred.exposure.prepare_chip` (pixel map and jumps).
    fibers : FiberFits
        The fibers' omega (``FiberFits.omega``, mean 1), from
        :func:`~pyapred.exposure.fit_fibers`; a chromatic fiber's pixels use the omega of their
        own column (:meth:`FiberFits.column_omega`).
    options : FitOptions
        ``keep_constant`` and ``backend`` are used.

    Returns
    -------
    ChipResult
        Fluxes in DN per read interval, ``(ny, nx)``.
    """
    expect_type("chip", chip, ChipExposure)
    expect_type("prepared", prepared, PreparedChip)
    expect_type("fibers", fibers, FiberFits)
    expect_type("options", options, FitOptions)
    n_reads, ny, nx = chip.reads.shape
    n_fibers, K = fibers.omega.shape
    if prepared.name != chip.name:  # another chip's pixel map and fibers: no shape tells
        raise ValueError(f"prepared: expected chip {chip.name!r}'s, got chip {prepared.name!r}'s")
    if prepared.shape != chip.reads.shape:
        raise ValueError(f"prepared: expected the chip's {chip.reads.shape} reads, was prepared "
                         f"from {prepared.shape}")  # fmt: skip
    if (n_fibers, K) != (prepared.traces.n_fibers, n_reads - 1):
        raise ValueError(
            f"fibers: expected the fits of the chip's {prepared.traces.n_fibers} fibers over "
            f"{n_reads - 1} read differences, got {n_fibers} x {K}"
        )
    nc = prepared.traces.n_columns
    fiber = np.full((ny, nx), -1, dtype=np.int16)
    fiber[:, :nc] = prepared.pixel_map.fiber
    groups = fiber.astype(np.int32)  # the solver's type: no copy of the chip-sized map
    groups[fiber < 0] = n_fibers
    table = np.vstack([fibers.omega, np.ones((1, K))])
    if fibers.chromatic is not None:
        # A chromatic fiber's pixels use the row of their own column: omega at its wavelength.
        chromatic, per_column = fibers.column_omega(prepared.name, nc)
        if chromatic.size:
            slot = np.full(n_fibers, -1, dtype=np.int64)
            slot[chromatic] = np.arange(chromatic.size)
            science = groups[:, :nc]
            own = slot[np.minimum(science, n_fibers - 1)]
            on_chromatic = (science < n_fibers) & (own >= 0)
            column = np.broadcast_to(np.arange(nc), science.shape)
            science[on_chromatic] = n_fibers + 1 + own[on_chromatic] * nc + column[on_chromatic]
            table = np.vstack([table, per_column.reshape(-1, K)])

    def extract(reads, read_noise, gain, saturation, groups, mask=None):
        return extract_fluxes(reads, read_noise, table, groups=groups, gain=gain, mask=mask,
                              saturation=saturation, backend=options.backend)  # fmt: skip

    result = _masked_at_jumps(extract, chip, prepared.jumps, groups)
    constant = None
    if options.keep_constant:
        constant_fit = _without_groups(fit_constant, options.backend)
        constant = _masked_at_jumps(constant_fit, chip, prepared.jumps, groups)
    flags = result.flags  # this call's own array: flagged in place, no chip-sized copy
    if chip.saturation_cut is not None:
        # The file ended these ramps at saturation (their later reads are NaN): saturated, not
        # non-finite reads of the detector (APRampFit's sutr_omega, the same rule).
        for fit in (result, constant) if constant is not None else (result,):
            cut = fit.flags[chip.saturation_cut]
            fit.flags[chip.saturation_cut] = (cut & ~int(Flag.NONFINITE_READ)) | int(Flag.SATURATED)
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
        problems=tuple(chip_problems(prepared.name, result.flux, flags)),
    )


#: The share of a chip's traced pixels without a flux above which the chip is a problem.
MAX_NO_FLUX_SHARE = 0.5


def chip_problems(name: str, flux, flags) -> list[str]:
    """A line where most of chip ``name``'s traced pixels (not ``BACKGROUND``) have no flux,
    with the flags behind it, from its ``(ny, nx)`` flux and pixel flags (a product's ``rate``
    and ``flags`` give them too). Every pixel saturated (``--saturation 1``), or a jump in
    most differences (``--jump-threshold 1e-3``: 93 % of the pixels NaN), had exit code 0 and
    no problem said."""
    flags = np.asarray(flags, dtype=np.int64)
    traced = (flags & Flag.BACKGROUND) == 0
    empty = traced & ~np.isfinite(np.asarray(flux))
    if not traced.any() or empty.sum() <= MAX_NO_FLUX_SHARE * traced.sum():
        return []
    causes = [
        f"{label} {100.0 * np.count_nonzero(empty & (flags & bit != 0)) / empty.sum():.0f} %"
        for label, bit in (
            ("saturated", Flag.SATURATED),
            ("jumps", Flag.JUMP_DETECTED),
            ("non-finite reads", Flag.NONFINITE_READ),
            ("too few differences", Flag.TOO_FEW_DIFFS),
        )  # fmt: skip
        if np.any(empty & (flags & bit != 0))
    ]
    share = 100.0 * empty.sum() / traced.sum()
    return [f"chip {name}: {share:.0f} % of the traced pixels have no flux (of those: "
            f"{', '.join(causes) or 'no flag'})"]  # fmt: skip


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


def _without_groups(fit: Callable, backend: str = "numpy") -> Callable:
    """``fit(reads, read_noise, **kwargs)`` in :func:`_masked_at_jumps`'s calling convention."""

    def call(reads, read_noise, gain, saturation, groups, mask=None):
        return fit(reads, read_noise, gain=gain, saturation=saturation, mask=mask, backend=backend)

    return call
