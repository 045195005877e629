"""The FITS flavour of pyapred's products, for people who live in FITS.

Same content as the HDF5 product (``product.py``), 0-based indices (IDL and astropy users):

- HDU 0: empty image; ``PAPFMT`` = layout version; the exposure's identity where known
  (``TELESCOP``, ``MJD``, ``EXPNUM``, ``DATE-OBS``, ``TIMESYS``), ``CHIPS`` and ``FIBGRPS`` (the
  chip and fiber group names), ``PAPVER`` (the pyapred version).
- ``{chip}_RATE``, ``{chip}_IVAR``, ``{chip}_CHI2`` (float32), ``{chip}_NDIFF`` (uint8 or
  uint16), ``{chip}_FLAGS`` (uint16): images ``(ny, nx)`` in NumPy order (FITS
  ``NAXIS1 = nx``); cards ``PAPCHIP``, ``PAPIMAGE``, ``BUNIT``.
- ``FIBERS_{group}``: a table, one row per fiber: ``FIBERID``, ``FIBER_INDEX``, ``MODEL``,
  ``FLAGS``, ``OMEGA`` (K), ``OMEGA_COV`` (K x K), ``OMEGA_MEAN``, ``REF_INDEX`` and the
  statistics known; ``TUNITn`` and ``TCOMMn`` (description) on every column; card ``PAPGROUP``.
- ``METADATA``: a table of ``KEY``, ``VALUE`` (JSON, so any JSON-able value round-trips),
  ``UNIT`` and ``DESCRIPTION``.

Format 1 (read only) had float64 and int64 images, no ``NDIFF``, no ``FIBERID``, no statistics.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..errors import InputError

#: The float images of a chip (the HDF5 reader refuses them in integers too), and all it needs.
_FLOAT_IMAGES = ("rate", "ivar", "chi2")
_REQUIRED_IMAGES = (*_FLOAT_IMAGES, "flags")
#: Metadata key -> (primary header card, comment).
_IDENTITY = {
    "telescope": ("TELESCOP", "telescope"),
    "mjd": ("MJD", "SDSS MJD (SJD) of the night"),
    "expnum": ("EXPNUM", "APOGEE exposure number"),
    "DATE-OBS": ("DATE-OBS", "start of the exposure, in TIMESYS"),
    "TIMESYS": ("TIMESYS", "time scale of DATE-OBS"),
    "pyapred_version": ("PAPVER", "pyapred version that wrote the file"),
}


def write_fits(
    tmp: Path,
    images: dict,
    tables: dict,
    metadata: dict,
    version: int,
    docs: dict | None = None,
) -> None:
    """Write the product's HDUs to ``tmp`` (the caller renames it into place).

    ``images``: ``{chip: {ChipImages attribute: (array, units)}}`` in the types to store;
    ``tables``: ``{group: {name: (values, field)}}`` with ``field.name``, ``.units`` and
    ``.description``;
    ``docs``: ``{metadata key: (units, description)}``.
    """
    primary = fits.PrimaryHDU()
    header = primary.header
    header["PAPFMT"] = (version, "pyapred product format")
    for key, (card, comment) in _IDENTITY.items():
        value = _card_value(metadata.get(key))
        if value is not None:
            header[card] = (value, comment)
    header["CHIPS"] = (",".join(images), "chip names (image HDUs {chip}_RATE, ...)")
    header["FIBGRPS"] = (",".join(tables), "fiber groups (table HDUs FIBERS_{group})")
    hdus: list = [primary]
    for chip, arrays in images.items():
        for attribute, (data, units) in arrays.items():
            hdu = fits.ImageHDU(data, name=f"{chip}_{_SUFFIX[attribute]}")
            hdu.header["PAPCHIP"] = (chip, "chip")
            hdu.header["PAPIMAGE"] = (attribute, "pyapred.io.ChipImages attribute")
            hdu.header["BUNIT"] = units
            hdus.append(hdu)
    for group, columns in tables.items():
        hdu = fits.BinTableHDU.from_columns(
            [_column(spec.name.upper(), values) for values, spec in columns.values()],
            name=f"FIBERS_{group}",
        )
        for i, (_, spec) in enumerate(columns.values(), start=1):
            hdu.header[f"TUNIT{i}"] = spec.units
            hdu.header[f"TCOMM{i}"] = spec.description
        hdu.header["PAPGROUP"] = (group, "fiber group: a chip, or joint")
        hdus.append(hdu)
    docs = docs or {}
    unknown = ("", "")
    for key in metadata:  # FITS text columns hold ASCII and drop trailing blanks
        if not (str(key).isascii() and str(key) == str(key).rstrip()):
            raise ValueError(f"metadata: expected keys in ASCII without trailing blanks for the "
                             f"FITS flavour (or an .h5 product), got {key!r}")  # fmt: skip
    hdus.append(
        fits.BinTableHDU.from_columns(
            [
                _text_column("KEY", list(metadata)),
                _text_column("VALUE", [json.dumps(_jsonable(v)) for v in metadata.values()]),
                _text_column("UNIT", [docs.get(k, unknown)[0] for k in metadata]),
                _text_column("DESCRIPTION", [docs.get(k, unknown)[1] for k in metadata]),
            ],
            name="METADATA",
        )
    )
    fits.HDUList(hdus).writeto(tmp, overwrite=True)


#: ChipImages attribute -> HDU name suffix.
_SUFFIX = {"rate": "RATE", "ivar": "IVAR", "chi2": "CHI2", "n_diff": "NDIFF", "flags": "FLAGS"}


def _card_value(value):
    """``value`` as a header card value, or None where it cannot be one."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (str, bool, int, float)):
        return value
    return None


def _column(name: str, values) -> fits.Column:
    if isinstance(values, list):
        return _text_column(name, values)
    values = np.asarray(values)
    n = values.shape[0]
    per_row = int(np.prod(values.shape[1:], dtype=np.int64))
    code = "D" if values.dtype.kind == "f" else "K"
    dim = f"({','.join(map(str, values.shape[:0:-1]))})" if values.ndim > 2 else None
    data = values.astype(np.float64 if code == "D" else np.int64).reshape(n, max(per_row, 1))
    fmt = f"{per_row}{code}" if values.ndim > 1 else code
    return fits.Column(name, fmt, dim=dim, array=data if values.ndim > 1 else data[:, 0])


def _text_column(name: str, values) -> fits.Column:
    values = [str(v) for v in values]
    return fits.Column(name, f"{max([1, *(len(v.encode()) for v in values)])}A", array=values)


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_fits(
    path: str | os.PathLike, versions, chip_type, fiber_type, *, images: bool = True
) -> tuple:
    """``(chips, fibers, metadata, version)`` of a FITS product; InputError for anything
    malformed or of a version not in ``versions``: the HDU at fault is named (and the column,
    where one is missing)."""
    where = "FITS structure"  # until the file opens: not FITS
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hdul = fits.open(path, memmap=False)
            len(hdul)  # reads every header: a truncated file is only a warning of astropy's
        with hdul:
            for warning in caught:
                if any(w in str(warning.message) for w in ("truncated", "Error validating")):
                    found = str(warning.message).splitlines()[0]
                    raise InputError(path, where, "a complete pyapred FITS product", found)
                warnings.warn(warning.message, stacklevel=3)
            where = "HDU 0"
            found = hdul[0].header.get("PAPFMT")
            if found is None:
                raise InputError(path, "HDU 0 PAPFMT", "a pyapred product", "nothing")
            whole = isinstance(found, int) and not isinstance(found, bool)
            if not whole or found not in versions:
                raise InputError(
                    path,
                    "HDU 0 PAPFMT",
                    f"product format {' or '.join(map(str, versions))} as an integer",
                    found=f"{found}, written by an incompatible version" if whole else repr(found),
                )
            primary = hdul[0].header.copy()
            parts: dict[str, dict] = {}
            fibers, metadata, has_metadata = {}, {}, False
            seen_images: set = set()
            for number, hdu in enumerate(hdul[1:], start=1):
                where = f"HDU {number} ({hdu.name or 'no EXTNAME'})"
                header = hdu.header
                # An image or a group given twice: the later one won, silently.
                if "PAPCHIP" in header:
                    image = (header["PAPCHIP"], header["PAPIMAGE"])
                    if image in seen_images:
                        raise ValueError(f"chip {image[0]}'s {image[1]} again")
                    seen_images.add(image)
                    if images:
                        parts.setdefault(image[0], {})[image[1]] = _native(hdu.data)
                elif "PAPGROUP" in header:
                    _check_columns(path, where, hdu.data, _FIBER_COLUMNS)
                    if header["PAPGROUP"] in fibers:
                        raise ValueError(f"fiber group {header['PAPGROUP']} again")
                    fibers[header["PAPGROUP"]] = _fibers(hdu.data, fiber_type)
                elif hdu.name == "METADATA":
                    _check_columns(path, where, hdu.data, ("KEY", "VALUE"))
                    if has_metadata:  # (the later table won, silently)
                        raise ValueError("a second metadata table")
                    has_metadata = True
                    keys = [str(key) for key in hdu.data["KEY"]]
                    twice = sorted({key for key in keys if keys.count(key) > 1})
                    if twice:  # (the later value won, silently)
                        raise ValueError(f"the KEY {twice[0]!r} more than once")
                    metadata = {
                        key: _metadata_value(json.loads(value))
                        for key, value in zip(keys, hdu.data["VALUE"], strict=True)
                    }
    except InputError:
        raise
    except Exception as exc:  # astropy, KeyError, json errors: a malformed file
        raise InputError(
            path, where, "a pyapred FITS product", found=f"{type(exc).__name__}: {exc}"
        ) from None
    # The primary header lists what was written (format 2): a file cut after whole HDUs is
    # complete FITS, without the rest.
    listed = {"CHIPS": set(parts) if images else None, "FIBGRPS": set(fibers)}
    for card, have in listed.items():
        names = [n for n in str(primary.get(card, "")).split(",") if n]
        missing = sorted(set(names) - have) if have is not None and card in primary else []
        if missing:
            raise InputError(path, f"HDU 0 {card}", f"the HDUs of {', '.join(names)}",
                             f"none for {', '.join(missing)}")  # fmt: skip
    if not has_metadata:
        raise InputError(path, "METADATA", "the metadata table HDU", "none")
    chips = {}
    for chip, arrays in parts.items():
        if not set(_REQUIRED_IMAGES) <= set(arrays) or not set(arrays) <= set(_SUFFIX):
            raise InputError(
                path,
                f"{chip} images",
                "RATE, IVAR, CHI2 and FLAGS (and NDIFF)",
                found=", ".join(sorted(arrays)),
            )
        shapes = {np.shape(v) for v in arrays.values()}
        if len(shapes) != 1:
            raise InputError(path, f"{chip} images", "one shape", found=str(sorted(shapes)))
        for name in _FLOAT_IMAGES:  # as the HDF5 reader refuses an integer dimage
            if arrays[name].dtype.kind != "f":
                raise InputError(path, f"{chip}_{_SUFFIX[name]}", "floating-point values",
                                 found=str(arrays[name].dtype))  # fmt: skip
        chips[chip] = chip_type(**arrays)
    return chips, fibers, metadata, int(found)


def _native(array: np.ndarray) -> np.ndarray:
    return array.astype(array.dtype.newbyteorder("="))


def _integers(table, name: str) -> np.ndarray:
    """Column ``name`` of ``table`` as int64; a ValueError unless it holds integers (a float
    column was cut: FIBER_INDEX 0.6 read as 0, a NaN N_FIT_PIXELS as -2**63)."""
    values = _native(table[name])
    if values.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integers, found {values.dtype}")
    return values.astype(np.int64)


_STATISTICS = ("AMPLITUDE", "DELTA_CHI2", "P_VALUE", "N_FIT_PIXELS", "N_ITER",
               "CHROMATIC_DELTA_CHI2", "CHROMATIC_P_VALUE", "CHROMATIC_AMPLITUDE")  # fmt: skip
#: Optional ``(n, K)`` columns (the chromatic fit).
_ARRAYS = ("GAMMA", "GAMMA_COV")


#: The columns of every fiber table (the statistics and ``_ARRAYS`` are optional).
_FIBER_COLUMNS = ("FIBER_INDEX", "OMEGA", "OMEGA_COV", "REF_INDEX", "MODEL", "FLAGS")


def _check_columns(path, where: str, table, required) -> None:
    """InputError naming the first of the ``required`` columns that ``table`` lacks."""
    names = set(getattr(getattr(table, "columns", None), "names", None) or ())
    for name in required:
        if name not in names:
            raise InputError(path, f"{where} column {name}", "a column of a pyapred table", "none")


def _fibers(table, fiber_type):
    n = len(table)
    names = set(table.columns.names)
    k = int(table.columns["OMEGA"].format.repeat)  # K of an empty table too
    for name in ("OMEGA", "OMEGA_COV"):  # as the HDF5 reader refuses integers
        if table[name].dtype.kind != "f":
            raise ValueError(f"{name}: expected floating-point values, found {table[name].dtype}")
    omega = _native(table["OMEGA"]).reshape(n, k)
    fiber_index = _integers(table, "FIBER_INDEX")
    if "FIBERID" in names and not np.array_equal(table["FIBERID"], 300 - fiber_index):
        raise ValueError("FIBERID: expected 300 - FIBER_INDEX")
    stats = {
        name.lower(): _integers(table, name)
        if name.startswith("N_")
        else _native(table[name]).astype(float)
        for name in _STATISTICS
        if name in names
    }
    stats |= {name.lower(): _native(table[name]).reshape((n, k) + (k,) * ("COV" in name))
              .astype(float) for name in _ARRAYS if name in names}  # fmt: skip
    return fiber_type(
        fiber_index=fiber_index,
        omega=omega,
        omega_cov=_native(table["OMEGA_COV"]).reshape(n, k, k),
        ref_index=_integers(table, "REF_INDEX"),
        model=tuple(str(m) for m in table["MODEL"]),
        flags=_integers(table, "FLAGS"),
        **stats,
    )


def _metadata_value(value):
    """A metadata value decoded from JSON as the HDF5 flavour gives it: a list of numbers (at
    any depth) as an ndarray, anything else as it is (strings, lists of strings, scalars)."""
    if not isinstance(value, list) or not value:
        return value
    array = np.asarray(value, dtype=object)

    def number(item) -> bool:
        return isinstance(item, (int, float)) and not isinstance(item, bool)

    if array.dtype == object and all(number(item) for item in array.ravel()):
        return np.asarray(value)
    return value
