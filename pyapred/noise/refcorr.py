"""Reference-pixel correction of correlated (1/f) read noise, applied to read differences.

The steps follow apogee_drp's ``refcorrect`` (Holtzman 2011), on each read difference:

1. subtract the reference output (raw columns 2048-2559), median-filtered along its rows,
   flipped for outputs 1 and 3, which are read in the opposite direction;
2. per output, remove the linear ramp between the bottom (rows 0-3) and top (rows 2044-2047)
   reference rows;
3. optionally (``reference_columns=True``, apogee_drp's default, off here), per row, remove the
   offset measured by the left and right reference columns (0-3, 2044-2047), median-filtered
   over ``row_window`` rows; its own noise is one offset shared by the whole row, which made
   omega worse in every simulation (``docs/noise.md``);
4. optionally (``method="rowmedian"``), per output and row, remove the median of the inter-fiber
   pixels given by ``background``, where a row has at least ``min_background`` of them; for a
   ramp (:func:`refcorr_reads`, :func:`refcorr_inplace`), those medians less their straight
   line across the reads, which the background's own light makes (:func:`without_static_light`).

:func:`refcorr` works on differences of reads, so that the pixels' fixed pattern (bias and
kTC offsets, far larger than the noise) does not steer its medians. A ramp is corrected one read
at a time, through the read's difference from the ramp's mean read (:func:`refcorr_reads`, or
:func:`refcorr_inplace` for a cube in place, one frame at a time). The noise the correction adds
to read ``k`` then comes from read ``k`` alone (and, n_reads times weaker, from the mean read,
one offset common to every read, which no slope sees), so it acts as read noise, which is what
the fit assumes. Two other ways do not: summing corrected successive differences (a median of
differences is not a difference of medians, so part of the added noise accumulates like a
random walk), and differences from the first read (every read shares the first read's part: 20 %
more variance in differences 2 to K than read noise of the same total gives).

Step 1 adds the reference output's white noise to every pixel: :func:`reference_read_variance`
measures it, as a variance per read to add to the read noise squared before fitting.
"""

from __future__ import annotations

import functools
import warnings
from typing import Literal

import numpy as np

from .hxrg import CHIP_ROWS, N_SCIENCE_OUTPUTS, OUTPUT_COLUMNS, REFERENCE_BORDER

__all__ = [
    "background_medians",
    "reference_read_variance",
    "refcorr",
    "refcorr_inplace",
    "refcorr_reads",
    "without_static_light",
]

Method = Literal["refpix", "rowmedian", "none"]
SCIENCE = N_SCIENCE_OUTPUTS * OUTPUT_COLUMNS


def _check(diffs: np.ndarray, rows: slice, method: str, background) -> tuple[int, int]:
    if method not in ("refpix", "rowmedian", "none"):
        raise ValueError(f"method: expected 'refpix', 'rowmedian' or 'none', got {method!r}")
    if diffs.ndim != 3 or diffs.shape[-1] != SCIENCE + OUTPUT_COLUMNS:
        raise ValueError(
            f"diffs: expected (n, ny, 2560) raw frames with the reference output, got {diffs.shape}"
        )
    start, stop, step = rows.indices(CHIP_ROWS)
    if step != 1 or stop - start != diffs.shape[1]:
        raise ValueError(f"rows: expected a slice of {diffs.shape[1]} chip rows, got {rows}")
    if method == "rowmedian":
        if background is None:
            raise ValueError("background: method 'rowmedian' needs the inter-fiber pixel mask")
        expected = (diffs.shape[1], SCIENCE)
        if np.shape(background) != expected:
            raise ValueError(f"background: expected shape {expected}, got {np.shape(background)}")
    return start, stop


def refcorr(
    diffs,
    *,
    method: Method = "refpix",
    rows: slice = slice(0, CHIP_ROWS),
    row_window: int = 7,
    ref_filter: int = 3,
    reference_columns: bool = False,
    background=None,
    min_background: int = 32,
) -> np.ndarray:
    """Remove correlated read noise from read differences with the reference pixels.

    Parameters
    ----------
    diffs : array_like, ``(n_diff, ny, 2560)``
        Read differences (or single reads) of raw frames, columns 0-2047 the H2RG array and
        2048-2559 the reference output, in any units.
    method : {"refpix", "rowmedian", "none"}
        ``"refpix"``: steps 1-3 of the module docstring; ``"rowmedian"``: also step 4;
        ``"none"``: return a float64 copy.
    rows : slice, optional
        The chip rows ``diffs`` holds (default all 2048). Step 2 runs only when both reference
        row bands are among them.
    row_window : int, optional
        Rows in the running median of step 3 (odd; 1 = no filtering).
    ref_filter : int, optional
        Length of the median filter along each row of the reference output (1 = none). A filter
        across rows would mix the row offsets it is meant to remove.
    reference_columns : bool, optional
        Run step 3 (default False; apogee_drp runs it). Its estimate of each row's offset
        (8 reference pixels, ``row_window`` rows) carries their white noise into every pixel of
        the row: where the reference output already removed the correlated part, it adds more
        row noise than it removes (``docs/noise.md``).
    background : array_like of bool, ``(ny, 2048)``, optional
        For ``"rowmedian"``: True on pixels without light (between fiber traces, off the traces
        of every fiber; e.g. the complement of the pipeline's trace masks).
    min_background : int, optional
        Fewest background pixels in one output's row for step 4 to use that row.

    Returns
    -------
    ndarray, float64, ``(n_diff, ny, 2048)``
        The corrected H2RG columns.
    """
    from scipy import ndimage

    diffs = np.asarray(diffs, dtype=np.float64)
    start, stop = _check(diffs, rows, method, background)
    out = diffs[..., :SCIENCE].copy()
    if method == "none":
        return out
    n, ny = diffs.shape[:2]
    per_output = out.reshape(n, ny, N_SCIENCE_OUTPUTS, OUTPUT_COLUMNS)  # a view of out

    # 1. Reference output, read in sync with every output.
    ref = diffs[..., SCIENCE:]
    if ref_filter > 1:
        ref = ndimage.median_filter(ref, size=(1, 1, ref_filter), mode="nearest")
    for o in range(N_SCIENCE_OUTPUTS):
        per_output[:, :, o] -= ref[..., ::-1] if o in (1, 3) else ref

    # 2. Top/bottom reference rows: a linear ramp in row per output.
    y = np.arange(start, stop)
    bottom = y < REFERENCE_BORDER
    top = y >= CHIP_ROWS - REFERENCE_BORDER
    if bottom.any() and top.any():
        inner = slice(REFERENCE_BORDER, OUTPUT_COLUMNS - REFERENCE_BORDER)
        low = per_output[:, bottom][..., inner].mean(axis=(1, 3))  # (n, 4)
        high = per_output[:, top][..., inner].mean(axis=(1, 3))
        y_low, y_high = y[bottom].mean(), y[top].mean()
        frac = ((y - y_low) / (y_high - y_low))[None, :, None]
        per_output -= (low[:, None, :] + frac * (high - low)[:, None, :])[..., None]

    # 3. Left/right reference columns: one offset per row, smoothed over row_window rows.
    if reference_columns:
        side = np.concatenate(
            [out[..., :REFERENCE_BORDER], out[..., SCIENCE - REFERENCE_BORDER :]], axis=-1
        )
        offset = side.mean(axis=-1)  # (n, ny)
        if row_window > 1:
            offset = ndimage.median_filter(offset, size=(1, row_window), mode="nearest")
        out -= offset[..., None]

    # 4. Inter-fiber pixels, where a row has enough of them.
    if method == "rowmedian":
        per_output -= background_medians(out, background, min_background)[..., None]
    return out


def background_medians(corrected, background, min_background: int = 32) -> np.ndarray:
    """Step 4's offsets: per difference, row and output, the median of the background pixels
    of ``corrected`` (``(n, ny, 2048)``, after steps 1-3), 0 where a row and output has fewer
    than ``min_background`` of them."""
    corrected = np.asarray(corrected, dtype=np.float64)
    n, ny = corrected.shape[:2]
    per_output = corrected.reshape(n, ny, N_SCIENCE_OUTPUTS, OUTPUT_COLUMNS)
    dark = np.asarray(background, dtype=bool).reshape(ny, N_SCIENCE_OUTPUTS, OUTPUT_COLUMNS)
    counts = dark.sum(axis=-1)  # (ny, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: min_background
        med = np.nanmedian(np.where(dark, per_output, np.nan), axis=-1)  # (n, ny, 4)
    return np.where(counts >= min_background, med, 0.0)


def without_static_light(row_medians: np.ndarray) -> np.ndarray:
    """Step 4's offsets of a ramp's reads (each read's difference from the mean read) less
    their straight line across the reads, per row and output.

    The background pixels are not dark: the wings of the fibers on either side, scattered
    light. Light that accumulates steadily makes a straight line across the reads of a read's
    difference from the mean read, which step 4 took for 1/f noise and removed from the whole
    row: up to 85 % of a traced pixel's flux in rows that cross a curved trace (R row 134 of a
    30-fiber chip, 85.6 DN per read against 14.9), 5-15 sigma off, unflagged. The 1/f noise's
    own straight line in a row cannot be told from light, and stays; so does the part of the
    background light that a changing sky bends away from the line (its share of the traced
    pixels' flux: small for bright pixels). Reads are taken as evenly spaced.
    """
    n = row_medians.shape[0]
    if n < 3:  # a line through two reads is all there is
        return np.zeros_like(row_medians)
    k = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    k = k.reshape((n,) + (1,) * (row_medians.ndim - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a row NaN in every read stays NaN
        level = np.nanmean(row_medians, axis=0)
        slope = np.nansum(k * (row_medians - level), axis=0) / np.sum(k * k)
    return row_medians - level - k * slope


def refcorr_reads(reads, **options) -> np.ndarray:
    """:func:`refcorr` for a ramp: correct each read through its difference from the mean read.

    Parameters
    ----------
    reads : array_like, ``(n_reads, ny, 2560)``
    **options
        As for :func:`refcorr`.

    Returns
    -------
    ndarray, float64, ``(n_reads, ny, 2048)``
        Corrected reads: read ``k`` is ``mean + refcorr(reads[k] - mean)``, ``mean`` the mean
        read (with ``"rowmedian"``, step 4's medians less their straight line across the reads,
        :func:`without_static_light`). The noise the correction adds then acts as read noise
        (:func:`reference_read_variance`; see the module docstring).
    """
    reads = np.asarray(reads, dtype=np.float64)
    with warnings.catch_warnings():  # a pixel NaN in every read stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(reads, axis=0)  # a NaN read spoils that read only, not the pixel's
    if options.get("method") == "rowmedian":
        # Steps 1-3, then step 4 with the background's own light taken out of its medians.
        _check(reads[:1], options.get("rows", slice(0, CHIP_ROWS)), "rowmedian",
               options.get("background"))  # fmt: skip
        out = refcorr(reads - mean, **{**options, "method": "refpix"})
        medians = background_medians(out, options["background"],
                                     options.get("min_background", 32))  # fmt: skip
        n, ny = out.shape[:2]
        out.reshape(n, ny, N_SCIENCE_OUTPUTS, OUTPUT_COLUMNS)[:] -= without_static_light(medians)[
            ..., None
        ]
    else:
        out = refcorr(reads - mean, **options)
    out += mean[:, :SCIENCE]
    return out


@functools.cache
def _median_variance_factor(size: int) -> float:
    """Variance of white noise after the ``size``-pixel running median of step 1 (unit input)."""
    if size <= 1:
        return 1.0
    from scipy import ndimage

    white = np.random.default_rng(0).standard_normal((256, OUTPUT_COLUMNS))
    return float(ndimage.median_filter(white, size=(1, size), mode="nearest").var())


def reference_read_variance(diffs, *, ref_filter: int = 3) -> float:
    """Read variance that step 1 of :func:`refcorr` adds to every corrected pixel.

    Subtracting the (median-filtered) reference output removes the noise it shares with the
    science outputs and adds its own white noise. That noise is independent between reads, so
    it acts as extra read noise: a fit of corrected data should use
    ``sqrt(read_noise**2 + reference_read_variance(diffs))``.

    Parameters
    ----------
    diffs : array_like, ``(n_diff, ny, 2560)``
        Raw read differences, as for :func:`refcorr`.
    ref_filter : int, optional
        The ``ref_filter`` of the correction.

    Returns
    -------
    float
        Variance per read, in the units of ``diffs`` squared. The white noise of the reference
        output is measured robustly from second differences along its rows, which 1/f noise
        hardly reaches.
    """
    ref = np.asarray(diffs, dtype=np.float64)[..., SCIENCE:]
    second = ref[..., :-2] - 2.0 * ref[..., 1:-1] + ref[..., 2:]
    mad = np.median(np.abs(second - np.median(second)))
    var_diff = (1.4826 * mad) ** 2 / 6.0  # white noise of one difference
    return _median_variance_factor(int(ref_filter)) * var_diff / 2.0


def refcorr_inplace(
    reads: np.ndarray,
    *,
    method: Method = "refpix",
    saturation=None,
    ref_filter: int = 3,
    **options,
) -> float:
    """:func:`refcorr_reads` on a ramp in place, one read at a time.

    The science columns of ``reads`` become the corrected reads; the reference output is left as
    it is. Extra memory is a few frames, whatever the number of reads.

    Parameters
    ----------
    reads : ndarray of float, ``(n_reads, ny, 2560)``
        Raw reads of chip rows ``0 .. ny - 1``; overwritten.
    method : {"refpix", "rowmedian", "none"}
    saturation : float or array_like ``(ny, 2560)``, optional
        Reads at or above it keep their raw value, so that saturation is still detected after
        the correction.
    ref_filter : int, optional
    **options
        Other keywords of :func:`refcorr` (``background``, ``reference_columns``, ...).

    Returns
    -------
    float
        The read variance added by the correction (:func:`reference_read_variance`, averaged
        over the differences); 0 for ``"none"``.
    """
    if reads.ndim != 3 or reads.shape[0] < 2:
        raise ValueError(f"reads: expected (n_reads >= 2, ny, 2560), got {reads.shape}")
    rows = slice(0, reads.shape[1])
    _check(reads[:1], rows, method, options.get("background"))
    if method == "none":
        return 0.0
    sat = None if saturation is None else np.broadcast_to(saturation, reads.shape[1:])[:, :SCIENCE]
    # The mean read, summed read by read (no float64 copy of the cube), over the finite reads
    # of each pixel: a NaN read spoils that read only.
    mean = np.zeros(reads.shape[1:])
    count = np.zeros(reads.shape[1:], dtype=np.uint16) if reads.dtype.kind == "f" else None
    for frame in reads:
        if count is None:  # integer reads (a raw .apz): all finite
            mean += frame
            continue
        finite = np.isfinite(frame)
        mean += np.where(finite, frame, 0.0)
        count += finite
    if count is None:
        count = reads.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean /= count  # NaN where a pixel has no finite read
    added = 0.0
    previous = None
    # Step 4 (rowmedian) last, over all the reads: its medians less their straight line across
    # the reads (the background's own light, :func:`without_static_light`).
    medians = [] if method == "rowmedian" else None
    steps = {**options, "method": "refpix" if method == "rowmedian" else method}
    for k in range(reads.shape[0]):
        raw = np.array(reads[k], dtype=np.float64)  # a copy: reads[k] is overwritten below
        if previous is not None:
            added += reference_read_variance((raw - previous)[None], ref_filter=ref_filter)
        diff = (raw - mean)[None]
        corrected = refcorr(diff, rows=rows, ref_filter=ref_filter, **steps)[0]
        del diff
        if medians is not None:
            medians.append(background_medians(corrected[None], options["background"],
                                              options.get("min_background", 32))[0])  # fmt: skip
        corrected += mean[:, :SCIENCE]
        if sat is not None:
            hit = raw[:, :SCIENCE] >= sat
            corrected[hit] = raw[:, :SCIENCE][hit]
        reads[k, :, :SCIENCE] = corrected
        previous = raw
    if medians is not None:
        offsets = without_static_light(np.stack(medians))  # (n_reads, ny, 4)
        ny = reads.shape[1]
        for k in range(reads.shape[0]):
            science = reads[k, :, :SCIENCE]  # a view: corrected in place
            step = np.repeat(offsets[k], OUTPUT_COLUMNS, axis=-1)  # (ny, 2048)
            if sat is not None:  # a read kept at its raw value for saturation keeps it
                step = np.where(science >= sat, 0.0, step)
            science -= step.reshape(ny, SCIENCE)
    return added / (reads.shape[0] - 1)
