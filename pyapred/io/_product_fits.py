"""The FITS flavour of pyapred's products, for people who live in FITS.

Same content as the HDF5 product (``product.py``), 0-based indices (IDL and astropy users):

- HDU 0: empty image; ``PAPFMT`` = layout version.
- ``{chip}_RATE``, ``{chip}_IVAR``, ``{chip}_CHI2``, ``{chip}_FLAGS``: images ``(ny, nx)``
  in NumPy order (FITS ``NAXIS1 = nx``), DN per read; cards ``PAPCHIP`` and ``PAPIMAGE``.
- ``FIBERS_{group}``: a table, one row per fiber: ``FIBER_INDEX``, ``OMEGA`` (K),
  ``OMEGA_COV`` (K x K), ``REF_INDEX``, ``MODEL``, ``FLAGS``; card ``PAPGROUP``.
- ``METADATA``: a table of ``KEY`` and ``VALUE`` (JSON), so any JSON-able value round-trips.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..errors import InputError

_IMAGE_NAMES = {"rate": "RATE", "ivar": "IVAR", "chi2": "CHI2", "flags": "FLAGS"}
_UNITS = {"rate": "DN/read", "ivar": "(DN/read)**-2", "chi2": "", "flags": ""}


def write_fits(tmp: Path, chips: dict, fibers: dict, metadata: dict, version: int) -> None:
    """Write the product's HDUs to ``tmp`` (the caller renames it into place)."""
    primary = fits.PrimaryHDU()
    primary.header["PAPFMT"] = (version, "pyapred product format")
    hdus: list = [primary]
    for chip, images in chips.items():
        for attribute, suffix in _IMAGE_NAMES.items():
            dtype = np.int64 if attribute == "flags" else np.float64
            data = np.asarray(getattr(images, attribute), dtype)
            hdu = fits.ImageHDU(data, name=f"{chip}_{suffix}")
            hdu.header["PAPCHIP"] = chip
            hdu.header["PAPIMAGE"] = attribute
            hdu.header["BUNIT"] = _UNITS[attribute]
            hdus.append(hdu)
    for group, results in fibers.items():
        n, k = np.shape(results.omega)
        columns = [
            fits.Column("FIBER_INDEX", "K", array=np.asarray(results.fiber_index)),
            fits.Column("OMEGA", f"{k}D", array=np.asarray(results.omega)),
            fits.Column(
                "OMEGA_COV", f"{k * k}D", dim=f"({k},{k})", array=np.asarray(results.omega_cov)
            ),
            fits.Column("REF_INDEX", "K", array=np.asarray(results.ref_index)),
            _text_column("MODEL", results.model),
            fits.Column("FLAGS", "K", array=np.asarray(results.flags)),
        ]
        hdu = fits.BinTableHDU.from_columns(columns, name=f"FIBERS_{group}")
        hdu.header["PAPGROUP"] = group
        hdus.append(hdu)
    values = [json.dumps(_jsonable(v)) for v in metadata.values()]
    hdus.append(
        fits.BinTableHDU.from_columns(
            [
                _text_column("KEY", list(metadata)),
                _text_column("VALUE", values),
            ],
            name="METADATA",
        )
    )
    fits.HDUList(hdus).writeto(tmp, overwrite=True)


def _text_column(name: str, values) -> fits.Column:
    values = [str(v) for v in values]
    return fits.Column(name, f"{max([1, *map(len, values)])}A", array=values)


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_fits(path: str | os.PathLike, version: int, chip_type, fiber_type) -> tuple:
    """``(chips, fibers, metadata)`` of a FITS product; InputError for anything malformed."""
    try:
        with fits.open(path, memmap=False) as hdul:
            found = hdul[0].header.get("PAPFMT")
            if found != version:
                raise InputError(
                    path,
                    "HDU 0 PAPFMT",
                    f"product format {version}",
                    found=f"{found}, written by an incompatible version",
                )
            images: dict[str, dict] = {}
            fibers, metadata = {}, {}
            for hdu in hdul[1:]:
                header = hdu.header
                if "PAPCHIP" in header:
                    images.setdefault(header["PAPCHIP"], {})[header["PAPIMAGE"]] = _native(hdu.data)
                elif "PAPGROUP" in header:
                    fibers[header["PAPGROUP"]] = _fibers(hdu.data, fiber_type)
                elif hdu.name == "METADATA":
                    metadata = {
                        str(key): json.loads(value)
                        for key, value in zip(hdu.data["KEY"], hdu.data["VALUE"], strict=True)
                    }
    except InputError:
        raise
    except Exception as exc:  # astropy, KeyError, json errors: a malformed file
        raise InputError(
            path, "FITS structure", "a pyapred FITS product", found=f"{type(exc).__name__}: {exc}"
        ) from None
    chips = {}
    for chip, parts in images.items():
        if set(parts) != set(_IMAGE_NAMES):
            raise InputError(
                path, f"{chip} images", "RATE, IVAR, CHI2 and FLAGS", found=", ".join(sorted(parts))
            )
        shapes = {np.shape(v) for v in parts.values()}
        if len(shapes) != 1:
            raise InputError(path, f"{chip} images", "one shape", found=str(sorted(shapes)))
        chips[chip] = chip_type(**parts)
    return chips, fibers, metadata


def _native(array: np.ndarray) -> np.ndarray:
    return array.astype(array.dtype.newbyteorder("="))


def _fibers(table, fiber_type):
    n = len(table)
    omega = _native(table["OMEGA"]).reshape(n, -1)
    k = omega.shape[1]
    return fiber_type(
        fiber_index=_native(table["FIBER_INDEX"]).astype(np.int64),
        omega=omega,
        omega_cov=_native(table["OMEGA_COV"]).reshape(n, k, k),
        ref_index=_native(table["REF_INDEX"]).astype(np.int64),
        model=tuple(str(m) for m in table["MODEL"]),
        flags=_native(table["FLAGS"]).astype(np.int64),
    )
