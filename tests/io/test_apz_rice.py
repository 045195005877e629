"""pyapred's RICE_1 decoder against astropy's, and read_apz with and without it."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from pyapred.errors import InputError
from pyapred.io import _rice, apz, make_headers, read_apz, write_apz
from pyapred.io._rice import BAD_TILE, ENDS_EARLY, OK, UNUSED_BYTES, decode_rice_tiles

INT32 = np.iinfo(np.int32)


def write_rice(path, image: np.ndarray, **options):
    """``image`` as HDU 1, RICE_1 compressed by astropy (cfitsio's encoder), one tile per row."""
    hdu = fits.CompImageHDU(
        image, compression_type="RICE_1", tile_shape=(1, image.shape[1]), **options
    )
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)
    return path


def raw_tiles(path, index=1, rows=slice(None)):
    with fits.open(path) as hdul, open(path, "rb") as raw:
        tiles = _rice.read_rice_tiles(raw, hdul, index, slice(*rows.indices(hdul[index].shape[0])))
    assert tiles is not None, "the fast path should accept this HDU"
    return tiles


def decode(tiles):
    return decode_rice_tiles(
        tiles.heap, tiles.nelem, tiles.offset, tiles.blocksize, tiles.shape[1],
        bytepix=tiles.bytepix, zero=tiles.zero,
    )  # fmt: skip


def random_image(rng, ny: int, nx: int) -> np.ndarray:
    """Rows of every kind of block: zero, constant, smooth, noisy, full range, extremes."""
    image = np.empty((ny, nx), np.int64)
    for y in range(ny):
        kind = y % 7
        if kind == 0:
            image[y] = 0  # FS < 0 blocks
        elif kind == 1:
            image[y] = rng.integers(INT32.min, INT32.max + 1)  # constant, not zero
        elif kind == 2:
            image[y] = rng.integers(INT32.min, INT32.max + 1, nx)  # FS == FSMAX blocks
        elif kind == 3:
            image[y] = rng.choice([INT32.min, INT32.max, 0, -1], nx)  # wrap-around differences
        elif kind == 4:
            image[y] = np.round(rng.normal(0, 10.0 ** rng.uniform(0, 8), nx))
        elif kind == 5:
            image[y] = np.cumsum(rng.integers(-3, 4, nx)) - 1000
        else:  # blocks of different entropy within one row
            scale = 10.0 ** rng.integers(0, 9, nx // 32 + 1).repeat(32)[:nx]
            image[y] = np.round(rng.normal(0, scale))
    return np.clip(image, INT32.min, INT32.max).astype(np.int32)


def random_uint16_image(rng, ny: int, nx: int) -> np.ndarray:
    """:func:`random_image`'s kinds of rows for a uint16 image (read 1's layout)."""
    image = random_image(rng, ny, nx).astype(np.int64)
    for y in range(ny):
        kind = y % 7
        if kind in (1, 2):  # constant, and FS == FSMAX blocks, over the whole range
            image[y] = rng.integers(0, 65536, 1 if kind == 1 else nx)
        elif kind == 3:  # wrap-around differences
            image[y] = rng.choice([0, 65535, 32767, 32768], nx)
        else:
            image[y] = np.clip(image[y] + 32768, 0, 65535)
    return image.astype(np.uint16)


@pytest.mark.parametrize("nx", [1, 2, 31, 32, 33, 95, 200, 2560])
def test_decoder_equals_astropy_on_uint16_images(monkeypatch, tmp_path, nx):
    """Read 1 is stored as int16 + BZERO 32768 (2 bytes per pixel): the kernel decodes it too."""
    monkeypatch.setattr(_rice, "PARALLEL_PIXELS", 1000)
    rng = np.random.default_rng(100 + nx)
    for trial in range(5):
        image = random_uint16_image(rng, 14, nx)
        path = write_rice(tmp_path / f"rice16_{trial}.fits", image)
        with fits.open(path) as hdul:
            expected = hdul[1].data
        tiles = raw_tiles(path)
        assert (tiles.bytepix, tiles.zero) == (2, 32768)
        decoded, bad_row, code = decode(tiles)
        assert (bad_row, code) == (-1, OK)
        assert decoded.dtype == np.uint16
        assert np.array_equal(decoded, expected)
        assert np.array_equal(decoded, image)


def test_uint16_decoder_reports_bad_tiles_and_unused_bytes(tmp_path):
    image = random_uint16_image(np.random.default_rng(7), 7, 300)
    tiles = raw_tiles(write_rice(tmp_path / "r16.fits", image))
    heap, nelem, offset = tiles.heap, tiles.nelem, tiles.offset

    def run(nelem, offset):
        return decode_rice_tiles(heap, nelem, offset, 32, 300, bytepix=2, zero=32768)[1:]

    for row in range(7):  # every prefix of a tile stops with an error
        for cut in range(int(nelem[row])):
            short = nelem.copy()
            short[row] = cut
            bad_row, code = run(short, offset)
            assert bad_row == row and code in (ENDS_EARLY, BAD_TILE)
        longer = nelem.copy()
        longer[row] += 1
        if offset[row] + longer[row] <= heap.size:
            assert run(longer, offset) == (row, UNUSED_BYTES)
    for start, size in [(-1, 10), (heap.size - 2, 10), (heap.size, 0), (0, 2)]:
        assert run(np.array([size]), np.array([start])) == (0, BAD_TILE)
    rng = np.random.default_rng(8)
    errors = 0
    for _ in range(300):  # random bytes: pixels or an error code, never a crash
        damaged = heap.copy()
        where = rng.integers(0, heap.size, rng.integers(1, 20))
        damaged[where] = rng.integers(0, 256, where.size)
        bad_row, _ = decode_rice_tiles(damaged, nelem, offset, 32, 300, bytepix=2, zero=32768)[1:]
        errors += bad_row >= 0
    assert errors > 0


def test_decoder_refuses_other_pixel_layouts():
    heap, tiles = np.zeros(10, np.uint8), np.zeros(1, np.int64)
    for bytepix, zero in [(2, 0), (4, 32768), (1, 0), (8, 0)]:
        with pytest.raises(ValueError, match="bytepix, zero"):
            decode_rice_tiles(heap, tiles, tiles, 32, 5, bytepix=bytepix, zero=zero)


@pytest.mark.parametrize("nx", [1, 2, 31, 32, 33, 95, 200, 2560])
def test_decoder_equals_astropy(monkeypatch, tmp_path, nx):
    monkeypatch.setattr(_rice, "PARALLEL_PIXELS", 1000)  # the wide images run in parallel
    rng = np.random.default_rng(nx)
    for trial in range(5):
        image = random_image(rng, 14, nx)
        if trial == 1:
            image = -np.abs(image) - 1  # negative only
        path = write_rice(tmp_path / f"rice{trial}.fits", image)
        with fits.open(path) as hdul:
            expected = hdul[1].data
        decoded, bad_row, code = decode(raw_tiles(path))
        assert (bad_row, code) == (-1, OK)
        assert np.array_equal(decoded, expected)
        assert np.array_equal(decoded, image)


def test_decoder_decodes_only_the_selected_rows(tmp_path):
    image = random_image(np.random.default_rng(1), 21, 77)
    tiles = raw_tiles(write_rice(tmp_path / "rows.fits", image), rows=slice(5, 12))
    assert tiles.nelem.size == 7 and tiles.blocksize == 32
    decoded, _, _ = decode(tiles)
    assert np.array_equal(decoded, image[5:12])


def test_decoder_reports_bad_tiles_without_reading_outside_them(tmp_path):
    image = random_image(np.random.default_rng(2), 7, 300)
    tiles = raw_tiles(write_rice(tmp_path / "r.fits", image))
    heap, nelem, offset = tiles.heap, tiles.nelem, tiles.offset
    # Truncated tiles: every prefix must stop with an error, never read past its end.
    for cut in range(int(nelem[2])):
        short = nelem.copy()
        short[2] = cut
        _, bad_row, code = decode_rice_tiles(heap, short, offset, 32, 300)
        assert bad_row == 2 and code in (ENDS_EARLY, BAD_TILE)
    # Descriptors outside the heap.
    for start, size in [(-1, 10), (heap.size - 3, 10), (heap.size, 0), (2**40, 8)]:
        _, bad_row, code = decode_rice_tiles(heap, np.array([size]), np.array([start]), 32, 300)
        assert (bad_row, code) == (0, BAD_TILE)


def test_decoder_refuses_bytes_after_a_tiles_last_pixel(tmp_path):
    """A tile whose pixels end before its bytes do is damaged (cfitsio refuses it too)."""
    image = random_image(np.random.default_rng(5), 7, 300)
    tiles = raw_tiles(write_rice(tmp_path / "r.fits", image))
    decoded, bad_row, code = decode(tiles)
    assert (bad_row, code) == (-1, OK) and np.array_equal(decoded, image)
    for row in range(7):  # one byte more than the tile holds (the next tile's first byte)
        longer = tiles.nelem.copy()
        longer[row] += 1
        if tiles.offset[row] + longer[row] > tiles.heap.size:
            continue
        _, bad_row, code = decode_rice_tiles(tiles.heap, longer, tiles.offset, 32, 300)
        assert (bad_row, code) == (row, UNUSED_BYTES)


def test_kernels_refuse_mismatched_shapes():
    heap, tiles = np.zeros(10, np.uint8), np.zeros(3, np.int64)
    with pytest.raises(ValueError):
        decode_rice_tiles(heap, tiles, tiles[:2], 32, 5)
    image = np.zeros((3, 5), np.int64)
    for current, avg, out in [(image[:2], image, image), (image, image, image[:, :4])]:
        with pytest.raises(ValueError):
            _rice.accumulate_rice_read(heap, tiles, tiles, 32, current, avg, out)


def test_decoder_survives_random_corruption(tmp_path):
    """Random bytes in the heap decode to something or to an error code: never a crash."""
    rng = np.random.default_rng(3)
    image = random_image(rng, 7, 500)
    tiles = raw_tiles(write_rice(tmp_path / "r.fits", image))
    errors = 0
    for _ in range(300):
        heap = tiles.heap.copy()
        where = rng.integers(0, heap.size, rng.integers(1, 20))
        heap[where] = rng.integers(0, 256, where.size)
        _, bad_row, _ = decode_rice_tiles(heap, tiles.nelem, tiles.offset, 32, 500)
        errors += bad_row >= 0
    assert errors > 0  # corruption is caught often, though not always (any bytes decode)


@pytest.fixture
def exposure_file(tmp_path):
    rng = np.random.default_rng(4)
    n_reads, ny, nx = 6, 19, 130
    level = rng.normal(10000, 500, (ny, nx))
    reads = np.clip(
        level + np.cumsum(rng.poisson(rng.gamma(0.5, 80, (n_reads, ny, nx))), 0), 0, 65535
    )
    reads[:, 3] = reads[0, 3]  # a row that never changes
    reads[:, 4, ::7] = 65535  # saturated pixels
    _, headers = make_headers(n_reads, date_obs="2025-04-20T04:00:00.000", chip="a")
    return write_apz(tmp_path / "apR-a-52190001.apz", reads.astype(np.uint16), headers)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"reads": slice(1, 4), "rows": slice(5, 11)},
        {"reads": [0, 5], "rows": slice(18, 19), "dtype": np.float32},
        {"reads": [2], "rows": slice(0, 0), "dtype": np.int64},
    ],
)
@pytest.mark.parametrize("parallel", [True, False])
def test_read_apz_fast_path_equals_astropy_path(monkeypatch, exposure_file, options, parallel):
    monkeypatch.setattr(_rice, "PARALLEL_PIXELS", 0 if parallel else 2**62)
    calls = []
    kernel = apz.accumulate_rice_read

    def counted(heap, nelem, *args, **kwargs):
        calls.append(nelem.size)
        return kernel(heap, nelem, *args, **kwargs)

    monkeypatch.setattr(apz, "accumulate_rice_read", counted)
    fast = read_apz(exposure_file, **options)
    last_read = max(np.arange(6)[options.get("reads", slice(None))])
    n_rows = fast.reads.shape[1]
    assert calls == [n_rows] * last_read  # only the HDUs and rows needed, all by the kernel
    monkeypatch.setattr(apz, "FAST_RICE", False)
    slow = read_apz(exposure_file, **options)
    assert len(calls) == last_read  # not used with the switch off
    assert fast.reads.dtype == slow.reads.dtype
    assert np.array_equal(fast.reads, slow.reads)
    assert fast.read_headers == slow.read_headers


def recorded_layouts(monkeypatch, kernel_name: str) -> list:
    """The ``(bytepix, zero)`` of every call ``read_apz`` makes to ``apz.<kernel_name>``."""
    layouts = []
    kernel = getattr(apz, kernel_name)

    def recorded(*args, **kwargs):
        layouts.append((kwargs["bytepix"], kwargs["zero"]))
        return kernel(*args, **kwargs)

    monkeypatch.setattr(apz, kernel_name, recorded)
    return layouts


def test_read_apz_decodes_read_1_with_the_kernel(monkeypatch, exposure_file):
    """Read 1 (uint16, HDU 2) and the average difference (int32, HDU 1) are decoded by the
    kernel, not by astropy (which took 0.065 s of a 2048 x 2560 read 1)."""
    layouts = recorded_layouts(monkeypatch, "decode_rice_tiles")
    fast = read_apz(exposure_file, reads=[0])
    assert layouts == [(4, 0), (2, 32768)]
    assert fast.reads.dtype == np.uint16
    monkeypatch.setattr(apz, "FAST_RICE", False)
    assert np.array_equal(read_apz(exposure_file, reads=[0]).reads, fast.reads)


def test_uint16_residuals_rebuild_the_reads_astropy_rebuilds(monkeypatch, tmp_path):
    """Residual HDUs stored as uint16 (int16 + BZERO 32768; apzip writes int32 ones) are
    accumulated by the kernel in that layout, into the reads astropy's path rebuilds."""
    rng = np.random.default_rng(9)
    first = rng.integers(0, 20000, (9, 40))
    steps = rng.integers(0, 3000, (4, 9, 40))  # the residuals, over an average of 0
    reads = np.concatenate([first[None], first + np.cumsum(steps, axis=0)])
    kind = {"compression_type": "RICE_1", "tile_shape": (1, 40)}
    times = [fits.Header([("DATE-OBS", f"2025-04-20T04:00:{k:02d}.000")]) for k in range(5)]
    hdus = [
        fits.PrimaryHDU(),
        fits.CompImageHDU(np.zeros((9, 40), np.int32), fits.Header([("NREAD", 5)]), **kind),
        fits.CompImageHDU(first.astype(np.uint16), times[0], **kind),
        *(fits.CompImageHDU(steps[k].astype(np.uint16), times[k + 1], **kind) for k in range(4)),
    ]
    path = tmp_path / "apR-a-52190003.apz"
    fits.HDUList(hdus).writeto(path)
    layouts = recorded_layouts(monkeypatch, "accumulate_rice_read")
    assert np.array_equal(read_apz(path).reads, reads)
    assert layouts == [(2, 32768)] * 4
    monkeypatch.setattr(apz, "FAST_RICE", False)
    assert np.array_equal(read_apz(path).reads, reads)


def test_read_apz_fast_path_on_a_file_built_without_write_apz(monkeypatch, tmp_path, raw_apz):
    reads = np.random.default_rng(5).integers(0, 65536, (4, 9, 40))
    path = raw_apz(tmp_path / "apR-a-52190002.apz", reads)
    assert all(raw_tiles(path, index) for index in (1, 3, 4))  # the kernel's layout
    assert np.array_equal(read_apz(path).reads, reads)
    monkeypatch.setattr(apz, "FAST_RICE", False)
    assert np.array_equal(read_apz(path).reads, reads)


def descriptors(path, index):
    """File offset of HDU ``index``'s table, and its ``(nelem, offset)`` rows (``(ny, 2)``)."""
    with fits.open(path) as hdul:
        start = hdul.fileinfo(index)["datLoc"]
        ny = hdul[index].shape[0]
    table = np.frombuffer(path.read_bytes(), ">i4", count=2 * ny, offset=start)
    return start, table.reshape(ny, 2)


@pytest.mark.parametrize("fast", [True, False])
def test_short_tile_descriptor_is_an_input_error(monkeypatch, exposure_file, fast):
    monkeypatch.setattr(apz, "FAST_RICE", fast)
    start, _ = descriptors(exposure_file, 4)
    data = bytearray(exposure_file.read_bytes())
    # Row 7's tile claims 6 bytes: the stream ends long before 130 pixels.
    data[start + 7 * 8 : start + 7 * 8 + 4] = (6).to_bytes(4, "big")
    exposure_file.write_bytes(bytes(data))
    with pytest.raises(InputError, match="HDU 4") as error:
        read_apz(exposure_file)
    assert str(exposure_file) in str(error.value)
    assert "decompressible residual of read 3" in str(error.value)
    if fast:
        assert "row 7" in str(error.value)


def test_corrupt_heap_is_an_input_error(exposure_file):
    start, table = descriptors(exposure_file, 3)
    data = bytearray(exposure_file.read_bytes())
    # After row 10's first pixel, 0xFF bytes: a block code of 31, which no encoder writes.
    tile = start + table.nbytes + table[10, 1] + 4
    data[tile : tile + 8] = b"\xff" * 8
    exposure_file.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"HDU 3.*row 10: a block code above 26"):
        read_apz(exposure_file)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("index, first_pixel", [(1, 4), (2, 2), (3, 4)])
def test_zeroed_tile_bytes_are_an_input_error(monkeypatch, exposure_file, fast, index,
                                              first_pixel):  # fmt: skip
    """A tile zeroed after its first pixel decodes (every block code 0 is "all differences
    zero") to wrong pixels in a few bytes; the bytes left over give it away on both paths, in
    the 32-bit HDUs and in read 1's 16-bit one."""
    monkeypatch.setattr(apz, "FAST_RICE", fast)
    start, table = descriptors(exposure_file, index)
    data = bytearray(exposure_file.read_bytes())
    tile = start + table.nbytes + table[8, 1]
    data[tile + first_pixel : tile + table[8, 0]] = bytes(table[8, 0] - first_pixel)
    exposure_file.write_bytes(bytes(data))
    with pytest.raises(InputError, match=rf"{exposure_file.name}.*HDU {index}.*unused bytes"):
        read_apz(exposure_file)


@pytest.mark.parametrize("fast", [True, False])
def test_truncated_file_is_an_input_error(monkeypatch, exposure_file, fast):
    monkeypatch.setattr(apz, "FAST_RICE", fast)
    data = exposure_file.read_bytes()
    with fits.open(exposure_file) as hdul:
        last = hdul.fileinfo(len(hdul) - 1)
    # Cut inside the last HDU's data: at block boundaries (a well-formed but short file) or not.
    cuts = range(last["datLoc"], last["datLoc"] + last["datSpan"], 2880)
    for size in [*cuts, last["datLoc"] + 100, len(data) - 1]:
        exposure_file.write_bytes(data[:size])
        with pytest.raises(InputError, match=exposure_file.name):
            read_apz(exposure_file)


@pytest.mark.parametrize(
    "options",
    [
        {"compression_type": "GZIP_1"},
        {"tile_shape": (2, 50)},
        {"dtype": np.int16},
        {"dtype": np.float32},
    ],
)
def test_unusual_layouts_fall_back_to_astropy(tmp_path, options):
    """Layouts the kernel does not decode go to astropy."""
    image = random_image(np.random.default_rng(6), 8, 50).astype(options.pop("dtype", np.int32))
    hdu = fits.CompImageHDU(
        image, **{"compression_type": "RICE_1", "tile_shape": (1, 50), **options}
    )
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp_path / "other.fits")
    with fits.open(tmp_path / "other.fits") as hdul, open(tmp_path / "other.fits", "rb") as raw:
        assert _rice.read_rice_tiles(raw, hdul, 1, slice(None)) is None
