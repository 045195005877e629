"""Stage 2, fit the fibers: one batched omega fit, the model choice per fiber, borrowing, fallback.

:func:`fit_fibers` fits omega for every fiber at once from the fit pixels of one chip, or of all
chips jointly (:func:`pyapred.solver.fit_omega`, with the constant model beside it);
:func:`choose_models` then decides per fiber between the constant and the time-variable model,
lends faint fibers the bright fibers' mean omega and falls back to the constant model where a
fit failed. Arrays in, a frozen :class:`FiberFits` out; no file I/O.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import expect_type
from ..solver import (
    ChromaticFit,
    Flag,
    FluxFit,
    OmegaFit,
    fit_constant,
    fit_omega,
    fit_omega_chromatic,
)
from ..solver.api import StopReason
from .options import FitOptions
from .prepare import PreparedChip, release_fit_reads

__all__ = [
    "MODEL_BORROWED",
    "MODEL_CHROMATIC",
    "MODEL_CONSTANT",
    "MODEL_NAMES",
    "MODEL_TIME_VARIABLE",
    "FiberFits",
    "choose_chromatic",
    "choose_models",
    "fit_fibers",
]

#: Per-fiber model codes (``FiberFits.model``).
MODEL_CONSTANT, MODEL_TIME_VARIABLE, MODEL_BORROWED, MODEL_CHROMATIC = 0, 1, 2, 3
#: Names of the model codes, indexed by code (the product's per-fiber ``model``).
MODEL_NAMES = ("constant", "time_variable", "borrowed", "time_variable_chromatic")


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
        ``MODEL_CONSTANT``, ``MODEL_TIME_VARIABLE``, ``MODEL_BORROWED`` or ``MODEL_CHROMATIC``
        (time-variable with an omega that changes across wavelength, ``FitOptions.chromatic``).
    delta_chi2 : ndarray, ``(n_fibers,)``
        Constant-model minus time-variable chi2 over the fit pixels (the decision statistic),
        those where the omega fit's jump search masked a difference left out (the constant fit
        keeps it);
        with the 1/f nuisance offsets, the Wald statistic ``(omega - 1)^T C^-1 (omega - 1)`` of
        the free elements instead (the constant fit has no offsets to compare with).
    p_value : ndarray, ``(n_fibers,)``
        Probability of ``delta_chi2`` under the constant model (chi2 with the free elements of
        omega as degrees of freedom).
    amplitude : ndarray, ``(n_fibers,)``
        Equivalent amplitude ``sqrt(12 (var(omega) - mean(sigma_omega^2)))`` of the mean-1 fit: the
        paper's A for ``omega ~ U(1 - A, 1)``, debiased for noise.
    chi2_dof_constant, chi2_dof_variable : ndarray, ``(n_fibers,)``
        chi2/dof of the two models over the fit pixels where the omega fit's jump search masked
        no difference.
    n_fit_pixels : ndarray of int, ``(n_fibers,)``
    flags : ndarray of int, ``(n_fibers,)``
        Group flags of the fit plus ``BORROWED_OMEGA``, ``FALLBACK_CONSTANT``, ``FPI_FIBER``,
        ``NO_OMEGA_FIT``, ``LOW_SEGMENT_CONTRAST``.
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
    segment_chip : ndarray of int, ``(n_fibers, n_segments)``, or None
        With the 1/f nuisance term (``FitOptions.nuisance``): the chip (0-based, in the order of
        the chips fitted together) of each of a fiber's readout segments, -1 where a fiber has
        fewer segments; ``fit.offsets`` holds their offsets, DN per read interval.
    segment_pixels : ndarray of int, ``(n_fibers, n_segments)``, or None
        The number of fit pixels in each of those segments.
    chromatic : ChromaticFit or None
        With ``FitOptions.chromatic``: the chromatic fit
        (:func:`pyapred.solver.fit_omega_chromatic`) of every fiber, ``(n_fibers, ...)``;
        fibers not tried (those without the time-variable model) are empty groups, their
        statistics NaN. ``model == MODEL_CHROMATIC`` where its
        test was significant.
    coordinate_span : tuple of float or None
        With ``chromatic``: the bluest and reddest wavelength (micron) of the chips fitted
        together, where the wavelength coordinate ``c`` is -1 and +1
        (:func:`pyapred.chromatic.wavelength_coordinate`).
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
    segment_chip: np.ndarray | None = None
    segment_pixels: np.ndarray | None = None
    chromatic: ChromaticFit | None = None
    coordinate_span: tuple | None = None

    def column_omega(self, chip: str, n_columns: int) -> tuple[np.ndarray, np.ndarray]:
        """Each chromatic fiber's omega at every column of a chip, mean 1 per column.

        Parameters
        ----------
        chip : {"R", "G", "B"}
        n_columns : int
            Science columns of the chip (the traces' ``n_columns``).

        Returns
        -------
        fibers : ndarray of int, ``(n_chromatic,)``
            The fibers with ``MODEL_CHROMATIC``.
        omega : ndarray, ``(n_chromatic, n_columns, K)``
            ``omega_k (1 + gamma_k c)`` at each column's coordinate, scaled to mean 1 over the
            finite elements of each column (the exposure-averaged flux at that wavelength).
        """
        from ..chromatic import chip_wavelength, wavelength_coordinate

        fibers = np.flatnonzero(self.model == MODEL_CHROMATIC)
        K = self.omega.shape[1]
        if not fibers.size:
            return fibers, np.zeros((0, n_columns, K))
        c = wavelength_coordinate(chip_wavelength(chip, n_columns), self.coordinate_span)
        rows = self.chromatic.omega[fibers][:, None, :] * (
            1.0 + np.nan_to_num(self.chromatic.gamma[fibers])[:, None, :] * c[None, :, None]
        )
        with _quiet():
            return fibers, rows / np.nanmean(rows, axis=-1, keepdims=True)

    def offset_rms(self) -> np.ndarray | None:
        """RMS of the fitted 1/f offsets per chip, DN, ``(n_chips,)``; None without them.

        Over the finite offsets of the fibers whose omega fit converged, each segment weighted by
        its number of fit pixels: a segment of a few pixels has offsets that mostly absorb
        those pixels' own noise (NaN for a chip with none). Estimation noise is included: about
        the pixels' noise over the square root of a segment's pixel count.
        """
        if self.segment_chip is None or self.fit is None or self.fit.offsets is None:
            return None
        offsets = self.fit.offsets  # (n_fibers, n_segments, K)
        n_chips = int(self.segment_chip.max(initial=-1)) + 1
        out = np.full(n_chips, np.nan)
        weight = np.broadcast_to(self.segment_pixels[..., None], offsets.shape).astype(float)
        converged = np.asarray(self.fit.converged, dtype=bool)[:, None, None]
        for chip in range(n_chips):
            use = (self.segment_chip == chip)[..., None] & np.isfinite(offsets) & converged
            if use.any() and weight[use].sum() > 0:
                out[chip] = float(np.sqrt(np.average(offsets[use] ** 2, weights=weight[use])))
        return out

    def omega_error(self) -> np.ndarray:
        """Marginal omega errors, ``(n_fibers, K)``, from the diagonal of ``omega_cov``."""
        return np.sqrt(np.maximum(np.diagonal(self.omega_cov, axis1=1, axis2=2), 0.0))

    def _summary(self) -> dict:
        """Counts and medians by name, for ``__repr__``, ``_repr_html_`` and ExposureResult's."""
        from ..solver.reprs import finite_median, quiet_nanmedian
        from ..traces import fiber_id

        bright = np.asarray(self.bright, dtype=bool)
        counts = np.bincount(self.model, minlength=len(MODEL_NAMES))
        failed = np.flatnonzero(self.flags & Flag.FALLBACK_CONSTANT)
        if self.fit is None:
            converged = "n/a (no omega fit)"
        else:
            tried = ~(self.fit.group_flags & Flag.EMPTY_GROUP).astype(bool)
            converged = f"{int(np.sum(self.fit.converged & tried))} of {int(tried.sum())}"
        error = np.where(np.arange(self.omega.shape[1]) == self.ref_index, np.nan,
                         self.omega_error())  # fmt: skip
        error = np.where(np.isfinite(self.omega_fit), error, np.nan)
        ids = ", ".join(str(i) for i in fiber_id(failed[:8]))
        return {
            "fibers": self.omega.shape[0],
            "K": self.omega.shape[1],
            "time-variable": int(counts[MODEL_TIME_VARIABLE]),
            "constant": int(counts[MODEL_CONSTANT]),
            "borrowed": int(counts[MODEL_BORROWED]),
            "chromatic": int(counts[MODEL_CHROMATIC]),
            "bright": int(bright.sum()),
            "converged": converged,
            "FPI": int(np.count_nonzero(self.flags & Flag.FPI_FIBER)),
            "fit failed": f"{failed.size} (fiberIds {ids}{', ...' if failed.size > 8 else ''})"
            if failed.size
            else "0",
            "median chi2/dof time-variable": finite_median(self.chi2_dof_variable[bright]),
            "median chi2/dof constant": finite_median(self.chi2_dof_constant[bright]),
            "median omega error": finite_median(quiet_nanmedian(error, axis=1)[bright]),
        }

    def __repr__(self) -> str:
        """Model counts, convergence and key figures (a few lines, never whole arrays)."""
        from ..solver.reprs import fmt

        s = self._summary()
        return (
            f"FiberFits: {s['fibers']} fibers x K = {s['K']} read differences, ref_index "
            f"{self.ref_index}; models {s['time-variable']} time-variable, {s['constant']} "
            f"constant, {s['borrowed']} borrowed"
            + (f", {s['chromatic']} chromatic" if self.chromatic is not None else "")
            + f"; {s['bright']} bright; converged "
            f"{s['converged']}; {s['FPI']} FPI; fit failed {s['fit failed']}\n  median chi2/dof "
            f"of bright fibers {fmt(s['median chi2/dof time-variable'])} time-variable vs "
            f"{fmt(s['median chi2/dof constant'])} constant; median omega error "
            f"{fmt(s['median omega error'])} (reference read = 1)"
        )

    def _repr_html_(self) -> str:
        from ..solver.reprs import fmt, html_table

        s = self._summary()
        row = [v if isinstance(v, int | str) else fmt(v) for v in s.values()]
        return html_table(list(s), [row], caption="FiberFits")


def _free(array: np.ndarray, ref_index: int) -> np.ndarray:
    """Drop the fixed element along the last axis."""
    return np.delete(array, ref_index, axis=-1)


@contextlib.contextmanager
def _quiet():
    """Silence NumPy's empty-slice warnings: all-NaN rows (padding, unfitted fibers) are expected
    and handled by the caller."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def fit_fibers(prepared: list[PreparedChip], options: FitOptions) -> FiberFits:
    """The omega fit of every fiber, from the fit pixels of one or more chips.

    The fibers are fitted together, a batch of fibers per solver call (the result is the same
    bits as one call over all of them; :data:`FIT_BATCH_BYTES` bounds the memory).

    Parameters
    ----------
    prepared : list of PreparedChip
        One chip, or every chip with ``options.joint_chips`` (the same reads and fibers on
        each). The list's items are replaced by :func:`release_fit_reads` versions as soon as
        their fit reads are taken, so that (unless they are kept) the fit does not hold two
        copies.
    options : FitOptions
        ``model``, ``min_fit_pixels``, ``max_iter``, ``jump_search``, ``backend`` and
        ``correct_1f`` (its nuisance part: one offset per readout segment, labelled by
        :func:`pyapred.noise.segments.readout_segments` from the chip, row and output of each
        fit pixel) are used here; the model choice's settings by :func:`choose_models`. With the
        nuisance term a fiber whose :func:`segment_contrast` (from its constant fit) is below
        :data:`MIN_SEGMENT_CONTRAST` is not fitted: omega cannot be told from its offsets. It is
        flagged ``LOW_SEGMENT_CONTRAST`` and handled as a faint fiber.

    Returns
    -------
    FiberFits
        ``(n_fibers, ...)``, every fiber with one ``ref_index``: the read difference where the
        exposure is most transparent.
    """
    expect_type("prepared", prepared, list, "a list of PreparedChip (its items are replaced)")
    expect_type("options", options, FitOptions)
    if not prepared:
        raise ValueError("prepared: expected one or more PreparedChip, got none")
    for i, item in enumerate(prepared):
        expect_type(f"prepared[{i}]", item, PreparedChip)
        if item.fit_reads is None:
            raise ValueError(
                f"prepared[{i}]: expected the fit pixels' reads, released after an earlier fit "
                "(FitOptions.keep_fit_reads=False): prepare the chip again"
            )
    names = [p.name for p in prepared]
    if len(set(names)) < len(names):  # its pixels counted twice: omega errors too small by sqrt 2
        raise ValueError(f"prepared: expected each chip once, got chips {names}")
    first = prepared[0]
    excluded = first.traces.excluded
    K = first.shape[0] - 1
    n_fibers = first.traces.n_fibers
    if any(p.shape[0] != first.shape[0] or p.traces.n_fibers != n_fibers for p in prepared):
        raise ValueError("joint chips: expected the same number of reads and fibers on every chip")

    def joined(values, axis):
        return values[0] if len(values) == 1 else np.concatenate(values, axis=axis)

    coordinate = span = None
    if options.chromatic and options.model != "constant":
        coordinate, span = _fit_pixel_coordinates(prepared)
        coordinate = joined(coordinate, 1)
    reads = joined([p.fit_reads for p in prepared], 2)
    sigma = joined([p.fit_read_noise for p in prepared], 1)
    gain = joined([p.fit_gain for p in prepared], 1)
    valid = joined([p.fit_pixels.valid for p in prepared], 1)
    keys = None
    if options.nuisance:
        from ..noise.segments import readout_keys

        keys = joined([readout_keys(p.fit_pixels.rows, p.fit_pixels.cols, chip=i,
                                    columns=options.segment_columns)
                       for i, p in enumerate(prepared)], 1)  # fmt: skip
    if len(prepared) > 1:
        # Each chip's fit pixels come first on its own padded pixel axis, so joined, a fiber's
        # pixels of later chips sit after the earlier chips' padding: put every fiber's valid
        # pixels first (stably), so that the first P entries below hold all of them.
        order = np.argsort(~valid, axis=1, kind="stable")
        valid = np.take_along_axis(valid, order, axis=1)
        sigma = np.take_along_axis(sigma, order, axis=1)
        gain = np.take_along_axis(gain, order, axis=1)
        reads = np.take_along_axis(reads, order[None], axis=2)
        if keys is not None:
            keys = np.take_along_axis(keys, order, axis=1)
        if coordinate is not None:
            coordinate = np.take_along_axis(coordinate, order, axis=1)
    prepared[:] = [release_fit_reads(p, options) for p in prepared]
    n_pix = valid.sum(axis=1)
    flags = np.where(excluded, int(Flag.FPI_FIBER), 0).astype(np.int64)
    # A common reference read: where the exposure is most transparent.
    rough = np.mean([p.omega_rough for p in prepared], axis=0)
    ref_index = int(np.argmax(np.median(rough[~excluded] if (~excluded).any() else rough, 0)))
    if options.model == "constant":
        # No omega fit, so no statistics of one: NaN, and every fiber flagged so.
        flags |= int(Flag.NO_OMEGA_FIT)
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
    segments = segment_chip = segment_pixels = None
    if keys is not None and todo.size:
        # With the nuisance term omega is measured only by the flux contrast between the pixels
        # of a segment; a fiber without it has no finite best omega, and its fit wanders
        # (docs/noise.md): it is not fitted, and is handled as a faint fiber.
        from ..noise.segments import readout_segments

        labels = readout_segments(keys[todo, :P], valid[todo, :P])
        contrast = _segment_contrasts(reads, valid, sigma, gain, todo, P, labels, options)
        low = ~(contrast >= MIN_SEGMENT_CONTRAST)  # NaN (no pixel shares a segment): low
        flags[todo[low]] |= int(Flag.LOW_SEGMENT_CONTRAST)
        todo = todo[~low]
    if keys is not None and todo.size:
        segments, segment_chip, segment_pixels = _segments(
            keys[todo, :P], valid[todo, :P], todo, n_fibers, options.segment_columns
        )
    with _quiet():
        fit, const = _fit_batched(reads, valid, sigma, gain, todo, P, ref_index, options, segments)
    if coordinate is None:  # the chromatic fit below takes its fibers' reads again
        del reads  # a third of a cube, before the results are spread to every fiber
    fit, const = _scatter(fit, const, todo, n_fibers, ref_index)
    fits = choose_models(fit, const, n_pix, excluded, options, flags)
    if segment_chip is not None:
        fits = dataclasses.replace(fits, segment_chip=segment_chip, segment_pixels=segment_pixels)
    if coordinate is not None:
        # The chromatic model is tried where the time-variable one was chosen.
        tried = np.flatnonzero(fits.model[todo] == MODEL_TIME_VARIABLE)
        rows = todo[tried]
        start = OmegaFit(**{k: None if v is None else v[rows] for k, v in fit.__dict__.items()})
        tried_reads, tried_mask = _fit_reads(reads, valid, rows, P)
        with _quiet():
            chromatic = fit_omega_chromatic(
                tried_reads, sigma[rows, :P], coordinate[rows, :P], start=start,
                gain=gain[rows, :P], mask=tried_mask, max_iter=options.max_iter,
                backend=options.backend,
            )  # fmt: skip
        fits = choose_chromatic(fits, _spread_chromatic(chromatic, rows, n_fibers), span, options)
    return fits


def _fit_reads(reads: np.ndarray, valid: np.ndarray, rows: np.ndarray, P: int) -> tuple:
    """``reads[:, rows, :P]`` and its mask (the padding, ``~valid``) as C-ordered arrays,
    taken read by read.

    The one fancy index would give the same values in another memory order (the fiber axis
    first), which every solver call then copies again to flatten it: 0.2 s a chip.
    """
    out = np.empty((reads.shape[0], rows.size, P), dtype=reads.dtype)
    for j, plane in enumerate(reads):
        np.take(plane[:, :P], rows, axis=0, out=out[j])
    mask = np.empty(out.shape, dtype=bool)
    mask[:] = ~valid[rows, :P]
    return out, mask


def _fit_pixel_coordinates(prepared: list[PreparedChip]) -> tuple[list, tuple]:
    """Each chip's fit pixels' wavelength coordinates ``(n_fibers, n_pix)``, and the span."""
    from ..chromatic import (
        CHIP_WAVELENGTH_UM,
        chip_wavelength,
        coordinate_span,
        wavelength_coordinate,
    )

    names = [p.name for p in prepared]
    unknown = [name for name in names if name not in CHIP_WAVELENGTH_UM]
    if unknown:
        raise ValueError(
            f"chromatic: expected chips named R, G or B (their wavelengths give the coordinate), "
            f"got {unknown}"
        )
    span = coordinate_span(names)
    coordinate = [
        wavelength_coordinate(chip_wavelength(p.name, p.traces.n_columns), span)[p.fit_pixels.cols]
        for p in prepared
    ]
    return coordinate, span


def _spread_chromatic(fit: ChromaticFit, rows: np.ndarray, n_fibers: int) -> ChromaticFit:
    """The chromatic fit of fibers ``rows`` as a fit of all fibers; the others are empty."""
    fills = {"ref_index": 0, "n_diff": 0, "n_iter": 0, "converged": False, "dof": 0,
             "flags": int(Flag.NOT_IN_OMEGA_FIT), "group_flags": int(Flag.EMPTY_GROUP),
             "stop_reason": int(StopReason.EMPTY), "cov": 0.0}  # fmt: skip
    fields = {}
    for name, value in fit.__dict__.items():
        value = np.asarray(value)
        out = np.full((n_fibers,) + value.shape[1:], fills.get(name, np.nan), dtype=value.dtype)
        out[rows] = value
        fields[name] = out
    return ChromaticFit(**fields)


def choose_chromatic(
    fits: FiberFits, chromatic: ChromaticFit, span: tuple, options: FitOptions
) -> FiberFits:
    """Give the chromatic model to the time-variable fibers whose chromatic test is significant.

    A fiber with ``MODEL_TIME_VARIABLE`` gets ``MODEL_CHROMATIC`` when its chromatic fit
    converged and the likelihood-ratio test against the achromatic fit has ``p_value`` below
    ``options.chromatic_p_value`` (``ChromaticFit.p_value``); its ``omega`` (mean 1) becomes the
    chromatic fit's omega at the middle of the span, and extraction evaluates each pixel's own
    (:meth:`FiberFits.column_omega`).

    Parameters
    ----------
    fits : FiberFits
        After :func:`choose_models`.
    chromatic : ChromaticFit
        ``(n_fibers, ...)``, empty groups for fibers not tried.
    span : (float, float)
        Bluest and reddest wavelength of the fitted chips, micron.
    options : FitOptions

    Returns
    -------
    FiberFits
    """
    with np.errstate(invalid="ignore"):
        significant = (chromatic.p_value < options.chromatic_p_value) & chromatic.converged
    chosen = (fits.model == MODEL_TIME_VARIABLE) & significant
    model = fits.model.copy()
    model[chosen] = MODEL_CHROMATIC
    omega = fits.omega.copy()
    with _quiet():
        omega[chosen] = chromatic.omega[chosen] / np.nanmean(
            chromatic.omega[chosen], axis=1, keepdims=True
        )
    return dataclasses.replace(
        fits, model=model, omega=omega, chromatic=chromatic, coordinate_span=tuple(span)
    )


#: With the nuisance term, fibers are fitted in batches whose offset blocks (about six
#: ``(n_segments, K, K)`` float64 arrays per fiber) stay below this many bytes.
NUISANCE_BATCH_BYTES = 256 * 2**20

#: Fibers are fitted in batches whose work arrays (``fit_omega`` holds about
#: :data:`FIT_BYTES_PER_ELEMENT` bytes per fiber, pixel and difference at its peak: the float64
#: differences, the normal equations' ``e_hat``, the validity and the jump search's arrays) stay
#: below this many bytes. A whole chip at once (300 fibers x 2048 pixels x 46 differences) would
#: hold about 0.68 GB; in batches the fit adds 0.07 GB to the chip's cube, at the same speed.
FIT_BATCH_BYTES = 64 * 2**20
#: Measured with ``tracemalloc``: 22.5-24.5 bytes for 10-50 fibers of 2048 pixels, 46 differences.
FIT_BYTES_PER_ELEMENT = 24


#: With the nuisance term, a fiber is fitted only where its :func:`segment_contrast` reaches
#: this. On two simulated chips (494 fibers) every nuisance fit that did not converge had a
#: contrast below 3, and every fiber whose omega error came within the 0.05 a bright fiber
#: needs (``FitOptions.max_omega_error``) had one above 46 (``docs/noise.md``).
MIN_SEGMENT_CONTRAST = 10.0


def segment_contrast(
    flux: np.ndarray, flux_var: np.ndarray, segments: np.ndarray, valid: np.ndarray
) -> np.ndarray:
    """How much a group's pixel fluxes differ within their readout segments, beyond their noise.

    The 1/f nuisance term gives each segment one offset per read difference, which takes the
    segment's mean: omega is then measured only by the flux contrast between the pixels of a
    segment (``docs/noise.md``). This is that contrast's chi2 per degree of freedom, less 1:
    about 0 where the pixels differ by their noise alone.

    Parameters
    ----------
    flux, flux_var : ndarray, ``(n_groups, n_pix)``
        Each pixel's flux and its variance (any units, the same for both: e.g. a constant fit's).
    segments : ndarray of int, ``(n_groups, n_pix)``
        Segment labels within each group (:func:`pyapred.noise.segments.readout_segments`).
    valid : ndarray of bool, ``(n_groups, n_pix)``
        False for padding. Pixels whose flux or variance is not finite, or whose variance is not
        positive, are left out too.

    Returns
    -------
    ndarray, float64, ``(n_groups,)``
        ``sum_p (f_p - m_s(p))^2 / v_p / (n - S) - 1``, ``m_s`` the inverse-variance weighted
        mean of segment s, over the ``n`` pixels used in ``S`` segments; NaN where ``n <= S``
        (no segment has two pixels).
    """
    flux = np.asarray(flux, dtype=np.float64)
    flux_var = np.asarray(flux_var, dtype=np.float64)
    use = np.asarray(valid, dtype=bool) & np.isfinite(flux) & np.isfinite(flux_var)
    use &= np.where(use, flux_var, 0.0) > 0
    G, P = flux.shape
    labels = np.where(use, segments, 0).astype(np.int64)
    S = int(labels.max(initial=0)) + 1
    weight = np.where(use, 1.0 / np.where(use, flux_var, 1.0), 0.0)
    index = (np.arange(G)[:, None] * S + labels).ravel()
    weights = np.bincount(index, weight.ravel(), G * S).reshape(G, S)
    sums = np.bincount(index, (weight * np.where(use, flux, 0.0)).ravel(), G * S).reshape(G, S)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.take_along_axis(sums / weights, labels, axis=1)
        q = np.where(use, weight * (flux - mean) ** 2, 0.0).sum(axis=1)
        dof = use.sum(axis=1) - (weights > 0).sum(axis=1)
        return np.where(dof > 0, q / np.maximum(dof, 1) - 1.0, np.nan)


def _fiber_batches(reads, valid, sigma, gain, todo, P, batch):
    """Fibers ``todo`` (their first ``P`` pixels) ``batch`` at a time, one batch even for no
    fibers: ``(part, reads, mask, sigma, gain)`` with ``part`` the batch's slice of ``todo``.
    Each batch's reads are taken from ``reads`` (all fibers, as prepared) as it comes
    (:func:`_fit_reads`), so no second copy of them is held."""
    for start in range(0, max(todo.size, 1), batch):
        part = slice(start, start + batch)
        rows = todo[part]
        batch_reads, mask = _fit_reads(reads, valid, rows, P)
        yield part, batch_reads, mask, sigma[rows, :P], gain[rows, :P]


def _fibers_per_batch(K: int, P: int) -> int:
    """Fibers of ``P`` pixels and ``K`` differences whose fit stays within
    :data:`FIT_BATCH_BYTES`; one at least."""
    return max(1, FIT_BATCH_BYTES // (FIT_BYTES_PER_ELEMENT * max(K, 1) * P))


def _segment_contrasts(reads, valid, sigma, gain, todo, P, segments, options) -> np.ndarray:
    """:func:`segment_contrast` of fibers ``todo`` (``segments`` ``(len(todo), P)``) from their
    constant fit, in batches of fibers as :func:`_fit_batched` takes them."""
    contrast = np.empty(todo.size)
    batch = _fibers_per_batch(reads.shape[0] - 1, P)
    for part, batch_reads, mask, sigma_rows, gain_rows in _fiber_batches(
        reads, valid, sigma, gain, todo, P, batch
    ):
        constant = fit_constant(batch_reads, sigma_rows, gain=gain_rows, mask=mask,
                                backend=options.backend)  # fmt: skip
        contrast[part] = segment_contrast(
            constant.flux, constant.flux_var, segments[part], valid[todo[part], :P]
        )
    return contrast


def _fit_batched(reads, valid, sigma, gain, todo, P, ref_index, options, segments) -> tuple:
    """``fit_omega`` and ``fit_constant`` of fibers ``todo`` (their first ``P`` pixels), in
    batches of fibers (:func:`_fiber_batches`), so that the fit's work arrays
    (:data:`FIT_BATCH_BYTES`) and, with ``segments``, the offsets' per-segment blocks
    (:data:`NUISANCE_BATCH_BYTES`) do not grow with the number of fibers. The groups and pixels
    are fitted independently, so the result is the same bits as one call over all of them.

    Returns
    -------
    (OmegaFit, FluxFit)
        ``(len(todo), ...)``.
    """
    K = reads.shape[0] - 1
    batch = _fibers_per_batch(K, P)
    if segments is not None:
        per_fiber = 6 * 8 * (int(segments.max(initial=0)) + 1) * K * K
        batch = min(batch, max(1, NUISANCE_BATCH_BYTES // per_fiber))
    fits, constants = [], []
    for part, batch_reads, mask, sigma_rows, gain_rows in _fiber_batches(
        reads, valid, sigma, gain, todo, P, batch
    ):
        constants.append(fit_constant(
            batch_reads, sigma_rows, gain=gain_rows, mask=mask, backend=options.backend
        ))  # fmt: skip
        fits.append(fit_omega(
            batch_reads, sigma_rows, gain=gain_rows, mask=mask, ref_index=ref_index,
            max_iter=options.max_iter, jump_search=options.jump_search, backend=options.backend,
            segments=None if segments is None else segments[part],
        ))  # fmt: skip
    return _joined_batches(fits, OmegaFit), _joined_batches(constants, FluxFit)


def _joined_batches(parts: list, kind: type):
    """One ``OmegaFit`` or ``FluxFit`` of the batches ``parts`` (fibers along the first axis)."""
    if len(parts) == 1:
        return parts[0]
    fields = {}
    for name, value in parts[0].__dict__.items():
        values = [getattr(p, name) for p in parts]
        if name == "offsets" and value is not None:  # batches may have fewer segments
            width = max(v.shape[1] for v in values)
            values = [np.pad(v, ((0, 0), (0, width - v.shape[1]), (0, 0)), constant_values=np.nan)
                      for v in values]  # fmt: skip
        fields[name] = None if value is None else np.concatenate(values)
    return kind(**fields)


def _segments(keys: np.ndarray, valid: np.ndarray, todo: np.ndarray, n_fibers: int,
              columns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """The nuisance term's segment labels of the fitted fibers ``todo`` (``keys``, ``valid``
    ``(len(todo), P)``), and for every fiber the chip (-1: none) and the fit-pixel count of each
    of its segments, ``(n_fibers, n_segments)``."""
    from ..noise.segments import keys_per_chip, readout_segments

    segments = readout_segments(keys, valid)
    segment_chip = np.full((n_fibers, int(segments.max(initial=0)) + 1), -1, np.int64)
    fiber = np.broadcast_to(todo[:, None], segments.shape)
    # The chip is the key's chip part, the same at every pixel of a segment.
    segment_chip[fiber[valid], segments[valid]] = keys[valid] // keys_per_chip(columns)
    segment_pixels = np.zeros(segment_chip.shape, np.int64)
    np.add.at(segment_pixels, (fiber[valid], segments[valid]), 1)
    return segments, segment_chip, segment_pixels


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
        # The convergence report; fibers not fitted are empty groups.
        stop_reason=spread(fit.stop_reason, int(StopReason.EMPTY)),
        step_size=spread(fit.step_size, nan),
        damping=spread(fit.damping, nan),
        offsets=None if fit.offsets is None else spread(fit.offsets, nan),
        jump_mask=None if fit.jump_mask is None else spread(fit.jump_mask, False),
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
    from scipy.special import chdtrc  # chi2's survival function (see choose_models)

    free = np.flatnonzero(np.arange(omega.size) != ref_index)
    sub = cov[free[:, None], free[None, :]]
    if not np.all(np.isfinite(omega)) or not np.any(sub):
        return 0.0, 1.0
    # Element ref is exactly 1: the constant model is omega = 1 everywhere.
    resid = omega[free] - 1.0
    stat = float(resid @ np.linalg.solve(sub, resid))
    return stat, float(chdtrc(free.size, max(stat, 0.0)))


def _check_model_inputs(fit, constant, n_fit_pixels, excluded, flags) -> tuple[int, int]:
    """``(n_fibers, K)`` of :func:`choose_models`' arguments; a ValueError naming the first
    that does not fit (NumPy's broadcast errors, a singular matrix or a failed unpacking
    before)."""
    if np.ndim(fit.omega) != 2:
        raise ValueError(f"fit: expected a batched OmegaFit, omega (n_fibers, K), got omega of "
                         f"shape {np.shape(fit.omega)}")  # fmt: skip
    n_fibers, K = fit.omega.shape
    if np.unique(fit.ref_index).size > 1:
        raise ValueError(
            "fit: expected one ref_index for every fiber (the borrowed mean and the tests "
            f"compare omegas at one reference), got {fit.ref_index}"
        )
    if np.shape(constant.chi2) != np.shape(fit.chi2):
        raise ValueError(f"constant: expected the fit's pixels, chi2 {np.shape(fit.chi2)}, got "
                         f"{np.shape(constant.chi2)}")  # fmt: skip
    per_fiber = {"n_fit_pixels": (n_fit_pixels, "iu"), "excluded": (excluded, "b")}
    if flags is not None:
        per_fiber["flags"] = (flags, "iu")
    for name, (value, kinds) in per_fiber.items():
        kind = "booleans" if kinds == "b" else "integers"
        if not (isinstance(value, np.ndarray) and value.shape == (n_fibers,)
                and value.dtype.kind in kinds):  # fmt: skip
            raise ValueError(f"{name}: expected an array of {n_fibers} {kind} (one per fiber), "
                             f"got {type(value).__name__} {np.shape(value)} "
                             f"{getattr(value, 'dtype', '')}")  # fmt: skip
    return n_fibers, K


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
    With the 1/f nuisance offsets (``fit.offsets``) the time-variable model is chosen on the
    Wald statistic of omega against the ones-vector, and a fit that did not converge makes its
    fiber borrow rather than fall back (it lacks the flux contrast that separates omega from the
    offsets).
    With ``model="auto"`` a bright fiber gets the time-variable model when ``p_value`` of the
    chi2 improvement is below ``options.p_value`` and its equivalent amplitude reaches
    ``options.amplitude_threshold``; otherwise the constant model. Other fibers (except excluded
    ones) borrow the inverse-covariance weighted mean omega of the bright fibers, which are all
    fitted with the same reference read, when that mean passes the same two tests. A fiber whose
    fit failed falls back to the constant model and is flagged ``FALLBACK_CONSTANT``.
    With ``model="time-variable"`` the two tests are skipped: every bright fiber gets the
    time-variable model and, if there is a bright fiber, the other fibers (except excluded ones
    and failed fits) borrow.

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
    # chi2's survival function straight from scipy.special (what scipy.stats.chi2.sf calls for
    # x >= 0, to the bit): importing scipy.stats costs a third of a second a run.
    from scipy.special import chdtrc

    n_fibers, K = _check_model_inputs(fit, constant, n_fit_pixels, excluded, flags)
    ref_index = int(fit.ref_index[0])
    flags = (np.zeros(n_fibers, np.int64) if flags is None else flags.copy()) | fit.group_flags
    in_fit = ~(fit.flags & Flag.NOT_IN_OMEGA_FIT).astype(bool)
    # The two models are compared on the same data: the constant fit sees the first pass's mask,
    # the omega fit's jump search (4.5 sigma) masks more, so a pixel where it found a jump
    # leaves the comparison (with it, 3.5 % of the fibers of a stable sky had p < 1e-3).
    compared = in_fit if fit.jump_mask is None else in_fit & ~fit.jump_mask.any(axis=2)
    # A fiber whose every fit pixel has a jump would compare nothing (p = 1, the constant model
    # whatever its omega): it compares them all, as before.
    compared = np.where(compared.any(axis=1, keepdims=True), compared, in_fit)
    with np.errstate(invalid="ignore", divide="ignore"), _quiet():
        chi2_tv = np.where(compared, fit.chi2, 0.0).sum(axis=1)
        chi2_c = np.where(compared, constant.chi2, 0.0).sum(axis=1)
        dof = np.where(compared, fit.n_diff - 1, 0).sum(axis=1)
        delta = chi2_c - chi2_tv
        if fit.offsets is not None:
            # With the 1/f nuisance offsets the time-variable fit has parameters the constant
            # fit lacks, so the chi2 difference would favour it: use the Wald statistic of omega
            # against the ones-vector instead (its covariance marginalises the offsets).
            pairs = zip(fit.omega, fit.omega_cov, strict=True)
            delta = np.array([_significance(o, c, ref_index)[0] if np.isfinite(o).all() else
                              np.nan for o, c in pairs])  # fmt: skip
        free = np.sum(np.isfinite(fit.omega), axis=1) - 1
        p_value = chdtrc(np.maximum(free, 1), np.maximum(delta, 0.0))
        error = np.sqrt(np.maximum(np.diagonal(fit.omega_cov, axis1=1, axis2=2), 0.0))
        median_error = np.nanmedian(np.where(np.arange(K) == ref_index, np.nan, error), axis=1)
    amplitude = _equivalent_amplitude(_free(fit.omega, ref_index), _free(error, ref_index))
    fail_bits = Flag.NOT_CONVERGED | Flag.OMEGA_ELEMENT_NO_DATA
    if fit.offsets is not None:
        # With the nuisance term a fit that does not converge is one whose pixels lack the flux
        # contrast within segments that tells omega from the offsets (docs/noise.md): such a
        # fiber does not constrain its own omega and borrows, like a faint one.
        fail_bits = Flag.OMEGA_ELEMENT_NO_DATA
    failed = (fit.group_flags & fail_bits).astype(bool)
    failed &= n_fit_pixels >= options.min_fit_pixels
    failed &= ~excluded
    flags[failed] |= Flag.FALLBACK_CONSTANT
    bright = (
        ~excluded
        & ~failed
        & (n_fit_pixels >= options.min_fit_pixels)
        & ~(fit.group_flags & (Flag.EMPTY_GROUP | Flag.NOT_CONVERGED)).astype(bool)
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
