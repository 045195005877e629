"""Raw .apz exposures: exact round trips, the hand-built raw layout, partial reads, times."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time

from pyapred.errors import InputError, InputWarning
from pyapred.io import (
    apz_filename,
    exposure_number,
    make_headers,
    parse_apz_name,
    read_apz,
    write_apz,
)
from pyapred.simulate import simulate_ramps, write_simulated_apz

NX = 2560  # full width: science array + reference output
NY = 24  # few rows keep the 47-read files fast; one test uses the full chip


def simulated_chip(n_reads: int, ny: int = NY, seed: int = 0) -> np.ndarray:
    """Simulated reads of a chip-shaped patch, in DN, with a changing sky."""
    rng = np.random.default_rng(seed)
    flux = rng.uniform(0.0, 400.0, (ny, NX))
    omega = 1.0 - 0.4 * rng.uniform(size=n_reads - 1)
    return simulate_ramps(flux, 12.0, omega=omega, gain=1.9, rng=rng).reads


@pytest.mark.parametrize("telescope", ["apo", "lco"])
@pytest.mark.parametrize("n_reads", [3, 10, 47])
def test_simulated_exposure_round_trip_is_bit_exact(tmp_path, telescope, n_reads):
    reads = simulated_chip(n_reads, seed=n_reads)
    path = write_simulated_apz(
        tmp_path, reads, telescope=telescope, chip="b", mjd=60781, exposure=65
    )
    assert path.name == {"apo": "apR", "lco": "asR"}[telescope] + "-b-52190065.apz"
    exposure = read_apz(path)
    expected = np.clip(np.round(reads + 10000.0), 0, 65535).astype(np.uint16)
    assert exposure.reads.dtype == np.uint16
    assert np.array_equal(exposure.reads, expected)
    assert exposure.science.shape == (n_reads, NY, 2048)
    assert exposure.reference.shape == (n_reads, NY, 512)
    assert np.shares_memory(exposure.science, exposure.reads)  # views, no copies
    assert (exposure.telescope, exposure.chip, exposure.mjd) == (telescope, "b", 60781)
    assert (exposure.expnum, exposure.name.exposure, exposure.name.chip_color) == (
        52190065,
        65,
        "G",
    )
    assert exposure.n_reads == exposure.n_reads_in_file == n_reads
    assert exposure.header["NREAD"] == n_reads
    assert len(exposure.read_headers) == n_reads
    dt = np.diff(exposure.read_times.unix)
    assert np.allclose(dt, 10.647, atol=1e-6)


def test_write_apz_round_trip_of_arbitrary_counts(tmp_path):
    rng = np.random.default_rng(3)
    # Extremes of the uint16 range and non-monotonic ramps must survive too.
    reads = rng.integers(0, 65536, size=(4, 5, 7)).astype(np.uint16)
    reads[0, 0, 0], reads[-1, 0, 0] = 0, 65535
    _, read_headers = make_headers(4, date_obs="2025-01-01T00:00:00", chip="a")
    path = write_apz(tmp_path / "apR-a-52190001.apz", reads, read_headers)
    assert np.array_equal(read_apz(path).reads, reads)
    assert np.array_equal(read_apz(path, dtype=np.float32).reads, reads.astype(np.float32))


def test_write_apz_appends_each_read_as_astropy_writes_it(tmp_path):
    """The reads' HDUs are appended as bytes (astropy's append mode went over the file's HDUs
    at every read: quadratic in the reads): the file is the one astropy writes in one go."""
    rng = np.random.default_rng(4)
    reads = np.cumsum(rng.integers(0, 40, size=(9, 3, 16)), axis=0).astype(np.uint16)
    header, read_headers = make_headers(9, date_obs="2025-01-01T00:00:00", chip="a")
    path = write_apz(tmp_path / "apR-a-52190001.apz", reads, read_headers, header=header)
    with fits.open(path) as hdul:
        hdus = [fits.PrimaryHDU()]
        for hdu in hdul[1:]:
            compressed = fits.CompImageHDU(hdu.data, hdu.header, compression_type="RICE_1",
                                           tile_shape=(1, 16))  # fmt: skip
            hdus.append(compressed)
        fits.HDUList(hdus).writeto(tmp_path / "whole.fits")
    assert path.read_bytes() == (tmp_path / "whole.fits").read_bytes()
    assert np.array_equal(read_apz(path).reads, reads)


def test_full_chip_round_trip(tmp_path):
    reads = simulated_chip(3, ny=2048, seed=7)
    exposure = read_apz(write_simulated_apz(tmp_path, reads))
    assert exposure.reads.shape == (3, 2048, 2560)
    assert np.array_equal(exposure.reads, np.round(reads + 10000.0).astype(np.uint16))


def test_files_are_rice_compressed_one_tile_per_row(tmp_path):
    path = write_simulated_apz(tmp_path, simulated_chip(3))
    with fits.open(path, disable_image_compression=True) as hdul:
        assert len(hdul) == 5
        assert hdul[0].header["NAXIS"] == 0
        for index, bitpix in [(1, 32), (2, 16), (3, 32), (4, 32)]:
            header = hdul[index].header
            assert header["ZCMPTYPE"] == "RICE_1"
            assert (header["ZTILE1"], header["ZTILE2"]) == (NX, 1)
            assert header["ZBITPIX"] == bitpix
        assert hdul[2].header["BZERO"] == 32768


def test_headers_are_astropys_image_headers_without_building_them(tmp_path, monkeypatch):
    """astropy reads the file with image compression off (rebuilding an image header from each
    table took 70 ms per 47-read file): the headers are the tables' cards without the tables'
    own, the same cards as astropy's image headers less the structural ones."""
    from pyapred.io.apz import _STRUCTURAL

    header, read_headers = make_headers(3, date_obs="2025-04-20T04:00:10", chip="c")
    header["HISTORY"] = "a history card"
    header["COMMENT"] = "and a comment"
    read_headers[1]["OBSCMNT"] = ("TFORM1 in a comment", "TTYPE1 too")
    reads = np.random.default_rng(5).integers(0, 65536, size=(3, 4, 9)).astype(np.uint16)
    path = write_apz(tmp_path / "apR-c-52190001.apz", reads, read_headers, header=header)
    rebuilt = []  # astropy's compressed images, each built with its image header
    original = fits.CompImageHDU.__init__

    def counted(self, *args, **kwargs):
        rebuilt.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(fits.CompImageHDU, "__init__", counted)
    exposure = read_apz(path)
    assert not rebuilt
    with fits.open(path) as hdul:
        want = [
            [(c.keyword, c.value, c.comment) for c in hdul[i].header.cards
             if not _STRUCTURAL.match(c.keyword)]
            for i in range(1, 5)
        ]  # fmt: skip
    got = [
        [(c.keyword, c.value, c.comment) for c in h.cards]
        for h in (exposure.header, *exposure.read_headers)
    ]
    assert got == want
    assert rebuilt  # the comparison above did build astropy's image headers
    assert [c.keyword for c in exposure.header.cards][-2:] == ["HISTORY", "COMMENT"]
    assert exposure.read_headers[1]["OBSCMNT"] == "TFORM1 in a comment"


@pytest.mark.parametrize("compressed", [True, False])
def test_hand_built_raw_layout_reads_back_exactly(tmp_path, raw_apz, compressed):
    rng = np.random.default_rng(11)
    reads = 9000 + np.cumsum(rng.integers(0, 3000, size=(6, 9, 13)), axis=0)
    path = raw_apz(tmp_path / "asR-c-52240041.apz", reads, compressed=compressed)
    with fits.open(path, disable_image_compression=True) as hdul:
        # The raw layout really stores read 1 as int16 with BZERO 32768.
        header = hdul[2].header
        assert header.get("ZBITPIX", header["BITPIX"]) == 16 and header["BZERO"] == 32768
    exposure = read_apz(path)
    assert np.array_equal(exposure.reads, reads)
    assert exposure.reads.dtype.isnative  # uncompressed FITS is big-endian on disk
    assert (exposure.telescope, exposure.mjd, exposure.name.exposure) == ("lco", 60786, 41)
    assert (exposure.read_times[1] - exposure.read_times[0]).sec == pytest.approx(1.0)


def test_partial_reads_and_rows(tmp_path):
    reads = simulated_chip(8)
    path = write_simulated_apz(tmp_path, reads)
    expected = read_apz(path).reads
    part = read_apz(path, reads=slice(2, 5), rows=slice(3, 9))
    assert np.array_equal(part.reads, expected[2:5, 3:9])
    assert part.rows == slice(3, 9, 1)
    assert part.read_indices.tolist() == [2, 3, 4]
    assert part.read_times.isot.tolist() == read_apz(path).read_times[2:5].isot.tolist()
    picked = read_apz(path, reads=[0, 7])
    assert np.array_equal(picked.reads, expected[[0, 7]])


def test_reads_rebuilt_into_a_given_array(tmp_path):
    """``out``: the reads of another file rebuilt into an array already made, which is returned;
    an array they do not fit as they are is refused, unwritten."""
    path = write_simulated_apz(tmp_path, simulated_chip(6))
    other = write_simulated_apz(tmp_path, simulated_chip(6, seed=1), exposure=2)
    expected = read_apz(path).reads
    out = read_apz(other).reads  # another chip's cube, done with
    raw = read_apz(path, out=out)
    assert raw.reads is out and np.array_equal(out, expected)
    part = np.zeros((3, 6, NX), np.float32)
    read_apz(path, reads=slice(2, 5), rows=slice(3, 9), dtype=np.float32, out=part)
    assert np.array_equal(part, expected[2:5, 3:9])
    read_only = np.zeros((6, NY, NX), np.uint16)
    read_only.flags.writeable = False
    wrong = {
        "shape": np.zeros((5, NY, NX), np.uint16),
        "dtype": np.zeros((6, NY, NX), np.int32),
        "C-contiguous": np.zeros((6, NY, 2 * NX), np.uint16)[:, :, ::2],
        "writeable": read_only,
    }
    for what, array in wrong.items():
        with pytest.raises(ValueError, match=r"out: expected a C-contiguous writeable \(6, 24"):
            read_apz(path, out=array)
        assert not array.any(), what
    with pytest.raises(TypeError, match="out: expected a NumPy array"):
        read_apz(path, out=[0])


def test_partial_read_does_not_touch_later_hdus(tmp_path, raw_apz):
    reads = 100 + np.cumsum(np.ones((4, 3, 5), dtype=np.int64), axis=0)
    path = raw_apz(tmp_path / "apR-a-52190001.apz", reads)
    with fits.open(path) as hdul:  # damage the last residual: a wrong shape
        hdul[5] = fits.CompImageHDU(np.zeros((2, 5), np.int32), hdul[5].header)
        hdul.writeto(tmp_path / "apR-a-52190002.apz")
    damaged = tmp_path / "apR-a-52190002.apz"
    assert np.array_equal(read_apz(damaged, reads=slice(0, 3)).reads, reads[:3])
    with pytest.raises(InputError, match="HDU 5"):
        read_apz(damaged)


def test_hdu_count_wins_over_nread_with_one_warning(tmp_path, raw_apz):
    reads = 100 + np.cumsum(np.ones((3, 2, 4), dtype=np.int64), axis=0)
    path = raw_apz(tmp_path / "apR-a-52190001.apz", reads, exposure_cards=[])
    with fits.open(path) as hdul:
        hdul[1].header["NREAD"] = 47
        hdul.writeto(tmp_path / "apR-a-52190003.apz")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exposure = read_apz(tmp_path / "apR-a-52190003.apz")
    assert exposure.n_reads == 3
    relevant = [w for w in caught if issubclass(w.category, InputWarning)]
    assert len(relevant) == 1 and "NREAD = 47" in str(relevant[0].message)


@pytest.mark.parametrize("hdu, keyword, value", [(1, "NREAD", "NAN"), (1, "INTOFF", "1.2.3"),
                                                 (3, "DATE-OBS", "2025-04-20"),
                                                 # structural cards, read lazily by astropy
                                                 (3, "ZNAXIS", "1.2.3"), (2, "BZERO", "3276.8.0"),
                                                 (3, "ZIMAGE", "X")])  # fmt: skip
def test_an_unparsable_card_is_an_input_error_naming_it(tmp_path, hdu, keyword, value):
    reads = simulated_chip(3, ny=2)
    _, headers = make_headers(3, date_obs="2025-04-20T04:00:00.000", chip="a")
    path = write_apz(tmp_path / "apR-a-52190001.apz", reads.astype(np.uint16), headers)
    data = bytearray(path.read_bytes())
    with fits.open(path) as hdul:
        start = hdul.fileinfo(hdu)["hdrLoc"]
    at = data.index(f"{keyword:<8}=".encode(), start)
    data[at : at + 80] = f"{keyword:<8}= {value:>20}".ljust(80).encode()  # unquoted: unparsable
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=rf"{path.name}: HDU {hdu} {keyword}: expected a read"):
        read_apz(path)


def test_a_card_given_twice_with_two_values_is_refused(tmp_path):
    """``NREAD = 3`` then ``NREAD = 5`` (or two CHIPs, two GAINs): the first won, silently. The
    same value twice is harmless."""
    reads = simulated_chip(3, ny=2)
    _, headers = make_headers(3, date_obs="2025-04-20T04:00:00.000", chip="a")
    path = write_apz(tmp_path / "apR-a-52190001.apz", reads.astype(np.uint16), headers)
    clean = path.read_bytes()
    with fits.open(path) as hdul:
        start = hdul.fileinfo(1)["hdrLoc"]
    for value, works in ((5, False), (3, True)):
        data = bytearray(clean)
        at = data.index(b"INTDELAY=", start)  # replaced by a second NREAD card
        data[at : at + 80] = f"NREAD   = {value:>20}".ljust(80).encode()
        path.write_bytes(bytes(data))
        if works:
            assert read_apz(path).n_reads == 3
        else:
            with pytest.raises(InputError, match=r"HDU 1 NREAD: expected one value, found 2 cards"):
                read_apz(path)


@pytest.mark.parametrize("year", ["9999", "1500"])
def test_dates_outside_sdss_s_era_are_refused_without_erfa_s_warnings(tmp_path, year):
    """Year 9999 went into the product as its read times (exit 0), with ERFA's "dubious year"
    warnings and their source lines on stderr."""
    import warnings

    reads = simulated_chip(3, ny=2)
    _, headers = make_headers(3, date_obs=f"{year}-04-20T04:00:00.000", chip="a")
    path = write_apz(tmp_path / "apR-a-52190001.apz", reads.astype(np.uint16), headers)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InputError, match=r"DATE-OBS: expected a date of SDSS's era"):
            read_apz(path)
    assert not [w for w in caught if "dubious" in str(w.message)]


def test_a_read_image_taller_than_hdu_1_is_refused(tmp_path):
    """Rows beyond HDU 1's in a read's HDU were ignored (the first rows read back): every
    image's shape is checked against HDU 1's from the headers, before any pixel."""
    reads = simulated_chip(3, ny=2)
    _, headers = make_headers(3, date_obs="2025-04-20T04:00:00.000", chip="a")
    path = write_apz(tmp_path / "apR-a-52190001.apz", reads.astype(np.uint16), headers)
    data = bytearray(path.read_bytes())
    with fits.open(path) as hdul:
        start = hdul.fileinfo(3)["hdrLoc"]
    at = data.index(b"ZNAXIS2 =", start)
    data[at : at + 80] = f"ZNAXIS2 = {2000000000:>20}".ljust(80).encode()
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"HDU 3: expected shape \(2, 2560\) like HDU 1"):
        read_apz(path)


def test_an_image_taller_than_the_detector_is_refused_as_transposed(tmp_path):
    """A transposed (2560, 2048) image was fitted on its side: more rows than the H2RG's 2048 are
    refused from the headers (every HDU's ZNAXIS2 says 2560 here), before any pixel."""
    reads = simulated_chip(3, ny=2)
    _, headers = make_headers(3, date_obs="2025-04-20T04:00:00.000", chip="a")
    path = write_apz(tmp_path / "apR-a-52190001.apz", reads.astype(np.uint16), headers)
    data = bytearray(path.read_bytes())
    at = data.find(b"ZNAXIS2 =")
    while at >= 0:
        data[at : at + 80] = f"ZNAXIS2 = {2560:>20}".ljust(80).encode()
        at = data.find(b"ZNAXIS2 =", at + 80)
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"HDU 1: expected at most 2048 rows.*transposed"):
        read_apz(path)


@pytest.mark.parametrize("timesys, scale", [("TAI", "tai"), ("UTC", "utc"), (None, "utc")])
def test_read_times_from_exposure_header_honour_timesys(tmp_path, raw_apz, timesys, scale):
    reads = 100 + np.cumsum(np.ones((4, 2, 4), dtype=np.int64), axis=0)
    cards = [("DATE-OBS", "2025-04-20T04:00:00.000"), ("INTOFF", 10647), ("INTDELAY", 0.1)]
    if timesys is not None:
        cards.append(("TIMESYS", timesys))
    path = raw_apz(
        tmp_path / "apR-a-52190001.apz",
        reads,
        exposure_cards=cards,
        read_cards=[[] for _ in range(4)],  # no per-read dates: use the exposure header
    )
    times = read_apz(path).read_times
    assert times.scale == scale
    start = Time("2025-04-20T04:00:00.000", scale=scale)
    offsets = (times - start).sec
    assert np.allclose(offsets, 0.1 + 10.647 * np.arange(4), atol=1e-6)


def test_per_read_dates_are_used_in_their_timesys(tmp_path):
    path = write_simulated_apz(tmp_path, simulated_chip(3), timesys="TAI")
    exposure = read_apz(path)
    assert exposure.read_times.scale == "tai"
    assert exposure.read_times.isot.tolist() == [h["DATE-OBS"] for h in exposure.read_headers]
    # TAI - UTC = 37 s in 2025: the same wall-clock string means a different instant.
    utc = read_apz(write_simulated_apz(tmp_path, simulated_chip(3), exposure=2)).read_times
    assert (exposure.read_times[0] - utc[0]).sec == pytest.approx(-37.0)


def test_a_read_hdu_given_twice_is_refused_by_its_repeated_date(tmp_path):
    """HDU order 0..5, 5, 6.. (read 4's residual twice, its DATE-OBS too): the repeated date was
    taken for "no dates of the reads' own", INTOFF gave 11 read times to a 10-read exposure, and
    read 4 counted twice (exit 0, an NREAD warning only)."""
    path = write_simulated_apz(tmp_path, simulated_chip(10, ny=2))
    with fits.open(path, disable_image_compression=True) as hdul:
        spans = [(info["hdrLoc"], info["datLoc"] + info["datSpan"])
                 for info in map(hdul.fileinfo, range(len(hdul)))]  # fmt: skip
    data = path.read_bytes()
    path.write_bytes(b"".join(data[slice(*spans[i])] for i in [0, 1, 2, 3, 4, 5, 5, *range(6, 12)]))
    words = r"HDU 6 DATE-OBS: expected times increasing from read to read, found the same as HDU 5"
    for rows in (None, slice(0, 0)):  # slice(0, 0): headers only, what the survey reads
        with pytest.warns(InputWarning, match="NREAD"), pytest.raises(InputError, match=words):
            read_apz(path, rows=rows)
    with pytest.warns(InputWarning, match="NREAD"):  # the reads before it: their own dates
        assert read_apz(path, reads=slice(0, 4)).read_times.size == 4


@pytest.mark.parametrize("dates, words", [
    ([0, 1, 1, 2], r"HDU 4 DATE-OBS: expected times increasing .*, found the same as HDU 3 "),
    ([0, 2, 1, 3], r"DATE-OBS of the reads: expected times increasing from read to read, found "
                   r"HDU 4's '2025-04-20T04:00:01.000', earlier than HDU 3's"),
])  # fmt: skip
def test_per_read_dates_repeated_or_going_back_name_the_hdu(tmp_path, raw_apz, dates, words):
    reads = 100 + np.cumsum(np.ones((4, 2, 4), dtype=np.int64), axis=0)
    cards = [[("DATE-OBS", f"2025-04-20T04:00:{k:02d}.000")] for k in dates]
    path = raw_apz(tmp_path / "apR-a-52190001.apz", reads, read_cards=cards)
    with pytest.raises(InputError, match=words):
        read_apz(path)


def test_read_headers_that_copy_the_exposure_date_take_the_times_from_intoff(tmp_path, raw_apz):
    """Every read header with the exposure header's DATE-OBS: they date no read, so the times
    are DATE-OBS + INTDELAY + k * INTOFF, not an error for dates that do not rise."""
    reads = 100 + np.cumsum(np.ones((4, 2, 4), dtype=np.int64), axis=0)
    date = ("DATE-OBS", "2025-04-20T04:00:00.000")
    path = raw_apz(
        tmp_path / "apR-a-52190001.apz", reads,
        exposure_cards=[date, ("INTOFF", 10647), ("INTDELAY", 0.1)], read_cards=[[date]] * 4,
    )  # fmt: skip
    times = read_apz(path).read_times
    offsets = (times - Time(date[1], scale="utc")).sec
    assert np.allclose(offsets, 0.1 + 10.647 * np.arange(4), atol=1e-6)


@pytest.mark.parametrize("separator", ["T", " "])
def test_reads_are_freed_when_dropped(tmp_path, separator):
    # The reads must not outlive the result in a reference cycle (astropy's format guessing
    # keeps its exceptions, whose tracebacks hold every calling frame): a chip's cube would stay
    # until Python's next full collection, on top of the next chip's.
    import gc
    import weakref

    path = write_simulated_apz(tmp_path, simulated_chip(3))
    if separator == " ":
        with fits.open(path, mode="update") as hdul:
            for hdu in hdul[2:]:
                hdu.header["DATE-OBS"] = hdu.header["DATE-OBS"].replace("T", " ")
    gc.collect()
    gc.disable()
    try:
        exposure = read_apz(path)
        assert exposure.read_times.isot[0].endswith(exposure.read_headers[0]["DATE-OBS"][-12:])
        reads = weakref.ref(exposure.reads)
        del exposure
        assert reads() is None
    finally:
        gc.enable()


def test_file_names_and_exposure_numbers():
    assert exposure_number(60781.2, 65, "apo") == 52190065
    assert exposure_number(60780.75, 65, "apo") == 52190065  # 0.75 + 0.3 rolls over
    assert exposure_number(60780.65, 65, "lco") == 52190065  # 0.65 + 0.4 rolls over
    assert exposure_number(60780.65, 65, "apo") == 52180065
    assert apz_filename("lco", "c", 52190065) == "asR-c-52190065.apz"
    name = parse_apz_name("/data/apogee/apo/60781/apR-a-52190065.apz")
    assert (name.telescope, name.chip, name.mjd, name.exposure) == ("apo", "a", 60781, 65)
    with pytest.raises(ValueError, match="telescope"):
        exposure_number(60781, 1, "keck")


def test_write_apz_rejects_bad_arguments_and_is_atomic(tmp_path):
    _, read_headers = make_headers(2, date_obs="2025-01-01T00:00:00", chip="a")
    path = tmp_path / "apR-a-52190001.apz"
    with pytest.raises(ValueError, match="0, 65535"):
        write_apz(path, np.full((2, 2, 2), 70000), read_headers)
    with pytest.raises(ValueError, match="whole numbers"):
        write_apz(path, np.full((2, 2, 2), 1.5), read_headers)
    with pytest.raises(ValueError, match="one per read"):
        write_apz(path, np.ones((3, 2, 2)), read_headers)
    with pytest.raises(ValueError, match="at most 2048 rows"):  # read_apz would refuse it
        write_apz(path, np.ones((2, 2049, 1)), read_headers)
    write_apz(path, np.ones((2, 2, 2)), read_headers)
    with pytest.raises(FileExistsError):
        write_apz(path, np.ones((2, 2, 2)), read_headers)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left
