"""pyapred's own products: HDF5 laid out like ApogeeReduction.jl's ``ar2D``, written atomically.

Layout of format 2 (h5py order; Julia and HDF5.jl see every array with its axes reversed, which
for the images is ApogeeReduction.jl's own ``(2560, 2048)`` order). Every dataset carries the
attributes ``units`` (``""`` where no physical unit applies) and ``description``, and every array
``axes`` (its axis names in h5py order); images and per-fiber arrays are chunked and compressed
with HDF5's built-in shuffle + gzip (deflate) filters, which every HDF5 reader decodes.

=====================================  ================  =========================================
dataset                                h5py shape         contents
=====================================  ================  =========================================
``/{chip}/dimage``                     ``(ny, nx)``       rate, DN per read (float32)
``/{chip}/ivarimage``                  ``(ny, nx)``       inverse variance, (DN/read)^-2 (float32)
``/{chip}/chisqimage``                 ``(ny, nx)``       ramp chi-squared (float32)
``/{chip}/ndiff``                      ``(ny, nx)``       read differences used (uint8, or uint16)
``/{chip}/flags``                      ``(ny, nx)``       pixel bits of ``pyapred.Flag`` (uint16)
``/fibers/{group}/fiberId``            ``(n,)``           1..300, ``301 - fiber_index``
``/fibers/{group}/fiber_index``        ``(n,)``           1-based ``301 - fiberId``, as in AR.jl
``/fibers/{group}/model``              ``(n,)``           "constant", "time_variable", "borrowed",
                                                          "time_variable_chromatic"
``/fibers/{group}/flags``              ``(n,)``           group bits of ``pyapred.Flag``
``/fibers/{group}/omega``              ``(n, K)``         per-difference transparency factors
``/fibers/{group}/omega_cov``          ``(n, K, K)``      covariance of omega
``/fibers/{group}/omega_mean``         ``(n,)``           ``omega / omega_mean`` has mean 1
``/fibers/{group}/ref_index``          ``(n,)``           1-based index of the element fixed to 1
``/fibers/{group}/amplitude`` ...      ``(n,)``           decision statistics, where known
``/metadata/*``                        scalars, strings   see :func:`write_product`
=====================================  ================  =========================================

The root attribute ``pyapred_product_format`` holds the layout version (:data:`FORMAT_VERSION`);
:func:`read_product` reads formats 1 and 2. Indices are 1-based in the file, for Julia users,
and 0-based in the Python objects.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import operator
import os
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError
from ._product_fits import read_fits, write_fits
from .atomic import atomic_path
from .deflate import deflate_planes
from .hdf5 import UTF8, describe, open_h5, read_dataset, read_group, read_value, write_value
from .paths import check_input_file

__all__ = [
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "BackgroundHashes",
    "ChipImages",
    "FiberResults",
    "Product",
    "flag_dtype",
    "read_product",
    "write_product",
]

#: Version of the product layout that :func:`write_product` writes.
FORMAT_VERSION = 2
#: The names a product's ``model`` column may hold (``pyapred.exposure.MODEL_NAMES``).
PRODUCT_MODELS = ("constant", "time_variable", "borrowed", "time_variable_chromatic")
#: The layout versions :func:`read_product` reads.
READABLE_VERSIONS = (1, 2)
#: Fibers per chip: ``fiberId = N_FIBERS - fiber_index`` (0-based index).
N_FIBERS = 300
#: The largest image and the most read differences a product may declare (a chip is 2048 x 2048,
#: 2560 wide with the reference output; a 620 kB damaged product declaring a bigger omega_cov
#: took 1.3 GB to read, before any check).
MAX_IMAGE_SHAPE = (4096, 4096)
MAX_READ_DIFFERENCES = 999
_FORMAT_ATTR = "pyapred_product_format"
_RESERVED = {"fibers", "metadata"}
#: Rows per chunk of an image: 64 x 2560 float32 is 640 kB, within HDF5's 1 MiB chunk cache.
CHUNK_ROWS = 64
#: gzip (deflate) level: 4 compresses within 0.5 % of level 9, several times faster.
GZIP_LEVEL = 4
_WRITER_KEYS = (
    "pyapred_version",
    "git_commit",
    "git_clean",
    "backend",
    "input_files",
    "input_sha256",
    "format_version",
)


@dataclass(frozen=True)
class _Field:
    """One dataset of the layout: its name in the file and its self-description."""

    name: str
    units: str
    description: str
    axes: tuple[str, ...] = ("fiber",)


#: ChipImages attribute -> image dataset, in file order.
_IMAGES = {
    "rate": _Field("dimage", "DN/read", "flux: count rate per read interval, from the up-the-ramp "
                   "fit with the pixel's fiber's omega", ("y", "x")),
    "ivar": _Field("ivarimage", "(DN/read)^-2", "inverse variance of dimage; 0 where unknown",
                   ("y", "x")),
    "chi2": _Field("chisqimage", "", "chi-squared of the read differences about the fitted ramp; "
                   "ndiff - 1 degrees of freedom", ("y", "x")),
    "n_diff": _Field("ndiff", "", "number of read differences used in the fit (not masked by "
                     "saturation, jumps or non-finite reads)", ("y", "x")),
    "flags": _Field("flags", "", "pixel bits of pyapred.Flag (docs/flags.md); not "
                    "ApogeeReduction.jl's pix_bitmask", ("y", "x")),
}  # fmt: skip

#: The ``normalisation`` attribute of ``omega``.
_OMEGA_NORMALISATION = (
    "ref_index: omega[ref_index] = 1 (its variance 0); omega / omega_mean has mean 1, the "
    "normalisation the extraction used for time_variable and borrowed fibers (constant-model "
    "fibers were extracted with omega = 1)"
)
#: FiberResults attribute (or derived column) -> dataset, in file order.
_FIBERS = {
    "fiber_id": _Field("fiberId", "", "fiber number, 1..300 (fiberId = 301 - fiber_index)"),
    "fiber_index": _Field("fiber_index", "", "ApogeeReduction.jl's fiberIndx = 301 - fiberId "
                          "(index_base 1; 0-based 300 - fiberId in Python)"),
    "model": _Field("model", "", "model used for extraction: constant, time_variable, borrowed "
                    "or time_variable_chromatic"),
    "flags": _Field("flags", "", "fiber bits of pyapred.Flag (docs/flags.md)"),
    "omega": _Field("omega", "", "transparency factor of each read difference, "
                    "normalised so that omega[ref_index] = 1", ("fiber", "diff")),
    "omega_cov": _Field("omega_cov", "", "covariance of omega; the ref_index row and column "
                        "are 0", ("fiber", "diff", "diff")),
    "omega_mean": _Field("omega_mean", "", "mean of omega over the read differences: "
                         "omega / omega_mean is the mean-1 omega"),
    "ref_index": _Field("ref_index", "", "index of the element of omega fixed to 1 (index_base)"),
    "amplitude": _Field("amplitude", "", "equivalent amplitude A of omega ~ U(1 - A, 1), "
                        "debiased for noise"),
    "delta_chi2": _Field("delta_chi2", "", "chi-squared of the constant model minus that of the "
                         "time-variable model over the fit pixels without a jump that the omega "
                         "fit found; with the 1/f nuisance offsets (correct_1f ...nuisance), the "
                         "Wald statistic of omega against ones"),
    "p_value": _Field("p_value", "", "probability of delta_chi2 under the constant model"),
    "n_fit_pixels": _Field("n_fit_pixels", "", "pixels of the fiber in the omega fit"),
    "n_iter": _Field("n_iter", "", "Gauss-Newton iterations of the omega fit"),
    "gamma": _Field("gamma", "", "chromatic slope: omega at wavelength coordinate c is omega "
                    "(1 + gamma c), c from -1 (bluest) to +1 (reddest column of the group's "
                    "chips, metadata coordinate_span_um_{group}); NaN for fibers not tried",
                    ("fiber", "diff")),
    "gamma_cov": _Field("gamma_cov", "", "covariance of gamma; the ref_index row and column "
                        "are 0", ("fiber", "diff", "diff")),
    "chromatic_delta_chi2": _Field("chromatic_delta_chi2", "", "chi-squared of the achromatic "
                                   "minus that of the chromatic fit over the fit pixels"),
    "chromatic_p_value": _Field("chromatic_p_value", "", "probability of chromatic_delta_chi2 "
                                "(over the chromatic fit's inflation squared) under the "
                                "achromatic model"),
    "chromatic_amplitude": _Field("chromatic_amplitude", "", "equivalent peak-to-peak "
                                  "red-to-blue omega difference, debiased for noise"),
}  # fmt: skip
_FLOAT_IMAGES = ("rate", "ivar", "chi2")
_FIBER_STATS = ("amplitude", "delta_chi2", "p_value", "n_fit_pixels", "n_iter",
                "chromatic_delta_chi2", "chromatic_p_value", "chromatic_amplitude")  # fmt: skip
#: Optional per-fiber ``(n, K)`` columns (the chromatic fit, ``pyapred fit --chromatic``).
_FIBER_ARRAYS = ("gamma", "gamma_cov")
#: The chromatic fit's columns: NaN for the fibers it did not try (model not time-variable).
_CHROMATIC_COLUMNS = ("chromatic_delta_chi2", "chromatic_p_value", "chromatic_amplitude",
                      *_FIBER_ARRAYS)  # fmt: skip
_INDEX_BASE = {"fiber_index", "ref_index"}  # stored 1-based in HDF5, 0-based in FITS
#: The descriptions of the index columns where they are stored 0-based (the FITS flavour).
_ZERO_BASED_FIBERS = {
    "fiber_id": _Field("fiberId", "", "fiber number, 1..300 (fiberId = 300 - fiber_index)"),
    "fiber_index": _Field("fiber_index", "", "0-based fiber index 300 - fiberId "
                          "(ApogeeReduction.jl's 1-based fiberIndx is this + 1)"),
    "ref_index": _Field("ref_index", "", "0-based index of the element of omega fixed to 1"),
}  # fmt: skip

#: Metadata keys pyapred writes or knows: ``(units, description)``.
_METADATA = {
    "pyapred_version": ("", "version of pyapred that wrote the product"),
    "git_commit": ("", "git commit of the pyapred checkout that wrote the product"),
    "git_clean": ("", "whether that checkout had no uncommitted changes"),
    "backend": ("", "solver backend that ran: numpy or julia"),
    "input_files": ("", "base names of the input files: raw exposures, then trace files"),
    "input_sha256": ("", "SHA-256 (hex) of each input file, in input_files order"),
    "format_version": ("", "product layout version (root attribute pyapred_product_format)"),
    "fit_options": ("", "the fit settings as JSON (pyapred.exposure.FitOptions.to_record)"),
    "model_option": ("", "the model setting: auto, constant or time-variable"),
    "joint_chips": ("", "whether omega was fitted over all chips at once"),
    "flux_normalisation": ("", "normalisation of the fluxes"),
    "nuisance_chips": ("", "chips of nuisance_offset_rms_dn (--correct-1f ...nuisance)"),
    "nuisance_offset_rms_dn": (
        "DN",
        "RMS of the fitted 1/f offsets per chip (row, output and "
        "read difference), nuisance_chips order",
    ),
    "coordinate_span_um": (
        "um",
        "bluest and reddest wavelength of the one chromatic fiber group's chips, where the "
        "chromatic fit's wavelength coordinate c is -1 and +1 (pyapred fit --chromatic)",
    ),
    "telescope": ("", "telescope: apo or lco"),
    "mjd": ("d", "SDSS MJD (SJD) of the night"),
    "expnum": ("", "APOGEE exposure number, (mjd - 55562) * 10000 + exposure"),
    "exposure": ("", "exposure number within the night"),
    "read_times_tai_mjd": ("d", "start time of each read, MJD in TAI"),
    "DATE-OBS": ("", "exposure header DATE-OBS: start of the exposure, in TIMESYS"),
    "TIMESYS": ("", "exposure header TIMESYS: time scale of DATE-OBS"),
    "INTOFF": ("ms", "exposure header INTOFF: interval between reads"),
    "INTDELAY": ("s", "exposure header INTDELAY: delay before the first read"),
    "NREAD": ("", "exposure header NREAD: number of reads"),
    "NFRAMES": ("", "exposure header NFRAMES"),
    "CONFIGID": ("", "exposure header CONFIGID: the fiber configuration"),
}
_METADATA_AXES = {
    "input_files": ("input",),
    "input_sha256": ("input",),
    "read_times_tai_mjd": ("read",),
    "nuisance_chips": ("chip",),
    "nuisance_offset_rms_dn": ("chip",),
    "coordinate_span_um": ("end",),
}
# Per fiber group (pyapred fit --chromatic without --joint-chips fits each chip on its own span).
for _group in ("joint", "R", "G", "B"):
    _METADATA[f"coordinate_span_um_{_group}"] = (
        "um",
        f"bluest and reddest wavelength of fiber group {_group}'s chips, where its chromatic "
        "fit's wavelength coordinate c is -1 and +1 (pyapred fit --chromatic)",
    )
    _METADATA_AXES[f"coordinate_span_um_{_group}"] = ("end",)
del _group
_CALLER_KEY = ("", "supplied by the program that wrote the product (no description given)")


@functools.cache
def flag_dtype() -> np.dtype:
    """The smallest unsigned integer type that holds every bit of :class:`pyapred.Flag`.

    Computed from the registry (``pyapred/solver/_flags.py``): uint16 while the highest bit is
    below 16. Products store pixel and fiber flags in it.
    """
    every = _flag_bits()
    return next(
        np.dtype(t) for t in (np.uint8, np.uint16, np.uint32, np.uint64) if every <= np.iinfo(t).max
    )


@functools.cache
def _flag_bits() -> int:
    """Every bit of :class:`pyapred.Flag`, or-ed together."""
    from ..solver import Flag

    return functools.reduce(operator.or_, (int(flag) for flag in Flag), 0)


def _unknown_bits(flags) -> int:
    """The bits set in ``flags`` that :class:`pyapred.Flag` does not define; -1 for a negative
    value; 0 when every value is a combination of known bits."""
    flags = np.asarray(flags)
    if flags.size == 0 or flags.dtype.kind == "b":
        return 0
    if int(flags.min()) < 0:
        return -1
    known, high = _flag_bits(), int(flags.max())
    if high <= known and known & (known + 1) == 0:  # the bits are 0..n: nothing else fits
        return 0
    spare = ((1 << high.bit_length()) - 1) & ~known
    return int(np.bitwise_or.reduce(flags.ravel() & flags.dtype.type(spare)))


@dataclass(frozen=True)
class ChipImages:
    """Per-pixel results for one chip, each ``(ny, nx)`` (2048, 2560 for a full chip).

    Written as float32 (rates, inverse variances, chi2), uint8 or uint16 (``n_diff``) and
    :func:`flag_dtype` (flags); read back in the types stored (float64 and int64 from a format-1
    product).

    Attributes
    ----------
    rate : ndarray, float
        Flux, DN per read.
    ivar : ndarray, float
        Inverse variance of ``rate``; 0 where the variance is unknown.
    chi2 : ndarray, float
        Chi-squared of the ramp fit, ``n_diff - 1`` degrees of freedom.
    flags : ndarray, unsigned or int64
        Pixel bits of :class:`pyapred.Flag`.
    n_diff : ndarray, unsigned, or None
        Read differences used per pixel; None when unknown (format-1 products).
    """

    rate: np.ndarray
    ivar: np.ndarray
    chi2: np.ndarray
    flags: np.ndarray
    n_diff: np.ndarray | None = None

    def __repr__(self) -> str:
        """Each field in a few words (:func:`~pyapred.solver.reprs.summary_repr`), never whole
        arrays."""
        from ..solver.reprs import summary_repr

        return summary_repr(self)

    @classmethod
    def from_fit(cls, fit) -> ChipImages:
        """From a :class:`pyapred.FluxFit` or an extracted chip (``ChipResult``):
        ``ivar = 1 / flux_var`` (0 if not > 0), and the fit's ``n_diff``."""
        var = np.asarray(fit.flux_var, dtype=np.float64)
        usable = np.isfinite(var) & (var > 0)
        ivar = np.divide(1.0, var, out=np.zeros_like(var), where=usable)
        return cls(fit.flux, ivar, fit.chi2, fit.flags, getattr(fit, "n_diff", None))


@dataclass(frozen=True)
class FiberResults:
    """Per-fiber omega fits for ``n`` fibers with ``K`` read differences.

    Attributes
    ----------
    fiber_index : ndarray, int64, ``(n,)``
        0-based on-chip fiber index, ``300 - fiberId``.
    omega : ndarray, float64, ``(n, K)``
    omega_cov : ndarray, float64, ``(n, K, K)``
    ref_index : ndarray, int64, ``(n,)``
        0-based index of the element of omega fixed to 1.
    model : tuple of str, ``(n,)``
        The model chosen for each fiber ("constant", "time_variable", ...).
    flags : ndarray, int64, ``(n,)``
        Group bits of :class:`pyapred.Flag`.
    amplitude, delta_chi2, p_value : ndarray, float64, ``(n,)``, or None
        The model decision's statistics, where known.
    n_fit_pixels, n_iter : ndarray, int64, ``(n,)``, or None
        Pixels in the omega fit and Gauss-Newton iterations, where known.
    gamma, gamma_cov : ndarray, float64, ``(n, K)`` and ``(n, K, K)``, or None
        With the chromatic fit: its slope (``omega (1 + gamma c)``) and its covariance; NaN
        for fibers not tried. ``omega`` and ``omega_cov`` of a ``time_variable_chromatic``
        fiber are the chromatic fit's, at ``c = 0``.
    chromatic_delta_chi2, chromatic_p_value, chromatic_amplitude : ndarray, float64, ``(n,)``,
    or None
        The chromatic model decision's statistics.
    """

    fiber_index: np.ndarray
    omega: np.ndarray
    omega_cov: np.ndarray
    ref_index: np.ndarray
    model: tuple[str, ...]
    flags: np.ndarray
    amplitude: np.ndarray | None = None
    delta_chi2: np.ndarray | None = None
    p_value: np.ndarray | None = None
    n_fit_pixels: np.ndarray | None = None
    n_iter: np.ndarray | None = None
    chromatic_delta_chi2: np.ndarray | None = None
    chromatic_p_value: np.ndarray | None = None
    chromatic_amplitude: np.ndarray | None = None
    gamma: np.ndarray | None = None
    gamma_cov: np.ndarray | None = None

    def __repr__(self) -> str:
        """Each field in a few words (:func:`~pyapred.solver.reprs.summary_repr`), never whole
        arrays."""
        from ..solver.reprs import summary_repr

        return summary_repr(self)

    @property
    def fiber_id(self) -> np.ndarray:
        """``fiberId`` (1..300) of each fiber: ``300 - fiber_index``."""
        return N_FIBERS - np.asarray(self.fiber_index, np.int64)


@dataclass(frozen=True)
class Product:
    """What :func:`read_product` returns.

    Attributes
    ----------
    path : str
    chips : dict of str to ChipImages
        Keyed by chip name ("R", "G", "B"); empty when read with ``images=False``.
    fibers : dict of str to FiberResults
        Keyed by chip name, or e.g. "joint" for a fit over all chips.
    metadata : dict
        The ``metadata`` group: writer keys and the caller's own.
    format_version : int
        The layout version of the file (1 or 2).
    """

    path: str
    chips: dict[str, ChipImages] = field(default_factory=dict)
    fibers: dict[str, FiberResults] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __repr__(self) -> str:
        """Each field in a few words (:func:`~pyapred.solver.reprs.summary_repr`), never whole
        arrays."""
        from ..solver.reprs import summary_repr

        return summary_repr(self)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def write_product(
    path: str | os.PathLike,
    *,
    chips: Mapping[str, ChipImages] | None = None,
    fibers: Mapping[str, FiberResults] | None = None,
    inputs: Sequence[str | os.PathLike] = (),
    backend: str = "numpy",
    metadata: Mapping[str, object] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a product file atomically (temporary file in the same folder, then rename).

    HDF5 (the layout above), or FITS when ``path`` ends in ``.fits`` (see ``docs/formats.md``;
    0-based indices; the exposure's identity in the primary header).

    The ``metadata`` group holds ``pyapred_version``, ``git_commit`` and ``git_clean`` (when
    pyapred runs from a git checkout; ApogeeReduction.jl's ``check_file`` treats a file with
    ``git_commit`` as done), ``backend``, ``input_files`` (base names), ``input_sha256`` (hex
    digests, same order), ``format_version``, then the caller's ``metadata``. The keys
    ``telescope``, ``mjd``, ``expnum``, ``DATE-OBS`` and ``TIMESYS``, where given, also become the
    FITS primary header's ``TELESCOP``, ``MJD``, ``EXPNUM``, ``DATE-OBS`` and ``TIMESYS``.

    Parameters
    ----------
    path : str or os.PathLike
    chips : mapping of str to ChipImages, optional
    fibers : mapping of str to FiberResults, optional
    inputs : sequence of paths, optional
        Files the product was made from; each is hashed.
    backend : str, optional
        Solver backend used ("numpy" or "julia").
    metadata : mapping, optional
        More keys: str, int, float, bool, lists of str or arrays. Must not reuse writer keys.
    overwrite : bool, optional

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        Images of different shapes, flags with bits outside :class:`pyapred.Flag`, a negative
        ``n_diff``, fiber arrays of the wrong shapes, or metadata reusing a writer key.
    """
    chips = {} if chips is None else chips
    fibers = {} if fibers is None else fibers
    _check_parts(chips, fibers, metadata)
    chips, fibers, inputs = dict(chips), dict(fibers), _input_paths(inputs)
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path: expected a file name, got the folder {path}")
    if is_fits_path(path):
        meta = _writer_metadata(inputs, backend, [sha256_file(p) for p in inputs])
        meta |= dict(metadata or {})
        images = {
            chip: {name: (array, _IMAGES[name].units) for name, array in _images(v).items()}
            for chip, v in chips.items()
        }
        tables = {group: _fiber_columns(results, index_base=0) for group, results in fibers.items()}
        with atomic_path(path, overwrite=overwrite) as tmp:
            write_fits(tmp, images, tables, meta, FORMAT_VERSION, _METADATA)
        return path
    with ProductWriter(path, overwrite=overwrite) as writer:
        for key, images in chips.items():
            writer.add_chip(key, images)
        writer.finish(fibers=fibers, inputs=inputs, backend=backend, metadata=metadata)
    return path


class ProductWriter:
    """An HDF5 product written in parts: chip images as soon as each chip is done, then the
    fiber results and the metadata. The file appears at ``path`` only when :meth:`finish` was
    called and the block ended without an error (atomic, as :func:`write_product`).

    It lets the exposure pipeline keep one chip's images in memory at a time.

    Parameters
    ----------
    path : str or os.PathLike
        An HDF5 product (not ``.fits``).
    overwrite : bool, optional
    threads : int, optional
        Threads that compress image chunks (zlib releases the GIL). Default: the cores this
        process may use, at most 4, and at most ``OMP_NUM_THREADS`` where that is set (as in
        ``pyapred night``'s Dask workers).

    Examples
    --------
    >>> with ProductWriter(path) as writer:  # doctest: +SKIP
    ...     writer.add_chip("R", images)
    ...     writer.finish(fibers={"R": results}, inputs=[raw_path])
    """

    def __init__(
        self, path: str | os.PathLike, *, overwrite: bool = False, threads: int | None = None
    ):
        self.path = Path(path)
        if is_fits_path(self.path):
            raise ValueError(f"{self.path}: ProductWriter writes HDF5 products, not FITS")
        if threads is not None and threads < 1:
            raise ValueError(f"threads: expected an integer >= 1, got {threads}")
        self._overwrite = overwrite
        self.threads = threads or _default_threads()
        self._finished = False

    def __enter__(self) -> ProductWriter:
        self._atomic = atomic_path(self.path, overwrite=self._overwrite)
        tmp = self._atomic.__enter__()
        try:
            self._handle = h5py.File(tmp, "w", locking=False)  # atomic_path holds its lock
        except BaseException:
            self._atomic.__exit__(*sys.exc_info())
            raise
        self._handle.attrs[_FORMAT_ATTR] = FORMAT_VERSION
        describe(
            self._handle,
            description="pyapred up-the-ramp product: per chip the images, per fiber group "
            "the omega fits (/fibers), the provenance (/metadata); docs/formats.md",
        )
        return self

    def add_chip(self, key: str, images: ChipImages) -> None:
        """Write one chip's images (group ``key``), once."""
        _check_parts({key: images}, {}, None)
        if key in self._handle:
            raise ValueError(f"key: chip {key!r} was added already")
        with self._writing():
            group = self._handle.create_group(key)
            describe(group, description=f"images of chip {key}, (ny, nx) in h5py order")
            _write_images(group, images, threads=self.threads)

    def finish(
        self,
        *,
        fibers: Mapping[str, FiberResults] | None = None,
        inputs: Sequence[str | os.PathLike] = (),
        backend: str = "numpy",
        metadata: Mapping[str, object] | None = None,
        input_sha256: Sequence[str] | None = None,
    ) -> None:
        """Write the fiber results and the metadata (see :func:`write_product`), once.

        ``input_sha256``, optional: the inputs' digests, already made (same order; for
        example by :class:`BackgroundHashes`); by default the inputs are hashed here.
        """
        fibers = {} if fibers is None else fibers
        _check_parts({}, fibers, metadata)
        fibers, inputs = dict(fibers), _input_paths(inputs)
        if self._finished:
            raise ValueError(
                "finish: called already (the product's fibers and metadata are written)"
            )
        if input_sha256 is not None and len(input_sha256) != len(inputs):
            raise ValueError(
                f"input_sha256: expected one digest per input ({len(inputs)}), got "
                f"{len(input_sha256)}"
            )
        if fibers:
            describe(
                self._handle.require_group("fibers"),
                description="per fiber group (a chip, or joint), a table: every dataset's "
                "first axis is the fiber",
            )
        # With more than one thread, the inputs are hashed while the fiber tables are
        # compressed (both free the GIL); with one (a night's worker), one after the other.
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            hashing = pool.map if self.threads > 1 else map  # map: lazy, after the tables
            digests = input_sha256 if input_sha256 is not None else hashing(sha256_file, inputs)
            with self._writing():
                writes = [
                    _write_fibers(self._handle.create_group(f"fibers/{key}"), results, pool)
                    for key, results in fibers.items()
                ]
                for write in writes:
                    write()
            digests = list(digests)
        meta = _writer_metadata(inputs, backend, digests) | dict(metadata or {})
        with self._writing():
            group = self._handle.create_group("metadata")
            describe(group, description="provenance, fit settings and the exposure's timing")
            for key, value in meta.items():
                units, description = _METADATA.get(key, _CALLER_KEY)
                axes = _METADATA_AXES.get(key) if np.ndim(value) == 1 else None
                write_value(group, key, value, units=units, description=description, axes=axes)
        self._finished = True

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """The writer's own HDF5 writes: a failed one (a full disk, a quota, a file-size limit)
        is an OSError naming the product, which the commands report (exit 2); HDF5 names only
        the temporary file, or nothing."""
        try:
            yield
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror or str(exc), str(self.path)) from exc

    def __exit__(self, exc_type, raised, traceback) -> None:
        error = raised
        try:
            self._handle.close()
        except Exception as exc:
            # Closing flushes: a full disk or a quota may show only here, as HDF5's
            # RuntimeError (after a failed write too, which it would hide: kept then).
            if error is None:
                error = OSError(None, f"not written ({exc})", str(self.path))
        if error is None and not self._finished:
            error = RuntimeError(f"{self.path}: finish() was not called")
        self._atomic.__exit__(
            type(error) if error else None, error, traceback if error is raised else None
        )
        if error is not raised:
            raise error


def _default_threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    omp = os.environ.get("OMP_NUM_THREADS", "")
    limit = int(omp) if omp.isdigit() and int(omp) > 0 else 4
    return max(1, min(cores, 4, limit))


def _check_parts(chips: Mapping, fibers: Mapping, metadata: Mapping | None) -> None:
    for name, parts, kind in (("chips", chips, ChipImages), ("fibers", fibers, FiberResults)):
        if not isinstance(parts, Mapping):
            raise TypeError(f"{name}: expected a mapping of names to {kind.__name__}, got "
                            f"{type(parts).__name__}")  # fmt: skip
        for key, part in parts.items():
            if not isinstance(key, str) or not key or "/" in key or key in _RESERVED:
                raise ValueError(f"{name}: expected plain names, got {key!r}")
            if not isinstance(part, kind):
                raise TypeError(f"{name}[{key!r}]: expected {kind.__name__}, got "
                                f"{type(part).__name__}")  # fmt: skip
    for key, images in chips.items():
        _check_images(key, images)
    for key, results in fibers.items():
        _check_fibers(key, results)
    clash = set(metadata or {}) & set(_WRITER_KEYS)
    if clash:
        raise ValueError(f"metadata: keys {sorted(clash)} are written by pyapred itself")
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not key or "/" in key:
            raise ValueError(f"metadata: expected plain names (no '/'), got {key!r}")
        if not _storable(value):
            raise TypeError(
                f"metadata[{key!r}]: expected a number, a string, a bool, or an array or list of "
                f"one kind of them, got {type(value).__name__}"
            )


def _input_paths(inputs) -> list:
    """``inputs`` as a list of paths: one path alone was hashed character by character."""
    if isinstance(inputs, (str, os.PathLike)):
        return [inputs]
    return list(inputs)


def _storable(value) -> bool:
    """Whether a metadata value is what both product formats keep: numbers, strings, bools and
    arrays or lists of one kind of them."""
    if isinstance(value, (str, bool, int, float, np.generic)) and not isinstance(
        value, (np.datetime64, np.timedelta64, np.void)
    ):
        return True
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return True
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        return False
    return array.dtype.kind in "biuf" and array.size > 0


def is_fits_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a FITS product (``.fits``, ``.fit``, ``.fits.gz``), else HDF5."""
    return Path(path).name.lower().endswith((".fits", ".fit", ".fits.gz"))


def _check_images(key: str, images: ChipImages) -> None:
    names = [name for name in _IMAGES if getattr(images, name) is not None]
    shapes = {name: np.shape(getattr(images, name)) for name in names}
    if len(set(shapes.values())) != 1 or len(shapes["rate"]) != 2 or "flags" not in shapes:
        raise ValueError(f"chips[{key!r}]: expected 2-D images of one shape, got {shapes}")
    for name in ("flags", "n_diff"):
        array = getattr(images, name)
        if array is not None and np.asarray(array).dtype.kind not in "biu":
            raise ValueError(
                f"chips[{key!r}].{name}: expected integers, got {np.asarray(array).dtype}"
            )
    unknown = _unknown_bits(images.flags)
    if unknown:
        found = "negative values" if unknown < 0 else f"the unknown bits {unknown:#x}"
        raise ValueError(f"chips[{key!r}].flags: expected bits of pyapred.Flag, found {found}")
    if images.n_diff is not None and np.size(images.n_diff):
        low, high = int(np.min(images.n_diff)), int(np.max(images.n_diff))
        if low < 0 or high > np.iinfo(np.uint16).max:
            raise ValueError(f"chips[{key!r}].n_diff: expected 0..65535, found {low}..{high}")
    unflagged = np.asarray(images.flags) == 0
    for name in _FLOAT_IMAGES:
        values = getattr(images, name)
        if values is None:
            continue
        values = np.asarray(values)
        _check_flagged(f"chips[{key!r}].{name}", ~np.isfinite(values) & unflagged, "pixel")
        if name != "rate" and np.any(values < 0):  # (NaN compares False)
            first = tuple(int(i) for i in np.argwhere(values < 0)[0])
            raise ValueError(f"chips[{key!r}].{name}: expected values >= 0, "
                             f"found {int(np.sum(values < 0))} below 0, the first at index "
                             f"{first}")  # fmt: skip


def _check_flagged(where: str, silent: np.ndarray, what: str, fiber_index=None) -> None:
    """ValueError where a value is NaN or infinite and its flags are 0 (``silent``): every NaN
    carries a flag, in a product written or read. A fiber table's row is named by its fiberId
    (``fiber_index`` of the rows given)."""
    if np.any(silent):
        first = tuple(int(i) for i in np.argwhere(silent)[0])
        at = f"index {first[0] if len(first) == 1 else first}"
        if fiber_index is not None:
            at = f"fiberId {N_FIBERS - int(np.asarray(fiber_index)[first[0]])}"
        raise ValueError(
            f"{where}: expected a flag wherever a value is NaN or infinite, found "
            f"{int(np.sum(silent))} such {what}s with flags 0, the first at {at}"
        )


def _check_fibers(key: str, results: FiberResults) -> None:
    n, k = np.shape(results.omega) if np.ndim(results.omega) == 2 else (-1, -1)
    expected = {
        "fiber_index": (n,),
        "omega_cov": (n, k, k),
        "ref_index": (n,),
        "model": (n,),
        "flags": (n,),
    }
    expected |= {s: (n,) for s in _FIBER_STATS if getattr(results, s) is not None}
    expected |= {s: (n, k) + (k,) * (s == "gamma_cov") for s in _FIBER_ARRAYS
                 if getattr(results, s) is not None}  # fmt: skip
    found = {name: np.shape(getattr(results, name)) for name in expected}
    if n < 0 or found != expected:
        raise ValueError(
            f"fibers[{key!r}]: expected shapes {expected} for omega (n, K), "
            f"got omega {np.shape(results.omega)} and {found}"
        )
    for name in ("fiber_index", "ref_index", "flags"):
        if np.asarray(getattr(results, name)).dtype.kind not in "iu":
            raise ValueError(
                f"fibers[{key!r}].{name}: expected integers, got "
                f"{np.asarray(getattr(results, name)).dtype}"
            )
    unknown_models = sorted({str(m) for m in results.model} - set(PRODUCT_MODELS))
    if unknown_models:
        raise ValueError(
            f"fibers[{key!r}].model: expected names of {PRODUCT_MODELS}, found {unknown_models}"
        )
    if (results.gamma is None) != (results.gamma_cov is None):
        raise ValueError(f"fibers[{key!r}].gamma, gamma_cov: expected both or neither")
    if len(set(np.asarray(results.fiber_index).tolist())) != n:
        raise ValueError(f"fibers[{key!r}].fiber_index: expected each fiber once")
    ref = np.asarray(results.ref_index)
    if n and (ref.min() < 0 or ref.max() >= k):
        raise ValueError(f"fibers[{key!r}].ref_index: expected 0-based indices below {k}")
    index = np.asarray(results.fiber_index)
    if n and (index.min() < 0 or index.max() >= N_FIBERS):
        raise ValueError(
            f"fibers[{key!r}].fiber_index: expected 0-based indices 0..{N_FIBERS - 1} "
            f"(300 - fiberId), got {index.min()}..{index.max()}"
        )
    if _unknown_bits(results.flags):
        raise ValueError(f"fibers[{key!r}].flags: expected bits of pyapred.Flag")
    unflagged = np.asarray(results.flags) == 0
    # The chromatic fit is tried only on the fibers whose model is time-variable: on the others
    # its columns are NaN, and the model says why (a constant fiber of the automatic choice has
    # no flag). They were refused, and with them every --chromatic product with such a fiber.
    tried = np.isin(np.asarray(results.model, dtype=object),
                    ("time_variable", "time_variable_chromatic"))  # fmt: skip
    for name in ("omega", "omega_cov", *_FIBER_STATS, *_FIBER_ARRAYS):
        values = getattr(results, name)
        if values is None or not n:
            continue
        values = np.asarray(values, dtype=float).reshape(n, -1)
        silent = ~np.isfinite(values).all(axis=1) & unflagged
        if name in _CHROMATIC_COLUMNS:
            silent &= tried
        _check_flagged(f"fibers[{key!r}].{name}", silent, "fiber", index)
    for name in ("p_value", "chromatic_p_value"):
        values = getattr(results, name)
        outside = None if values is None else (np.asarray(values) < 0) | (np.asarray(values) > 1)
        if outside is not None and np.any(outside):
            first = int(np.flatnonzero(outside)[0])
            raise ValueError(
                f"fibers[{key!r}].{name}: expected probabilities in 0..1, found "
                f"{int(np.sum(outside))} outside, the first at fiberId "
                f"{N_FIBERS - int(np.asarray(results.fiber_index)[first])}"
            )
    for name in ("n_fit_pixels", "n_iter"):
        values = getattr(results, name)
        if values is not None and np.any(np.asarray(values) < 0):
            raise ValueError(f"fibers[{key!r}].{name}: expected counts >= 0")


def _images(images: ChipImages) -> dict[str, np.ndarray]:
    """The arrays to store, by ChipImages attribute, in their stored types."""
    arrays = {name: np.asarray(getattr(images, name), np.float32) for name in _FLOAT_IMAGES}
    if images.n_diff is not None:
        n_diff = np.asarray(images.n_diff)
        high = int(n_diff.max()) if n_diff.size else 0
        arrays["n_diff"] = n_diff.astype(np.uint8 if high <= 255 else np.uint16)
    arrays["flags"] = np.asarray(images.flags).astype(flag_dtype())
    return arrays


def _fiber_columns(results: FiberResults, *, index_base: int) -> dict[str, tuple]:
    """``{name: (array, field)}`` of a fiber group, in file order; indices ``index_base``-based."""
    index = np.asarray(results.fiber_index, np.int64)
    omega = np.asarray(results.omega, np.float64)
    values = {
        "fiber_id": N_FIBERS - index,
        "fiber_index": index + index_base,
        "model": [str(m) for m in results.model],
        "flags": np.asarray(results.flags).astype(flag_dtype()),
        "omega": omega,
        "omega_cov": np.asarray(results.omega_cov, np.float64),
        "omega_mean": omega.mean(axis=1) if omega.shape[1] else np.ones(len(index)),
        "ref_index": np.asarray(results.ref_index, np.int64) + index_base,
    }
    for stat in _FIBER_STATS:
        value = getattr(results, stat)
        if value is not None:
            kind = np.int64 if stat in ("n_fit_pixels", "n_iter") else np.float64
            values[stat] = np.asarray(value, kind)
    for name in _FIBER_ARRAYS:
        if getattr(results, name) is not None:
            values[name] = np.asarray(getattr(results, name), np.float64)
    fields = _FIBERS if index_base else _FIBERS | _ZERO_BASED_FIBERS
    return {name: (value, fields[name]) for name, value in values.items()}


def _write_images(group: h5py.Group, images: ChipImages, *, threads: int = 1) -> None:
    for name, array in _images(images).items():
        spec = _IMAGES[name]
        dataset = _write_compressed(group, spec.name, array, CHUNK_ROWS, threads)
        describe(dataset, units=spec.units, description=spec.description, axes=spec.axes)


def _write_fibers(group: h5py.Group, results: FiberResults, pool: Executor) -> Callable[[], None]:
    """Create a fiber group's datasets and start compressing them on ``pool``; the returned
    function writes their chunks. So the groups' tables (``omega_cov`` above all: 0.09 s of
    deflate each for 300 x 46 x 46) compress side by side, and are written in a fixed order."""
    n, k = np.shape(results.omega)
    describe(group, description=f"one row per fiber: {n} fibers, K = {k} read differences")
    group.attrs["index_base"] = 1
    writes = []
    for name, (value, spec) in _fiber_columns(results, index_base=1).items():
        if name == "model":
            dataset = group.create_dataset(spec.name, data=value, dtype=UTF8)
        else:
            # One chunk, deflated whole: a covariance's repeats lie a matrix row apart, beyond
            # what a sample of its planes sees (in chunks of 64 fibers its planes were stored,
            # 13 % larger).
            dataset, write = _start_compressed(
                group, spec.name, value, len(value), pool, store_random_planes=False
            )
            writes.append(write)
        describe(dataset, units=spec.units, description=spec.description, axes=spec.axes)
        if name in _INDEX_BASE:
            dataset.attrs["index_base"] = 1
        if name == "omega":
            dataset.attrs.create("normalisation", _OMEGA_NORMALISATION, dtype=UTF8)

    def write_all() -> None:
        for write in writes:
            write()

    return write_all


def _write_compressed(
    group: h5py.Group,
    name: str,
    array: np.ndarray,
    rows: int,
    threads: int,
    *,
    store_random_planes: bool = True,
) -> h5py.Dataset:
    """A dataset chunked in blocks of ``rows`` along its first axis, with HDF5's shuffle +
    deflate filters, its chunks compressed by ``threads`` threads (:func:`_start_compressed`)."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        dataset, write = _start_compressed(
            group, name, array, rows, pool, store_random_planes=store_random_planes
        )
        write()
    return dataset


def _start_compressed(
    group: h5py.Group,
    name: str,
    array: np.ndarray,
    rows: int,
    pool: Executor,
    *,
    store_random_planes: bool = True,
) -> tuple[h5py.Dataset, Callable[[], None]]:
    """Create a dataset chunked in blocks of ``rows`` along its first axis, with HDF5's shuffle
    + deflate filters, and start compressing its chunks on ``pool``; the returned function
    writes them, in order.

    The chunks are encoded here as HDF5's filters would (shuffle: the k-th bytes of every
    element together; deflate: a zlib stream) and written with ``write_direct_chunk``, so that
    zlib runs outside the GIL in parallel. Any HDF5 reader decodes them. With
    ``store_random_planes``, the byte planes that do not compress are stored in the stream
    rather than compressed (:func:`~pyapred.io.deflate.deflate_planes`).
    """
    if array.size == 0:
        return group.create_dataset(name, data=array), lambda: None
    rows = max(1, min(array.shape[0], rows))
    chunks = (rows, *array.shape[1:])
    itemsize = array.dtype.itemsize
    dataset = group.create_dataset(
        name, shape=array.shape, dtype=array.dtype, chunks=chunks,
        compression="gzip", compression_opts=GZIP_LEVEL, shuffle=itemsize > 1,
    )  # fmt: skip
    array = np.ascontiguousarray(array, dtype=dataset.dtype)
    starts = range(0, array.shape[0], rows)

    def encode(start: int) -> bytes:
        block = array[start : start + rows]
        if block.shape[0] < rows:  # HDF5 stores edge chunks whole
            pad = np.zeros((rows - block.shape[0], *chunks[1:]), block.dtype)
            block = np.concatenate([block, pad])
        planes = np.ascontiguousarray(block.reshape(-1).view(np.uint8).reshape(-1, itemsize).T)
        if store_random_planes:
            return deflate_planes(planes, GZIP_LEVEL)
        return zlib.compress(planes, GZIP_LEVEL)

    payloads = pool.map(encode, starts)

    def write() -> None:
        for start, payload in zip(starts, payloads, strict=True):
            dataset.id.write_direct_chunk((start, *[0] * (array.ndim - 1)), payload)

    return dataset, write


def _writer_metadata(
    inputs: Sequence[str | os.PathLike], backend: str, digests: Sequence[str]
) -> dict:
    """The writer's provenance: version, git state, backend, the inputs' names and their
    SHA-256 ``digests``."""
    from .. import __version__

    meta: dict[str, object] = {"pyapred_version": __version__}
    commit, clean = _git_info()
    if commit is not None:
        meta["git_commit"] = commit
        meta["git_clean"] = clean
    meta["backend"] = backend
    meta["input_files"] = [Path(p).name for p in inputs]
    meta["input_sha256"] = list(digests)
    meta["format_version"] = FORMAT_VERSION
    return meta


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, as hex (the product's ``input_sha256``)."""
    return _sha256_unless_stopped(path, None)


def _sha256_unless_stopped(path: str | os.PathLike, stop: threading.Event | None) -> str | None:
    """:func:`sha256_file`, or None once ``stop`` is set (checked between 1 MB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        try:
            for block in iter(lambda: stream.read(1 << 20), b""):
                if stop is not None and stop.is_set():
                    return None
                digest.update(block)  # frees the GIL: the hash runs beside Python code
        except OSError as exc:  # a read that fails (EIO) names no file: name the input
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    return digest.hexdigest()


class BackgroundHashes:
    """SHA-256 of files (:func:`sha256_file`), hashed by one background thread from the moment
    this is made, for a product's ``input_sha256`` (:meth:`ProductWriter.finish`).

    The exposure driver makes it as it starts, so that its inputs are hashed while one thread
    reads their headers and loads the kernels (0.5 s of 690 MB for three chips and their
    traces), not after the fit. Use it as a context manager: leaving stops the thread at its
    next 1 MB block.

    Parameters
    ----------
    paths : sequence of str or os.PathLike
        The files, hashed in this order.
    """

    def __init__(self, paths: Sequence[str | os.PathLike]) -> None:
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pyapred-sha256")
        self._futures = {}
        for path in paths:
            key = os.path.realpath(path)
            if key not in self._futures:
                self._futures[key] = self._pool.submit(_sha256_unless_stopped, path, self._stop)

    def digests(self, paths: Sequence[str | os.PathLike]) -> list[str]:
        """The hex digest of each of ``paths``: waited for where it is being hashed, else
        hashed now. An error reading a file is raised here."""
        out = []
        for path in paths:
            future = self._futures.get(os.path.realpath(path))
            digest = None if future is None else future.result()
            out.append(digest if digest is not None else sha256_file(path))
        return out

    def close(self) -> None:
        """Stop hashing (the file being hashed is left at its next block)."""
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> BackgroundHashes:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


@functools.lru_cache(maxsize=1)
def _git_info() -> tuple[str | None, bool]:
    """The commit of the pyapred checkout and whether its tree is clean; None if not in git."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        # No optional locks: `git status` refreshing the index takes .git/index.lock, which a
        # writer killed then (a night's worker) left behind, and which a user's own `git
        # commit` in the checkout would meet.
        command = ["git", "--no-optional-locks", "-C", str(here), *args]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        return git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no") == ""
    except (OSError, subprocess.SubprocessError):
        return None, False


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def read_product(path: str | os.PathLike, *, images: bool = True) -> Product:
    """Read a product written by :func:`write_product` (HDF5, or FITS by the ``.fits`` suffix),
    of format 1 or 2.

    Parameters
    ----------
    path : str or os.PathLike
    images : bool, optional
        Read the chip images; without them (``images=False``) only the fiber groups and the
        metadata are read, which is much faster.

    Returns
    -------
    Product
        Images in the types stored (format 2: float32, uint8 or uint16 ``n_diff``, unsigned
        flags; format 1: float64 and int64, ``n_diff`` None). Per-fiber statistics of a
        format-1 product come from its ``{group}_amplitude``, ... metadata arrays.

    Raises
    ------
    InputError
        Not a pyapred product, a product of another layout version, or a dataset missing or of
        the wrong shape or dtype.
    """
    check_input_file(path, "product")  # a FIFO would hang the reader, a link loop is named
    if is_fits_path(Path(path)):
        chips, fibers, metadata, version = read_fits(
            path, READABLE_VERSIONS, ChipImages, FiberResults, images=images
        )
        _check_read(path, chips, fibers, lambda kind, key: f"{kind} {key}")
        return Product(str(path), chips, fibers, metadata, version)
    with open_h5(path) as handle:
        try:
            return _read_hdf5(path, handle, images)
        except (KeyError, AttributeError) as exc:  # a dangling link: h5py cannot open it
            raise InputError(path, "HDF5 links", "groups and datasets that exist",
                             f"{type(exc).__name__}: {exc}") from None  # fmt: skip


def _read_hdf5(path, handle: h5py.File, images: bool) -> Product:
    """:func:`read_product` of an open HDF5 product."""
    version = _format_version(path, handle.attrs.get(_FORMAT_ATTR))
    for key, entry in handle.items():
        if not isinstance(entry, h5py.Group):  # a chip, "fibers" and "metadata" are groups
            raise InputError(path, key, "a group (a chip, fibers or metadata)", _kind(entry))
    chips = {
        key: _read_images(path, group)
        for key, group in handle.items()
        if images and key not in _RESERVED
    }
    fibers = {}
    for key, group in handle.get("fibers", {}).items():
        if not isinstance(group, h5py.Group):
            raise InputError(path, f"fibers/{key}", "a group (a fiber table)", _kind(group))
        fibers[key] = _read_fibers(path, group)
    metadata = read_group(path, handle["metadata"]) if "metadata" in handle else {}
    _check_read(path, chips, fibers, lambda kind, key: key if kind == "chip" else f"fibers/{key}")
    if version == 1:
        fibers = {
            key: _v1_statistics(key, results, metadata, str(path))
            for key, results in fibers.items()
        }
    return Product(str(path), chips, fibers, metadata, version)


def _kind(entry) -> str:
    """What an HDF5 entry that should have been a group is, for the error."""
    if isinstance(entry, h5py.Dataset):
        return "a dataset"
    return "a link to nothing" if entry is None else type(entry).__name__


def _format_version(path, version) -> int:
    """The product format of an HDF5 product's attribute: one of :data:`READABLE_VERSIONS`."""
    if version is None:
        raise InputError(path, f"attribute {_FORMAT_ATTR}", "a pyapred product", "nothing")
    whole = isinstance(version, (int, np.integer)) and not isinstance(version, (bool, np.bool_))
    if not whole or int(version) not in READABLE_VERSIONS:
        found = f"format {version}, written by an incompatible version" if whole else repr(version)
        raise InputError(
            path,
            f"attribute {_FORMAT_ATTR}",
            f"product format {' or '.join(map(str, READABLE_VERSIONS))} as an integer (this "
            "pyapred reads only those)",
            found=found,
        )
    return int(version)


def _check_read(path, chips: Mapping, fibers: Mapping, where) -> None:
    """What :func:`write_product` refuses to write, refused on reading (InputError naming the
    group ``where(kind, key)``): flags of unknown bits, negative ``ndiff``, fiber indices outside
    0..299 or twice, unknown models, ``gamma`` without ``gamma_cov``."""
    for kind, parts, check in (("chip", chips, _check_images), ("fibers", fibers, _check_fibers)):
        for key, part in parts.items():
            try:
                check(key, part)
            except ValueError as error:
                # "chips['R'].ivar: expected values >= 0, found ..." names the file's dataset:
                # "R/ivarimage: expected values >= 0, found ...".
                prefix, _, detail = str(error).partition(": ")
                field = where(kind, key)
                attribute = prefix.rpartition("].")[2] if "]." in prefix else ""
                fields = _IMAGES if kind == "chip" else _FIBERS
                if attribute in fields:
                    field += "/" + fields[attribute].name
                elif attribute:
                    field += f" ({attribute})"
                expected = detail.removeprefix("expected ") or "a product as pyapred writes it"
                raise InputError(path, field, expected) from None


def _read_images(path, group: h5py.Group) -> ChipImages:
    rate = read_dataset(path, group, "dimage", shape=(None, None), kinds="f",
                        at_most=MAX_IMAGE_SHAPE)  # fmt: skip
    shape = rate.shape
    n_diff = None
    if "ndiff" in group:
        n_diff = read_dataset(path, group, "ndiff", shape=shape, kinds="iu")
    return ChipImages(
        rate=rate,
        ivar=read_dataset(path, group, "ivarimage", shape=shape, kinds="f"),
        chi2=read_dataset(path, group, "chisqimage", shape=shape, kinds="f"),
        flags=read_dataset(path, group, "flags", shape=shape, kinds="iu"),
        n_diff=n_diff,
    )


def _indices(path, group: h5py.Group, name: str, n: int) -> np.ndarray:
    """An integer dataset of ``n`` values, as int64 (a uint64 beyond it turns negative, and is
    refused by the caller's range check)."""
    return read_dataset(path, group, name, shape=(n,), kinds="iu").astype(np.int64)


def _read_fibers(path, group: h5py.Group) -> FiberResults:
    omega = read_dataset(path, group, "omega", shape=(None, None), kinds="f",
                         at_most=(N_FIBERS, MAX_READ_DIFFERENCES))  # fmt: skip
    n, k = omega.shape
    if n and k == 0:  # (it was blamed on ref_index, "1..0")
        where = f"{group.name}/omega".lstrip("/")
        raise InputError(path, where, "a read difference or more", f"shape {omega.shape}")
    # Indices in int64 whatever their stored type: in uint8, 301 - fiber_index overflowed and
    # 0 - 1 wrapped.
    ref_index = _indices(path, group, "ref_index", n) - 1
    if n and (ref_index.min() < 0 or ref_index.max() >= k):
        field_name = f"{group.name}/ref_index".lstrip("/")
        raise InputError(
            path,
            field_name,
            f"1-based indices in 1..{k}",
            found=f"{ref_index.min() + 1}..{ref_index.max() + 1}",
        )
    # The declared length first: 2e7 strings were read whole, then printed as the message.
    declared = getattr(group.get("model"), "shape", None)
    if declared != (n,):
        found = "nothing" if "model" not in group else f"shape {declared}"
        raise InputError(path, f"{group.name}/model".lstrip("/"), f"{n} strings", found=found)
    model = read_value(path, group["model"])
    if not isinstance(model, list) or len(model) != n:
        raise InputError(path, f"{group.name}/model".lstrip("/"), f"{n} strings",
                         found=repr(model)[:200])  # fmt: skip
    fiber_index = _indices(path, group, "fiber_index", n) - 1
    if "fiberId" in group:
        fiber_id = _indices(path, group, "fiberId", n)
        if not np.array_equal(fiber_id, N_FIBERS - fiber_index):
            raise InputError(
                path, f"{group.name}/fiberId".lstrip("/"), "301 - fiber_index (1-based)",
                found="other values",
            )  # fmt: skip
    stats = {
        stat: read_dataset(path, group, _FIBERS[stat].name, shape=(n,), kinds=kinds)
        for stat, kinds in zip(
            _FIBER_STATS, ("f", "f", "f", "iu", "iu", "f", "f", "f"), strict=True
        )  # fmt: skip
        if _FIBERS[stat].name in group
    }
    stats |= {
        name: read_dataset(
            path, group, _FIBERS[name].name, shape=(n, k) + (k,) * (name == "gamma_cov"), kinds="f"
        )  # fmt: skip
        for name in _FIBER_ARRAYS
        if _FIBERS[name].name in group
    }
    return FiberResults(
        fiber_index=fiber_index.astype(np.int64),
        omega=omega,
        omega_cov=read_dataset(path, group, "omega_cov", shape=(n, k, k), kinds="f"),
        ref_index=ref_index.astype(np.int64),
        model=tuple(model),
        flags=read_dataset(path, group, "flags", shape=(n,), kinds="iu").astype(np.int64),
        **{s: v.astype(np.int64) if v.dtype.kind in "iu" else v for s, v in stats.items()},
    )


def _v1_statistics(key: str, results: FiberResults, metadata: dict, path: str) -> FiberResults:
    """A format-1 fiber group with the statistics its metadata kept as ``{key}_{stat}``: real
    numbers, whole ones for the counts (``n_*``), as format 2 holds them (strings, complex
    numbers and a NaN count were taken as they were)."""
    n = len(results.model)
    found = {}
    for stat in _FIBER_STATS:
        name = f"{key}_{stat}"
        if np.shape(metadata.get(name)) != (n,):
            continue
        values = np.asarray(metadata[name])
        count = stat.startswith("n_")
        real = values.dtype.kind in ("iu" if count else "iuf")
        if not real and count and values.dtype.kind == "f":  # whole floats: an older writer's
            real = bool(np.all(np.isfinite(values) & (values == np.round(values))))
        if not real:
            expected = "whole numbers" if count else "real numbers"
            raise InputError(path, f"metadata/{name}", expected, f"dtype {values.dtype}")
        found[stat] = values.astype(np.int64) if count else values.astype(np.float64)
    return dataclasses.replace(results, **found) if found else results
