"""RICE_1 decoding of the one-tile-per-row images of raw ``.apz`` files, in Numba: the 32-bit
images, and read 1's 16-bit one (``uint16`` as ``int16`` + ``BZERO = 32768``).

:func:`read_rice_tiles` checks an HDU's layout and reads the compressed tiles of the rows asked
for straight from the file; :func:`decode_rice_tiles` decodes them, and
:func:`accumulate_rice_read` decodes a residual HDU and rebuilds its read in the same pass.
Rows run in parallel. Astropy decodes the same images one tile at a time under the GIL.

The algorithm is cfitsio's ``fits_rdecomp`` (``ricecomp.c``), which astropy also ships: a tile
starts with its first pixel as 4 big-endian bytes; then each block of ``blocksize`` pixels
starts with a 5-bit code ``FS + 1``. ``FS < 0``: every difference in the block is zero.
``FS == 25``: the block's differences are stored raw, 32 bits each. Otherwise each difference
is Rice coded: a run of zero bits ended by a one (the high part), then ``FS`` low bits. The
differences are zigzag mapped (``d >= 0 -> 2d``, ``d < 0 -> -2d - 1``) and accumulate with
32-bit wrap-around. 16-bit images (``fits_rdecomp_short``) differ only in their sizes: a 2-byte
first pixel, 4-bit codes, ``FS == 14`` for raw 16-bit differences, 16-bit wrap-around.

Numba does no bounds checks, so every byte fetch here is checked against the end of its tile:
a corrupt or truncated heap gives an error code, never an out-of-bounds read.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from astropy.io import fits
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ..jit import njit, prange

#: Bits of the per-block code, and the code for raw (uncompressed) blocks, at 4 bytes per pixel.
FS_BITS = 5
FS_MAX = 25
_MASK32 = 0xFFFFFFFF
#: The same at 2 bytes per pixel.
FS_BITS_16 = 4
FS_MAX_16 = 14

# Return codes of _decode_tile.
OK = 0
ENDS_EARLY = 1  # the tile's bytes end before its pixels do
BAD_CODE = 2  # a block code above FS_MAX, which no encoder writes
BAD_TILE = 3  # descriptor outside the heap, or too short to hold the first pixel
UNUSED_BYTES = 4  # the tile's pixels end before its bytes do (astropy refuses it; cfitsio warns)


@intrinsic
def _bit_length(typingctx, value):
    """Bits needed to write ``value`` (int64, >= 0): 64 minus LLVM's count of leading zeros."""
    if not isinstance(value, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        zeros = builder.ctlz(args[0], ir.Constant(ir.IntType(1), 0))
        return builder.sub(ir.Constant(ir.IntType(64), 64), zeros)

    return types.int64(types.int64), codegen


@njit(cache=True, inline="always")
def _refill(data, pos, stop, bits, nbits):
    """Append whole bytes of ``data[pos:stop]`` to the bit buffer while it has room (63 bits).

    Returns the new ``(bits, pos, nbits)``.
    """
    while nbits <= 55 and pos < stop:
        bits = (bits << 8) | np.int64(data[pos])
        pos += 1
        nbits += 8
    return bits, pos, nbits


@njit(cache=True)
def _decode_tile(
    data: np.ndarray, start: int, stop: int, blocksize: int, bytepix: int, out: np.ndarray
) -> int:
    """:func:`_decode_tile_of` compiled for each layout, ``bytepix`` 4 (int32 pixels) or 2 (uint16
    pixels stored as int16, ``BZERO`` 32768): with its sizes constant, the 32-bit decode is 12 %
    faster than with them as variables."""
    if bytepix == 4:
        return _decode_tile_of(data, start, stop, blocksize, 4, 0, out)
    return _decode_tile_of(data, start, stop, blocksize, 2, 0x8000, out)


@njit(cache=True, inline="always")
def _decode_tile_of(
    data: np.ndarray,
    start: int,
    stop: int,
    blocksize: int,
    bytepix: int,
    flip: int,
    out: np.ndarray,
) -> int:
    """Decode one RICE_1 tile of 32-bit or 16-bit pixels from ``data[start:stop]`` into ``out``.

    Parameters
    ----------
    data : ndarray, uint8, ``(n_bytes,)``
        Bytes holding the tile (a FITS heap, or part of one).
    start, stop : int
        The tile's bytes, ``data[start:stop]``.
    blocksize : int
        Pixels per block (``BLOCKSIZE``, 32 by default).
    bytepix : int
        Bytes per pixel, 4 or 2 (``BYTEPIX``).
    flip : int
        XORed into every pixel as it is stored: ``0x8000`` turns 16-bit ``int16`` words into
        ``uint16`` (``BZERO = 32768``), 0 leaves them.
    out : ndarray, int32 or uint16, ``(n_pixels,)``
        Receives the tile's pixels (32-bit ones wrap into int32).

    Returns
    -------
    int
        ``OK`` (0), or the error code that stopped decoding (``out`` is then incomplete).
        A tile fails exactly where cfitsio's decoder would read past its end, or would stop
        before it (``UNUSED_BYTES``).
    """
    wide = bytepix == 4
    fs_bits = FS_BITS if wide else FS_BITS_16
    fs_max = FS_MAX if wide else FS_MAX_16
    raw_bits = 8 * bytepix
    mask = (np.int64(1) << raw_bits) - 1
    if start < 0 or stop > data.size or start > stop - (bytepix + 1):
        return BAD_TILE
    last = np.int64(0)  # the previous pixel, as an unsigned value of raw_bits bits
    for pos in range(start, start + bytepix):
        last = (last << 8) | np.int64(data[pos])
    pos = start + bytepix
    # Bit buffer: its low ``nbits`` bits are the next unread bits of the stream. Refills stop
    # at nbits <= 63, so it stays a non-negative int64; every fetch is checked against stop.
    bits = np.int64(0)
    nbits = 0
    n = out.size
    i = 0
    while i < n:
        if nbits < fs_bits:
            bits, pos, nbits = _refill(data, pos, stop, bits, nbits)
            if nbits < fs_bits:
                return ENDS_EARLY
        nbits -= fs_bits
        fs = (bits >> nbits) - 1
        bits &= (np.int64(1) << nbits) - 1
        end = min(i + blocksize, n)
        if fs > fs_max:
            return BAD_CODE
        if fs < 0:  # low entropy: every difference is zero
            while i < end:
                out[i] = last ^ flip
                i += 1
            continue
        while i < end:
            if nbits < 32:
                if pos + 4 <= stop:  # the common case: four bytes at once, one check
                    word = (np.int64(data[pos]) << 24) | (np.int64(data[pos + 1]) << 16)
                    word |= (np.int64(data[pos + 2]) << 8) | np.int64(data[pos + 3])
                    bits = (bits << 32) | word
                    pos += 4
                    nbits += 32
                else:
                    bits, pos, nbits = _refill(data, pos, stop, bits, nbits)
            if fs == fs_max:  # high entropy: the mapped difference is stored as raw bits
                if nbits < raw_bits:
                    return ENDS_EARLY
                nbits -= raw_bits
                diff = bits >> nbits
            else:
                # The high part is a run of zero bits ended by a one.
                zeros = 0
                while bits == 0:
                    zeros += nbits
                    nbits = 0
                    bits, pos, nbits = _refill(data, pos, stop, bits, nbits)
                    if nbits == 0:
                        return ENDS_EARLY
                length = _bit_length(bits)
                zeros += nbits - length
                nbits = length - 1
                bits ^= np.int64(1) << nbits
                if nbits < fs:
                    bits, pos, nbits = _refill(data, pos, stop, bits, nbits)
                    if nbits < fs:
                        return ENDS_EARLY
                nbits -= fs
                # A corrupt run can be longer than 32 bits; the mask keeps it in range (cfitsio's
                # unsigned int, at both sizes).
                diff = ((np.int64(zeros) << fs) | (bits >> nbits)) & _MASK32
            bits &= (np.int64(1) << nbits) - 1
            # Undo the zigzag mapping (even: diff / 2, odd: -(diff + 1) / 2), then the
            # differencing, wrapping at 32 or 16 bits like cfitsio's unsigned arithmetic (an
            # int32 store keeps the low 32 bits).
            last = (last + ((diff >> 1) ^ -(diff & 1))) & mask
            out[i] = last ^ flip
            i += 1
    # cfitsio reads a byte only when it needs its bits, so it stops at ``pos`` less the whole
    # bytes still unread in the buffer here; a valid tile ends there (bytes after the last
    # pixel mean the tile was damaged, e.g. zeroed: decoded, its pixels would be wrong;
    # cfitsio warns "unused bytes at end of compressed buffer", astropy raises on it).
    if pos - (nbits >> 3) < stop:
        return UNUSED_BYTES
    return OK


#: Below this many pixels a call decodes in the calling thread: starting the worker threads
#: costs more than it saves on small row selections (a parallel region waits for every
#: thread, and on a busy machine the OS may take milliseconds to schedule one).
PARALLEL_PIXELS = 2**20


def decode_rice_tiles(
    heap: np.ndarray,
    nelem: np.ndarray,
    offset: np.ndarray,
    blocksize: int,
    nx: int,
    *,
    bytepix: int = 4,
    zero: int = 0,
) -> tuple[np.ndarray, int, int]:
    """Decode row tiles of a RICE_1 image, rows in parallel if many.

    Parameters
    ----------
    heap : ndarray, uint8, ``(n_bytes,)``
        The compressed bytes (a FITS heap, or the part of it the tiles span).
    nelem, offset : ndarray, int64, ``(ny,)``
        Each tile's byte count and start in ``heap`` (the table's descriptors).
    blocksize : int
        Pixels per block (``BLOCKSIZE``).
    nx : int
        Pixels per tile (``ZNAXIS1``).
    bytepix, zero : int, optional
        The image's layout (``BYTEPIX``, ``BZERO``): ``(4, 0)``, int32 pixels, or ``(2, 32768)``,
        uint16 pixels stored as int16.

    Returns
    -------
    image : ndarray, int32 or uint16, ``(ny, nx)``
    bad_row : int
        The first row that did not decode, or -1.
    code : int
        That row's error code (``ENDS_EARLY``, ``BAD_CODE``, ``BAD_TILE``, ``UNUSED_BYTES``), or 0.
    """
    if offset.shape != nelem.shape:  # Numba does not check bounds
        raise ValueError(f"offset: expected shape {nelem.shape}, got {offset.shape}")
    heap = _read_only(heap)
    image = np.empty((nelem.size, nx), _pixel_type(bytepix, zero))
    codes = np.empty(nelem.size, np.int64)
    rows = _decode_rows_parallel if image.size >= PARALLEL_PIXELS else _decode_rows
    rows(heap, nelem, offset, blocksize, bytepix, image, codes)
    return (image, *_first_error(codes))


def _read_only(heap: np.ndarray) -> np.ndarray:
    """A read-only view of ``heap`` (the caller's array keeps its flags). Numba compiles the
    kernels once for each mix of read-only and writeable arguments; the bytes read from a file
    (``np.frombuffer``) are read-only, and with every heap in that form one build serves all."""
    view = heap.view()
    view.flags.writeable = False
    return view


def _pixel_type(bytepix: int, zero: int) -> np.dtype:
    """The pixels' type of a ``(BYTEPIX, BZERO)`` layout that the kernel decodes."""
    if (bytepix, zero) == (4, 0):
        return np.dtype(np.int32)
    if (bytepix, zero) == (2, 32768):
        return np.dtype(np.uint16)
    raise ValueError(f"bytepix, zero: expected (4, 0) or (2, 32768), got {(bytepix, zero)}")


def accumulate_rice_read(
    heap: np.ndarray,
    nelem: np.ndarray,
    offset: np.ndarray,
    blocksize: int,
    current: np.ndarray,
    avg: np.ndarray,
    out: np.ndarray,
    *,
    bytepix: int = 4,
    zero: int = 0,
) -> tuple[int, int, int, int]:
    """Decode a residual HDU's row tiles and rebuild the read from them, rows in parallel if many.

    Fuses :func:`decode_rice_tiles` with :func:`pyapred.io._kernels.accumulate_read`:
    ``current += residual + avg`` (int64), ``out[...] = current``, one pass per read.

    Parameters
    ----------
    heap, nelem, offset, blocksize
        As for :func:`decode_rice_tiles`; ``nelem.size == ny``.
    current : ndarray, int64, ``(ny, nx)``
        The previous read; updated in place to this read (rows that fail to decode are left
        partly updated: the caller raises).
    avg : ndarray, int64, ``(ny, nx)``
        The average read difference.
    out : ndarray, ``(ny, nx)``
        Receives this read, cast to its dtype (the caller checks the returned range).
    bytepix, zero : int, optional
        The residual HDU's layout, as for :func:`decode_rice_tiles`.

    Returns
    -------
    low, high : int
        Minimum and maximum of the rebuilt read (int64 extremes if ``ny * nx == 0``).
    bad_row, code : int
        The first row that did not decode and its error code, or -1 and 0.
    """
    ny = current.shape[0]
    # Numba does not check bounds: mismatched shapes would read or write past an array's end.
    if not (nelem.shape == offset.shape == (ny,) and avg.shape == current.shape == out.shape):
        raise ValueError("expected one tile per row and current, avg, out of the same shape")
    _pixel_type(bytepix, zero)  # one of the two layouts
    heap = _read_only(heap)
    extremes = np.iinfo(np.int64)
    lows, highs = np.full(ny, extremes.max), np.full(ny, extremes.min)
    codes = np.empty(ny, np.int64)
    rows = _accumulate_rows_parallel if current.size >= PARALLEL_PIXELS else _accumulate_rows
    rows(heap, nelem, offset, blocksize, bytepix, current, avg, out, lows, highs, codes)
    low, high = lows.min(initial=extremes.max), highs.max(initial=extremes.min)
    return (int(low), int(high), *_first_error(codes))


def _first_error(codes: np.ndarray) -> tuple[int, int]:
    """The first row whose code is not ``OK`` and its code, or ``(-1, OK)``."""
    bad = np.flatnonzero(codes != OK)
    return (int(bad[0]), int(codes[bad[0]])) if bad.size else (-1, OK)


# The row loops, in a serial and a parallel build of the same per-row kernels.
@njit(cache=True)
def _decode_row(y, heap, nelem, offset, blocksize, bytepix, image, codes):
    codes[y] = _decode_tile(heap, offset[y], offset[y] + nelem[y], blocksize, bytepix, image[y])


@njit(cache=True)
def _accumulate_row(y, heap, nelem, offset, blocksize, bytepix, current, avg, out, lows,
                    highs, codes):  # fmt: skip
    nx = current.shape[1]
    # One row at a time: stays in cache. A 16-bit residual's uint16 values fit it too.
    residual = np.empty(nx, np.int32)
    codes[y] = _decode_tile(heap, offset[y], offset[y] + nelem[y], blocksize, bytepix, residual)
    if codes[y] != OK:
        return
    low, high = lows[y], highs[y]
    for x in range(nx):
        value = current[y, x] + np.int64(residual[x]) + avg[y, x]
        current[y, x] = value
        out[y, x] = value
        low = min(low, value)
        high = max(high, value)
    lows[y], highs[y] = low, high


@njit(cache=True)
def _decode_rows(heap, nelem, offset, blocksize, bytepix, image, codes):
    for y in range(nelem.size):
        _decode_row(y, heap, nelem, offset, blocksize, bytepix, image, codes)


@njit(parallel=True, cache=True)
def _decode_rows_parallel(heap, nelem, offset, blocksize, bytepix, image, codes):
    for y in prange(nelem.size):
        _decode_row(y, heap, nelem, offset, blocksize, bytepix, image, codes)


@njit(cache=True)
def _accumulate_rows(heap, nelem, offset, blocksize, bytepix, current, avg, out, lows,
                     highs, codes):  # fmt: skip
    for y in range(current.shape[0]):
        _accumulate_row(y, heap, nelem, offset, blocksize, bytepix, current, avg, out, lows,
                        highs, codes)  # fmt: skip


@njit(parallel=True, cache=True)
def _accumulate_rows_parallel(heap, nelem, offset, blocksize, bytepix, current, avg, out,
                              lows, highs, codes):  # fmt: skip
    for y in prange(current.shape[0]):
        _accumulate_row(y, heap, nelem, offset, blocksize, bytepix, current, avg, out, lows,
                        highs, codes)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Finding the tiles in the file
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RiceTiles:
    """The compressed row tiles of one HDU, read straight from the file.

    Attributes
    ----------
    shape : tuple of int
        ``(ZNAXIS2, ZNAXIS1)``: the whole image, ``(ny, nx)``.
    heap : ndarray, uint8
        The heap bytes that the selected tiles span.
    nelem, offset : ndarray, int64, ``(n_rows,)``
        Byte count and start in ``heap`` of each selected row's tile.
    blocksize : int
        Pixels per Rice block.
    bytepix, zero : int
        ``(BYTEPIX, BZERO)``: ``(4, 0)`` for int32 images, ``(2, 32768)`` for uint16 ones (read 1).
    """

    shape: tuple[int, int]
    heap: np.ndarray
    nelem: np.ndarray
    offset: np.ndarray
    blocksize: int
    bytepix: int = 4
    zero: int = 0


# The one column of a compressed image: variable-length bytes, 32-bit (P) or 64-bit (Q)
# descriptors.
_TFORM = re.compile(r"^1?([PQ])B(\(\d+\))?$")
_DESCRIPTOR = {"P": np.dtype(">i4"), "Q": np.dtype(">i8")}
# Keywords that would make pixels differ from the stored integers (scaling, quantisation,
# null values): their presence sends the HDU to astropy.
_NOT_PLAIN = ("ZQUANTIZ", "ZSCALE", "ZZERO", "ZBLANK", "ZDITHER0")


def read_rice_tiles(raw: BinaryIO, hdul: fits.HDUList, index: int, rows: slice) -> RiceTiles | None:
    """HDU ``index``'s tiles for ``rows`` if it is a RICE_1 image in row tiles of int32 pixels, or
    of uint16 ones stored as int16 (``BZERO = 32768``), else None.

    The header and descriptors are read from the file (``fileinfo`` locates them); only
    the heap bytes the selected tiles span are read. None sends the HDU to astropy, which
    gives its usual errors for a damaged file.
    """
    try:
        info = hdul[index].fileinfo()  # HDUList.fileinfo re-serialises every header: slow
        header_start, data_start = info["hdrLoc"], info["datLoc"]
        raw.seek(header_start)
        with warnings.catch_warnings():  # astropy already warned when it opened the file
            warnings.simplefilter("ignore")
            header = fits.Header.fromstring(raw.read(data_start - header_start).decode("ascii"))
        layout = _rice_layout(header)
    except (IndexError, KeyError, TypeError, ValueError, UnicodeDecodeError):
        return None
    if layout is None:
        return None
    shape, descriptor, blocksize, bytepix, zero, heap_start, heap_size = layout
    table = _read_exactly(raw, data_start, shape[0] * 2 * descriptor.itemsize)
    if table is None:
        return None
    pairs = table.view(descriptor).reshape(shape[0], 2)[rows].astype(np.int64)
    nelem, offset = np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1])
    if nelem.size == 0:
        return RiceTiles(shape, np.empty(0, np.uint8), nelem, offset, blocksize, bytepix, zero)
    end = offset + nelem
    if nelem.min() < 0 or offset.min() < 0 or end.max() > heap_size:
        return None
    first = int(offset.min())
    heap = _read_exactly(raw, data_start + heap_start + first, int(end.max()) - first)
    if heap is None:
        return None
    return RiceTiles(shape, heap, nelem, offset - first, blocksize, bytepix, zero)


def compression_parameters(header: fits.Header) -> dict:
    """A compressed HDU's ``ZNAMEn``/``ZVALn`` pairs as ``{NAME: value}`` (``BLOCKSIZE``,
    ``BYTEPIX``, ...); they are numbered from 1 without gaps."""
    params, i = {}, 1
    while f"ZNAME{i}" in header:
        params[str(header[f"ZNAME{i}"]).strip().upper()] = header.get(f"ZVAL{i}")
        i += 1
    return params


def _rice_layout(header: fits.Header) -> tuple | None:
    """Check a compressed HDU's binary-table header against the layout the kernel decodes.

    Returns
    -------
    tuple or None
        ``(shape, descriptor dtype, blocksize, bytepix, zero, heap start, heap size)``, the heap
        relative to the start of the data; None if any card differs from fpack's RICE_1 row tiles
        of int32 pixels (``BYTEPIX`` 4) or of uint16 ones (``ZBITPIX`` 16, ``BYTEPIX`` 2,
        ``BZERO`` 32768, as read 1 is stored).
    """

    def integer(keyword, default=None):
        value = header.get(keyword, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(keyword)
        return value

    tform = _TFORM.match(str(header.get("TFORM1", "")).strip())
    text = {key: str(header.get(key, "")).strip() for key in ("XTENSION", "TTYPE1", "ZCMPTYPE")}
    if (
        tform is None
        or text["XTENSION"] != "BINTABLE"
        or text["TTYPE1"] != "COMPRESSED_DATA"
        or text["ZCMPTYPE"] not in ("RICE_1", "RICE_ONE")
    ):
        return None
    descriptor = _DESCRIPTOR[tform.group(1)]
    nx, ny = integer("ZNAXIS1"), integer("ZNAXIS2")
    params = compression_parameters(header)
    zbitpix = integer("ZBITPIX")
    bytepix, zero = (2, 32768) if zbitpix == 16 else (4, 0)  # uint16 (read 1), or int32
    plain = (
        header.get("ZIMAGE") is True
        and (integer("NAXIS"), integer("TFIELDS"), integer("GCOUNT", 1)) == (2, 1, 1)
        and (integer("NAXIS1"), integer("NAXIS2")) == (2 * descriptor.itemsize, ny)
        and zbitpix in (16, 32)
        and integer("ZNAXIS") == 2
        and (integer("ZTILE1", nx), integer("ZTILE2", 1)) == (nx, 1)
        and set(params) <= {"BLOCKSIZE", "BYTEPIX"}
        and params.get("BYTEPIX", bytepix) == bytepix
        and _same_number(header.get("BZERO", 0), zero)
        and _same_number(header.get("BSCALE", 1), 1)
        and not any(key in header for key in _NOT_PLAIN)
    )
    blocksize = params.get("BLOCKSIZE", 32)
    if not plain or type(blocksize) is not int or blocksize < 1:
        return None
    table_size = ny * 2 * descriptor.itemsize
    heap_start, pcount = integer("THEAP", table_size), integer("PCOUNT")
    if heap_start < table_size or pcount < 0:
        return None
    heap_size = table_size + pcount - heap_start
    return (ny, nx), descriptor, blocksize, bytepix, zero, heap_start, heap_size


def _same_number(value, number: int) -> bool:
    """Whether a card's value is ``number`` (an int or a float, not a bool or a string)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value == number


def _read_exactly(raw, start: int, size: int) -> np.ndarray | None:
    """``size`` bytes of ``raw`` from ``start`` as uint8, or None if the file ends first."""
    raw.seek(start)
    data = raw.read(size)
    return np.frombuffer(data, np.uint8) if len(data) == size else None


#: Words for the error codes, for error messages.
ERROR_TEXT = {
    ENDS_EARLY: "compressed bytes end before the tile's pixels",
    BAD_CODE: f"a block code above {FS_MAX + 1}",
    BAD_TILE: "a tile too short for its first pixel, or outside the heap",
    UNUSED_BYTES: "unused bytes after the tile's last pixel",
}
