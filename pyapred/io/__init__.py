"""File I/O: raw ``.apz`` exposures, ApogeeReduction.jl HDF5 products, pyapred's own products.

This package imports astropy and h5py; ``import pyapred`` does not import it. The formats,
axis orders and units are described in ``docs/formats.md``.
"""

from .apred import (
    Ar1D,
    Ar2D,
    Ar3DCal,
    ArName,
    parse_ar_name,
    read_ar1d,
    read_ar2d,
    read_ar3dcal,
)
from .apz import (
    ApzName,
    RawExposure,
    apz_filename,
    exposure_number,
    make_headers,
    parse_apz_name,
    read_apz,
    write_apz,
)
from .hdf5 import read_metadata
from .product import (
    FORMAT_VERSION,
    READABLE_VERSIONS,
    BackgroundHashes,
    ChipImages,
    FiberResults,
    Product,
    ProductWriter,
    flag_dtype,
    is_fits_path,
    read_product,
    sha256_file,
    write_product,
)

__all__ = [
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "BackgroundHashes",
    "ChipImages",
    "FiberResults",
    "Product",
    "read_product",
    "write_product",
    "ProductWriter",
    "flag_dtype",
    "is_fits_path",
    "sha256_file",
    "ApzName",
    "Ar1D",
    "Ar2D",
    "Ar3DCal",
    "ArName",
    "RawExposure",
    "apz_filename",
    "exposure_number",
    "make_headers",
    "parse_apz_name",
    "parse_ar_name",
    "read_apz",
    "read_ar1d",
    "read_ar2d",
    "read_ar3dcal",
    "read_metadata",
    "write_apz",
]
