"""Readers for ApogeeReduction.jl's HDF5 products: ar3Dcal, ar2D/ar2Dcal, ar1D/ar1Dcal.

ApogeeReduction.jl writes its arrays from Julia (column-major) with JLD2, so h5py shows every
array with its dimensions reversed. A Julia image ``(2560, 2048)`` = ``(x, y)`` arrives as
NumPy ``(2048, 2560)`` = ``(y, x)``, which is already pyapred's ``(ny, nx)`` order: images and
cubes need no transpose. Julia's 1-based pixel coordinates and fiber indices become 0-based
here; each docstring states the conversion. Layouts are from
``../shared/docs/apogee-reduction-jl.md`` section 3. Trace files (``traceMain_*``,
``{quartz,dome}Trace_*``) are read by :func:`pyapred.traces.read_trace_file`, which returns the
pipeline's :class:`pyapred.traces.Traces`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.time import Time, TimeDelta

from ..errors import InputError
from .apz import CHIP_COLOR, SJD_OFFSET, ApzName, RawExposure
from .hdf5 import open_h5, read_dataset, read_group, read_value

__all__ = [
    "Ar1D",
    "Ar2D",
    "Ar3DCal",
    "ArName",
    "parse_ar_name",
    "read_ar1d",
    "read_ar2d",
    "read_ar3dcal",
]

#: Image shape as h5py shows ApogeeReduction.jl's Julia ``(2560, 2048)``: ``(ny, nx)``.
IMAGE_SHAPE = (2048, 2560)
N_FIBERS = 300
N_DISPERSION = 2048
#: APOGEE's read period (INTOFF = 10647 ms); ar3Dcal files do not store it.
READ_PERIOD_S = 10.647
_CHIP_LETTER = {color: letter for letter, color in CHIP_COLOR.items()}
_IMAGE = "(Julia (2560, 2048) seen reversed)"
_NAME = re.compile(r"^(ar[0-9A-Za-z]+)_(apo|lco)_(\d{5})_(\d{4})_([RGB])_([0-9A-Za-z]+)\.h5$")


@dataclass(frozen=True)
class ArName:
    """What an ApogeeReduction.jl file name ``{stage}_{tele}_{mjd}_{EXP4}_{chip}_{type}.h5`` says.

    Attributes
    ----------
    stage : str
        ``"ar2D"``, ``"ar2Dcal"``, ``"ar3Dcal"``, ``"ar1Dcal"``, ...
    telescope : str
        ``"apo"`` or ``"lco"``.
    mjd : int
        SDSS MJD (SJD) of the night.
    exposure : int
        Number within the night.
    chip : str
        ``"R"``, ``"G"`` or ``"B"`` (raw chips ``a``, ``b``, ``c``).
    image_type : str
        ``"object"``, ``"dark"``, ``"quartzflat"``, ...
    """

    stage: str
    telescope: str
    mjd: int
    exposure: int
    chip: str
    image_type: str

    def to_apz_name(self) -> ApzName:
        """The raw file's telescope, chip letter and exposure number."""
        return ApzName.from_night(self.telescope, _CHIP_LETTER[self.chip], self.mjd, self.exposure)


def parse_ar_name(path: str | os.PathLike) -> ArName | None:
    """Parse ``ar2D_apo_60781_0065_R_object.h5``; None if the name has another form."""
    match = _NAME.match(Path(path).name)
    if match is None:
        return None
    stage, telescope, mjd, exposure, chip, image_type = match.groups()
    return ArName(stage, telescope, int(mjd), int(exposure), chip, image_type)


# --------------------------------------------------------------------------------------------
# ar2D / ar2Dcal
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ar2D:
    """Images of an ``ar2D`` or ``ar2Dcal`` file, each ``(ny, nx) = (2048, 2560)``.

    Julia's ``(2560, 2048)`` arrays, read through h5py, are already in this order.

    Attributes
    ----------
    path : str
    dimage : ndarray, float64
        Count rate, DN per read.
    ivarimage : ndarray, float64
        Inverse variance of ``dimage``, (DN per read)^-2.
    chisqimage : ndarray or None
        Ramp-fit chi-squared (ar2D; absent from ar2Dcal).
    pix_bitmask : ndarray of int64 or None
        ApogeeReduction.jl's pixel bits (ar2Dcal).
    cr_image : ndarray of int64 or None
        ``CRimage``: number of read differences rejected as cosmic rays (ar2D).
    last_unsaturated : ndarray of int64 or None
        Julia's 1-based index of the last unsaturated difference, as stored (ar2D).
    metadata : dict
        The ``metadata`` group.
    name : ArName or None
    """

    path: str
    dimage: np.ndarray
    ivarimage: np.ndarray
    chisqimage: np.ndarray | None
    pix_bitmask: np.ndarray | None
    cr_image: np.ndarray | None
    last_unsaturated: np.ndarray | None
    metadata: dict
    name: ArName | None


def read_ar2d(path: str | os.PathLike) -> Ar2D:
    """Read an ``ar2D_*.h5`` or ``ar2Dcal_*.h5`` file.

    ``dimage`` and ``ivarimage`` are required; the other images are read where present.

    Raises
    ------
    InputError
        A required dataset is missing, or any image is not ``(2048, 2560)`` in h5py order.
    """
    with open_h5(path) as handle:
        images = {}
        for key, kinds, required in (
            ("dimage", "f", True),
            ("ivarimage", "f", True),
            ("chisqimage", "f", False),
            ("pix_bitmask", "iu", False),
            ("CRimage", "iu", False),
            ("last_unsaturated", "iu", False),
        ):
            if required or key in handle:
                images[key] = read_dataset(
                    path, handle, key, shape=IMAGE_SHAPE, kinds=kinds, expected=_IMAGE
                )
            else:
                images[key] = None
        metadata = _metadata(path, handle)
    return Ar2D(
        path=str(path),
        dimage=images["dimage"],
        ivarimage=images["ivarimage"],
        chisqimage=images["chisqimage"],
        pix_bitmask=images["pix_bitmask"],
        cr_image=images["CRimage"],
        last_unsaturated=images["last_unsaturated"],
        metadata=metadata,
        name=parse_ar_name(path),
    )


# --------------------------------------------------------------------------------------------
# ar3Dcal
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ar3DCal:
    """An ``ar3Dcal`` file: ApogeeReduction.jl's zero-pointed reads, gain and read variance.

    Attributes
    ----------
    exposure : RawExposure
        ``reads`` = ``outdat``, float32 or float64 as the file stores it (ApogeeReduction.jl
        computes it in Float64), ``(n_reads_used, ny, nx)`` in DN after reference
        zero-pointing (Julia ``(2560, 2048, n)`` seen reversed: no transpose needed).
        ``read_indices`` are 0-based positions in the raw file: the last ``n_reads_used`` of
        ``nread_total``. ``read_times`` are reconstructed (TAI, ApogeeReduction.jl's scale)
        from ``mjd_mid_exposure`` and the 10.647 s read period, because ar3Dcal keeps no
        per-read times. ``header`` holds only ``NREAD`` and ``IMAGETYP``; ``read_headers`` is
        empty.
    gain : ndarray, float64, ``(ny, nx)``
        ``gainMat``, e-/DN.
    read_var : ndarray, float64, ``(ny, nx)``
        ``readVarMat``, single-read variance in DN^2.
    metadata : dict
        The ``metadata`` group.
    unsaturated_diffs : ndarray of int64 ``(ny, nx)``, or None
        How many of ``outdat``'s read differences, counted from its first read, come before the
        pixel saturates (0: none; ``n_reads_used - 1``: all), from the file's
        ``last_unsaturated``: ApogeeReduction.jl's 1-based index of the last unsaturated
        difference (``extraction_method`` ``sutr_wood`` or ``sutr_omega``) or of the last
        unsaturated read (``dcs``, one more). None where the file has no ``last_unsaturated``.
    n_reads_used : int
        Reads in ``outdat`` (``exposure.reads`` holds those that ``reads`` selects).
    """

    exposure: RawExposure
    gain: np.ndarray
    read_var: np.ndarray
    metadata: dict
    unsaturated_diffs: np.ndarray | None = None
    n_reads_used: int = 0


def read_ar3dcal(
    path: str | os.PathLike, *, reads: slice | None = None, rows: slice | None = None
) -> Ar3DCal:
    """Read an ``ar3Dcal_{tele}_{mjd}_{EXP4}_{chip}_{type}.h5`` file.

    Parameters
    ----------
    path : str or os.PathLike
        Its name must follow ApogeeReduction.jl's pattern (telescope, MJD, exposure, chip).
    reads : slice, optional
        0-based positions within ``outdat`` to read; default all. Only that part is read.
    rows : slice, optional
        Rows (y) to read, step 1; default all.

    Returns
    -------
    Ar3DCal

    Raises
    ------
    InputError
        Bad name, missing dataset or metadata key, or a wrong shape.
    """
    path = Path(path)
    name = parse_ar_name(path)
    if name is None:
        raise InputError(path, "file name", "ar3Dcal_{apo|lco}_{mjd}_{EXP4}_{R|G|B}_{type}.h5")
    reads = slice(None) if reads is None else reads
    rows = slice(None) if rows is None else rows
    if rows.step not in (None, 1):
        raise ValueError(f"rows: expected a slice with step 1, got {rows!r}")
    if reads.step is not None and reads.step < 1:
        raise ValueError(f"reads: expected a slice with a positive step, got {reads!r}")
    with open_h5(path) as handle:
        metadata = _metadata(path, handle)
        shape = (None, *IMAGE_SHAPE)
        outdat = read_dataset(
            path,
            handle,
            "outdat",
            shape=shape,
            kinds="f",
            selection=(reads, rows),
            expected="(Julia (2560, 2048, n))",
        )
        if outdat.dtype.itemsize < 4:  # float16 tops out at 65504 DN, 32 DN apart up there
            raise InputError(path, "outdat", "float32 or float64 DN (as ApogeeReduction.jl "
                             "writes them)", str(outdat.dtype))  # fmt: skip
        n_used = handle["outdat"].shape[0]
        gain, read_var = (
            read_dataset(
                path, handle, key, shape=IMAGE_SHAPE, kinds="f", selection=(rows,), expected=_IMAGE
            )
            for key in ("gainMat", "readVarMat")
        )
        unsaturated_diffs = None
        if "last_unsaturated" in handle:
            last = read_dataset(path, handle, "last_unsaturated", shape=IMAGE_SHAPE, kinds="iu",
                                selection=(rows,), expected=_IMAGE)  # fmt: skip
            unsaturated_diffs = _unsaturated_diffs(path, last, metadata, n_used)
    n_total = metadata.get("nread_total", n_used)
    if not isinstance(n_total, int) or n_total < n_used:
        expected = f"an integer >= {n_used} (the reads in outdat)"
        raise InputError(path, "metadata/nread_total", expected, found=repr(n_total))
    used = np.arange(n_total - n_used, n_total)
    mid = metadata.get("mjd_mid_exposure")
    usable = isinstance(mid, (int, float)) and not isinstance(mid, bool) and 0 < mid < 1e6
    if not usable:  # NaN, inf and 1e300 are no times either (astropy refuses them, or hangs)
        expected = "the mid-exposure MJD (a number between 0 and 1e6)"
        raise InputError(path, "metadata/mjd_mid_exposure", expected, found=repr(mid))
    # The name's MJD is the night's SJD, floor(MJD + 0.3 or 0.4): a time a day or more away
    # belongs to another night (it went into the product as the exposure's read times).
    sjd = mid + SJD_OFFSET[name.telescope]
    if not name.mjd - 1 < sjd < name.mjd + 2:
        expected = f"a time of the night the file name says (SJD {name.mjd})"
        raise InputError(path, "metadata/mjd_mid_exposure", expected, found=repr(mid))
    # ApogeeReduction.jl: mid = start(first used) + INTOFF/2 + (start(last) - start(first))/2.
    first_start = Time(mid, format="mjd", scale="tai") - TimeDelta(
        READ_PERIOD_S * 0.5 * n_used, format="sec"
    )
    positions = np.arange(n_used)[reads]
    times = first_start + TimeDelta(READ_PERIOD_S * positions, format="sec")
    rows = slice(*rows.indices(IMAGE_SHAPE[0]))
    exposure = RawExposure(
        path=str(path),
        reads=outdat,
        header=fits.Header([("NREAD", n_total), ("IMAGETYP", name.image_type)]),
        read_headers=(),
        read_times=times,
        read_indices=used[positions],
        rows=slice(rows.start, rows.start + outdat.shape[1]),
        n_reads_in_file=n_total,
        name=name.to_apz_name(),
        image_shape=IMAGE_SHAPE,
    )
    return Ar3DCal(exposure=exposure, gain=gain, read_var=read_var, metadata=metadata,
                   unsaturated_diffs=unsaturated_diffs, n_reads_used=int(n_used))  # fmt: skip


#: ApogeeReduction.jl's extraction methods whose ``last_unsaturated`` indexes read differences:
#: ``process_3D`` decrements the read index in ``diffify_datacube!``; ``dcs`` keeps it.
_DIFFERENCE_INDEXED = ("sutr_wood", "sutr_omega")


def _unsaturated_diffs(path, last: np.ndarray, metadata: dict, n_used: int) -> np.ndarray:
    """Each pixel's number of unsaturated read differences from an ar3Dcal ``last_unsaturated``
    (:attr:`Ar3DCal.unsaturated_diffs`); ``metadata`` says which index it is (``sutr_wood``,
    ApogeeReduction.jl's default, where it says nothing)."""
    method = metadata.get("extraction_method", "sutr_wood")
    if method not in (*_DIFFERENCE_INDEXED, "dcs"):
        expected = f"one of {', '.join(_DIFFERENCE_INDEXED)} or dcs (ApogeeReduction.jl's)"
        raise InputError(path, "metadata/extraction_method", expected, found=repr(method))
    # A read index runs 0 (no unsaturated read) to n_used; a difference index one lower.
    low, high = (-1, n_used - 1) if method in _DIFFERENCE_INDEXED else (0, n_used)
    outside = (last < low) | (last > high)
    if outside.any():
        first = tuple(int(i) for i in np.argwhere(outside)[0])
        raise InputError(
            path, "last_unsaturated", f"a {method} index of the last unsaturated "
            f"{'difference' if method != 'dcs' else 'read'}, {low} to {high} ({n_used} reads)",
            found=f"{int(last[first])} (first at row, column {first})",
        )  # fmt: skip
    count = last.astype(np.int64) - (0 if method in _DIFFERENCE_INDEXED else 1)
    return np.maximum(count, 0)


# --------------------------------------------------------------------------------------------
# ar1D / ar1Dcal
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ar1D:
    """The trace centers and fiber types of an ``ar1D`` or ``ar1Dcal`` file.

    Attributes
    ----------
    path : str
    trace_centers : ndarray, float64, ``(300, 2048)``
        ``[fiber_index, x]``: the trace's y center in **0-based** pixels (ApogeeReduction.jl's
        1-based value minus 1). Julia ``(2048, 300)`` seen reversed, so no transpose;
        ``fiber_index = 300 - fiberId`` (0-based).
    fiber_types : tuple of str or None
        ``fiberTypeList`` ("sci", "sky", "tel", "cal", ...), by fiber index, where present.
    metadata : dict
    name : ArName or None
    """

    path: str
    trace_centers: np.ndarray
    fiber_types: tuple[str, ...] | None
    metadata: dict
    name: ArName | None


def read_ar1d(path: str | os.PathLike) -> Ar1D:
    """Read ``extract_trace_centers`` (and ``fiberTypeList``) from an ``ar1D``/``ar1Dcal`` file."""
    with open_h5(path) as handle:
        centers = read_dataset(
            path,
            handle,
            "extract_trace_centers",
            shape=(N_FIBERS, N_DISPERSION),
            kinds="f",
            expected="(Julia (2048, 300) seen reversed)",
        )
        fiber_types = None
        if "fiberTypeList" in handle:
            fiber_types = tuple(read_value(path, handle["fiberTypeList"]))
            if len(fiber_types) != N_FIBERS:
                raise InputError(
                    path, "fiberTypeList", f"{N_FIBERS} strings", found=str(len(fiber_types))
                )
        metadata = _metadata(path, handle)
    return Ar1D(
        path=str(path),
        trace_centers=centers - 1.0,
        fiber_types=fiber_types,
        metadata=metadata,
        name=parse_ar_name(path),
    )


def _metadata(path, handle) -> dict:
    group = handle.get("metadata")
    return read_group(path, group) if group is not None and hasattr(group, "items") else {}
