"""Fiber traces on the detector: profiles, omega-fit pixels and the pixel-to-fiber map.

A chip carries 300 fiber traces stacked along y (rows); dispersion runs along x (columns). This
module turns trace centers and widths into the pixel sets the pipeline needs:

- :func:`pixel_fiber_map`: every pixel's dominant fiber (or background) and how pure it is;
- :func:`select_fit_pixels`: per fiber, the trace-core pixels that carry omega information
  (unsaturated, no cosmic ray, not blended, bright enough).

Conventions. Python APIs use 0-based fiber indices ``i = 300 - fiberId`` (ApogeeReduction.jl's
``fiberIndx = 301 - fiberId`` minus one) and 0-based rows. Array axes are ``(n_fibers,
n_columns)`` for per-trace quantities and ``(ny, n_columns)`` for images, C order, the same as the
chip's ``(ny, nx)`` read planes. ApogeeReduction.jl's 1-based, Julia-ordered arrays are converted
at the boundary by :meth:`Traces.from_trace_params` and :meth:`Traces.from_centers`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "FPI_FIBER_IDS",
    "MAX_TRACE_SIGMA",
    "N_FIBERS",
    "FitPixels",
    "PixelMap",
    "Traces",
    "fiber_id",
    "fiber_index",
    "fpi_fiber_indices",
    "pixel_fiber_map",
    "parse_trace_file_name",
    "read_trace_file",
    "select_fit_pixels",
    "trace_brightness",
    "trace_file_name",
    "write_trace_file",
]

N_FIBERS = 300
#: fiberIds of the FPI ("fpiguide") fibers, never on sky (ApogeeReduction.jl get_fpi_guide_fiberID).
FPI_FIBER_IDS = {"apo": (75, 225), "lco": (82, 213)}
#: Widest plausible trace profile, Gaussian sigma in rows (APOGEE's are about 1 px): a wider
#: one is a corrupt file, and would make every pixel of the chip a fit pixel's neighbour.
MAX_TRACE_SIGMA = 20.0
#: Narrowest trace width (sigma, px) a trace file may give: APOGEE's are about 1 px; a width
#: far below a pixel makes every profile a spike (and one such fiber spoiled a chip's fit).
MIN_TRACE_SIGMA = 0.1
# The most columns a trace file may declare (an APOGEE chip has 2048; room for other detectors).
MAX_TRACE_COLUMNS = 4096
# Science columns of an APOGEE chip by its width: ar3Dcal (2048) or raw with the reference output.
APOGEE_SCIENCE_COLUMNS = {2048: 2048, 2560: 2048}


def fiber_index(fiber_id: ArrayLike) -> np.ndarray:
    """0-based on-chip fiber index of an APOGEE fiberId (1..300): ``300 - fiberId``.

    A ValueError for anything else than whole fiberIds 1 to 300 (301 gave -1, the last fiber
    of an array it indexed; 2.5 gave 297.5, True 299).
    """
    ids = _whole_numbers(fiber_id, 1, N_FIBERS, "fiber_id: expected whole fiberIds")
    return N_FIBERS - ids


def _chip_image(value, name: str, ny: int, n_columns: int, dtype=np.float64) -> np.ndarray:
    """``value`` as a ``(ny, >= n_columns)`` image of ``dtype``; a ValueError naming ``name``
    otherwise (the kernels that read it check no bounds)."""
    try:
        image = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected an ({ny}, >= {n_columns}) image of numbers, got "
                         f"{type(value).__name__}") from None  # fmt: skip
    if image.ndim != 2 or image.shape[0] != ny or image.shape[1] < n_columns:
        raise ValueError(f"{name}: expected an ({ny}, >= {n_columns}) image (rows, columns), "
                         f"got shape {image.shape}")  # fmt: skip
    return image


def _finite_number(value, name: str, low: float, *, above: bool = False) -> float:
    """``float(value)``, finite and at least ``low`` (above it with ``above``); a ValueError
    naming ``name`` otherwise."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = np.nan
    if not (np.isfinite(number) and (number > low if above else number >= low)):
        bound = f"> {low:g}" if above else f">= {low:g}"
        raise ValueError(f"{name}: expected a finite number {bound}, got {value!r}")
    return number


def _as_float_array(value, name: str) -> np.ndarray:
    """``value`` as float64, a ValueError naming ``name`` when it holds no numbers."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected numbers, got {type(value).__name__}") from None


def fiber_id(fiber_index: ArrayLike) -> np.ndarray:
    """APOGEE fiberId of a 0-based on-chip fiber index: ``300 - index``.

    A ValueError for anything else than whole indices 0 to 299 (300 gave fiberId 0, -1 gave
    301, 2.5 gave 297.5), as :func:`fiber_index` refuses what is not a fiberId.
    """
    expected = "fiber_index: expected whole fiber indices"
    index = _whole_numbers(fiber_index, 0, N_FIBERS - 1, expected)
    return N_FIBERS - index


def _whole_numbers(values, low: int, high: int, expected: str) -> np.ndarray:
    """``values`` as an array of whole numbers in ``low..high`` (integers as int64: an int8
    holds no 300); a ValueError ``"{expected} {low} to {high}, got ..."`` otherwise."""
    array = np.asarray(values)
    whole = array.dtype.kind in "iuf" and bool(np.all(np.isfinite(array)))
    if not whole or not np.all((array == np.round(array)) & (array >= low) & (array <= high)):
        raise ValueError(f"{expected} {low} to {high}, got {values!r}")
    return array.astype(np.int64) if array.dtype.kind in "iu" else array


def fpi_fiber_indices(telescope: str) -> tuple[int, ...]:
    """0-based indices of the FPI fibers of ``telescope`` ("apo" or "lco")."""
    try:
        ids = FPI_FIBER_IDS[telescope.lower()]
    except KeyError:
        raise ValueError(f"telescope: expected 'apo' or 'lco', got {telescope!r}") from None
    return tuple(int(fiber_index(i)) for i in ids)


@dataclass(frozen=True)
class Traces:
    """Gaussian trace profiles of the fibers of one chip.

    Attributes
    ----------
    y_center : ndarray, float64, ``(n_fibers, n_columns)``
        0-based row of each trace's center in each column.
    sigma : ndarray, float64, ``(n_fibers, n_columns)``
        Gaussian width in rows (pixels), > 0.
    excluded : ndarray of bool, ``(n_fibers,)``
        Fibers left out of the omega fits (the FPI fibers); their pixels get the constant model.
    height : ndarray, float64, ``(n_fibers, n_columns)``, or None
        Profile height (DN per read) where known, e.g. from a trace file's ``trace_params``;
        pyapred's fits do not use it.
    metadata : dict
        A trace file's ``metadata`` group (``trace_type``, ``git_commit``, ...); empty otherwise.
    path : str or None
        The file the traces were read from.

    ``height``, ``metadata`` and ``path`` describe where the traces came from: they take no part
    in ``==``, and default to None, ``{}`` and None.
    """

    y_center: np.ndarray
    sigma: np.ndarray
    excluded: np.ndarray = field(default=None)  # type: ignore[assignment]
    height: np.ndarray | None = field(default=None, compare=False, repr=False)
    metadata: dict = field(default_factory=dict, compare=False, repr=False)
    path: str | None = field(default=None, compare=False)

    def __post_init__(self):
        y = _as_float_array(self.y_center, "y_center")
        if y.ndim != 2 or not (1 <= y.shape[0] <= N_FIBERS and y.shape[1] >= 1):
            raise ValueError(
                f"y_center: expected (n_fibers, n_columns) with 1 to {N_FIBERS} fibers and at "
                f"least one column, got shape {y.shape}"
            )
        try:
            s = np.broadcast_to(_as_float_array(self.sigma, "sigma"), y.shape).copy()
        except ValueError as error:
            if str(error).startswith("sigma:"):
                raise
            raise ValueError(
                f"sigma: expected a number or the shape of y_center {y.shape}, got shape "
                f"{np.shape(self.sigma)}"
            ) from None
        if not np.all(np.isfinite(y)):
            raise ValueError("y_center: expected finite values")
        if not np.all((s >= MIN_TRACE_SIGMA) & (s <= MAX_TRACE_SIGMA)):  # NaN fails too
            raise ValueError(
                f"sigma: expected widths in [{MIN_TRACE_SIGMA:g}, {MAX_TRACE_SIGMA:g}] px"
            )
        # Fiber index 0 (fiberId 300) is the lowest on the chip: centers rise with the index at
        # every column, or fluxes would be attached to the wrong fiberIds.
        unordered = np.argwhere(~(np.diff(y, axis=0) > 0))
        if unordered.size:
            fiber, column = unordered[0]
            raise ValueError(
                f"y_center: expected centers rising with the fiber index at every column, found "
                f"{len(unordered)} that do not (first fiberId {int(fiber_id(fiber + 1))} at "
                f"{y[fiber + 1, column]:.2f}, not above fiberId {int(fiber_id(fiber))} at "
                f"{y[fiber, column]:.2f}, column {column})"
            )
        excluded = np.zeros(y.shape[0], bool) if self.excluded is None else self.excluded
        excluded = np.asarray(excluded, dtype=bool)
        if excluded.shape != (y.shape[0],):
            raise ValueError(f"excluded: expected shape ({y.shape[0]},), got {excluded.shape}")
        height = self.height
        if height is not None:
            height = np.asarray(height, dtype=np.float64)
            if height.shape != y.shape:
                raise ValueError(f"height: expected shape {y.shape}, got {height.shape}")
        object.__setattr__(self, "y_center", y)
        object.__setattr__(self, "sigma", s)
        object.__setattr__(self, "excluded", excluded)
        object.__setattr__(self, "height", height)
        object.__setattr__(self, "metadata", dict(self.metadata or {}))
        object.__setattr__(self, "path", None if self.path is None else os.fspath(self.path))

    def __repr__(self) -> str:
        """Size, center and width ranges, FPI fibers and the file (a line, never whole arrays)."""
        from ..solver.reprs import fmt

        excluded = [int(i) for i in fiber_id(np.flatnonzero(self.excluded))]
        return (
            f"Traces: {self.n_fibers} fibers x {self.n_columns} columns; y-centers "
            f"{fmt(self.y_center.min(), '.1f')}..{fmt(self.y_center.max(), '.1f')} (0-based rows), "
            f"widths {fmt(self.sigma.min())}..{fmt(self.sigma.max())} px; excluded fiberIds "
            f"{excluded or 'none'}; from {self.path or 'memory'}"
        )

    @property
    def n_fibers(self) -> int:
        return self.y_center.shape[0]

    @property
    def n_columns(self) -> int:
        return self.y_center.shape[1]

    @classmethod
    def from_trace_params(cls, params, *, telescope: str | None, one_based: bool = True) -> Traces:
        """Traces from ApogeeReduction.jl ``trace_params`` (``traceMain`` files).

        Parameters
        ----------
        params : array_like, ``(n_columns, n_fibers, 3)``
            Julia's ``trace_params[x, fiberIndx, p]`` with p = height, y-center, sigma. The
            reversed ``(3, n_fibers, n_columns)`` layout in which h5py shows the dataset is
            accepted too. The heights are kept in :attr:`height`.
        telescope : {"apo", "lco"} or None
            Marks that telescope's FPI fibers as excluded. Required (as in APRampFit's
            ``traces_from_params``): a forgotten one would fit the FPI fibers as steady bright
            fibers, which set the reference read and the borrowed omega of the others. None: no
            FPI fiber (a simulated geometry).
        one_based : bool, optional
            Whether the y-centers are 1-based (ApogeeReduction.jl); default True.
        """
        params = np.asarray(params, dtype=np.float64)
        if params.ndim != 3 or 3 not in (params.shape[0], params.shape[2]):
            raise ValueError(
                f"params: expected (n_columns, n_fibers, 3) or its reverse, got {params.shape}"
            )
        if params.shape[2] != 3:
            params = params.T
        return cls._build(
            params[:, :, 1].T, params[:, :, 2].T, telescope, one_based, height=params[:, :, 0].T
        )

    @classmethod
    def from_centers(
        cls, centers, sigma=1.0, *, telescope: str | None, one_based: bool = True
    ) -> Traces:
        """Traces from trace centers alone, e.g. ar1Dcal ``extract_trace_centers``.

        Parameters
        ----------
        centers : array_like, ``(n_columns, n_fibers)``
            Julia's ``extract_trace_centers[x, fiberIndx]`` (h5py shows ``(n_fibers,
            n_columns)``: pass ``.T``).
        sigma : float or array_like, optional
            Gaussian width in pixels, broadcastable to ``(n_fibers, n_columns)``.
        telescope, one_based
            As in :meth:`from_trace_params` (``telescope`` required there too).
        """
        centers = np.asarray(centers, dtype=np.float64)
        if centers.ndim != 2:
            raise ValueError(f"centers: expected (n_columns, n_fibers), got {centers.shape}")
        return cls._build(centers.T, sigma, telescope, one_based)

    @classmethod
    def _build(cls, y_center, sigma, telescope, one_based, **extra) -> Traces:
        y = np.asarray(y_center) - (1.0 if one_based else 0.0)
        excluded = np.zeros(y.shape[0], dtype=bool)
        if telescope is not None:
            excluded[[i for i in fpi_fiber_indices(telescope) if i < y.shape[0]]] = True
        return cls(y_center=y, sigma=sigma, excluded=excluded, **extra)

    def profile(self, rows: np.ndarray) -> np.ndarray:
        """Pixel-integrated unit-area Gaussian of every trace at the given rows.

        Parameters
        ----------
        rows : ndarray of int, ``(n_fibers, n_columns)`` or broadcastable

        Returns
        -------
        ndarray, float64, ``(n_fibers, n_columns)``
            Fraction of each trace's light (per column) that falls in those rows.
        """
        from scipy.special import ndtr

        scale = 1.0 / self.sigma
        upper = (rows + 0.5 - self.y_center) * scale
        lower = (rows - 0.5 - self.y_center) * scale
        return ndtr(upper) - ndtr(lower)

    def check_geometry(self, ny: int, nx: int, source: str = "traces") -> None:
        """Raise :class:`~pyapred.errors.InputError` unless the traces fit a ``(ny, nx)`` chip.

        Warns when traces stop short of an APOGEE chip's 2048 science columns (``nx`` 2048, or
        2560 with the reference output): the untraced columns get no fiber (``BACKGROUND``).
        """
        from ..errors import InputError, InputWarning

        if self.n_columns > nx:
            raise InputError(
                source, "trace columns", f"at most the chip's {nx} columns", str(self.n_columns)
            )
        science = APOGEE_SCIENCE_COLUMNS.get(nx)
        if science is not None and self.n_columns < science:
            import warnings

            warnings.warn(
                f"{source}: trace columns: the traces cover columns 0-{self.n_columns - 1} of "
                f"the chip's {science}; columns {self.n_columns}-{science - 1} get no fiber "
                "(flagged BACKGROUND)",
                InputWarning,
                stacklevel=2,
            )
        outside = ~((self.y_center >= -0.5) & (self.y_center <= ny - 0.5))
        if outside.any():
            # A trace file's y-centers are 1-based (ApogeeReduction.jl): say them as it does.
            base, convention = (1, "1-based, as in the file") if self.path else (0, "0-based")
            fiber, column = np.argwhere(outside)[0]
            first = self.y_center[fiber, column] + base
            raise InputError(
                source,
                "trace y-centers",
                # The pixels' edges: a center within half a row of the first or last row.
                f"centers within the chip's rows, {base - 0.5:g} to {ny - 0.5 + base:g} "
                f"({convention})",
                f"{int(outside.sum())} outside, the first {first:.1f} "
                f"(fiberId {int(fiber_id(fiber))}, column {column})",
            )


@dataclass(frozen=True)
class PixelMap:
    """The fiber that dominates each pixel of the traced columns.

    Attributes
    ----------
    fiber : ndarray, int32, ``(ny, n_columns)``
        0-based fiber index, or -1 for background and inter-fiber pixels (no trace within
        ``halfwidth`` sigmas).
    purity : ndarray, float32, ``(ny, n_columns)``
        The dominant fiber's share of the modelled light in the pixel (0 for background).
    """

    fiber: np.ndarray
    purity: np.ndarray

    def __repr__(self) -> str:
        """Each field in a few words (:func:`~pyapred.solver.reprs.summary_repr`), never whole
        arrays."""
        from ..solver.reprs import summary_repr

        return summary_repr(self)


def trace_brightness(traces: Traces, rate: np.ndarray) -> np.ndarray:
    """Rough per-column brightness of every trace, from a rate image.

    Parameters
    ----------
    traces : Traces
    rate : ndarray, ``(ny, >= n_columns)``
        Count rate per pixel (any units), e.g. the median read difference.

    Returns
    -------
    ndarray, float64, ``(n_fibers, n_columns)``
        Rate at the row nearest each trace center divided by the profile fraction there, i.e.
        the trace's total rate per column, clipped at 0.
    """
    shape = np.shape(rate)
    ny = shape[0] if len(shape) == 2 else 0
    rate = _chip_image(rate, "rate", max(ny, 1), traces.n_columns)
    rows = np.clip(np.rint(traces.y_center).astype(np.int64), 0, ny - 1)
    cols = np.arange(traces.n_columns)[None, :]
    peak = rate[rows, cols]
    return np.maximum(np.nan_to_num(peak, nan=0.0), 0.0) / traces.profile(rows)


def pixel_fiber_map(
    traces: Traces, ny: int, brightness=None, *, halfwidth: float = 3.0
) -> PixelMap:
    """Assign every pixel of the traced columns to the fiber whose profile dominates it.

    Parameters
    ----------
    traces : Traces
    ny : int
        Rows of the chip.
    brightness : array_like, optional
        ``(n_fibers, n_columns)`` trace brightness (see :func:`trace_brightness`); default
        equal brightness. It decides blended pixels and the purity.
    halfwidth : float, optional
        Pixels whose center lies more than this many sigmas from every trace are background.

    Returns
    -------
    PixelMap
    """
    from ._pixel_map import pixel_map_kernel

    if isinstance(ny, (bool, np.bool_)) or not isinstance(ny, (int, np.integer)) or ny < 1:
        raise ValueError(f"ny: expected a whole number of rows >= 1, got {ny!r}")
    halfwidth = _finite_number(halfwidth, "halfwidth", 0.0, above=True)
    shape = (int(ny), traces.n_columns)
    if brightness is None:
        bright = np.ones(traces.y_center.shape)
    else:
        bright = _as_float_array(brightness, "brightness")
        try:
            bright = np.broadcast_to(bright, traces.y_center.shape)
        except ValueError:
            expected = f"(n_fibers, n_columns) = {traces.y_center.shape}"
            raise ValueError(f"brightness: expected {expected}, got shape {bright.shape}") from None
        if not np.all(np.isfinite(bright)):  # a NaN floor made every pixel background
            raise ValueError("brightness: expected finite numbers, got NaN or inf")
    # Tiny floor so that a dark fiber still owns its core pixels.
    bright = np.maximum(bright, 1e-6 * max(float(bright.max()), 1e-300))
    fiber = np.empty(shape, dtype=np.int32)
    purity = np.empty(shape, dtype=np.float32)
    reach = int(np.ceil(halfwidth * float(traces.sigma.max()))) + 1  # rows each side to visit
    pixel_map_kernel(
        np.ascontiguousarray(traces.y_center.T, dtype=np.float64),
        np.ascontiguousarray(traces.sigma.T, dtype=np.float64),
        np.ascontiguousarray(bright.T), reach, float(halfwidth), fiber, purity,
    )  # fmt: skip
    return PixelMap(fiber=fiber, purity=purity)


@dataclass(frozen=True)
class FitPixels:
    """Per-fiber pixel sets for the omega fit, padded to a common length.

    Attributes
    ----------
    rows, cols : ndarray, int64, ``(n_fibers, n_pix)``
        0-based pixel coordinates; padding entries repeat a valid coordinate.
    valid : ndarray of bool, ``(n_fibers, n_pix)``
        False for padding.
    """

    rows: np.ndarray
    cols: np.ndarray
    valid: np.ndarray

    def __repr__(self) -> str:
        """Each field in a few words (:func:`~pyapred.solver.reprs.summary_repr`), never whole
        arrays."""
        from ..solver.reprs import summary_repr

        return summary_repr(self)

    @property
    def count(self) -> np.ndarray:
        """Number of pixels selected per fiber, ``(n_fibers,)``."""
        return self.valid.sum(axis=1)


def select_fit_pixels(
    traces: Traces,
    pixel_map: PixelMap,
    snr: np.ndarray,
    bad: np.ndarray | None = None,
    *,
    core_halfwidth: float = 0.5,
    min_purity: float = 0.95,
    min_snr: float = 30.0,
    max_pixels: int | None = None,
) -> FitPixels:
    """Choose, per fiber, the trace-core pixels for the omega fit.

    A pixel is kept when its center lies within ``core_halfwidth`` rows of the trace center,
    the fiber dominates it with at least ``min_purity`` of the light (not blended), its
    signal-to-noise ratio is at least ``min_snr``, and ``bad`` (saturation, cosmic rays) is
    False. Excluded (FPI) fibers get no pixels. All traced columns are used; with
    ``max_pixels`` only the highest-SNR pixels are kept.

    Parameters
    ----------
    traces : Traces
    pixel_map : PixelMap
        From :func:`pixel_fiber_map` with the exposure's brightness.
    snr : ndarray, ``(ny, >= n_columns)``
        Signal-to-noise ratio of each pixel's total signal.
    bad : ndarray of bool, ``(ny, >= n_columns)``, optional
    core_halfwidth : float, optional
        In rows; 0.5 keeps the row nearest the center in each column.
    min_purity, min_snr : float, optional
    max_pixels : int, optional

    Returns
    -------
    FitPixels
    """
    from ._fit_pixel_kernel import fit_pixel_kernel

    # The kernel checks no bounds: every shape is checked here (a small snr or bad was read
    # past its end, and gave another answer each call).
    ny, nc = pixel_map.fiber.shape
    if nc != traces.n_columns or pixel_map.purity.shape != (ny, nc):
        raise ValueError(f"pixel_map: expected fiber and purity of ({ny}, {traces.n_columns}) "
                         f"(the traces' columns), got {pixel_map.fiber.shape} and "
                         f"{pixel_map.purity.shape}")  # fmt: skip
    snr = _chip_image(snr, "snr", ny, nc)
    if bad is not None:
        bad = _chip_image(bad, "bad", ny, nc, dtype=bool)
    core_halfwidth = _finite_number(core_halfwidth, "core_halfwidth", 0.0)
    min_purity = _finite_number(min_purity, "min_purity", 0.0)
    min_snr = _finite_number(min_snr, "min_snr", 0.0)
    if max_pixels is not None and (isinstance(max_pixels, (bool, np.bool_)) or not isinstance(
            max_pixels, (int, np.integer)) or max_pixels < 1):  # fmt: skip
        raise ValueError(f"max_pixels: expected None or a whole number >= 1, got {max_pixels!r}")
    reach = int(np.ceil(core_halfwidth))
    shape = (traces.n_fibers, (2 * reach + 1) * nc)
    rows, cols, valid = np.empty(shape, np.int64), np.empty(shape, np.int64), np.empty(shape, bool)
    # Each fiber's candidates ranked in one pass (fibers in parallel): NumPy's fancy indexes,
    # temporaries and row sorts took 80 ms a chip (150 ms with their page faults). ``bad`` in C
    # order (a chip's mask may come as a slice): Numba compiles the kernel for each layout.
    fit_pixel_kernel(
        np.ascontiguousarray(traces.y_center, dtype=np.float64), traces.excluded,
        pixel_map.fiber, pixel_map.purity, snr,
        np.zeros((1, 1), bool) if bad is None else np.ascontiguousarray(bad),
        bad is not None,
        reach, float(core_halfwidth), float(min_purity), float(min_snr), rows, cols, valid,
    )  # fmt: skip
    # Usable pixels first (highest SNR first), padding after.
    n_keep = int(valid.sum(axis=1).max(initial=0))
    if max_pixels is not None:
        n_keep = min(n_keep, int(max_pixels))
    n_keep = max(n_keep, 1)
    return FitPixels(
        rows=rows[:, :n_keep].copy(), cols=cols[:, :n_keep].copy(), valid=valid[:, :n_keep].copy()
    )


# --------------------------------------------------------------------------------------------
# Trace files (ApogeeReduction.jl's traceMain layout)
# --------------------------------------------------------------------------------------------
_TRACE_NAME = re.compile(r"^[A-Za-z]*[Tt]race[A-Za-z]*_(apo|lco)_(\d{5})_(?:\d{4}_)?([RGB])\.h5$")


def trace_file_name(telescope: str, mjd: int, chip: str) -> str:
    """ApogeeReduction.jl's nightly trace file name, ``traceMain_{tele}_{mjd}_{chip}.h5``."""
    return f"traceMain_{telescope}_{mjd}_{chip}.h5"


def parse_trace_file_name(path: str | os.PathLike) -> tuple[str, int, str] | None:
    """``(telescope, mjd, chip)`` from a name like ``traceMain_apo_60781_R.h5``, or None."""
    match = _TRACE_NAME.match(Path(path).name)
    if match is None:
        return None
    return match.group(1), int(match.group(2)), match.group(3)


def read_trace_file(
    path: str | os.PathLike, *, telescope: str | None = None, dataset: str = "trace_params"
) -> Traces:
    """Read an ApogeeReduction.jl trace file (``traceMain_*``, ``{quartz,dome}Trace_*``).

    The dataset is Julia ``trace_params[x, fiberIndx, p]``, ``(n_columns, n_fibers, 3)`` with
    p = height, 1-based y-center, sigma, which h5py shows reversed as ``(3, n_fibers,
    n_columns)``; ApogeeReduction.jl writes ``(2048, 300, 3)``, seen as ``(3, 300, 2048)``.
    Smaller geometries (simulated test chips) are accepted. The result is in pyapred's order,
    ``[fiber_index, x]`` with ``fiber_index = 300 - fiberId``, and its y-centers are 0-based
    (the file's value minus 1).

    Parameters
    ----------
    path : str or os.PathLike
    telescope : {"apo", "lco"}, optional
        Whose FPI fibers to exclude; default from the file name (``traceMain_{tele}_...``), none
        if the name has another form.
    dataset : str, optional
        ``"trace_params"`` (default) or ``"regularized_trace_params"`` (the running median
        that ApogeeReduction.jl's extraction uses).

    Returns
    -------
    Traces
        With ``height``, the file's ``metadata`` group (empty if it has none) and ``path``.

    Raises
    ------
    InputError
        Not an HDF5 file, missing dataset, wrong shape or dtype, or non-finite y-centers or
        widths, widths out of range, more than 300 fibers, or y-centers that do not rise with the
        fiber index; the message names the file and the dataset.
    """
    from ..errors import InputError
    from ..io.hdf5 import open_h5, read_dataset, read_group

    with open_h5(path) as handle:
        # The declared size first: a 32 kB file declaring (3, 300, 1.5e6) was read whole (GBs).
        try:
            declared = getattr(handle.get(dataset), "shape", None)
        except (KeyError, OSError, RuntimeError):  # a dangling link: read_dataset names it
            declared = None
        if declared is not None and len(declared) == 3:
            n_fibers, n_columns = declared[1:]
            if n_fibers > N_FIBERS or n_columns > MAX_TRACE_COLUMNS:
                raise InputError(path, dataset, f"1 to {N_FIBERS} fibers and at most "
                                 f"{MAX_TRACE_COLUMNS} columns",
                                 f"{n_fibers} fibers x {n_columns} columns declared")  # fmt: skip
        params = read_dataset(
            path, handle, dataset, shape=(3, None, None), kinds="f",
            expected=(
                "(Julia trace_params[x, fiberIndx, p] = (n_columns, n_fibers, 3) seen reversed; "
                "ApogeeReduction.jl's (2048, 300, 3) is (3, 300, 2048))"
            ),
        )  # fmt: skip
        group = handle.get("metadata")
        metadata = read_group(path, group) if group is not None and hasattr(group, "items") else {}
    height, y_center, sigma = params.astype(np.float64)
    if 0 in y_center.shape or y_center.shape[0] > N_FIBERS:
        raise InputError(path, dataset, f"1 to {N_FIBERS} fibers and at least one column",
                         f"{y_center.shape[0]} fibers x {y_center.shape[1]} columns")  # fmt: skip
    problems = []
    with np.errstate(invalid="ignore"):  # NaN centers are reported as such
        unordered = np.zeros_like(y_center, dtype=bool)
        unordered[1:] = ~(np.diff(y_center, axis=0) > 0)
    for what, bad in (
        ("non-finite y-centers", ~np.isfinite(y_center)),
        (f"widths not in [{MIN_TRACE_SIGMA:g}, {MAX_TRACE_SIGMA:g}] px",
         ~(np.isfinite(sigma) & (sigma >= MIN_TRACE_SIGMA) & (sigma <= MAX_TRACE_SIGMA))),
        ("y-centers not above the previous fiber's (fiberId + 1)",
         unordered & np.isfinite(y_center)),
    ):  # fmt: skip
        if bad.any():
            fiber, column = np.argwhere(bad)[0]
            problems.append(
                f"{int(bad.sum())} {what} (first at fiberId {int(fiber_id(fiber))}, "
                f"column {column})"
            )
    if problems:
        raise InputError(
            path, dataset,
            "finite y-centers (p=2) rising with the fiber index at every column, and widths in "
            f"[{MIN_TRACE_SIGMA:g}, {MAX_TRACE_SIGMA:g}] px (p=3)",
            "; ".join(problems),
        )  # fmt: skip
    if telescope is None:
        parsed = parse_trace_file_name(path)
        telescope = parsed[0] if parsed else None
    return Traces._build(
        y_center, sigma, telescope, one_based=True,
        height=height, metadata=metadata, path=os.fspath(path),
    )  # fmt: skip


def write_trace_file(
    path: str | os.PathLike,
    traces: Traces,
    *,
    height=None,
    metadata: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write traces in ApogeeReduction.jl's ``traceMain`` layout (atomically).

    Writes ``trace_params`` and ``regularized_trace_params`` (h5py ``(3, n_fibers, n_columns)``,
    1-based y-centers) and a ``metadata`` group (``trace_type`` and the caller's keys).

    Parameters
    ----------
    path : str or os.PathLike
    traces : Traces
    height : array_like, optional
        ``(n_fibers, n_columns)`` profile heights; default ``traces.height``, or 1 without it.
    metadata : dict, optional
    overwrite : bool, optional

    Returns
    -------
    pathlib.Path
    """
    import h5py

    from ..io.atomic import atomic_path
    from ..io.hdf5 import write_value

    shape = traces.y_center.shape
    if height is None:
        height = traces.height if traces.height is not None else 1.0
    height = np.broadcast_to(np.asarray(height, dtype=np.float64), shape)
    params = np.stack([height, traces.y_center + 1.0, traces.sigma]).astype(np.float64)
    path = Path(path)
    # atomic_path holds the temporary file's lock: HDF5 must not take one of its own.
    with (
        atomic_path(path, overwrite=overwrite) as tmp,
        h5py.File(tmp, "w", locking=False) as handle,
    ):
        handle["trace_params"] = params
        handle["regularized_trace_params"] = params
        group = handle.create_group("metadata")
        for key, value in {"trace_type": "simulated", **(metadata or {})}.items():
            write_value(group, key, value)
    return path
