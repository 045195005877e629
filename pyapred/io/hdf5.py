"""HDF5 helpers shared by the ApogeeReduction.jl readers and pyapred's products.

Every h5py failure is turned into :class:`~pyapred.errors.InputError` naming the file and the
dataset, so no h5py traceback reaches a user.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError
from .paths import physical_memory


@contextlib.contextmanager
def open_h5(path: str | os.PathLike) -> Iterator[h5py.File]:
    """Open an HDF5 file for reading; a non-HDF5 or damaged file is an InputError."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        handle = h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise InputError(path, "HDF5 structure", "a readable HDF5 file", found=str(exc)) from None
    with handle:
        try:
            _check_links(path, handle)
            yield handle
        except (OSError, RuntimeError) as exc:  # h5py, on a damaged symbol table, heap, B-tree
            found = f"{type(exc).__name__}: {exc}"
            raise InputError(
                path, "HDF5 structure", "readable groups and datasets", found
            ) from None


def _check_links(path: Path, handle: h5py.File) -> None:
    """Every link of the file has a UTF-8 name and stays in the file, checked before any object
    is opened (HDF5 visits the links by name, following none that leads out).

    An external link was followed as soon as a reader listed its group: one to a FIFO hung
    every reader, one to another file had its data read as this file's own. A name that is not
    UTF-8 came out of h5py as bytes and ended in a TypeError traceback.
    """
    found = []

    def visit(name: bytes, info) -> bool | None:
        # An exception raised in here reaches the caller as h5py's SystemError: note and stop.
        try:
            name.decode("utf-8")
        except UnicodeDecodeError:
            found.append((repr(name), "a name in UTF-8", "a name that is not UTF-8"))
            return True
        if info.type == h5py.h5l.TYPE_EXTERNAL:
            target, where = (v.decode(errors="replace") for v in handle.id.links.get_val(name))
            found.append((name.decode(), "an object in this file",
                          f"an external link to {target}:{where}"))  # fmt: skip
            return True
        return None

    handle.id.links.visit(visit, info=True)
    if found:
        raise InputError(path, *found[0])


def read_dataset(
    path: str | os.PathLike,
    group: h5py.Group,
    name: str,
    *,
    shape: tuple[int | None, ...] | None = None,
    kinds: str = "fiu",
    selection: tuple = (),
    expected: str = "",
    at_most: tuple[int | None, ...] | None = None,
) -> np.ndarray:
    """Read ``group[name]`` as a native-byte-order NumPy array, checking shape and kind.

    Parameters
    ----------
    shape : tuple, optional
        Expected shape as h5py shows it; ``None`` entries match any length.
    kinds : str
        Allowed ``dtype.kind`` letters (``"f"`` float, ``"i"``/``"u"`` integer, ``"b"`` bool).
    selection : tuple
        Index applied while reading (h5py reads only that hyperslab).
    expected : str
        Words for the error message, e.g. "Julia (2560, 2048) seen as (2048, 2560)".
    at_most : tuple, optional
        Largest length of each axis (``None``: any), checked on the declared shape before
        reading: a small damaged file may declare gigabytes.
    """
    field = f"{group.name.rstrip('/')}/{name}".lstrip("/")
    try:
        if name not in group:
            raise InputError(path, field, f"a dataset {expected}".rstrip(), found="nothing")
        dataset = group[name]
    except (KeyError, OSError, RuntimeError) as exc:  # a dangling, external or looping link
        raise InputError(path, field, f"a readable dataset {expected}".rstrip(), str(exc)) from None
    if not isinstance(dataset, h5py.Dataset):
        raise InputError(path, field, "a dataset", found=type(dataset).__name__)
    _check_has_data(path, field, dataset)
    if shape is not None and (
        len(dataset.shape) != len(shape)
        or any(
            want is not None and want != got for want, got in zip(shape, dataset.shape, strict=True)
        )
    ):
        want = "(" + ", ".join("n" if n is None else str(n) for n in shape) + ")"
        raise InputError(
            path, field, f"shape {want} in h5py order {expected}".rstrip(), found=str(dataset.shape)
        )
    if at_most is not None and any(
        most is not None and got > most for most, got in zip(at_most, dataset.shape, strict=False)
    ):
        most = "(" + ", ".join("any" if n is None else str(n) for n in at_most) + ")"
        raise InputError(path, field, f"a shape of at most {most}", found=str(dataset.shape))
    if dataset.dtype.kind not in kinds:
        raise InputError(path, field, f"dtype kind in {kinds!r}", found=str(dataset.dtype))
    # Declared and never written: all fill value (a 9.4 GiB outdat of nothing passed the memory
    # check, then was a MemoryError traceback where the process had less).
    if dataset.size and dataset.id.get_storage_size() == 0:
        size = dataset.size * dataset.dtype.itemsize
        raise InputError(path, field, "a dataset with data written",
                         f"shape {dataset.shape} declared ({size / 2**30:.3g} GiB), nothing "
                         "stored")  # fmt: skip
    try:
        data = dataset[selection] if selection else dataset[()]
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(path, field, "readable data", found=str(exc)) from None
    return native(np.asarray(data))


def _check_has_data(path: str | os.PathLike, field: str, dataset: h5py.Dataset) -> None:
    """A dataset holds data that fit in this machine's memory, in the file itself: not a null
    dataspace (no shape), nor a shape declared far beyond what the file holds (a chunked dataset
    of 2**40 elements takes a few kB on disk), nor external or virtual storage."""
    if dataset.shape is None:
        raise InputError(path, field, "a dataset with data", "an empty (null) dataspace")
    # Data kept outside the file: a FIFO named as external storage hung the reader, and a file
    # read through it could be anything (a virtual dataset's sources alike).
    if dataset.external or dataset.is_virtual:
        where = "virtual (mapped from other files)" if dataset.is_virtual else (
            f"stored in external files {[str(e[0]) for e in dataset.external][:3]}")  # fmt: skip
        raise InputError(path, field, "data stored in the file itself", where)
    size = float(np.prod(dataset.shape, dtype=np.float64)) * dataset.dtype.itemsize
    memory = physical_memory()
    if size > memory:
        raise InputError(path, field, f"data that fit in memory ({memory / 2**30:.0f} GiB)",
                         f"shape {dataset.shape}, {size / 2**30:.3g} GiB")  # fmt: skip


def native(array: np.ndarray) -> np.ndarray:
    """``array`` in native byte order (a copy only if it was big-endian)."""
    if array.dtype.byteorder not in "=|":
        return array.astype(array.dtype.newbyteorder("="))
    return array


def decode(value):
    """An HDF5 value as plain Python: bytes -> str, NumPy scalars -> Python scalars."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OS":
            return [decode(v) for v in value.tolist()]
        return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_value(path: str | os.PathLike, dataset: h5py.Dataset):
    """A dataset as plain Python (strings decoded, scalars unwrapped, arrays as arrays)."""
    if not isinstance(dataset, h5py.Dataset):
        found = "a group" if isinstance(dataset, h5py.Group) else type(dataset).__name__
        raise InputError(path, getattr(dataset, "name", "?").lstrip("/"), "a dataset", found)
    _check_has_data(path, dataset.name.lstrip("/"), dataset)
    try:
        if h5py.check_string_dtype(dataset.dtype) is not None:
            return decode(dataset.asstr()[()])
        return decode(dataset[()])
    except (OSError, ValueError, TypeError) as exc:
        field = dataset.name.lstrip("/")
        raise InputError(path, field, "a readable value", found=str(exc)) from None


#: The largest metadata value read (bytes): a metadata group holds cards, times and names. A
#: small damaged file declaring gigabytes there was read in full (3 GB from 183 kB).
MAX_METADATA_BYTES = 2**28


def read_group(path: str | os.PathLike, group: h5py.Group) -> dict:
    """Every dataset of ``group`` (not recursive) as ``{name: plain value}``; an InputError
    for one larger than :data:`MAX_METADATA_BYTES`."""
    values = {}
    for key, item in group.items():
        if not isinstance(item, h5py.Dataset):
            continue
        declared = (item.size or 0) * item.dtype.itemsize
        if declared > MAX_METADATA_BYTES:
            raise InputError(path, item.name, f"a metadata value of at most "
                             f"{MAX_METADATA_BYTES // 2**20} MiB",
                             f"{declared / 2**30:.2g} GiB declared")  # fmt: skip
        values[key] = read_value(path, item)
    return values


def read_metadata(path: str | os.PathLike) -> dict:
    """The ``metadata`` group that ApogeeReduction.jl's ``safe_jldsave`` adds to every file.

    Returns ``{key: value}`` with strings decoded (``git_commit``, ``git_branch``, ...);
    an empty dict if the file has no ``metadata`` group.
    """
    with open_h5(path) as handle:
        group = handle.get("metadata")
        return read_group(path, group) if isinstance(group, h5py.Group) else {}


#: The HDF5 type of every string pyapred writes: variable-length UTF-8 (h5py, HDF5.jl and JLD2
#: read it as text; h5py's ``.asstr()`` and :func:`read_value` give ``str``).
UTF8 = h5py.string_dtype("utf-8")


def write_value(
    group: h5py.Group,
    key: str,
    value,
    *,
    units: str | None = None,
    description: str | None = None,
    axes: tuple[str, ...] | None = None,
) -> h5py.Dataset:
    """Write one metadata value as ApogeeReduction.jl would: strings as UTF-8 strings.

    ``units``, ``description`` and ``axes``, where given, become the dataset's attributes
    (:func:`describe`).
    """
    if isinstance(value, str):
        dataset = group.create_dataset(key, data=value, dtype=UTF8)
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        dataset = group.create_dataset(key, data=list(value), dtype=UTF8)
    else:
        dataset = group.create_dataset(key, data=value)
    describe(dataset, units=units, description=description, axes=axes)
    return dataset


def describe(
    item: h5py.HLObject,
    *,
    units: str | None = None,
    description: str | None = None,
    axes: tuple[str, ...] | None = None,
) -> None:
    """Set the self-description attributes of a dataset or group (each only where given).

    ``units`` and ``description`` are UTF-8 strings (``units`` is ``""`` where no physical unit
    applies); ``axes`` names each axis in h5py (C) order, an array of UTF-8 strings (Julia sees
    the axes reversed).
    """
    if units is not None:
        item.attrs.create("units", units, dtype=UTF8)
    if description is not None:
        item.attrs.create("description", description, dtype=UTF8)
    if axes:
        item.attrs.create("axes", list(axes), dtype=UTF8)
