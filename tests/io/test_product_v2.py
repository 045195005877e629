"""Product format 2: compact (float32, small integer types, shuffle + gzip), self-describing
(units, descriptions, axes, fiber tables with fiberId), and format 1 still read."""

from __future__ import annotations

import dataclasses
import functools
import json
import operator

import h5py
import numpy as np
import pytest
from astropy.io import fits

import pyapred
from pyapred import Flag
from pyapred.errors import InputError
from pyapred.io import (
    ChipImages,
    FiberResults,
    ProductWriter,
    flag_dtype,
    read_metadata,
    read_product,
    write_product,
)
from pyapred.io import product as product_module

STATS = ("amplitude", "delta_chi2", "p_value", "n_fit_pixels", "n_iter")


def make_chip(rng, shape=(130, 37), n_reads=33) -> ChipImages:
    """Rows not a multiple of the chunk (64): an edge chunk; every Flag bit somewhere."""
    flags = np.zeros(shape, np.int64)
    every = [int(flag) for flag in Flag]
    flags.ravel()[: len(every)] = every
    flags[-1, -1] = functools.reduce(operator.or_, every)
    rate = rng.normal(100, 30, shape)
    rate[2, 3] = np.nan  # TOO_FEW_DIFFS pixels are NaN
    flags[2, 3] = Flag.TOO_FEW_DIFFS
    return ChipImages(
        rate=rate,
        ivar=rng.uniform(0.01, 0.1, shape),
        chi2=rng.chisquare(10, shape),
        flags=flags,
        n_diff=rng.integers(0, n_reads, shape).astype(np.int16),
    )


def make_fibers(rng, n=5, k=6, stats=True) -> FiberResults:
    omega = rng.uniform(0.5, 1.0, (n, k))
    omega[:, 2] = 1.0
    a = rng.normal(0, 0.01, (n, k, k))
    extra = {}
    if stats:
        extra = dict(
            amplitude=rng.random(n), delta_chi2=rng.chisquare(k, n), p_value=rng.random(n),
            n_fit_pixels=rng.integers(0, 2000, n), n_iter=rng.integers(1, 9, n),
        )  # fmt: skip
    return FiberResults(
        fiber_index=np.array([0, 1, 150, 298, 299])[:n],
        omega=omega,
        omega_cov=np.einsum("nij,nkj->nik", a, a),
        ref_index=np.full(n, 2),
        model=("time_variable", "constant", "borrowed", "constant", "time_variable")[:n],
        flags=np.array([0, int(Flag.FPI_FIBER), int(Flag.BORROWED_OMEGA), 0, 0])[:n],
        **extra,
    )


def assert_round_trip(product, chips, fibers):
    for key, images in chips.items():
        back = product.chips[key]
        for name in ("rate", "ivar", "chi2"):
            expected = np.asarray(getattr(images, name), np.float32)  # float32 rounding only
            assert getattr(back, name).dtype == np.float32
            assert np.array_equal(getattr(back, name), expected, equal_nan=True)
        assert np.array_equal(back.flags, images.flags) and back.flags.dtype == flag_dtype()
        assert np.array_equal(back.n_diff, images.n_diff) and back.n_diff.dtype == np.uint8
    for key, results in fibers.items():
        back = product.fibers[key]
        for name in ("fiber_index", "omega", "omega_cov", "ref_index", "flags", *STATS):
            assert np.array_equal(getattr(back, name), getattr(results, name)), name
        assert back.model == results.model and all(type(m) is str for m in back.model)
        assert np.array_equal(back.fiber_id, 300 - results.fiber_index)


# --------------------------------------------------------------------------------------------
# Format 2, HDF5
# --------------------------------------------------------------------------------------------
def test_flag_type_is_the_smallest_that_holds_every_flag():
    bits = max(int(flag) for flag in Flag).bit_length()
    types = (np.uint8, np.uint16, np.uint32, np.uint64)
    expected = next(t for t in types if bits <= 8 * np.dtype(t).itemsize)
    assert flag_dtype() == np.dtype(expected) == np.uint16  # 14 bits today
    chip = make_chip(np.random.default_rng(1))
    for bad in (-1, 1 << 20):
        flags = chip.flags.copy()
        flags[0, 0] = bad
        images = ChipImages(chip.rate, chip.ivar, chip.chi2, flags)
        with pytest.raises(ValueError, match="bits of pyapred.Flag"):
            write_product("unused.h5", chips={"R": images})


def test_format_2_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    chips = {"R": make_chip(rng), "G": make_chip(rng)}
    fibers = {"R": make_fibers(rng), "joint": make_fibers(rng, n=3, stats=False)}
    path = write_product(tmp_path / "p.h5", chips=chips, fibers=fibers, metadata={"mjd": 60781})
    product = read_product(path)
    assert product.format_version == 2 and product.metadata["format_version"] == 2
    assert_round_trip(product, chips, fibers)
    assert all(getattr(product.fibers["joint"], s) is None for s in STATS)
    # Without the images: the fibers and the metadata only.
    light = read_product(path, images=False)
    assert light.chips == {} and light.fibers.keys() == fibers.keys()
    with h5py.File(path, "r") as handle:
        assert handle.attrs["pyapred_product_format"] == 2
        for name in ("dimage", "ivarimage", "chisqimage", "ndiff", "flags"):
            dataset = handle[f"R/{name}"]
            assert dataset.compression == "gzip" and dataset.chunks == (64, 37)
            assert dataset.shuffle == (dataset.dtype.itemsize > 1)
            assert list(dataset.attrs["axes"]) == ["y", "x"]
        group = handle["fibers/R"]
        assert group["fiberId"][()].tolist() == [300, 299, 150, 2, 1]
        assert group["fiber_index"][()].tolist() == [1, 2, 151, 299, 300]  # 301 - fiberId
        assert group["fiber_index"].attrs["index_base"] == 1
        assert group.attrs["index_base"] == 1  # the group's indices, all of them
        assert group["ref_index"][()].tolist() == [3] * 5
        np.testing.assert_allclose(group["omega_mean"][()], fibers["R"].omega.mean(axis=1))
        assert "mean 1" in group["omega"].attrs["normalisation"]
        assert list(group["omega_cov"].attrs["axes"]) == ["fiber", "diff", "diff"]
        # Strings are UTF-8 strings: str through asstr() and read_product.
        assert h5py.check_string_dtype(group["model"].dtype).encoding == "utf-8"
        assert group["model"].asstr()[()].tolist()[:2] == ["time_variable", "constant"]
        assert h5py.check_string_dtype(handle["metadata/pyapred_version"].dtype).encoding == "utf-8"
        assert "flags" not in group.attrs and "R_amplitude" not in handle["metadata"]


def test_ndiff_beyond_255_reads_is_uint16(tmp_path):
    chip = make_chip(np.random.default_rng(3), shape=(4, 5))
    n_diff = np.full((4, 5), 300, np.int16)
    chip = ChipImages(chip.rate, chip.ivar, chip.chi2, chip.flags, n_diff)
    path = write_product(tmp_path / "p.h5", chips={"R": chip})
    back = read_product(path).chips["R"].n_diff
    assert back.dtype == np.uint16 and np.array_equal(back, n_diff)
    no_ndiff = ChipImages(chip.rate, chip.ivar, chip.chi2, chip.flags)
    path = write_product(tmp_path / "q.h5", chips={"R": no_ndiff})
    assert read_product(path).chips["R"].n_diff is None
    negative = ChipImages(chip.rate, chip.ivar, chip.chi2, chip.flags, -n_diff)
    with pytest.raises(ValueError, match="n_diff"):
        write_product(tmp_path / "r.h5", chips={"R": negative})


@pytest.mark.parametrize("threads", [1, 3])
def test_chunks_compressed_in_threads_are_what_hdf5_filters_read(tmp_path, threads):
    # The writer encodes chunks itself (shuffle + zlib) and hands them to HDF5 whole; HDF5's own
    # filters must decode them to the array, edge chunk included, for every stored type.
    rng = np.random.default_rng(4)
    arrays = {
        "f4": rng.normal(0, 1e3, (200, 33)).astype(np.float32),
        "u1": rng.integers(0, 255, (200, 33)).astype(np.uint8),
        "u2": rng.integers(0, 1 << 14, (65, 33)).astype(np.uint16),
        "f8": rng.normal(0, 1, (7, 3, 3)),
    }
    with h5py.File(tmp_path / "c.h5", "w") as handle:
        for name, array in arrays.items():
            product_module._write_compressed(handle, name, array, 64, threads)
    with h5py.File(tmp_path / "c.h5", "r") as handle:
        for name, array in arrays.items():
            assert np.array_equal(handle[name][()], array), name
            assert handle[name][150:151].shape[0] in (0, 1)  # partial reads go through HDF5
    with ProductWriter(tmp_path / "p.h5", threads=threads) as writer:
        assert writer.threads == threads
        writer.add_chip("R", make_chip(rng))
        writer.finish()
    with pytest.raises(ValueError, match="threads"):
        ProductWriter(tmp_path / "x.h5", threads=0)


# --------------------------------------------------------------------------------------------
# Format 1 is still read
# --------------------------------------------------------------------------------------------
def write_format_1(path, rng):
    """A format-1 product as pyapred wrote it before issue 19 (float64, int64, contiguous,
    per-fiber statistics flat in the metadata)."""
    shape = (6, 9)
    chip = {
        "dimage": rng.normal(100, 10, shape),
        "ivarimage": rng.uniform(0.01, 0.1, shape),
        "chisqimage": rng.chisquare(10, shape),
        "flags": np.full(shape, int(Flag.BACKGROUND), np.int64),
    }
    omega = np.ones((3, 4))
    omega[:, 1] = [0.9, 0.8, 0.7]
    with h5py.File(path, "w") as handle:
        handle.attrs["pyapred_product_format"] = 1
        for name, value in chip.items():
            handle[f"R/{name}"] = value
        handle["R/dimage"].attrs["units"] = "DN/read"
        group = handle.create_group("fibers/R")
        group["fiber_index"] = np.array([1, 2, 300])
        group["omega"], group["omega_cov"] = omega, np.zeros((3, 4, 4))
        group["ref_index"] = np.array([1, 1, 1])
        group.create_dataset("model", data=["constant", "time_variable", "borrowed"],
                             dtype=h5py.string_dtype())  # fmt: skip
        group["flags"] = np.zeros(3, np.int64)
        meta = handle.create_group("metadata")
        strings = {"pyapred_version": "0.1.0", "backend": "numpy", "fit_options": "{}",
                   "DATE-OBS": "2025-04-20T04:00:00.000", "TIMESYS": "TAI"}  # fmt: skip
        for key, value in strings.items():
            meta.create_dataset(key, data=value, dtype=h5py.string_dtype())
        meta.create_dataset("input_files", data=["apR-a-52190001.apz"], dtype=h5py.string_dtype())
        meta["format_version"], meta["INTOFF"], meta["NREAD"] = 1, 10647, 5
        meta["read_times_tai_mjd"] = 60781.2 + np.arange(5) * 10.647 / 86400
        meta["R_amplitude"], meta["R_p_value"] = np.array([0.0, 0.2, 0.3]), np.ones(3)
        meta["R_delta_chi2"], meta["R_n_fit_pixels"] = np.zeros(3), np.array([0, 500, 10])
    return chip, omega


def test_format_1_statistics_are_numbers_as_format_2_holds_them(tmp_path):
    """Format 1 kept the statistics in its metadata: a string amplitude, a complex delta chi2
    or a NaN count came with the fibers as they were (format 2 refuses all three)."""
    import h5py

    for key, value in (("R_amplitude", np.array([b"x"] * 3)), ("R_delta_chi2", np.full(3, 1j)),
                       ("R_n_fit_pixels", np.array([1.0, np.nan, 3.0]))):  # fmt: skip
        path = tmp_path / f"{key}.h5"
        write_format_1(path, np.random.default_rng(5))
        with h5py.File(path, "a") as handle:
            del handle["metadata"][key]
            handle["metadata"][key] = value
        with pytest.raises(InputError, match=f"metadata/{key}: expected (real|whole) numbers"):
            read_product(path)


def test_format_1_file_still_reads(tmp_path):
    path = tmp_path / "v1.h5"
    chip, omega = write_format_1(path, np.random.default_rng(5))
    product = read_product(path)
    assert product.format_version == 1
    images = product.chips["R"]
    assert images.rate.dtype == np.float64 and np.array_equal(images.rate, chip["dimage"])
    assert np.array_equal(images.flags, chip["flags"]) and images.n_diff is None
    fibers = product.fibers["R"]
    assert fibers.fiber_index.tolist() == [0, 1, 299] and fibers.fiber_id.tolist() == [300, 299, 1]
    assert fibers.model == ("constant", "time_variable", "borrowed")
    assert fibers.ref_index.tolist() == [0, 0, 0] and np.array_equal(fibers.omega, omega)
    # The statistics that format 1 kept in the metadata come with the fibers.
    assert fibers.amplitude.tolist() == [0.0, 0.2, 0.3] and fibers.n_fit_pixels[1] == 500
    assert fibers.n_iter is None
    # pyapred guider reads omega and the read times; pyapred night's resume check the metadata.
    from pyapred.guider.omega import read_product_omega

    data = read_product_omega(path)
    assert data["read_times"].size == 5 and data["fiber_index"].tolist() == [0, 1, 299]
    assert read_metadata(path)["input_files"] == ["apR-a-52190001.apz"]


def test_other_versions_are_refused(tmp_path):
    path = write_product(tmp_path / "p.h5", fibers={"R": make_fibers(np.random.default_rng(6))})
    with h5py.File(path, "a") as handle:
        handle.attrs["pyapred_product_format"] = 3
    with pytest.raises(pyapred.errors.InputError, match="format 1 or 2.*incompatible"):
        read_product(path)


# --------------------------------------------------------------------------------------------
# A real product: every dataset described
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_product(tmp_path_factory):
    from pyapred.exposure import run_exposure
    from pyapred.simulate import simulate_exposure, write_simulated_exposure

    folder = tmp_path_factory.mktemp("real")
    sim = simulate_exposure("clouds", seed=1, n_fibers=40, n_columns=96, ref_columns=16, n_reads=20)
    paths = write_simulated_exposure(sim, folder / "data")
    result = run_exposure(paths["apz"], paths["traces"], product=folder / "p.h5")
    return folder / "p.h5", paths, result


def test_every_dataset_of_a_real_product_is_described(real_product):
    path, _, _ = real_product
    seen = []

    def check(name, item):
        if not isinstance(item, h5py.Dataset):
            return
        seen.append(name)
        for attribute in ("units", "description"):
            assert attribute in item.attrs, f"{name}: no {attribute}"
            assert isinstance(item.attrs[attribute], str), f"{name}: {attribute} not a string"
        assert item.attrs["description"], f"{name}: empty description"
        if name.startswith(("R/", "G/", "B/", "fibers/")):
            axes = list(item.attrs["axes"])
            assert len(axes) == item.ndim, f"{name}: axes {axes} for shape {item.shape}"
            if item.dtype.kind != "O":
                assert item.compression == "gzip", f"{name}: not compressed"

    with h5py.File(path, "r") as handle:
        handle.visititems(check)
        assert handle["R/ndiff"].dtype == np.uint8 and handle["R/dimage"].dtype == np.float32
        assert int(handle["R/ndiff"][()].max()) == 19  # 20 reads
        for group in ("R", "G", "B"):
            fibers = handle[f"fibers/{group}"]
            assert fibers["fiberId"][()].tolist() == list(range(300, 260, -1))  # 40 fibers
            for name in ("model", "flags", "omega", "omega_cov", "omega_mean", "ref_index", *STATS):
                assert fibers[name].shape[0] == 40, name
            assert fibers["flags"].dtype == flag_dtype()
        assert handle["metadata/read_times_tai_mjd"].attrs["units"] == "d"
    assert {"R/dimage", "fibers/R/fiberId", "metadata/fit_options"} <= set(seen)
    product = read_product(path)
    assert product.metadata["telescope"] == "apo" and product.metadata["mjd"] == 60781
    assert product.metadata["expnum"] == 52190001
    assert all(type(m) is str for m in product.fibers["R"].model)
    assert not any(key.startswith(("R_", "G_", "B_")) for key in product.metadata)
    assert np.all(product.fibers["R"].n_iter[product.fibers["R"].n_fit_pixels > 0] >= 1)


def test_real_product_keeps_what_night_and_guider_read(real_product):
    from pyapred.guider.omega import read_product_omega

    path, paths, _ = real_product
    meta = read_metadata(path)  # what pyapred night's resume check compares
    assert json.loads(meta["fit_options"]) and meta["pyapred_version"] == pyapred.__version__
    files = [*paths["apz"], *paths["traces"]]
    assert meta["input_files"] == [p.name for p in files]
    assert meta["input_sha256"] == [product_module.sha256_file(p) for p in files]
    data = read_product_omega(path, "G")
    assert data["omega"].shape == (40, 19) and data["read_times"].size == 20


def test_a_real_product_s_omega_is_the_omega_each_fiber_was_extracted_with(real_product):
    """omega / omega_mean (the normalisation the file names) is the omega the extraction used:
    for borrowed fibers the bright fibers' mean, with its covariance (not the fiber's own
    noisy or missing fit), for time-variable fibers the fiber's own fit and covariance."""
    from pyapred.exposure import MODEL_BORROWED, MODEL_TIME_VARIABLE

    path, _, result = real_product
    product = read_product(path, images=False)
    with h5py.File(path, "r") as handle:
        omega_mean = {key: handle[f"fibers/{key}/omega_mean"][()] for key in result.fibers}
    for key, fitted in result.fibers.items():
        group = product.fibers[key]
        borrowed, variable = fitted.model == MODEL_BORROWED, fitted.model == MODEL_TIME_VARIABLE
        assert borrowed.sum() >= 5 and variable.sum() >= 5, key  # both kinds are checked
        assert [m == "borrowed" for m in group.model] == list(borrowed)
        np.testing.assert_allclose(omega_mean[key], group.omega.mean(axis=1), rtol=1e-15)
        mean_one = group.omega / omega_mean[key][:, None]
        for chosen in (borrowed, variable):
            np.testing.assert_allclose(mean_one[chosen], fitted.omega[chosen], rtol=1e-12,
                                       atol=1e-12, err_msg=key)  # fmt: skip
        np.testing.assert_array_equal(group.omega[borrowed], np.broadcast_to(
            fitted.borrowed_omega, (borrowed.sum(), fitted.borrowed_omega.size)))  # fmt: skip
        np.testing.assert_array_equal(group.omega_cov[borrowed], np.broadcast_to(
            fitted.borrowed_cov, (borrowed.sum(), *fitted.borrowed_cov.shape)))  # fmt: skip
        assert np.diagonal(fitted.borrowed_cov).max() > 0  # a covariance, not the zeros of no fit
        np.testing.assert_array_equal(group.omega[variable], fitted.omega_fit[variable])
        np.testing.assert_array_equal(group.omega_cov[variable], fitted.omega_cov[variable])


# --------------------------------------------------------------------------------------------
# FITS
# --------------------------------------------------------------------------------------------
def test_fits_header_cards_units_and_round_trip(tmp_path):
    rng = np.random.default_rng(7)
    chips = {"R": make_chip(rng), "B": make_chip(rng)}
    fibers = {"R": make_fibers(rng)}
    identity = {"telescope": "apo", "mjd": 60781, "expnum": 52190065,
                "DATE-OBS": "2025-04-20T04:00:00.000", "TIMESYS": "TAI"}  # fmt: skip
    path = write_product(tmp_path / "p.fits", chips=chips, fibers=fibers, metadata=identity)
    with fits.open(path) as hdul:
        header = hdul[0].header
        assert header["PAPFMT"] == 2 and header["TELESCOP"] == "apo"
        assert header["MJD"] == 60781 and header["EXPNUM"] == 52190065
        assert header["DATE-OBS"] == identity["DATE-OBS"] and header["TIMESYS"] == "TAI"
        assert header["CHIPS"] == "R,B" and header["FIBGRPS"] == "R"
        assert header["PAPVER"] == pyapred.__version__
        assert hdul["R_RATE"].data.dtype.kind == "f" and hdul["R_RATE"].header["BITPIX"] == -32
        assert hdul["R_RATE"].header["BUNIT"] == "DN/read"
        assert hdul["R_NDIFF"].header["BITPIX"] == 8 and hdul["R_FLAGS"].data.dtype == np.uint16
        table = hdul["FIBERS_R"]
        names = table.columns.names
        assert names[:3] == ["FIBERID", "FIBER_INDEX", "MODEL"] and "N_ITER" in names
        for i in range(1, len(names) + 1):
            assert f"TUNIT{i}" in table.header and table.header[f"TCOMM{i}"]
        assert table.data["FIBERID"].tolist() == [300, 299, 150, 2, 1]
        assert table.data["FIBER_INDEX"].tolist() == [0, 1, 150, 298, 299]  # 0-based in FITS
        # ... and described so (the HDF5 descriptions are of the 1-based columns).
        comment = {name: table.header[f"TCOMM{i}"] for i, name in enumerate(names, start=1)}
        assert "fiberId = 300 - fiber_index" in comment["FIBERID"]
        assert comment["FIBER_INDEX"].startswith("0-based fiber index 300 - fiberId")
        assert comment["REF_INDEX"].startswith("0-based")
        assert all("index_base" not in text for text in comment.values())
        assert "UNIT" in hdul["METADATA"].columns.names
    product = read_product(path)
    assert product.format_version == 2 and product.metadata["expnum"] == 52190065
    assert_round_trip(product, chips, fibers)
    assert read_product(path, images=False).chips == {}
    # Metadata arrays come back as the HDF5 flavour gives them (they were lists): numbers as
    # arrays, strings as lists.
    arrays = {"times": np.array([60781.1, 60781.2]), "grid": np.arange(6.0).reshape(2, 3),
              "names": ["a.apz", "b.apz"]}  # fmt: skip
    for suffix in (".fits", ".h5"):
        kept = write_product(tmp_path / f"m{suffix}", fibers=fibers, metadata=arrays)
        metadata = read_product(kept, images=False).metadata
        for key in ("times", "grid"):
            assert isinstance(metadata[key], np.ndarray), (suffix, key)
            np.testing.assert_array_equal(metadata[key], arrays[key])
        assert metadata["names"] == ["a.apz", "b.apz"]
    # A key FITS cannot hold (a bare UnicodeEncodeError, or " sp " kept as " sp"): refused, and
    # nothing is written.
    for key in ("größe", " sp "):
        with pytest.raises(ValueError, match="metadata: expected keys in ASCII"):
            write_product(tmp_path / "u.fits", fibers=fibers, metadata={key: "x"})
        assert not (tmp_path / "u.fits").exists()


def test_a_malformed_fits_product_names_the_hdu_and_column(tmp_path):
    """Every reading error was one "FITS structure" field: which HDU, which column?"""
    rng = np.random.default_rng(3)
    path = write_product(tmp_path / "p.fits", chips={"R": make_chip(rng)},
                         fibers={"R": make_fibers(rng)}, metadata={"mjd": 60781})  # fmt: skip

    def broken(change) -> str:
        with fits.open(path) as hdul:
            hdus = [hdu.copy() for hdu in hdul]
        change(hdus)
        bad = tmp_path / "bad.fits"
        fits.HDUList(hdus).writeto(bad, overwrite=True)
        with pytest.raises(InputError) as error:
            read_product(bad)
        return str(error.value)

    def without_omega(hdus):
        number = next(i for i, h in enumerate(hdus) if h.name == "FIBERS_R")
        table = hdus[number]
        columns = [c for c in table.columns if c.name != "OMEGA"]
        hdus[number] = fits.BinTableHDU.from_columns(columns, header=table.header)

    def bad_json(hdus):
        hdus[-1].data["VALUE"][0] = "{not json"

    def no_image_name(hdus):
        del hdus[1].header["PAPIMAGE"]

    def cut(size) -> str:
        bad = tmp_path / "cut.fits"
        bad.write_bytes(path.read_bytes()[:size])
        with pytest.raises(InputError) as error:
            read_product(bad)
        return str(error.value)

    # Read without a word before: no chips, no fibers and empty metadata, or cut after whole
    # HDUs, the images without the fibers and the metadata.
    with fits.open(path) as hdul:
        image_data = hdul[1].fileinfo()["datLoc"]
        fibers_start = next(h for h in hdul if h.name == "FIBERS_R").fileinfo()["hdrLoc"]
    assert "complete pyapred FITS product, found Error validating header" in cut(5000)
    assert "complete pyapred FITS product, found File may have been truncated" in cut(
        image_data + 1000
    )
    assert "HDU 0 FIBGRPS: expected the HDUs of R, found none for R" in cut(fibers_start)
    assert "FIBERS_R) column OMEGA: expected a column" in broken(without_omega)
    assert "(METADATA): expected a pyapred FITS product, found JSONDecodeError" in broken(bad_json)
    assert "HDU 1 (R_RATE): expected a pyapred FITS product, found KeyError" in broken(
        no_image_name
    )

    # A float column of integers was cut (FIBER_INDEX 0.6 read as 0, a NaN N_FIT_PIXELS as
    # -2**63); an HDU given twice, the later one won: both silently.
    def float_column(name):
        def change(hdus):
            number = next(i for i, h in enumerate(hdus) if h.name == "FIBERS_R")
            table = hdus[number]
            columns = [fits.Column(c.name, "D", array=table.data[c.name] + 0.6)
                       if c.name == name else c for c in table.columns]  # fmt: skip
            hdus[number] = fits.BinTableHDU.from_columns(columns, header=table.header)

        return change

    for name in ("FIBER_INDEX", "FLAGS", "REF_INDEX", "N_FIT_PIXELS"):
        assert f"{name}: expected integers, found float64" in broken(float_column(name))

    def twice(kind):
        def change(hdus):
            hdus.insert(-1, next(h for h in hdus if h.name == kind).copy())

        return change

    assert "fiber group R again" in broken(twice("FIBERS_R"))
    assert "chip R's rate again" in broken(twice("R_RATE"))
    assert "a second metadata table" in broken(twice("METADATA"))

    def key_twice(hdus):
        hdus[-1].data["KEY"][1] = hdus[-1].data["KEY"][0]

    assert "more than once" in broken(key_twice)

    # Integers where the HDF5 reader refuses them: a RATE image, an OMEGA column.
    def integer_rate(hdus):
        number = next(i for i, h in enumerate(hdus) if h.name == "R_RATE")
        hdus[number] = fits.ImageHDU(np.zeros(hdus[number].data.shape, np.int32),
                                     header=hdus[number].header)  # fmt: skip

    def integer_omega(hdus):
        number = next(i for i, h in enumerate(hdus) if h.name == "FIBERS_R")
        table = hdus[number]
        columns = [fits.Column(c.name, f"{table.data[c.name].shape[1]}K",
                               array=table.data[c.name].astype(np.int64))
                   if c.name == "OMEGA" else c for c in table.columns]  # fmt: skip
        hdus[number] = fits.BinTableHDU.from_columns(columns, header=table.header)

    assert "R_RATE: expected floating-point values, found int32" in broken(integer_rate)
    assert "OMEGA: expected floating-point values, found" in broken(integer_omega)


def test_format_1_fits_still_reads(tmp_path):
    ones = np.ones((3, 4))
    hdus = [fits.PrimaryHDU()]
    hdus[0].header["PAPFMT"] = 1
    for attribute in ("rate", "ivar", "chi2", "flags"):
        data = ones.astype(np.int64 if attribute == "flags" else np.float64)
        hdu = fits.ImageHDU(data, name=f"R_{attribute.upper()}")
        hdu.header["PAPCHIP"], hdu.header["PAPIMAGE"] = "R", attribute
        hdus.append(hdu)
    columns = [
        fits.Column("FIBER_INDEX", "K", array=[0, 5]),
        fits.Column("OMEGA", "2D", array=np.ones((2, 2))),
        fits.Column("OMEGA_COV", "4D", dim="(2,2)", array=np.zeros((2, 4))),
        fits.Column("REF_INDEX", "K", array=[0, 0]),
        fits.Column("MODEL", "8A", array=["constant"] * 2),
        fits.Column("FLAGS", "K", array=[0, 0]),
    ]
    table = fits.BinTableHDU.from_columns(columns, name="FIBERS_R")
    table.header["PAPGROUP"] = "R"
    meta = fits.BinTableHDU.from_columns(
        [fits.Column("KEY", "5A", array=["mjd"]), fits.Column("VALUE", "5A", array=["60781"])],
        name="METADATA",
    )
    fits.HDUList([*hdus, table, meta]).writeto(tmp_path / "v1.fits")
    product = read_product(tmp_path / "v1.fits")
    assert product.format_version == 1 and product.metadata == {"mjd": 60781}
    assert product.chips["R"].n_diff is None and product.chips["R"].rate.dtype == np.float64
    assert product.fibers["R"].fiber_id.tolist() == [300, 295]


@pytest.mark.parametrize("suffix", [".h5", ".fits"])
def test_chromatic_fit_round_trip(seeing_change, tmp_path, suffix):
    """A chromatic fit's slope, covariance and test statistics survive HDF5 and FITS."""
    from pyapred.exposure import MODEL_CHROMATIC, write_exposure
    from pyapred.io import read_product

    _, result = seeing_change
    fits_ = result.fibers["joint"]
    path = write_exposure(result, tmp_path / f"chromatic{suffix}")
    group = read_product(path, images=False).fibers["joint"]
    chosen = fits_.model == MODEL_CHROMATIC
    assert [m == "time_variable_chromatic" for m in group.model] == list(chosen)
    np.testing.assert_array_equal(group.omega[chosen], fits_.chromatic.omega[chosen])
    np.testing.assert_array_equal(group.omega_cov[chosen], fits_.chromatic.omega_cov()[chosen])
    tried = np.isfinite(fits_.chromatic.p_value)
    np.testing.assert_array_equal(group.gamma[tried], fits_.chromatic.gamma[tried])
    assert np.isnan(group.gamma[~tried]).all()
    np.testing.assert_array_equal(group.gamma_cov[tried], fits_.chromatic.gamma_cov()[tried])
    np.testing.assert_array_equal(group.chromatic_p_value, fits_.chromatic.p_value)
    np.testing.assert_array_equal(group.chromatic_delta_chi2, fits_.chromatic.delta_chi2)
    metadata = read_product(path, images=False).metadata
    np.testing.assert_array_equal(metadata["coordinate_span_um"], [1.5145, 1.6965])


def test_dangling_links_and_a_group_for_a_dataset_are_input_errors(tmp_path, capsys):
    """A fuzzing sitting's: KeyError, AttributeError and TypeError tracebacks in `inspect`,
    `read_product` and `guider`, and a dangling link said to be "a dataset"."""
    from pyapred.cli import main

    rng = np.random.default_rng(5)
    path = write_product(tmp_path / "p.h5", chips={"R": make_chip(rng)},
                         fibers={"R": make_fibers(rng), "G": make_fibers(rng)})  # fmt: skip
    cases = {
        "model.h5": lambda h: (h.__delitem__("fibers/R/model"), h.create_group("fibers/R/model")),
        "soft.h5": lambda h: (h.__delitem__("fibers/R/omega"),
                              h.__setitem__("fibers/R/omega", h5py.SoftLink("/nowhere"))),
        "external.h5": lambda h: (h.__delitem__("fibers/G"),
                                  h.__setitem__("fibers/G", h5py.ExternalLink("no.h5", "/x"))),
    }  # fmt: skip
    for name, change in cases.items():
        bad = tmp_path / name
        bad.write_bytes(path.read_bytes())
        with h5py.File(bad, "a") as handle:
            change(handle)
        with pytest.raises(InputError) as error:
            read_product(bad)
        assert "found a dataset" not in str(error.value)
        assert main(["inspect", str(bad)]) == 2
        assert "error:" in capsys.readouterr().err


def test_links_out_of_the_file_and_names_not_in_utf8_are_refused_before_any_read(tmp_path):
    """An external link was followed as soon as a reader listed its group: one to a FIFO hung
    every reader (inspect, guider, fit --config, fit --traces), one to another file had that
    file's data read as the product's own. A name that is not UTF-8 was a TypeError traceback.
    Each is now an InputError naming the link, before any object is opened."""
    import os

    from pyapred.io import read_metadata
    from pyapred.io.summary import describe

    rng = np.random.default_rng(6)
    path = write_product(tmp_path / "p.h5", chips={"R": make_chip(rng)},
                         fibers={"R": make_fibers(rng)})  # fmt: skip
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as handle:
        handle["x"] = np.full((4, 6), 7, np.float32)
    fifo = tmp_path / "fifo.h5"
    os.mkfifo(fifo)
    link = h5py.ExternalLink

    def image_elsewhere(handle):
        del handle["R/dimage"]
        handle["R/dimage"] = link(str(other), "/x")

    cases = {
        "image.h5": ("R/dimage", image_elsewhere, "an external link to"),
        "to_fifo.h5": ("metadata/x", lambda h: h["metadata"].__setitem__(
            "x", link(str(fifo), "/x")), "an external link to"),
        "name.h5": ("bad", lambda h: h["metadata"].__setitem__(b"bad\xffname", 1.0),
                    "not UTF-8"),
    }  # fmt: skip
    for name, (field, change, words) in cases.items():
        bad = tmp_path / name
        bad.write_bytes(path.read_bytes())
        with h5py.File(bad, "a") as handle:
            change(handle)
        for reader in (read_product, read_metadata, describe):
            with pytest.raises(InputError, match=words) as error:
                reader(bad)
            assert str(bad) in str(error.value) and field in str(error.value)


def test_a_product_declaring_huge_images_or_fiber_tables_is_refused_before_reading(tmp_path):
    """A small damaged product declaring images of 10000 x 10000 was read whole (1.6 GB)."""
    rng = np.random.default_rng(8)
    path = write_product(tmp_path / "p.h5", chips={"R": make_chip(rng)},
                         fibers={"R": make_fibers(rng)})  # fmt: skip
    for name, field, shape in (("image.h5", "R/dimage", (10_000, 10_000)),
                               ("omega.h5", "fibers/R/omega", (4, 5_000))):  # fmt: skip
        bad = tmp_path / name
        bad.write_bytes(path.read_bytes())
        with h5py.File(bad, "a") as handle:
            del handle[field]
            handle.create_dataset(field, shape=shape, dtype="f4", chunks=(1, 1000))
        assert bad.stat().st_size < 2_000_000
        with pytest.raises(InputError, match="a shape of at most") as error:
            read_product(bad)
        assert field in str(error.value)


@pytest.mark.parametrize("suffix", [".h5", ".fits"])
def test_unflagged_nan_and_values_out_of_range_are_refused_written_or_read(tmp_path, suffix):
    """A product whose NaN carried no flag, with a p-value of 7 or a negative ivar, read as
    valid (and the guider blamed its frames)."""
    rng = np.random.default_rng(11)
    chip, fibers = make_chip(rng), make_fibers(rng)
    path = write_product(tmp_path / f"p{suffix}", chips={"R": chip}, fibers={"R": fibers})
    read_product(path)  # NaN with a flag (make_chip's TOO_FEW_DIFFS pixel) is fine
    cases = {
        "rate": ("chips", "R/dimage", (5, 6), np.nan, "a flag wherever a value is NaN"),
        "chi2": ("chips", "R/chisqimage", (5, 6), np.inf, "a flag wherever a value is NaN"),
        "ivar": (
            "chips",
            "R/ivarimage",
            (5, 6),
            -1.0,
            r"values >= 0, found 1 below 0, the first at index \(5, 6\)",
        ),
        "omega": ("fibers", "fibers/R/omega", (0, 3), np.nan, "a flag wherever a value is NaN"),
        "p_value": ("fibers", "fibers/R/p_value", (0,), 7.0, "probabilities in 0..1"),
    }
    for name, (kind, field, index, value, expected) in cases.items():
        part = chip if kind == "chips" else fibers
        array = np.array(getattr(part, name), dtype=float)
        array[index] = value
        changed = dataclasses.replace(part, **{name: array})
        with pytest.raises(ValueError, match=expected):  # refused on writing
            write_product(tmp_path / f"w{suffix}", **{kind: {"R": changed}})
        if suffix == ".h5":  # and on reading (the FITS reader runs the same check)
            bad = tmp_path / f"{name}.h5"
            bad.write_bytes(path.read_bytes())
            with h5py.File(bad, "a") as handle:
                stored = handle[field][()]
                # The fiber tables are stored (K, n), as Julia reads them.
                stored[index[::-1] if kind == "fibers" else index] = value
                handle[field][...] = stored
            with pytest.raises(InputError, match=expected) as error:
                read_product(bad)
            # The dataset is named (it said only the group, "R: ... found expected ...").
            assert f"{field}: expected" in str(error.value), str(error.value)
            if name in ("omega", "p_value"):  # a fiber's row by its fiberId, not its index
                with h5py.File(bad) as handle:
                    row = index[-1]  # the h5py row of the stored (K, n) table
                    fiber = int(handle["fibers/R/fiberId"][row])
                assert f"the first at fiberId {fiber}" in str(error.value), str(error.value)
    counted = dataclasses.replace(fibers, n_iter=np.array([3, -1, 2, 2, 2]))
    with pytest.raises(ValueError, match="n_iter: expected counts >= 0"):
        write_product(tmp_path / f"w{suffix}", fibers={"R": counted})


def test_fiber_models_of_another_length_are_refused_unread_and_named_briefly(tmp_path):
    """``fibers/R/model`` declared with 2e7 strings was read whole, and the whole list printed
    as the error message (80 MB on stderr)."""
    rng = np.random.default_rng(9)
    path = write_product(tmp_path / "p.h5", fibers={"R": make_fibers(rng)})
    with h5py.File(path, "a") as handle:
        del handle["fibers/R/model"]
        handle.create_dataset("fibers/R/model", shape=(20_000_000,), dtype=h5py.string_dtype(),
                              chunks=(1000,))  # fmt: skip
    with pytest.raises(InputError) as error:
        read_product(path)
    message = str(error.value)
    assert "fibers/R/model" in message and "shape (20000000,)" in message
    assert len(message) < 500
