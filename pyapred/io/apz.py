"""Raw APOGEE exposures: ``apR-[abc]-EXPNUM.apz`` (APO) and ``asR-[abc]-EXPNUM.apz`` (LCO).

An ``.apz`` file is an fpack-compressed FITS file written by ``apzip`` (layout from
``../shared/docs/formats.md`` section 1.2; 0-based HDU indices as astropy counts them):

====  ===========================================  ======================  =====================
HDU   data                                          dtype                   header
====  ===========================================  ======================  =====================
0     none                                          --                      minimal
1     average read difference ``avg``               int32                   the exposure header
2     read 1                                        uint16 (int16+32768)    header of read 1
k+1   ``(read_k - read_{k-1}) - avg``, k = 2..N     int32                   header of read k
====  ===========================================  ======================  =====================

Every image is ``(2048, 2560)`` in NumPy order ``(ny, nx)``: columns 0-2047 are the H2RG
array, columns 2048-2559 the reference output. Each HDU is Rice tile-compressed, one tile per
row. The number of reads is the number of HDUs minus 2.
"""

from __future__ import annotations

import contextlib
import io
import math
import numbers
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from astropy.io import fits
from astropy.time import Time, TimeDelta
from numpy.typing import DTypeLike

from ..errors import InputError, InputWarning, ReadRangeError
from ._kernels import accumulate_read
from ._rice import (
    ERROR_TEXT,
    accumulate_rice_read,
    compression_parameters,
    decode_rice_tiles,
    read_rice_tiles,
)
from .atomic import atomic_path
from .paths import physical_memory

__all__ = [
    "ApzName",
    "RawExposure",
    "apz_filename",
    "exposure_number",
    "make_headers",
    "parse_apz_name",
    "read_apz",
    "read_times_from_header",
    "write_apz",
]

#: FITS files are whole 2880-byte blocks; anything else was cut short.
FITS_BLOCK = 2880
#: Columns 0..SCIENCE_COLUMNS-1 are the H2RG array; the rest is the reference output.
SCIENCE_COLUMNS = 2048
#: Rows of the H2RG array: no image has more (a transposed one has 2560).
DETECTOR_ROWS = 2048
#: Day zero of APOGEE exposure numbers (SJD).
EXPNUM_MJD_ZERO = 55562
#: SJD = floor(MJD + offset): the SDSS day changes at local noon-ish, per site.
SJD_OFFSET = {"apo": 0.3, "lco": 0.4}
_PREFIX = {"apo": "apR", "lco": "asR"}
_TELESCOPE = {prefix: telescope for telescope, prefix in _PREFIX.items()}
#: Raw chip letters and ApogeeReduction.jl's colour names.
CHIP_COLOR = {"a": "R", "b": "G", "c": "B"}
_NAME = re.compile(r"^(apR|asR)-([abc])-(\d{8})\.apz$")
#: Decode the Rice-compressed images with pyapred's parallel kernel (``_rice.py``) where their
#: layout is the one fpack writes for ``.apz`` files; ``False`` sends every HDU through astropy
#: (the tests compare the two).
FAST_RICE = True
_TIME_SCALE = {"UTC": "utc", "UT": "utc", "TAI": "tai", "TT": "tt"}
# Cards that describe the FITS structure, not the exposure; astropy writes them itself.
_STRUCTURAL = re.compile(
    r"^(SIMPLE|XTENSION|BITPIX|NAXIS\d*|EXTEND|PCOUNT|GCOUNT|BZERO|BSCALE|EXTNAME|CHECKSUM|"
    r"DATASUM|Z[A-Z0-9]+)$"
)
# The cards of a compressed image's binary table that describe the table (astropy's list:
# ``astropy.io.fits.column.KEYWORD_NAMES``, TFIELDS and THEAP); the image's own structure is in
# its Z cards.
_TABLE = re.compile(
    r"^(T(TYPE|FORM|UNIT|NULL|SCAL|ZERO|DISP|BCOL|DIM|CTYP|CUNI|CRPX|CRVL|CDLT|RPOS)[1-9][0-9]*"
    r"|TFIELDS|THEAP)$"
)
# Largest magnitude each output dtype holds exactly.
_EXACT_BOUNDS = {
    np.dtype(np.uint16): (0, 65535),
    np.dtype(np.int32): (-(2**31), 2**31 - 1),
    np.dtype(np.int64): (-(2**63), 2**63 - 1),
    np.dtype(np.float32): (-(2**24), 2**24),
    np.dtype(np.float64): (-(2**53), 2**53),
}


# --------------------------------------------------------------------------------------------
# File names
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ApzName:
    """What a raw file name says.

    Attributes
    ----------
    telescope : str
        ``"apo"`` (``apR-``) or ``"lco"`` (``asR-``).
    chip : str
        ``"a"``, ``"b"`` or ``"c"`` (ApogeeReduction.jl's ``"R"``, ``"G"``, ``"B"``).
    expnum : int
        The 8-digit exposure number, ``(sjd - 55562) * 10000 + exposure``.
    """

    telescope: str
    chip: str
    expnum: int

    @classmethod
    def from_night(cls, telescope: str, chip: str, mjd: int, exposure: int) -> ApzName:
        """The name of exposure ``exposure`` of the night of SDSS MJD ``mjd``."""
        return cls(telescope, chip, (mjd - EXPNUM_MJD_ZERO) * 10000 + exposure)

    @property
    def filename(self) -> str:
        """``apR-{chip}-{expnum:08d}.apz`` (APO) or ``asR-...`` (LCO)."""
        return apz_filename(self.telescope, self.chip, self.expnum)

    @property
    def mjd(self) -> int:
        """The SDSS MJD (SJD) of the night, ``floor(MJD + 0.3)`` at APO, ``+ 0.4`` at LCO."""
        return self.expnum // 10000 + EXPNUM_MJD_ZERO

    @property
    def exposure(self) -> int:
        """The exposure's number within the night (the last 4 digits)."""
        return self.expnum % 10000

    @property
    def chip_color(self) -> str:
        """ApogeeReduction.jl's chip name: ``"R"``, ``"G"`` or ``"B"``."""
        return CHIP_COLOR[self.chip]


def parse_apz_name(path: str | os.PathLike) -> ApzName:
    """Parse ``apR-a-52190065.apz`` into telescope, chip and exposure number.

    Raises
    ------
    InputError
        If the file name does not follow ``(apR|asR)-[abc]-NNNNNNNN.apz``.
    """
    match = _NAME.match(Path(path).name)
    if match is None:
        raise InputError(path, "file name", "apR-[abc]-NNNNNNNN.apz or asR-[abc]-NNNNNNNN.apz")
    prefix, chip, expnum = match.groups()
    return ApzName(_TELESCOPE[prefix], chip, int(expnum))


def exposure_number(mjd: float, exposure: int, telescope: str) -> int:
    """APOGEE's exposure number: ``(floor(mjd + offset) - 55562) * 10000 + exposure``.

    Parameters
    ----------
    mjd : float
        MJD of the observation (UTC); the offset turns it into the site's SDSS MJD.
    exposure : int
        Number within the night, 1..9999.
    telescope : {"apo", "lco"}
        Selects the offset: 0.3 at APO, 0.4 at LCO.
    """
    if telescope not in SJD_OFFSET:
        raise ValueError(f"telescope: expected 'apo' or 'lco', got {telescope!r}")
    if not 0 <= exposure <= 9999:
        raise ValueError(f"exposure: expected 0..9999, got {exposure}")
    return (math.floor(mjd + SJD_OFFSET[telescope]) - EXPNUM_MJD_ZERO) * 10000 + exposure


def apz_filename(telescope: str, chip: str, expnum: int) -> str:
    """The raw file name, e.g. ``apz_filename("apo", "a", 52190065) == "apR-a-52190065.apz"``."""
    if telescope not in _PREFIX:
        raise ValueError(f"telescope: expected 'apo' or 'lco', got {telescope!r}")
    if chip not in CHIP_COLOR:
        raise ValueError(f"chip: expected 'a', 'b' or 'c', got {chip!r}")
    return f"{_PREFIX[telescope]}-{chip}-{expnum:08d}.apz"


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RawExposure:
    """One chip of one exposure, read by read.

    Attributes
    ----------
    path : str
        The file read.
    reads : ndarray, ``(n_reads, ny, nx)``
        Raw counts in DN (ADU), C order; ``ny = 2048`` rows (fibers stack along y), ``nx = 2560``
        columns (dispersion, the fast read axis). Julia sees the same memory as
        ``(nx, ny, n_reads)``, ApogeeReduction.jl's order. Native byte order.
    header : astropy.io.fits.Header
        The exposure header (HDU 1), without the FITS structural cards.
    read_headers : tuple of astropy.io.fits.Header
        One header per read in ``reads``.
    read_times : astropy.time.Time, ``(n_reads,)``
        Start of each read, in the file's ``TIMESYS`` scale (see :func:`read_apz`).
    read_indices : ndarray, int64, ``(n_reads,)``
        0-based position of each read in the file (``0`` is read 1).
    rows : slice
        The rows of the chip held in ``reads`` (``slice(0, 2048)`` for all).
    n_reads_in_file : int
        Number of reads the file holds (its HDU count minus 2).
    name : ApzName
        Telescope, chip, MJD and exposure number from the file name.
    image_shape : tuple of int
        ``(ny, nx)`` of the whole chip in the file, whatever ``rows`` holds.
    """

    path: str
    reads: np.ndarray
    header: fits.Header
    read_headers: tuple[fits.Header, ...]
    read_times: Time
    read_indices: np.ndarray
    rows: slice
    n_reads_in_file: int
    name: ApzName
    image_shape: tuple[int, int]

    @property
    def science(self) -> np.ndarray:
        """View of the H2RG array, columns 0-2047: ``(n_reads, ny, 2048)``."""
        return self.reads[..., :SCIENCE_COLUMNS]

    @property
    def reference(self) -> np.ndarray:
        """View of the reference output, columns 2048-2559: ``(n_reads, ny, 512)``."""
        return self.reads[..., SCIENCE_COLUMNS:]

    @property
    def n_reads(self) -> int:
        return self.reads.shape[0]

    @property
    def telescope(self) -> str:
        return self.name.telescope

    @property
    def chip(self) -> str:
        return self.name.chip

    @property
    def mjd(self) -> int:
        return self.name.mjd

    @property
    def expnum(self) -> int:
        return self.name.expnum


def read_apz(
    path: str | os.PathLike,
    *,
    reads: slice | Sequence[int] | None = None,
    rows: slice | None = None,
    dtype: DTypeLike = np.uint16,
    out: np.ndarray | None = None,
) -> RawExposure:
    """Read a raw ``.apz`` exposure and rebuild its reads exactly.

    Read 1 is HDU 2; read k is read k-1 plus HDU k+1 plus the average difference (HDU 1),
    accumulated in int64, so the reconstruction is exact. The number of reads is taken from
    the HDU count; if the header's ``NREAD`` disagrees, one :class:`~pyapred.errors.InputWarning`
    is issued.

    Read times: if every selected read header carries a ``DATE-OBS`` and they are not all the
    same, each read's own ``DATE-OBS`` is its time (what ApogeeReduction.jl assumes); they must
    increase strictly, with no read missing between them (a date repeated, going back or
    leaving a gap is an InputError). Otherwise (no dates, or copies of one date) read k
    (0-based) starts at ``DATE-OBS + INTDELAY + k * INTOFF`` of the exposure header
    (``INTDELAY`` in s and required here, ``INTOFF`` in ms; :func:`read_times_from_header`).
    The scale is the header's ``TIMESYS`` (``UTC``, ``TAI`` or ``TT``; UTC if absent).

    Parameters
    ----------
    path : str or os.PathLike
        ``apR-[abc]-NNNNNNNN.apz`` or ``asR-[abc]-NNNNNNNN.apz``.
    reads : slice or sequence of int, optional
        0-based reads to return (``0`` is read 1); default all. HDUs after the last requested
        read are not decompressed.
    rows : slice, optional
        Rows (y) to return, with step 1; default all. Only those tiles (one per row) are
        decompressed.
    dtype : numpy dtype, optional
        Type of ``RawExposure.reads``: ``uint16`` (default, the raw type), ``int32``,
        ``int64``, ``float32`` or ``float64``. A value that this type cannot hold exactly is
        an error (:class:`~pyapred.errors.ReadRangeError`), never a silent wrap.
    out : ndarray, optional
        The array to rebuild the reads into, C-contiguous and writeable, of their shape
        ``(n_selected_reads, n_rows, nx)`` and ``dtype``: an earlier chip's cube that is no
        longer needed, so that no new one is allocated. ``RawExposure.reads`` is then ``out``;
        on an error its contents are undefined.

    Returns
    -------
    RawExposure

    Raises
    ------
    InputError
        Bad name, truncated or corrupt file, missing HDU, wrong shape or dtype, values out of
        range, or unusable time keywords. The message names the file and the HDU or keyword.
    ValueError, TypeError
        A ``dtype``, ``rows`` or ``out`` argument that cannot be used (before any read is
        decompressed).
    """
    path = Path(path)
    dtype = np.dtype(dtype)
    if dtype not in _EXACT_BOUNDS:
        raise ValueError(f"dtype: expected one of {sorted(map(str, _EXACT_BOUNDS))}, got {dtype}")
    if rows is None:
        rows = slice(None)
    if not isinstance(rows, slice) or rows.step not in (None, 1):
        raise ValueError(f"rows: expected a slice with step 1, got {rows!r}")
    name = parse_apz_name(path)
    with _open_fits(path) as hdus:
        n_in_file = len(hdus) - 2
        if n_in_file < 1:
            raise InputError(
                path,
                "HDU count",
                "at least 3 HDUs (primary, average, read 1)",
                found=str(len(hdus)),
            )
        header = _user_header(path, hdus, 1)
        _check_nread(path, header, n_in_file)
        _check_chip(path, header, name)
        indices = _select_reads(reads, n_in_file)
        shape = _image_shapes(path, hdus, int(indices.max()) + 1)
        rows = slice(*rows.indices(shape[0]))
        read_headers = tuple(_user_header(path, hdus, k + 2) for k in indices)
        if out is not None:
            _check_out(out, (indices.size, len(range(shape[0])[rows]), shape[1]), dtype)
        cube = _rebuild(path, hdus, indices, rows, dtype, out)
    return RawExposure(
        path=str(path),
        reads=cube,
        header=header,
        read_headers=read_headers,
        read_times=_era_times(path, header, read_headers, indices),
        read_indices=indices,
        rows=rows,
        n_reads_in_file=n_in_file,
        name=name,
        image_shape=shape,
    )


class _ApzHDUs:
    """The HDUs of an open ``.apz``, read by astropy with image compression off.

    Off, a compressed image is the binary table that stores it, and astropy does not rebuild
    its image header (1.5 ms per HDU: 70 ms each time a 47-read file is opened, twice per chip).
    Its cards are the table's, less the table's own (:meth:`cards`); its shape is in its Z
    cards; pyapred's kernel decodes its tiles (``read_rice_tiles`` locates them in ``hdul``).
    Only an image the kernel does not decode opens the file again with compression on, for
    astropy to decode (:meth:`image`).
    """

    def __init__(self, path: Path, hdul: fits.HDUList) -> None:
        self.path = path
        self.hdul = hdul
        self._decoding: fits.HDUList | None = None

    def __len__(self) -> int:
        return len(self.hdul)

    def close(self) -> None:
        self.hdul.close()
        if self._decoding is not None:
            self._decoding.close()

    def compressed(self, index: int) -> bool:
        """Whether HDU ``index`` is a tile-compressed image (a binary table with ``ZIMAGE = T``)."""
        hdu = self.hdul[index]
        return isinstance(hdu, fits.BinTableHDU) and hdu.header.get("ZIMAGE") is True

    def cards(self, index: int) -> list[fits.Card]:
        """HDU ``index``'s header cards; a compressed image's without its table's cards (then
        those that are not structural, :func:`_without_structure`, are astropy's image header's
        too)."""
        cards = self.hdul[index].header.cards
        if not self.compressed(index):
            return list(cards)
        return [card for card in cards if not _TABLE.match(card.keyword)]

    def kind(self, index: int) -> tuple[str, tuple | None]:
        """``(type name, shape)`` of HDU ``index`` (astropy's names; shape None if not an image,
        and a compressed image's ``ZNAXISn`` values unchecked)."""
        hdu = self.hdul[index]
        if not self.compressed(index):
            shape = getattr(hdu, "shape", None) if isinstance(hdu, _IMAGE_HDUS) else None
            return type(hdu).__name__, shape
        header = hdu.header
        n_axes = header.get("ZNAXIS")
        if not _count(n_axes) or n_axes > 999:  # FITS numbers axes with at most 3 digits
            return "CompImageHDU", None
        # The cards' values as they are: the caller checks them (and names a bad one).
        return "CompImageHDU", tuple(header.get(f"ZNAXIS{i}") for i in range(n_axes, 0, -1))

    def image(self, index: int):
        """HDU ``index`` as astropy decodes it: a compressed image from the file opened again
        with compression on (once)."""
        if not self.compressed(index):
            return self.hdul[index]
        if self._decoding is None:
            self._decoding = _open(self.path, disable_image_compression=False)
        hdu = self._decoding[index]
        if not isinstance(hdu, _IMAGE_HDUS):
            found = f"{type(hdu).__name__} for astropy"
            raise InputError(self.path, f"HDU {index}", "a compressed image", found=found)
        return hdu


def _count(value) -> bool:
    """Whether a card's value is a count: an int >= 0, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@contextlib.contextmanager
def _open_fits(path: Path) -> Iterator[_ApzHDUs]:
    """The HDUs of ``path`` (:class:`_ApzHDUs`); truncation and astropy's errors are InputErrors."""
    hdus = _ApzHDUs(path, _open(path, disable_image_compression=True))
    try:
        yield hdus
    except fits.VerifyError:  # a structural card (ZNAXIS, BZERO, ...) astropy reads lazily
        raise _unparsable_card(path, hdus.hdul) from None
    finally:
        hdus.close()


def _unparsable_card(path: Path, hdul: fits.HDUList) -> InputError:
    """The InputError naming the first card of ``hdul`` whose value FITS cannot parse (the
    cards pyapred reads are checked before, :func:`_user_header`; this names the others)."""
    for index, hdu in enumerate(hdul):
        for card in hdu.header.cards:
            try:
                card.value  # noqa: B018 (parses the value)
            except fits.VerifyError:
                found = "a value FITS cannot parse"
                return InputError(
                    path, f"HDU {index} {card.keyword}", "a readable card value", found
                )
    return InputError(path, "FITS structure", "readable card values", "a card FITS cannot parse")


def _open(path: Path, *, disable_image_compression: bool) -> fits.HDUList:
    """``fits.open`` with every header read, truncation and astropy's errors as InputErrors."""
    size = path.stat().st_size
    if size % FITS_BLOCK:
        expected = f"whole {FITS_BLOCK}-byte FITS blocks"
        raise InputError(path, "file size", expected, found=f"{size} bytes: a truncated file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            hdul = fits.open(
                path, memmap=False, disable_image_compression=disable_image_compression
            )
            len(hdul)  # reads every header, which is where damage shows
        except Exception as exc:  # astropy raises OSError, ValueError, TypeError, ...
            found = f"{type(exc).__name__}: {exc}"
            raise InputError(path, "FITS structure", "a readable FITS file", found=found) from None
    for warning in caught:
        message = str(warning.message)
        if "truncated" in message or "Error validating header" in message:
            hdul.close()
            found = message.splitlines()[0]
            raise InputError(path, "FITS structure", "complete, valid HDUs", found=found)
    # Passed on, three at most and printable: a damaged heap read as cards made astropy warn
    # some sixty times, its text the heap's bytes (NULs and terminal control codes).
    for number, warning in enumerate(caught[:3], start=1):
        text = "".join(c if c.isprintable() else "?" for c in str(warning.message))[:300]
        more = f" (and {len(caught) - 3} more)" if number == 3 and len(caught) > 3 else ""
        warnings.warn(f"{path}: {text}{more}", warning.category, stacklevel=5)
    return hdul


#: The header cards pyapred reads (here, in ``exposure.load_chip`` and in the products'
#: timing); their values are parsed when the file is opened.
READ_CARDS = ("NREAD", "NFRAMES", "CHIP", "DATE-OBS", "TIMESYS", "INTOFF", "INTDELAY", "GAIN",
              "RDNOISE", "SATURATE", "CONFIGID", "EXPTYPE")  # fmt: skip


def _user_header(path: Path, hdus: _ApzHDUs, index: int) -> fits.Header:
    """Copy of HDU ``index``'s header without the cards that describe the FITS structure.

    The values of the cards pyapred reads (:data:`READ_CARDS`) are parsed here: astropy parses
    lazily, and raises ``VerifyError`` at the first read of a value such as ``NREAD = NAN`` or
    ``INTOFF = 1.2.3``; so a damaged card is an InputError naming it before any pixel is
    decoded. Other cards are left as they are (cfitsio's readers accept what astropy cannot
    parse there, and pyapred never reads them).
    """
    header = _without_structure(hdus.cards(index))
    for keyword in READ_CARDS:
        if keyword not in header:
            continue
        try:
            values = [card.value for card in header.cards if card.keyword == keyword]
        except fits.VerifyError:
            found = "a value FITS cannot parse"
            raise InputError(
                path, f"HDU {index} {keyword}", "a readable card value", found
            ) from None
        if any(value != values[0] for value in values[1:]):  # the first won, silently
            found = f"{len(values)} cards: {', '.join(map(repr, values))}"
            raise InputError(path, f"HDU {index} {keyword}", "one value", found)
    return header


def _without_structure(cards: Sequence[fits.Card]) -> fits.Header:
    """A header of ``cards`` without those that describe the FITS structure."""
    return fits.Header([card for card in cards if not _STRUCTURAL.match(card.keyword)])


def _check_nread(path: Path, header: fits.Header, n_in_file: int) -> None:
    nread = header.get("NREAD")
    if nread is not None and nread != n_in_file:
        warnings.warn(
            f"{path}: NREAD = {nread} but the file holds {n_in_file} reads; using {n_in_file}",
            InputWarning,
            stacklevel=3,
        )


def _check_chip(path: Path, header: fits.Header, name: ApzName) -> None:
    chip = header.get("CHIP")
    if chip is not None and str(chip).strip() != name.chip:
        raise InputError(path, "HDU 1 CHIP", f"{name.chip!r} as in the file name", found=repr(chip))


def _select_reads(reads, n_in_file: int) -> np.ndarray:
    if reads is None:
        reads = slice(None)
    if isinstance(reads, slice):
        indices = np.arange(n_in_file)[reads]
    else:
        indices = np.asarray(reads, dtype=np.int64).reshape(-1)
        if np.any(indices < 0) or np.any(indices >= n_in_file):
            raise ValueError(f"reads: expected indices in [0, {n_in_file}), got {reads!r}")
    # A slice too (a negative step read the reads backwards, and blamed the file's DATE-OBS).
    if np.any(np.diff(indices) <= 0):
        raise ValueError(f"reads: expected strictly increasing indices, got {reads!r}")
    if indices.size == 0:
        raise ValueError(f"reads: selects no read of {n_in_file}")
    return indices.astype(np.int64)


_IMAGE_HDUS = (fits.CompImageHDU, fits.ImageHDU, fits.PrimaryHDU)


def _image_shape(path: Path, hdus: _ApzHDUs, index: int, kind: str) -> tuple[int, int]:
    """The shape of HDU ``index``, checked to be a 2-D image."""
    try:
        name, shape = hdus.kind(index)
    except (IndexError, KeyError):
        raise InputError(path, f"HDU {index}", f"the {kind} image", found="no such HDU") from None
    # A side of 0 read as an empty image, and the trace file was blamed for it.
    if shape is None or len(shape) != 2 or not all(_count(n) and n >= 1 for n in shape):
        found = f"{name} of shape {shape}"
        if name == "_ValidHDU":  # astropy's class for bytes it cannot identify as an HDU
            found = (f"bytes astropy cannot identify as an HDU (HDU {index - 1}'s size cards, "
                     "PCOUNT or NAXIS2, may not match its data)")  # fmt: skip
        raise InputError(path, f"HDU {index}", f"a 2-D image ({kind}) of 1 or more rows and "
                         "columns", found=found)  # fmt: skip
    return tuple(shape)


def _image_shapes(path: Path, hdus: _ApzHDUs, n_reads: int) -> tuple[int, int]:
    """``(ny, nx)`` of HDU 1, checked against the HDUs of reads ``1 .. n_reads`` from their
    headers alone (no pixel decoded): images that disagree are refused before any work."""
    shape = _image_shape(path, hdus, 1, "average difference")
    shapes = [_image_shape(path, hdus, k + 2, f"read {k + 1}") for k in range(n_reads)]
    if len(set(shapes)) == 1 and shapes[0] != shape and n_reads > 1:
        # Every read agrees and HDU 1 does not: HDU 1 is the odd one (HDU 2 was blamed).
        raise InputError(path, "HDU 1", f"shape {shapes[0]} like the reads' HDUs",
                         found=str(shape))  # fmt: skip
    for k, other in enumerate(shapes):
        if other != shape:
            raise InputError(path, f"HDU {k + 2}", f"shape {shape} like HDU 1", found=str(other))
    if shape[0] > DETECTOR_ROWS:  # a transposed (2560, 2048) image was fitted, on its side
        raise InputError(path, "HDU 1", f"at most {DETECTOR_ROWS} rows (APOGEE's images are "
                         f"({DETECTOR_ROWS}, 2560): ZNAXIS2 rows, ZNAXIS1 columns)",
                         f"shape {shape}: a transposed image?")  # fmt: skip
    # The sizes are the file's word: a 219 kB file declaring 2e9 columns asked for 522 GiB, a
    # MemoryError traceback once the first chip was loading.
    size, memory = 4.0 * n_reads * shape[0] * shape[1], physical_memory()
    if size > memory:
        raise InputError(path, "HDU 1", f"images whose {n_reads} reads fit in memory as float32 "
                         f"({memory / 2**30:.0f} GiB)", f"shape {shape} (ZNAXIS2, ZNAXIS1): "
                         f"{size / 2**30:.3g} GiB")  # fmt: skip
    return shape


def _image(
    path: Path,
    hdus: _ApzHDUs,
    index: int,
    rows: slice,
    kind: str,
    raw: BinaryIO | None = None,
) -> np.ndarray:
    """Decompress rows of HDU ``index``.

    With ``raw`` (the file opened for binary reading), a RICE_1 image in row tiles is decoded
    by pyapred's kernel; otherwise astropy decodes it through ``.section``, so nothing is cached.
    """
    shape = _image_shape(path, hdus, index, kind)
    tiles = None if raw is None else read_rice_tiles(raw, hdus.hdul, index, rows)
    if tiles is not None and tiles.shape == shape:
        data, bad_row, code = decode_rice_tiles(
            tiles.heap, tiles.nelem, tiles.offset, tiles.blocksize, tiles.shape[1],
            bytepix=tiles.bytepix, zero=tiles.zero,
        )  # fmt: skip
        _check_decoded(path, index, kind, rows, bad_row, code)
        return data
    try:
        data = hdus.image(index).section[rows]
    except InputError:
        raise
    except Exception as exc:
        raise InputError(
            path,
            f"HDU {index}",
            f"decompressible {kind} data",
            found=f"{type(exc).__name__}: {exc}",
        ) from None
    if data.dtype.kind not in "iu":
        raise InputError(path, f"HDU {index}", f"integer {kind} data", found=str(data.dtype))
    _check_tile_width(path, hdus, index, kind, data.dtype)
    return data


def _check_tile_width(path: Path, hdus: _ApzHDUs, index: int, kind: str, dtype: np.dtype) -> None:
    """A compressed image's pixels fit the type its ``ZBITPIX`` names: astropy decodes tiles of
    ``BYTEPIX`` bytes (4 where the card is absent, as cfitsio) and casts them to that type, so
    ``ZBITPIX = 8`` over apzip's 32-bit residuals wrapped every value, silently."""
    if not hdus.compressed(index):
        return
    header = hdus.hdul[index].header
    bytepix = compression_parameters(header).get("BYTEPIX", 4)
    if isinstance(bytepix, int) and not isinstance(bytepix, bool) and bytepix > dtype.itemsize:
        expected = f"{kind} in a type that holds its {bytepix}-byte pixels (BYTEPIX)"
        found = f"ZBITPIX {header.get('ZBITPIX')!r} ({dtype})"
        raise InputError(path, f"HDU {index}", expected, found=found)


def _check_out(out, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse an ``out`` array that the reads cannot be rebuilt into as they are."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out: expected a NumPy array or None, got {type(out).__name__}")
    usable = out.flags.c_contiguous and out.flags.writeable
    if out.shape != shape or out.dtype != dtype or not usable:
        found = f"{out.shape} {out.dtype}" + ("" if usable else ", not C-contiguous and writeable")
        raise ValueError(
            f"out: expected a C-contiguous writeable {shape} {dtype} array, got {found}"
        )


def _rebuild(
    path: Path,
    hdus: _ApzHDUs,
    indices: np.ndarray,
    rows: slice,
    dtype: np.dtype,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Rebuild the selected reads: read_k = read_{k-1} + residual_k + avg, in int64, into
    ``out`` (checked by the caller) or a new array.

    Only HDUs up to the last selected read are decompressed, and only the rows asked for.
    """
    with open(path, "rb") if FAST_RICE else contextlib.nullcontext() as raw:
        avg = _image(path, hdus, 1, rows, "average read difference", raw).astype(np.int64)
        shape = _image_shape(path, hdus, 1, "average read difference")
        first = _image(path, hdus, 2, rows, "read 1", raw)
        if first.dtype != np.uint16:
            raise InputError(
                path, "HDU 2", "read 1 as uint16 (BITPIX 16, BZERO 32768)", found=str(first.dtype)
            )
        if first.shape != avg.shape:
            raise InputError(path, "HDU 2", f"shape {avg.shape} like HDU 1", found=str(first.shape))
        cube = np.empty((indices.size, *avg.shape), dtype=dtype) if out is None else out
        lo, hi = _EXACT_BOUNDS[dtype]
        current = first.astype(np.int64)
        position = 0  # the next of ``indices`` to fill
        if indices[0] == 0:
            cube[0] = first  # uint16 fits every allowed dtype
            position = 1
        for k in range(1, int(indices[-1]) + 1):
            # Reads not asked for are written into the next slot asked for, then overwritten.
            low, high = _next_read(path, hdus, raw, k, rows, shape, current, avg, cube[position])
            if k == indices[position]:
                if current.size and (low < lo or high > hi):
                    expected = f"read {k + 1} in [{lo}, {hi}] ({dtype})"
                    found = f"values in [{low}, {high}]"
                    raise ReadRangeError(path, f"HDU {k + 2}", expected, found=found)
                position += 1
    return cube


def _next_read(
    path: Path,
    hdus: _ApzHDUs,
    raw: BinaryIO | None,
    k: int,
    rows: slice,
    shape: tuple[int, int],
    current: np.ndarray,
    avg: np.ndarray,
    out: np.ndarray,
) -> tuple[int, int]:
    """Decompress the residual of read k+1 (HDU k+2), add it and ``avg`` to ``current``.

    Parameters
    ----------
    raw : binary file or None
        The file, for pyapred's fused decode-and-accumulate kernel; None: astropy decodes.
    shape : tuple of int
        ``(ny, nx)`` of the whole chip (HDU 1).
    current, avg : ndarray, int64, ``(n_rows, nx)``
        The previous read, updated in place, and the average read difference.
    out : ndarray, ``(n_rows, nx)``
        Receives the read in its dtype.

    Returns
    -------
    low, high : int
        The read's minimum and maximum.
    """
    index, kind = k + 2, f"residual of read {k + 1}"
    tiles = None if raw is None else read_rice_tiles(raw, hdus.hdul, index, rows)
    if tiles is not None and tiles.shape == shape:
        low, high, bad_row, code = accumulate_rice_read(
            tiles.heap, tiles.nelem, tiles.offset, tiles.blocksize, current, avg, out,
            bytepix=tiles.bytepix, zero=tiles.zero,
        )  # fmt: skip
        _check_decoded(path, index, kind, rows, bad_row, code)
        return low, high
    residual = _image(path, hdus, index, rows, kind)
    if residual.shape != avg.shape:
        raise InputError(
            path, f"HDU {index}", f"shape {avg.shape} like HDU 1", found=str(residual.shape)
        )
    residual = residual.astype(residual.dtype.newbyteorder("="), copy=False)
    return accumulate_read(current, residual, avg, out)


def _check_decoded(path: Path, index: int, kind: str, rows: slice, bad_row: int, code: int):
    """Raise the InputError astropy's path raises for HDU ``index`` if a tile failed."""
    if bad_row >= 0:
        found = f"RICE_1 tile of row {rows.start + bad_row}: {ERROR_TEXT[code]}"
        raise InputError(path, f"HDU {index}", f"decompressible {kind} data", found=found)


def _time_scale(path: str | os.PathLike, field: str, timesys: object) -> str:
    """The astropy scale of a ``TIMESYS`` value (``UTC``, ``UT``, ``TAI`` or ``TT``), checked."""
    scale = _TIME_SCALE.get(str(timesys).strip().upper())
    if scale is None:
        expected = f"one of {sorted(_TIME_SCALE)}"
        raise InputError(path, field, expected, found=repr(timesys))
    return scale


def _parse_times(path: Path, fields: Sequence[str], values: Sequence, scale: str) -> Time:
    """Parse ISO dates in one call; on failure, name the first field that does not parse.

    The two ISO formats are named, in astropy's own order of guessing: its guess keeps each
    failed format's exception, whose traceback holds every calling frame (the reads being
    rebuilt among them) in a reference cycle, alive until Python's next full collection.
    """
    texts = [str(v).strip() for v in values]
    for time_format in ("iso", "isot"):
        try:
            return Time(texts, format=time_format, scale=scale)
        except ValueError:
            pass
    try:
        return Time(texts, scale=scale)
    except ValueError:
        for field, value in zip(fields, values, strict=True):
            try:
                Time(str(value).strip(), scale=scale)
            except ValueError:
                expected = "an ISO 8601 date and time"
                raise InputError(path, field, expected, found=repr(value)) from None
        raise


#: Header values at or below this are SDSS's "no value" (it writes -999 and -99999.9).
_NO_VALUE = -900.0


def _card_number(value: object) -> float | None:
    """A header card as a finite float; None if absent, not a number, or SDSS's -999."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) and number > _NO_VALUE else None


#: Largest plausible read period (``INTOFF``, ms) and first-read delay (``INTDELAY``, s): beyond
#: them a header is corrupt (APOGEE reads every 10.647 s).
MAX_INTOFF_MS = 1e6
#: The most reads an exposure header may count (NREAD): a day of APOGEE's 10.6 s reads is 8,000; a
#: corrupt card of 1e9 would ask for gigabytes of read times.
MAX_NREAD = 10_000


def read_times_from_header(
    header: Mapping,
    reads: int | Sequence[int] | np.ndarray | None = None,
    *,
    timesys: str | None = None,
    default_intdelay: float | None = 0.0,
    path: str | os.PathLike = "<header>",
    hdu: str | None = None,
) -> Time:
    """Start time of each read of an APOGEE exposure, from the exposure header.

    Read ``k`` (0-based, ``k = 0`` is read 1) starts at ``DATE-OBS + INTDELAY + k * INTOFF``:
    ``DATE-OBS`` is the start of the integration, ``INTDELAY`` the delay before the first read
    in s, ``INTOFF`` the read period in ms (10647 for APOGEE). The times are in the time scale
    that ``TIMESYS`` names (UTC when the card is absent, as in the documented APOGEE headers);
    convert with ``.tai`` or ``.utc``. A trailing ``Z`` on ``DATE-OBS`` is ignored: ``TIMESYS``
    decides the scale. :func:`read_apz` uses this rule when the reads carry no dates of their
    own; :mod:`pyapred.guider` uses it for exposures given by their header.

    Parameters
    ----------
    header : Mapping
        FITS header or dict with ``DATE-OBS``, ``INTOFF``, optionally ``TIMESYS``,
        ``INTDELAY``, and ``NREAD`` (or ``NFRAMES``) when ``reads`` is not given. Numbers may
        be numeric strings; SDSS's "no value" (-999) counts as absent.
    reads : int or sequence of int, optional
        An int ``n``: the first ``n`` reads; a sequence: these 0-based reads. Default: the
        header's ``NREAD`` (or ``NFRAMES``) reads.
    timesys : {"UTC", "UT", "TAI", "TT"}, optional
        Overrides the header's ``TIMESYS`` (e.g. to test the hypothesis that ``DATE-OBS`` is
        TAI).
    default_intdelay : float or None, optional
        ``INTDELAY`` in s when the card is absent or holds no number (default 0); ``None``
        makes the card required.
    path : str or os.PathLike, optional
        File named in error messages.
    hdu : str, optional
        HDU named in error messages: ``hdu="HDU 1"`` reports field ``"HDU 1 INTOFF"``.

    Returns
    -------
    astropy.time.Time, ``(n_reads,)``
        Read start times, in the scale ``TIMESYS`` (or ``timesys``) names.

    Raises
    ------
    pyapred.errors.InputError
        Unknown ``TIMESYS``; ``DATE-OBS`` missing or not ISO 8601; ``INTOFF`` missing, not a
        number or not > 0; ``INTDELAY`` not a number when required; no ``NREAD``/``NFRAMES``
        when ``reads`` is not given.
    ValueError
        ``timesys`` is not a known time scale.
    """

    def field(card: str) -> str:
        return f"{hdu} {card}" if hdu else card

    if timesys is not None:
        scale = _TIME_SCALE.get(str(timesys).strip().upper())
        if scale is None:
            raise ValueError(f"timesys: expected one of {sorted(_TIME_SCALE)}, got {timesys!r}")
    else:
        scale = _time_scale(path, field("TIMESYS"), header.get("TIMESYS", "UTC"))
    value = header.get("DATE-OBS")
    if value is None:
        raise InputError(path, field("DATE-OBS"), "the start of the integration", found="nothing")
    try:
        start = Time(str(value).strip().rstrip("Zz").strip(), scale=scale)
    except ValueError:
        expected = "an ISO 8601 date and time"
        raise InputError(path, field("DATE-OBS"), expected, found=repr(value)) from None
    value = header.get("INTDELAY")
    delay = _card_number(value)
    if delay is None:
        if default_intdelay is None:
            found = "nothing" if value is None else repr(value)
            raise InputError(path, field("INTDELAY"), "a number (s)", found=found)
        delay = float(default_intdelay)
    value = header.get("INTOFF")
    period = _card_number(value)
    if period is None or not 0 < period <= MAX_INTOFF_MS:
        found = "nothing" if value is None else repr(value)
        expected = f"the read period, ms > 0 and <= {MAX_INTOFF_MS:g} (10647 for APOGEE)"
        raise InputError(path, field("INTOFF"), expected, found=found)
    if abs(delay) > MAX_INTOFF_MS:
        raise InputError(path, field("INTDELAY"), "a delay of at most 1e6 s", repr(delay))
    if reads is None:
        value = header.get("NREAD", header.get("NFRAMES"))
        count = _card_number(value)
        if count is None or not (1 <= count <= MAX_NREAD and count == int(count)):
            found = "nothing" if value is None else repr(value)
            expected = f"the number of reads (NREAD or NFRAMES), a whole number 1 to {MAX_NREAD}"
            raise InputError(path, field("NREAD"), expected, found=found)
        reads = int(count)
    if isinstance(reads, (int, np.integer)):
        indices = np.arange(max(int(reads), 0))
    else:
        indices = np.asarray(reads, dtype=np.int64)
    return start + TimeDelta(delay + indices * (period / 1000.0), format="sec")


def _era_times(
    path: Path, header: fits.Header, read_headers: Sequence[fits.Header], indices: np.ndarray
) -> Time:
    """:func:`_read_times`, in SDSS's era (MJD 55562, the exposure numbers' zero, to 99999): a
    ``DATE-OBS`` in year 9999 went into the product as its read times, with ERFA's "dubious
    year" warnings on stderr. (The night itself is not compared with the file name's: a file
    renamed, or identified with ``--mjd``, may carry another night's name.)"""
    from erfa import ErfaWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ErfaWarning)  # a far year: refused below, by name
        times = _read_times(path, header, read_headers, indices)
        first = float(times[0].mjd)
    if not EXPNUM_MJD_ZERO <= first <= 99999:
        expected = f"a date of SDSS's era (MJD {EXPNUM_MJD_ZERO} to 99999)"
        raise InputError(path, "DATE-OBS", expected, found=f"MJD {first:.5f}")
    return times


def _read_times(
    path: Path, header: fits.Header, read_headers: Sequence[fits.Header], indices: np.ndarray
) -> Time:
    """The reads' own ``DATE-OBS``, checked to rise with no read missing; else the exposure
    header's (:func:`read_apz`).

    Read headers whose ``DATE-OBS`` are all the same merely copy the exposure header's: they
    date no read, and ``INTDELAY`` and ``INTOFF`` give the times. Any other dates are the reads'
    own, and one repeated (a read HDU given twice) or going back (reads out of order) is an
    error: taking repeated dates as no dates at all gave a 10-read exposure 11 read times, read 4
    counted twice, with only the ``NREAD`` warning to show for it.
    """
    timesys = header.get("TIMESYS", read_headers[0].get("TIMESYS", "UTC"))
    scale = _time_scale(path, "HDU 1 TIMESYS", timesys)
    per_read = [h.get("DATE-OBS") for h in read_headers]
    missing = [int(k) + 2 for k, value in zip(indices, per_read, strict=True) if value is None]
    if missing and len(missing) < len(per_read):
        # Some reads dated and some not: a read HDU that the instrument did not write (an
        # extra HDU appended became a made-up read, and the date checks were dropped for all).
        dated = next(int(k) + 2 for k, v in zip(indices, per_read, strict=True) if v is not None)
        raise InputError(path, f"HDU {missing[0]} DATE-OBS", f"a DATE-OBS, as HDU {dated} "
                         "and the other reads have", "none")  # fmt: skip
    copied = len(per_read) > 1 and len(set(per_read)) == 1
    if all(value is not None for value in per_read) and not copied:
        fields = [f"HDU {k + 2} DATE-OBS" for k in indices]
        times = _parse_times(path, fields, per_read, scale)
        # Seconds from each read to the next, once for both checks (astropy's two-part times:
        # a float MJD holds ~1 us).
        steps = np.diff((times - times[0]).sec)
        _check_rising(path, per_read, steps, indices)
        _check_no_missing_read(path, header, steps, indices)
        return times
    return read_times_from_header(
        header, indices, timesys=scale, default_intdelay=None, path=path, hdu="HDU 1"
    )


def _check_rising(path: Path, per_read: Sequence, steps: np.ndarray, indices: np.ndarray) -> None:
    """The reads' own dates rise from read to read (``steps``, s from each to the next); the
    error names the first HDU that does not (a date repeated is a read HDU given twice; one
    going back, reads out of order)."""
    late = np.flatnonzero(~(steps > 0))
    if not late.size:
        return
    k = int(late[0])  # the reads' positions k and k + 1 in the file
    this, before = int(indices[k + 1]) + 2, int(indices[k]) + 2
    expected = "times increasing from read to read"
    if steps[k] == 0:
        found = f"the same as HDU {before} ({per_read[k + 1]!r})"
        raise InputError(path, f"HDU {this} DATE-OBS", expected, found)
    found = f"HDU {this}'s {per_read[k + 1]!r}, earlier than HDU {before}'s {per_read[k]!r}"
    raise InputError(path, "DATE-OBS of the reads", expected, found)


def _check_no_missing_read(path: Path, header, steps: np.ndarray, indices: np.ndarray) -> None:
    """A read HDU missing in the middle shows as a gap in the reads' own dates: every later read
    would be rebuilt from the wrong sum of differences, so it is an error, not a warning.

    The period is ``INTOFF`` when the header has it, else the median spacing of the dates;
    ``steps`` are the seconds from each read to the next.
    """
    if steps.size < 1:
        return
    seconds = steps / np.diff(indices)
    period = _card_number(header.get("INTOFF"))
    period = period / 1000.0 if period is not None and period > 0 else float(np.median(seconds))
    gaps = np.flatnonzero(seconds > 1.5 * period)
    if gaps.size:
        k = int(gaps[0])  # the reads' positions k and k + 1 in the file
        missing = round(seconds[k] / period) - 1
        raise InputError(
            path, f"HDU {int(indices[k + 1]) + 2} DATE-OBS",
            f"reads {period:.3f} s apart (INTOFF); every read of the exposure in the file",
            f"{seconds[k]:.3f} s after HDU {int(indices[k]) + 2}: {missing} read(s) missing after "
            f"read {int(indices[k]) + 1}",
        )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
HeaderLike = fits.Header | Mapping[str, object]


def write_apz(
    path: str | os.PathLike,
    reads: np.ndarray,
    headers: Sequence[HeaderLike],
    *,
    header: HeaderLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Write reads in the ``.apz`` layout, Rice tile-compressed with one tile per row (as fpack).

    The write is atomic: a temporary file in the same directory is renamed to ``path``.
    ``read_apz(write_apz(path, reads, headers)).reads`` equals ``reads`` exactly.

    Parameters
    ----------
    path : str or os.PathLike
        Destination; name it with :func:`apz_filename` for :func:`read_apz` to accept it.
    reads : array_like, ``(n_reads, ny, nx)``
        Integer counts in [0, 65535] (DN), any integer or float dtype holding whole numbers.
    headers : sequence of Header or mapping, length ``n_reads``
        One header per read (read 1 first): ``DATE-OBS``, ``INTOFF``, ... Structural cards
        (``BITPIX``, ``NAXIS*``, ``BZERO``, ...) are ignored.
    header : Header or mapping, optional
        The exposure header for HDU 1; default a copy of ``headers[0]``. ``NREAD`` is set to
        ``n_reads`` unless present.
    overwrite : bool, optional
        Replace an existing file.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    counts = np.asarray(reads)
    if counts.ndim != 3 or min(counts.shape) < 1:  # no pixel: no image to write
        raise ValueError(f"reads: expected shape (n_reads, ny, nx), each at least 1, got "
                         f"{counts.shape}")  # fmt: skip
    if counts.shape[1] > DETECTOR_ROWS:  # read_apz refuses it (a transposed image)
        raise ValueError(f"reads: expected at most {DETECTOR_ROWS} rows (ny), the H2RG's, got "
                         f"{counts.shape}")  # fmt: skip
    if counts.dtype.kind == "f" and not np.array_equal(counts, np.round(counts)):
        raise ValueError("reads: expected whole numbers of DN")
    if counts.dtype.kind not in "iuf" or counts.min() < 0 or counts.max() > 65535:
        raise ValueError("reads: expected counts in [0, 65535]")
    n_reads, _, nx = counts.shape
    if len(headers) != n_reads:
        raise ValueError(f"headers: expected {n_reads} (one per read), got {len(headers)}")
    exposure_header = _header(headers[0] if header is None else header)
    exposure_header.setdefault("NREAD", n_reads)

    first = counts[0].astype(np.int64)
    total = counts[-1].astype(np.int64) - first
    avg = _round_half_away(total, max(n_reads - 1, 1)).astype(np.int32)
    tile = (1, nx)

    def compressed(data, card_header):
        return fits.CompImageHDU(data, card_header, compression_type="RICE_1", tile_shape=tile)

    hdus = [
        fits.PrimaryHDU(),
        compressed(avg, exposure_header),
        compressed(first.astype(np.uint16), _header(headers[0])),
    ]
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)
        # One read's residual at a time, written and released: memory stays at a few planes
        # (the reads themselves aside), not a second int32 cube. Its bytes are appended to the
        # file: astropy's append mode went over the file's HDUs at every read (1000 reads of
        # one pixel took minutes).
        previous = first
        with open(tmp, "ab") as out:
            for k in range(1, n_reads):
                current = counts[k].astype(np.int64)
                residual = (current - previous - avg).astype(np.int32)
                out.write(_extension_bytes(compressed(residual, _header(headers[k]))))
                previous = current
    return path


def _extension_bytes(hdu: fits.hdu.base.ExtensionHDU) -> bytes:
    """An extension HDU as a file holds it (header, data and heap, padded to FITS blocks): written
    after an empty primary HDU, whose bytes are then cut off."""
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buffer)
    primary = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU()]).writeto(primary)
    return buffer.getvalue()[len(primary.getvalue()) :]


def make_headers(
    n_reads: int,
    *,
    date_obs: str,
    chip: str,
    timesys: str = "UTC",
    intoff_ms: float = 10647,
    intdelay_s: float = 0.1,
    extra: Mapping[str, object] | None = None,
) -> tuple[fits.Header, list[fits.Header]]:
    """Exposure and per-read headers with the keywords :func:`read_apz` uses.

    Read k (0-based) gets ``DATE-OBS = date_obs + intdelay_s + k * intoff_ms``, the same rule
    :func:`read_apz` applies when reads carry no dates of their own.

    Parameters
    ----------
    n_reads : int
    date_obs : str
        ISO 8601 start of the integration, in ``timesys``.
    chip : {"a", "b", "c"}
    timesys : {"UTC", "TAI"}, optional
    intoff_ms, intdelay_s : float, optional
        Read period (ms) and delay before the first read (s); APOGEE's 10647 ms and 0.1 s.
    extra : mapping, optional
        More cards for the exposure header (``EXPTYPE``, ``CONFIGID``, ...).

    Returns
    -------
    header : astropy.io.fits.Header
        For HDU 1: ``DATE-OBS``, ``TIMESYS``, ``INTOFF``, ``INTDELAY``, ``NFRAMES``,
        ``EXPTIME``, ``NREAD``, ``CHIP``, then ``extra``.
    read_headers : list of astropy.io.fits.Header
        ``DATE-OBS``, ``TIMESYS``, ``INTOFF``, ``INTDELAY`` of each read.
    """
    scale = _TIME_SCALE.get(timesys.upper())
    if scale is None:
        raise ValueError(f"timesys: expected one of {sorted(_TIME_SCALE)}, got {timesys!r}")
    start = Time(date_obs, scale=scale, precision=3)
    timing = [
        ("TIMESYS", timesys, "Time system of DATE-OBS"),
        ("INTOFF", intoff_ms, "Single read duration in mSec"),
        ("INTDELAY", intdelay_s, "Integration Delay(S)"),
    ]
    header = fits.Header([("DATE-OBS", start.isot, "Date at start of integration"), *timing])
    header["NFRAMES"] = (n_reads, "Num of SUTR")
    header["EXPTIME"] = (round(n_reads * intoff_ms / 1000 + intdelay_s, 3), "Integration time")
    header["NREAD"] = n_reads
    header["CHIP"] = chip
    header.update(dict(extra or {}))
    offsets = intdelay_s + np.arange(n_reads) * intoff_ms / 1000
    read_headers = [
        fits.Header([("DATE-OBS", (start + TimeDelta(dt, format="sec")).isot), *timing])
        for dt in offsets
    ]
    return header, read_headers


def _header(source: HeaderLike) -> fits.Header:
    """A FITS header from a Header or a ``{keyword: value or (value, comment)}`` mapping."""
    header = source if isinstance(source, fits.Header) else fits.Header(list(source.items()))
    return _without_structure(header.cards)


def _round_half_away(numerator: np.ndarray, denominator: int) -> np.ndarray:
    """Integer ``round(numerator / denominator)``, halves away from zero (IDL's ROUND), exact."""
    magnitude = (2 * np.abs(numerator) + denominator) // (2 * denominator)
    return np.sign(numerator) * magnitude
