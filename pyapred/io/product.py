"""pyapred's own products: HDF5 laid out like ApogeeReduction.jl's ``ar2D``, written atomically.

Layout (h5py order; Julia and HDF5.jl see every array with its dimensions reversed, which for
the images is ApogeeReduction.jl's own ``(2560, 2048)`` order):

=====================================  ================  =========================================
dataset                                h5py shape         contents
=====================================  ================  =========================================
``/{chip}/dimage``                     ``(ny, nx)``       rate, DN per read (float64)
``/{chip}/ivarimage``                  ``(ny, nx)``       inverse variance, (DN per read)^-2
``/{chip}/chisqimage``                 ``(ny, nx)``       ramp chi-squared
``/{chip}/flags``                      ``(ny, nx)``       pixel bits of ``pyapred.Flag`` (int64)
``/fibers/{group}/fiber_index``        ``(n,)``           1-based ``301 - fiberId``, as in AR.jl
``/fibers/{group}/omega``              ``(n, K)``         per-difference transparency factors
``/fibers/{group}/omega_cov``          ``(n, K, K)``      covariance of omega
``/fibers/{group}/ref_index``          ``(n,)``           1-based index of the element fixed to 1
``/fibers/{group}/model``              ``(n,)``           "constant", "time_variable", ...
``/fibers/{group}/flags``              ``(n,)``           group bits of ``pyapred.Flag`` (int64)
``/metadata/*``                        scalars, strings   see :func:`write_product`
=====================================  ================  =========================================

The root attribute ``pyapred_product_format`` holds the layout version (:data:`FORMAT_VERSION`).
Indices are 1-based in the file, for Julia users, and 0-based in the Python objects.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError
from ._product_fits import read_fits, write_fits
from .atomic import atomic_path
from .hdf5 import open_h5, read_dataset, read_group, read_value, write_value

__all__ = [
    "FORMAT_VERSION",
    "ChipImages",
    "FiberResults",
    "Product",
    "read_product",
    "write_product",
]

#: Version of the product layout; readers refuse other versions.
FORMAT_VERSION = 1
_FORMAT_ATTR = "pyapred_product_format"
_RESERVED = {"fibers", "metadata"}
_IMAGES = {"rate": "dimage", "ivar": "ivarimage", "chi2": "chisqimage", "flags": "flags"}
_UNITS = {"dimage": "DN/read", "ivarimage": "(DN/read)^-2", "chisqimage": "", "flags": ""}
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
class ChipImages:
    """Per-pixel results for one chip, each ``(ny, nx)`` (2048, 2560 for a full chip).

    Attributes
    ----------
    rate : ndarray, float64
        Flux, DN per read.
    ivar : ndarray, float64
        Inverse variance of ``rate``; 0 where the variance is unknown.
    chi2 : ndarray, float64
        Chi-squared of the ramp fit.
    flags : ndarray, int64
        Pixel bits of :class:`pyapred.Flag`.
    """

    rate: np.ndarray
    ivar: np.ndarray
    chi2: np.ndarray
    flags: np.ndarray

    @classmethod
    def from_fit(cls, fit) -> ChipImages:
        """From a :class:`pyapred.FluxFit` of a chip: ``ivar = 1 / flux_var`` (0 if not > 0)."""
        var = np.asarray(fit.flux_var, dtype=np.float64)
        usable = np.isfinite(var) & (var > 0)
        ivar = np.divide(1.0, var, out=np.zeros_like(var), where=usable)
        return cls(fit.flux, ivar, fit.chi2, fit.flags)


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
    """

    fiber_index: np.ndarray
    omega: np.ndarray
    omega_cov: np.ndarray
    ref_index: np.ndarray
    model: tuple[str, ...]
    flags: np.ndarray


@dataclass(frozen=True)
class Product:
    """What :func:`read_product` returns.

    Attributes
    ----------
    path : str
    chips : dict of str to ChipImages
        Keyed by chip name ("R", "G", "B").
    fibers : dict of str to FiberResults
        Keyed by chip name, or e.g. "joint" for a fit over all chips.
    metadata : dict
        The ``metadata`` group: writer keys and the caller's own.
    """

    path: str
    chips: dict[str, ChipImages] = field(default_factory=dict)
    fibers: dict[str, FiberResults] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)


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
    0-based indices; metadata as a JSON table).

    The ``metadata`` group holds ``pyapred_version``, ``git_commit`` and ``git_clean`` (when
    pyapred runs from a git checkout; ApogeeReduction.jl's ``check_file`` treats a file with
    ``git_commit`` as done), ``backend``, ``input_files`` (base names), ``input_sha256`` (hex
    digests, same order), ``format_version``, then the caller's ``metadata``.

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
    """
    chips, fibers = dict(chips or {}), dict(fibers or {})
    path = Path(path)
    _check_parts(chips, fibers, metadata)
    if is_fits_path(path):
        meta = _writer_metadata(inputs, backend) | dict(metadata or {})
        with atomic_path(path, overwrite=overwrite) as tmp:
            write_fits(tmp, chips, fibers, meta, FORMAT_VERSION)
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

    Examples
    --------
    >>> with ProductWriter(path) as writer:  # doctest: +SKIP
    ...     writer.add_chip("R", images)
    ...     writer.finish(fibers={"R": results}, inputs=[raw_path])
    """

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False):
        self.path = Path(path)
        if is_fits_path(self.path):
            raise ValueError(f"{self.path}: ProductWriter writes HDF5 products, not FITS")
        self._overwrite = overwrite
        self._finished = False

    def __enter__(self) -> ProductWriter:
        self._atomic = atomic_path(self.path, overwrite=self._overwrite)
        tmp = self._atomic.__enter__()
        try:
            self._handle = h5py.File(tmp, "w")
        except BaseException:
            self._atomic.__exit__(*sys.exc_info())
            raise
        self._handle.attrs[_FORMAT_ATTR] = FORMAT_VERSION
        return self

    def add_chip(self, key: str, images: ChipImages) -> None:
        """Write one chip's images (group ``key``)."""
        _check_parts({key: images}, {}, None)
        _write_images(self._handle.create_group(key), images)

    def finish(
        self,
        *,
        fibers: Mapping[str, FiberResults] | None = None,
        inputs: Sequence[str | os.PathLike] = (),
        backend: str = "numpy",
        metadata: Mapping[str, object] | None = None,
    ) -> None:
        """Write the fiber results and the metadata (see :func:`write_product`)."""
        fibers = dict(fibers or {})
        _check_parts({}, fibers, metadata)
        for key, results in fibers.items():
            _write_fibers(self._handle.create_group(f"fibers/{key}"), results)
        group = self._handle.create_group("metadata")
        meta = _writer_metadata(inputs, backend) | dict(metadata or {})
        for key, value in meta.items():
            write_value(group, key, value)
        self._finished = True

    def __exit__(self, *exc_info) -> None:
        self._handle.close()
        if exc_info[0] is None and not self._finished:
            exc_info = (RuntimeError, RuntimeError(f"{self.path}: finish() was not called"), None)
            self._atomic.__exit__(*exc_info)
            raise exc_info[1]
        self._atomic.__exit__(*exc_info)


def _check_parts(chips: Mapping, fibers: Mapping, metadata: Mapping | None) -> None:
    for key in (*chips, *fibers):
        if not key or "/" in key or key in _RESERVED:
            raise ValueError(f"chip or fiber group name: expected a plain name, got {key!r}")
    for key, images in chips.items():
        _check_images(key, images)
    for key, results in fibers.items():
        _check_fibers(key, results)
    clash = set(metadata or {}) & set(_WRITER_KEYS)
    if clash:
        raise ValueError(f"metadata: keys {sorted(clash)} are written by pyapred itself")


def is_fits_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a FITS product (``.fits``, ``.fit``, ``.fits.gz``), else HDF5."""
    return Path(path).name.lower().endswith((".fits", ".fit", ".fits.gz"))


def _check_images(key: str, images: ChipImages) -> None:
    shapes = {name: np.shape(getattr(images, name)) for name in _IMAGES}
    if len(set(shapes.values())) != 1 or len(shapes["rate"]) != 2:
        raise ValueError(f"chips[{key!r}]: expected four 2-D images of one shape, got {shapes}")


def _check_fibers(key: str, results: FiberResults) -> None:
    n, k = np.shape(results.omega) if np.ndim(results.omega) == 2 else (-1, -1)
    expected = {
        "fiber_index": (n,),
        "omega_cov": (n, k, k),
        "ref_index": (n,),
        "model": (n,),
        "flags": (n,),
    }
    found = {name: np.shape(getattr(results, name)) for name in expected}
    if n < 0 or found != expected:
        raise ValueError(
            f"fibers[{key!r}]: expected shapes {expected} for omega (n, K), "
            f"got omega {np.shape(results.omega)} and {found}"
        )
    ref = np.asarray(results.ref_index)
    if n and (ref.min() < 0 or ref.max() >= k):
        raise ValueError(f"fibers[{key!r}].ref_index: expected 0-based indices below {k}")


def _write_images(group: h5py.Group, images: ChipImages) -> None:
    for attribute, name in _IMAGES.items():
        dtype = np.int64 if name == "flags" else np.float64
        dataset = group.create_dataset(name, data=np.asarray(getattr(images, attribute), dtype))
        dataset.attrs["units"] = _UNITS[name]


def _write_fibers(group: h5py.Group, results: FiberResults) -> None:
    group["fiber_index"] = np.asarray(results.fiber_index, np.int64) + 1
    group["omega"] = np.asarray(results.omega, np.float64)
    group["omega_cov"] = np.asarray(results.omega_cov, np.float64)
    group["ref_index"] = np.asarray(results.ref_index, np.int64) + 1
    write_value(group, "model", [str(m) for m in results.model])
    group["flags"] = np.asarray(results.flags, np.int64)
    for name in ("fiber_index", "ref_index"):
        group[name].attrs["index_base"] = 1


def _writer_metadata(inputs: Sequence[str | os.PathLike], backend: str) -> dict:
    from .. import __version__

    meta: dict[str, object] = {"pyapred_version": __version__}
    commit, clean = _git_info()
    if commit is not None:
        meta["git_commit"] = commit
        meta["git_clean"] = clean
    meta["backend"] = backend
    meta["input_files"] = [Path(p).name for p in inputs]
    meta["input_sha256"] = [sha256_file(Path(p)) for p in inputs]
    meta["format_version"] = FORMAT_VERSION
    return meta


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, as hex (the product's ``input_sha256``)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def _git_info() -> tuple[str | None, bool]:
    """The commit of the pyapred checkout and whether its tree is clean; None if not in git."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        return git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no") == ""
    except (OSError, subprocess.SubprocessError):
        return None, False


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def read_product(path: str | os.PathLike) -> Product:
    """Read a product written by :func:`write_product` (HDF5, or FITS by the ``.fits`` suffix).

    Raises
    ------
    InputError
        Not a pyapred product, a product of another layout version, or a dataset missing or of
        the wrong shape or dtype.
    """
    if is_fits_path(Path(path)):
        chips, fibers, metadata = read_fits(path, FORMAT_VERSION, ChipImages, FiberResults)
        return Product(str(path), chips, fibers, metadata)
    with open_h5(path) as handle:
        version = handle.attrs.get(_FORMAT_ATTR)
        if version is None:
            raise InputError(path, f"attribute {_FORMAT_ATTR}", "a pyapred product", "nothing")
        if version != FORMAT_VERSION:
            raise InputError(
                path,
                f"attribute {_FORMAT_ATTR}",
                f"product format {FORMAT_VERSION} (this pyapred reads only that)",
                found=f"format {version}, written by an incompatible version",
            )
        chips = {
            key: _read_images(path, group)
            for key, group in handle.items()
            if key not in _RESERVED and isinstance(group, h5py.Group)
        }
        fibers_group = handle.get("fibers", {})
        fibers = {key: _read_fibers(path, group) for key, group in fibers_group.items()}
        metadata = read_group(path, handle["metadata"]) if "metadata" in handle else {}
    return Product(str(path), chips, fibers, metadata)


def _read_images(path, group: h5py.Group) -> ChipImages:
    rate = read_dataset(path, group, "dimage", shape=(None, None), kinds="f")
    shape = rate.shape
    return ChipImages(
        rate=rate,
        ivar=read_dataset(path, group, "ivarimage", shape=shape, kinds="f"),
        chi2=read_dataset(path, group, "chisqimage", shape=shape, kinds="f"),
        flags=read_dataset(path, group, "flags", shape=shape, kinds="iu").astype(np.int64),
    )


def _read_fibers(path, group: h5py.Group) -> FiberResults:
    omega = read_dataset(path, group, "omega", shape=(None, None), kinds="f")
    n, k = omega.shape
    ref_index = read_dataset(path, group, "ref_index", shape=(n,), kinds="iu") - 1
    if n and (ref_index.min() < 0 or ref_index.max() >= k):
        field_name = f"{group.name}/ref_index".lstrip("/")
        raise InputError(
            path,
            field_name,
            f"1-based indices in 1..{k}",
            found=f"{ref_index.min() + 1}..{ref_index.max() + 1}",
        )
    model = read_value(path, group["model"]) if "model" in group else None
    if not isinstance(model, list) or len(model) != n:
        raise InputError(path, f"{group.name}/model".lstrip("/"), f"{n} strings", found=repr(model))
    return FiberResults(
        fiber_index=read_dataset(path, group, "fiber_index", shape=(n,), kinds="iu") - 1,
        omega=omega,
        omega_cov=read_dataset(path, group, "omega_cov", shape=(n, k, k), kinds="f"),
        ref_index=ref_index.astype(np.int64),
        model=tuple(model),
        flags=read_dataset(path, group, "flags", shape=(n,), kinds="iu").astype(np.int64),
    )
