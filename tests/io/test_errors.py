"""Malformed input: every case raises InputError naming the file and the field at fault."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from astropy.io import fits

from pyapred.errors import InputError, InputWarning, ReadRangeError
from pyapred.io import (
    make_headers,
    read_apz,
    read_ar1d,
    read_ar2d,
    read_ar3dcal,
    read_product,
    write_apz,
    write_product,
)
from pyapred.io.product import ChipImages
from pyapred.traces import read_trace_file

RAMP = 1000 + np.cumsum(np.full((3, 4, 6), 7, dtype=np.int64), axis=0)


def assert_input_error(call, path, field):
    with pytest.raises(InputError) as caught:
        call()
    message = str(caught.value)
    assert str(path) in message, message
    assert field in message, message
    assert caught.value.field.startswith(field) or field in caught.value.field
    return caught.value


@pytest.fixture
def good_apz(tmp_path, raw_apz):
    """Make a valid small .apz in ``tmp_path``; keywords go to the conftest builder."""

    def build(name="apR-a-52190001.apz", **kwargs):
        return raw_apz(tmp_path / name, RAMP, **kwargs)

    return build


def rewrite(path, new_name, edit):
    """Copy an .apz with ``edit(hdul)`` applied."""
    target = path.with_name(new_name)
    with fits.open(path) as hdul:
        edit(hdul)
        hdul.writeto(target)
    return target


# --------------------------------------------------------------------------------------------
# .apz
# --------------------------------------------------------------------------------------------
def test_apz_bad_file_name(tmp_path, good_apz):
    path = good_apz(name="exposure.apz")
    assert_input_error(lambda: read_apz(path), path, "file name")


@pytest.mark.parametrize("cut, field", [(3000, "file size"), (2880, "FITS structure")])
def test_apz_truncated_file(tmp_path, good_apz, cut, field):
    data = good_apz().read_bytes()
    truncated = tmp_path / "apR-a-52190002.apz"
    truncated.write_bytes(data[: len(data) - cut])  # 2880: whole blocks, the last HDU cut short
    assert_input_error(lambda: read_apz(truncated), truncated, field)


def test_apz_not_fits(tmp_path):
    path = tmp_path / "apR-a-52190001.apz"
    path.write_bytes(b"this is not a FITS file!" * 240)  # two 2880-byte blocks
    assert_input_error(lambda: read_apz(path), path, "FITS structure")


def test_apz_missing_read_hdu(tmp_path, good_apz):
    path = rewrite(good_apz(), "apR-a-52190002.apz", lambda h: h.__delitem__(slice(2, None)))
    assert_input_error(lambda: read_apz(path), path, "HDU count")


def test_apz_residual_of_wrong_shape(tmp_path, good_apz):
    def edit(hdul):
        hdul[3] = fits.CompImageHDU(np.zeros((4, 5), np.int32), hdul[3].header)

    path = rewrite(good_apz(), "apR-a-52190002.apz", edit)
    error = assert_input_error(lambda: read_apz(path), path, "HDU 3")
    assert "(4, 6)" in str(error)


def test_apz_read1_of_wrong_dtype(tmp_path, good_apz):
    def edit(hdul):
        hdul[2] = fits.CompImageHDU(hdul[2].data.astype(np.int32), hdul[2].header)

    path = rewrite(good_apz(), "apR-a-52190002.apz", edit)
    error = assert_input_error(lambda: read_apz(path), path, "HDU 2")
    assert "uint16" in str(error)


def test_apz_float_data(tmp_path, good_apz):
    def edit(hdul):
        hdul[4] = fits.ImageHDU(hdul[4].data.astype(np.float32), hdul[4].header)

    path = rewrite(good_apz(), "apR-a-52190002.apz", edit)
    error = assert_input_error(lambda: read_apz(path), path, "HDU 4")
    assert "integer" in str(error)


def test_apz_table_instead_of_image(tmp_path, good_apz):
    def edit(hdul):
        hdul[1] = fits.BinTableHDU.from_columns([fits.Column("a", "J", array=[1, 2])])

    path = rewrite(good_apz(), "apR-a-52190002.apz", edit)
    assert_input_error(lambda: read_apz(path), path, "HDU 1")


@pytest.mark.parametrize(
    "keyword, value, field",
    [
        ("ZNAXIS1", "abc", "HDU 3"),  # a shape astropy's image header would carry as it is
        ("ZNAXIS1", -4, "HDU 3"),
        ("ZNAXIS", 3, "HDU 3"),  # no ZNAXIS3 card
        ("ZNAXIS", 10**9, "HDU 3"),
        ("ZBITPIX", None, "FITS structure"),  # astropy cannot open it as an image at all
        ("ZBITPIX", 8, "HDU 3"),  # astropy cast the 32-bit pixels to uint8: wrapped, silently
        ("ZBITPIX", 16, "HDU 3"),
        ("ZCMPTYPE", "FOO_1", "HDU 3"),
    ],
)
@pytest.mark.filterwarnings("ignore:Unknown compression type")  # astropy's, for FOO_1
def test_apz_damaged_compression_cards(tmp_path, good_apz, keyword, value, field):
    # The file is read with image compression off (its headers are the tables'): a damaged Z
    # card is found there, or by astropy when it is asked to decode the HDU.
    target = tmp_path / "apR-a-52190002.apz"
    with fits.open(good_apz(), disable_image_compression=True) as hdul:
        if value is None:
            del hdul[3].header[keyword]
        else:
            hdul[3].header[keyword] = value
        hdul.writeto(target, output_verify="ignore")
    assert_input_error(lambda: read_apz(target), target, field)


@pytest.mark.parametrize(
    ("sides", "words"),
    [
        # An empty image read back without an error; the trace file was blamed for it.
        ({"ZNAXIS1": 0}, "of 1 or more rows and columns"),
        # 522 GiB asked for by a 219 kB file: a MemoryError traceback while the chip loaded.
        ({"ZNAXIS1": 2_000_000_000, "ZTILE1": 2_000_000_000}, "fit in memory as float32"),
    ],
)
def test_apz_declared_sizes_are_checked(tmp_path, good_apz, sides, words):
    target = tmp_path / "apR-a-52190002.apz"
    with fits.open(good_apz(), disable_image_compression=True) as hdul:
        for hdu in hdul[1:]:
            for keyword, value in sides.items():
                hdu.header[keyword] = value
        hdul.writeto(target, output_verify="ignore")
    error = assert_input_error(lambda: read_apz(target, rows=slice(0, 0)), target, "HDU 1")
    assert words in str(error)


def test_apz_read_without_a_date_among_dated_reads(tmp_path, good_apz):
    """An image HDU appended became a made-up read, and the reads' date checks were dropped for
    all (only an NREAD warning, exit 0)."""

    def edit(hdul):
        hdul.append(fits.ImageHDU(np.zeros_like(hdul[2].data)))

    dated = [[("DATE-OBS", f"2025-04-20T04:00:{10 * k:02d}")] for k in range(3)]
    path = rewrite(good_apz(read_cards=dated), "apR-a-52190002.apz", edit)
    with pytest.warns(InputWarning, match="NREAD"):
        assert_input_error(lambda: read_apz(path), path, "HDU 5 DATE-OBS")


def test_apz_counts_out_of_uint16_range(tmp_path, good_apz):
    def edit(hdul):
        hdul[4] = fits.CompImageHDU(hdul[4].data + 70000, hdul[4].header)

    good = good_apz()
    path = rewrite(good, "apR-a-52190002.apz", edit)
    error = assert_input_error(lambda: read_apz(path), path, "HDU 4")
    assert "read 3 in [0, 65535]" in str(error)
    assert isinstance(error, ReadRangeError)
    # The pipeline reads raw chips as uint16, and such a file as float32, exactly.
    from pyapred.exposure import load_chip

    chip = load_chip(path, gain=1.9, read_noise=12.0)
    assert chip.reads.dtype == np.float32
    assert np.array_equal(chip.reads, read_apz(path, dtype=np.float32).reads)
    assert chip.reads.max() > 65535
    uint16 = load_chip(good, gain=1.9, read_noise=12.0).reads
    assert uint16.dtype == np.uint16
    # An earlier chip's cube to fill (the driver's): taken for uint16 reads; float32 ones get
    # a new array.
    assert load_chip(good, gain=1.9, read_noise=12.0, out=uint16).reads is uint16
    chip = load_chip(path, gain=1.9, read_noise=12.0, out=uint16)
    assert chip.reads.dtype == np.float32 and chip.reads.max() > 65535


def test_apz_chip_disagrees_with_file_name(tmp_path, good_apz):
    path = good_apz(exposure_cards=[("CHIP", "c")])
    assert_input_error(lambda: read_apz(path), path, "HDU 1 CHIP")


def test_apz_unknown_timesys(tmp_path, good_apz):
    path = good_apz(exposure_cards=[("TIMESYS", "LOCAL")])
    assert_input_error(lambda: read_apz(path), path, "HDU 1 TIMESYS")


def test_apz_unparsable_date(tmp_path, good_apz):
    cards = [[("DATE-OBS", "2025-04-20T04:00:00")], [("DATE-OBS", "yesterday")], []]
    path = good_apz(read_cards=cards + [[]])
    # Reads dated and reads not: the undated one is named (the exposure header's missing date
    # was, the reads' dates dropped for all).
    assert_input_error(lambda: read_apz(path), path, "HDU 4 DATE-OBS")
    path = good_apz(name="apR-a-52190002.apz", read_cards=[[], [], []])
    assert_input_error(lambda: read_apz(path), path, "HDU 1 DATE-OBS")  # none dated: the header's
    cards = [[("DATE-OBS", f"2025-04-20T04:00:0{k}")] for k in range(2)] + [[("DATE-OBS", "x")]]
    path = good_apz(name="apR-a-52190003.apz", read_cards=cards)
    assert_input_error(lambda: read_apz(path), path, "HDU 4 DATE-OBS")


def test_apz_missing_read_period(tmp_path, good_apz):
    cards = [("DATE-OBS", "2025-04-20T04:00:00"), ("INTDELAY", 0.1)]
    path = good_apz(exposure_cards=cards, read_cards=[[], [], []])
    assert_input_error(lambda: read_apz(path), path, "HDU 1 INTOFF")


def test_apz_dates_going_backwards(tmp_path, good_apz):
    cards = [[("DATE-OBS", f"2025-04-20T04:00:0{k}")] for k in (0, 2, 1)]
    path = good_apz(read_cards=cards)
    assert_input_error(lambda: read_apz(path), path, "DATE-OBS of the reads")


# --------------------------------------------------------------------------------------------
# ApogeeReduction.jl HDF5
# --------------------------------------------------------------------------------------------
def h5(path, **datasets):
    with h5py.File(path, "w") as handle:
        for key, value in datasets.items():
            handle[key] = value
    return path


def test_hdf5_not_hdf5(tmp_path):
    path = tmp_path / "ar2D_apo_60781_0065_R_object.h5"
    path.write_bytes(b"\x89HDF not really" * 100)
    assert_input_error(lambda: read_ar2d(path), path, "HDF5 structure")


def test_hdf5_truncated(tmp_path):
    path = h5(tmp_path / "full.h5", dimage=np.ones((2048, 2560)), ivarimage=np.ones((2048, 2560)))
    truncated = tmp_path / "ar2D_apo_60781_0065_R_object.h5"
    truncated.write_bytes(path.read_bytes()[:1_000_000])
    with pytest.raises(InputError) as caught:
        read_ar2d(truncated)
    assert str(truncated) in str(caught.value)
    assert caught.value.field in ("HDF5 structure", "dimage", "ivarimage")


def test_ar2d_missing_dataset(tmp_path):
    path = h5(tmp_path / "ar2D_apo_60781_0065_R_object.h5", dimage=np.ones((2048, 2560)))
    assert_input_error(lambda: read_ar2d(path), path, "ivarimage")


def test_ar2d_image_in_the_wrong_axis_order(tmp_path):
    # Written from NumPy as (x, y) instead of Julia's layout: h5py shows (2560, 2048).
    path = h5(tmp_path / "ar2D.h5", dimage=np.ones((2560, 2048)), ivarimage=np.ones((2560, 2048)))
    error = assert_input_error(lambda: read_ar2d(path), path, "dimage")
    assert "(2048, 2560)" in str(error) and "(2560, 2048)" in str(error)


def test_ar2d_bitmask_of_wrong_dtype(tmp_path):
    image = np.ones((2048, 2560))
    path = h5(tmp_path / "ar2Dcal.h5", dimage=image, ivarimage=image, pix_bitmask=image)
    assert_input_error(lambda: read_ar2d(path), path, "pix_bitmask")


def test_trace_params_of_wrong_shape(tmp_path):
    # A NumPy (2048, 300, 3) array written directly, not in Julia's layout.
    path = h5(tmp_path / "traceMain_apo_60781_R.h5", trace_params=np.ones((2048, 300, 3)))
    error = assert_input_error(lambda: read_trace_file(path), path, "trace_params")
    assert "(3, 300, 2048)" in str(error)


def test_trace_params_missing(tmp_path):
    path = h5(tmp_path / "traceMain_apo_60781_R.h5", trace_param_covs=np.ones(3))
    assert_input_error(lambda: read_trace_file(path), path, "trace_params")


@pytest.mark.parametrize("damage", ["null", "link loop", "declared huge", "huge metadata"])
def test_trace_params_that_hdf5_cannot_hand_over(tmp_path, damage):
    """A null dataspace, a soft link to itself, a chunked dataset declared with 2**40 columns
    (a few kB on disk): a TypeError, RuntimeError or MemoryError traceback, exit 1."""
    path = h5(tmp_path / "traceMain_apo_60781_R.h5", trace_params=np.ones((3, 4, 8)))
    field = "metadata/blob" if damage == "huge metadata" else "trace_params"
    with h5py.File(path, "a") as handle:
        if damage != "huge metadata":
            del handle["trace_params"]
        if damage == "null":
            handle["trace_params"] = h5py.Empty("f8")
        elif damage == "link loop":
            handle["trace_params"] = h5py.SoftLink("/trace_params")
        elif damage == "declared huge":
            handle.create_dataset("trace_params", (3, 4, 2**40), "f8", chunks=(1, 1, 1024))
        else:
            handle.create_dataset("metadata/blob", (2**40,), "f8", chunks=(2**16,))
    error = assert_input_error(lambda: read_trace_file(path), path, field)
    if damage == "declared huge":  # refused on its declared shape, before any read
        assert "at most 4096 columns, found 4 fibers x 1099511627776 columns" in str(error)
    elif damage == "huge metadata":  # refused before memory is asked: no metadata is that big
        assert "expected a metadata value of at most 256 MiB" in str(error)


def test_trace_centers_of_wrong_shape(tmp_path, julia):
    centers = julia(np.ones((2048, 299)))  # one fiber short
    path = h5(tmp_path / "ar1Dcal_apo_60781_0065_R_object.h5", extract_trace_centers=centers)
    assert_input_error(lambda: read_ar1d(path), path, "extract_trace_centers")


@pytest.mark.parametrize("mid", [None, np.nan, np.inf, -1.0, 1e300, True, 50000.0, 60783.5])
def test_ar3dcal_without_mid_exposure_time(tmp_path, mid):
    """Missing, or NaN, inf, 1e300 (astropy's traceback, exit 1), negative, a bool, or a time
    of another night than the name's (it became the product's read times)."""
    path = h5(
        tmp_path / "ar3Dcal_apo_60781_0065_R_object.h5",
        outdat=np.ones((2, 2048, 2560), np.float32),
        gainMat=np.ones((2048, 2560)),
        readVarMat=np.ones((2048, 2560)),
    )
    if mid is not None:
        with h5py.File(path, "a") as handle:
            handle["metadata/mjd_mid_exposure"] = mid
    assert_input_error(lambda: read_ar3dcal(path), path, "metadata/mjd_mid_exposure")


@pytest.mark.parametrize(
    "method, last, field",
    [("sutr_wood", 2, "last_unsaturated"), ("sutr_wood", -2, "last_unsaturated"),
     ("dcs", -1, "last_unsaturated"), ("dcs", 3, "last_unsaturated"),
     ("boxcar", 1, "metadata/extraction_method")],
)  # fmt: skip
def test_ar3dcal_last_unsaturated_out_of_range(tmp_path, method, last, field):
    """A difference index beyond the file's differences (a read index for dcs) or an unknown
    extraction method: which pixels saturate cannot be told."""
    path = h5(
        tmp_path / "ar3Dcal_apo_60781_0065_R_object.h5",
        outdat=np.ones((2, 2048, 2560), np.float32),
        gainMat=np.ones((2048, 2560)),
        readVarMat=np.ones((2048, 2560)),
        last_unsaturated=np.full((2048, 2560), 1),
    )
    with h5py.File(path, "a") as handle:
        handle["last_unsaturated"][7, 9] = last
        handle["metadata/mjd_mid_exposure"] = 60781.25
        handle["metadata/extraction_method"] = method
    assert_input_error(lambda: read_ar3dcal(path), path, field)


def test_ar3dcal_cube_of_wrong_shape(tmp_path):
    path = h5(tmp_path / "ar3Dcal_apo_60781_0065_R_object.h5", outdat=np.ones((2048, 2560)))
    assert_input_error(lambda: read_ar3dcal(path), path, "outdat")


# --------------------------------------------------------------------------------------------
# Products
# --------------------------------------------------------------------------------------------
def small_product(path):
    ones = np.ones((3, 4))
    return write_product(path, chips={"R": ChipImages(ones, ones, ones, ones.astype(int))})


def test_product_from_an_incompatible_version(tmp_path):
    path = small_product(tmp_path / "p.h5")
    with h5py.File(path, "a") as handle:
        handle.attrs["pyapred_product_format"] = 3
    error = assert_input_error(lambda: read_product(path), path, "pyapred_product_format")
    assert "incompatible version" in str(error)


def test_fits_product_from_an_incompatible_version(tmp_path):
    path = small_product(tmp_path / "p.fits")
    with fits.open(path, mode="update") as hdul:
        hdul[0].header["PAPFMT"] = 3
    error = assert_input_error(lambda: read_product(path), path, "HDU 0 PAPFMT")
    assert "incompatible version" in str(error)


def test_fits_product_missing_an_image(tmp_path):
    path = small_product(tmp_path / "p.fits")
    with fits.open(path) as hdul:
        del hdul["R_CHI2"]
        hdul.writeto(tmp_path / "q.fits")
    assert_input_error(lambda: read_product(tmp_path / "q.fits"), tmp_path / "q.fits", "R images")


def test_product_not_a_pyapred_file(tmp_path):
    path = h5(tmp_path / "p.h5", dimage=np.ones((3, 4)))
    assert_input_error(lambda: read_product(path), path, "pyapred_product_format")


def test_product_image_of_wrong_shape(tmp_path):
    path = small_product(tmp_path / "p.h5")
    with h5py.File(path, "a") as handle:
        del handle["R/chisqimage"]
        handle["R/chisqimage"] = np.ones((4, 3))
    assert_input_error(lambda: read_product(path), path, "R/chisqimage")


def test_write_errors_are_not_input_errors(tmp_path):
    # Bad arguments are the caller's mistake: ValueError, and nothing is written.
    _, read_headers = make_headers(1, date_obs="2025-01-01T00:00:00", chip="a")
    with pytest.raises(ValueError) as caught:
        write_apz(tmp_path / "apR-a-52190001.apz", np.full((1, 2, 2), -1), read_headers)
    assert not isinstance(caught.value, InputError)
    assert list(tmp_path.iterdir()) == []
    # No pixel: NumPy's "zero-size array to reduction operation minimum" before.
    with pytest.raises(ValueError, match=r"reads: expected shape \(n_reads, ny, nx\), each at"):
        write_apz(tmp_path / "apR-a-52190001.apz", np.zeros((1, 2, 0), np.uint16), read_headers)
    assert list(tmp_path.iterdir()) == []


def test_reads_selected_backwards_are_the_caller_s_error(good_apz):
    """A slice with a negative step read the reads backwards and blamed the file's DATE-OBS
    (an InputError); a list in that order was already refused."""
    path = good_apz()
    for reads in (slice(None, None, -1), [2, 1]):
        with pytest.raises(ValueError, match="reads: expected strictly increasing") as caught:
            read_apz(path, reads=reads)
        assert not isinstance(caught.value, InputError)


def test_a_damaged_heap_read_as_cards_warns_a_few_printable_lines(tmp_path):
    """HDU 3's PCOUNT set to 0: astropy read its heap as the next header and warned some sixty
    times, each warning the heap's bytes (NULs, terminal control codes) on the user's stderr."""
    import warnings

    from pyapred.simulate import simulate_exposure, write_simulated_exposure

    sim = simulate_exposure("clouds", seed=1, n_fibers=10, n_columns=64, ref_columns=0,
                            n_reads=6, chips=("R",))  # fmt: skip
    path = write_simulated_exposure(sim, tmp_path)["apz"][0]
    data = bytearray(path.read_bytes())
    with fits.open(path, disable_image_compression=True) as hdul:
        start = hdul.fileinfo(3)["hdrLoc"]
    at = data.index(b"PCOUNT  =", start)
    data[at : at + 80] = f"PCOUNT  = {0:>20}".ljust(80).encode()
    path.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught, pytest.raises(InputError) as error:
        warnings.simplefilter("always")
        read_apz(path)
    # astropy fails on the next HDU: the message points at this one's size cards.
    assert "HDU 3's size cards, PCOUNT or NAXIS2" in str(error.value)
    texts = [str(w.message) for w in caught]
    assert len(texts) <= 3 and all(t.isprintable() for t in texts), texts


def test_ar3dcal_outdat_declared_but_never_written_or_in_float16(tmp_path):
    """A declared outdat with nothing stored passed the memory check and was a MemoryError
    traceback where the process had less; float16 (at most 65504 DN) was taken."""
    from pyapred.io import read_ar3dcal

    for name, dtype, write, field in (("a", "f4", False, "nothing stored"),
                                      ("b", "f2", True, "float32 or float64")):  # fmt: skip
        path = tmp_path / f"ar3Dcal_apo_60781_000{'ab'.index(name) + 1}_R_object.h5"
        with h5py.File(path, "w") as handle:
            outdat = handle.create_dataset("outdat", shape=(4, 2048, 2560), dtype=dtype,
                                           chunks=(1, 256, 2560))  # fmt: skip
            if write:
                outdat[...] = 1.0
            handle["gainMat"] = np.full((2048, 2560), 1.9)
            handle["readVarMat"] = np.full((2048, 2560), 64.0)
            handle["metadata/nread_total"] = 4
            handle["metadata/mjd_mid_exposure"] = 60781.2
        error = assert_input_error(lambda p=path: read_ar3dcal(p), path, "outdat")
        assert field in str(error)


def test_apz_average_difference_of_another_shape_is_the_one_named(tmp_path, good_apz):
    """Only HDU 1 damaged: HDU 2, which agrees with every other read, was blamed."""
    target = tmp_path / "apR-a-52190002.apz"
    with fits.open(good_apz(), disable_image_compression=True) as hdul:
        hdul[1].header["ZNAXIS1"] = 999
        hdul.writeto(target, output_verify="ignore")
    error = assert_input_error(lambda: read_apz(target, rows=slice(0, 0)), target, "HDU 1")
    assert "like the reads' HDUs" in str(error) and "999" in str(error)
