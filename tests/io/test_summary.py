"""``pyapred inspect``: file descriptions, and bad files reported without a traceback."""

from __future__ import annotations

import numpy as np

from pyapred.cli import EXIT_BAD_INPUT, EXIT_OK, main
from pyapred.io import ChipImages, write_product
from pyapred.simulate import write_simulated_apz


def test_inspect_describes_raw_exposures_and_products(tmp_path, capsys):
    reads = np.cumsum(np.full((4, 3, 2560), 20.0), axis=0)
    raw = write_simulated_apz(tmp_path, reads, telescope="lco", chip="c", timesys="TAI")
    ones = np.ones((3, 5))
    product = write_product(
        tmp_path / "p.h5", chips={"B": ChipImages(ones, ones, ones, ones.astype(int))}
    )
    assert main(["inspect", str(raw), str(product)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "LCO chip c (B), SJD 60781, exposure 52190001" in out
    assert "4 reads (NREAD 4)" in out and "read times (TAI)" in out
    assert "pyapred product format 2" in out
    assert "  B: dimage float32, h5py (3, 5), Julia (5, 3), DN/read, gzip+shuffle; " in out
    assert "--full" in out
    assert main(["inspect", "--full", str(product)]) == EXIT_OK
    assert "B/dimage: float32, h5py (3, 5), Julia (5, 3), DN/read, gzip+shuffle" in (
        capsys.readouterr().out
    )


def test_inspect_summarizes_a_full_product_and_reads_the_truth_file(tmp_path, capsys):
    from pyapred.simulate import simulate_exposure, write_simulated_exposure

    sim = simulate_exposure("clouds", seed=2, n_fibers=12, n_columns=48, ref_columns=0,
                            n_reads=6, chips=("R",))  # fmt: skip
    paths = write_simulated_exposure(sim, tmp_path)
    from pyapred.exposure import run_exposure

    run_exposure(paths["apz"], paths["traces"], product=tmp_path / "p.h5")
    assert main(["inspect", str(tmp_path / "p.h5"), str(paths["truth"])]) == EXIT_OK
    out = capsys.readouterr().out
    assert len(out.splitlines()) < 30  # a summary, not every dataset (--full)
    assert "fibers/R: 12 fibers, 5 read differences; models" in out
    assert "NumPy arrays" in out and "omega: float64, (12, 5)" in out


def test_inspect_describes_a_fits_product_from_its_headers(tmp_path, capsys):
    """``pyapred inspect p.fits`` said "expected a readable HDF5 file" of a product pyapred
    wrote itself."""
    from pyapred.io import FiberResults

    rng = np.random.default_rng(1)
    images = ChipImages(rng.normal(size=(3, 5)), np.ones((3, 5)), np.ones((3, 5)),
                        np.zeros((3, 5), int), np.full((3, 5), 4))  # fmt: skip
    fibers = FiberResults(
        fiber_index=np.array([0, 1]), omega=np.ones((2, 4)), omega_cov=np.zeros((2, 4, 4)),
        ref_index=np.array([1, 1]), model=("time_variable", "borrowed"), flags=np.array([0, 0]),
    )  # fmt: skip
    product = write_product(tmp_path / "p.fits", chips={"R": images}, fibers={"R": fibers},
                            metadata={"mjd": 60781, "note": "x" * 300})  # fmt: skip
    assert main(["inspect", str(product)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "p.fits: FITS, pyapred product format 2" in out
    assert "  R: R_RATE float32 (3, 5), DN/read; R_RATE, R_IVAR, R_CHI2, R_NDIFF, R_FLAGS" in out
    assert "  FIBERS_R: 2 fibers, 4 read differences; models 1 time_variable, 1 borrowed" in out
    assert "  METADATA mjd = 60781" in out and "more metadata keys" in out
    assert main(["inspect", "--full", str(product)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "  HDU 4 R_NDIFF: uint8 (3, 5)" in out and "  HDU 5 R_FLAGS: uint16 (3, 5)" in out
    assert "columns FIBERID, FIBER_INDEX" in out and f"METADATA note = {'x' * 300!r}" in out
    # A FITS file that is no product is refused as read_product refuses it.
    from astropy.io import fits

    fits.PrimaryHDU(np.zeros((2, 2))).writeto(tmp_path / "other.fits")
    assert main(["inspect", str(tmp_path / "other.fits")]) == EXIT_BAD_INPUT
    assert "HDU 0 PAPFMT: expected a pyapred product" in capsys.readouterr().err


def test_inspect_reports_bad_files_without_traceback(tmp_path, capsys):
    raw = write_simulated_apz(tmp_path, np.zeros((2, 2, 8)))
    broken = tmp_path / "apR-a-52190002.apz"
    broken.write_bytes(raw.read_bytes()[:-100])
    assert main(["inspect", str(broken)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert str(broken) in err and "file size" in err and "Traceback" not in err
    assert main(["inspect", str(tmp_path / "missing.h5")]) == EXIT_BAD_INPUT
    assert "missing.h5: file: expected an existing file" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path)]) == EXIT_BAD_INPUT  # named as what it is
    assert "file: expected a file, found a folder" in capsys.readouterr().err
    garbage = tmp_path / "ar2D_apo_60781_0001_R_object.h5"
    garbage.write_bytes(b"no HDF5 here")
    assert main(["inspect", str(garbage)]) == EXIT_BAD_INPUT
    assert "HDF5 structure" in capsys.readouterr().err


def test_input_warnings_read_as_messages_not_code(tmp_path, capsys):
    from astropy.io import fits

    raw = write_simulated_apz(tmp_path, np.zeros((3, 2, 8)))
    with fits.open(raw) as hdul:
        hdul[1].header["NREAD"] = 47
        hdul.writeto(tmp_path / "apR-a-52190009.apz")
    assert main(["inspect", str(tmp_path / "apR-a-52190009.apz")]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "NREAD = 47 but the file holds 3 reads" in err
    assert ".py:" not in err and "read_apz(" not in err  # no file, line or source of pyapred


def test_inspect_odd_but_readable_files(tmp_path, capsys):
    """An empty .npz (EOFError), a 0-d omega (IndexError), numeric units (ValueError)."""
    import h5py

    (tmp_path / "empty.npz").write_bytes(b"")
    assert main(["inspect", str(tmp_path / "empty.npz")]) == EXIT_BAD_INPUT
    assert "empty.npz: npz: expected a NumPy .npz file" in capsys.readouterr().err
    ones = np.ones((3, 4))
    images = ChipImages(ones, ones, ones, ones.astype(int))
    product = write_product(tmp_path / "p.h5", chips={"R": images})
    with h5py.File(product, "a") as handle:
        handle["fibers/R/omega"] = 1.0
        handle["R/dimage"].attrs["units"] = np.arange(3)
    assert main(["inspect", str(product)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "omega of shape ()" in out and "Traceback" not in out


def test_inspect_reads_headers_not_the_data_it_only_describes(tmp_path, capsys):
    """A small file declaring a huge array (an .npz of 745 GiB, a product's ``model`` of 300
    million): inspect allocated it (a MemoryError traceback) or counted it one element at a
    time (a hang). A zip member that is no .npy gave an AttributeError."""
    import io
    import zipfile

    import h5py

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (10**11,)}
    )
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as archive:
        archive.writestr("a.npy", b"\x93NUMPY\x01\x00" + header.getvalue()[8:])
    assert main(["inspect", str(tmp_path / "huge.npz")]) == EXIT_OK
    assert "  a: float64, (100000000000,)" in capsys.readouterr().out
    with zipfile.ZipFile(tmp_path / "text.npz", "w") as archive:
        archive.writestr("notes.txt", "hello")
    assert main(["inspect", str(tmp_path / "text.npz")]) == EXIT_BAD_INPUT
    assert "notes.txt: not a .npy array" in capsys.readouterr().err
    ones = np.ones((3, 4))
    product = write_product(
        tmp_path / "p.h5", chips={"R": ChipImages(ones, ones, ones, ones.astype(int))}
    )
    with h5py.File(product, "a") as handle:
        handle.create_dataset("fibers/R/model", shape=(10**12,), dtype="S1")  # never written
    assert main(["inspect", str(product)]) == EXIT_OK
    assert "model of shape (1000000000000,) (expected one per fiber)" in capsys.readouterr().out


def test_names_with_control_characters_are_printed_escaped(tmp_path):
    """A group or metadata key named with a newline forged lines of the listing (a fake
    ``metadata/telescope = 'lco'``), an escape sequence reached the terminal."""
    import h5py

    from pyapred.io.summary import describe

    ones = np.ones((3, 4))
    product = write_product(
        tmp_path / "p.h5", chips={"R": ChipImages(ones, ones, ones, ones.astype(int))}
    )
    forged = "R\x1b[2J\n  metadata/telescope = 'lco'"
    with h5py.File(product, "a") as handle:
        handle.move("R", forged)
        handle["metadata"].attrs["x"] = 1
        handle["metadata/evil\n  x"] = 2
    for full in (False, True):
        text = describe(product, full=full)
        assert "\x1b" not in text and "\n  metadata/telescope = 'lco'" not in text, text
        assert "R\\x1b[2J\\n" in text  # the name, escaped


def test_a_huge_metadata_value_is_refused_not_read(tmp_path, capsys):
    """A small file declaring 3 GB of metadata was read in full by inspect and read_product
    (11.7 s and 3.3 GB for a 183 kB file)."""
    import h5py
    import pytest

    from pyapred.errors import InputError
    from pyapred.io import read_product

    ones = np.ones((3, 4))
    product = write_product(
        tmp_path / "p.h5", chips={"R": ChipImages(ones, ones, ones, ones.astype(int))}
    )
    with h5py.File(product, "a") as handle:
        handle["metadata"].create_dataset("zz", shape=(2**26,), dtype="f8", chunks=(2**20,),
                                          compression="gzip")  # fmt: skip
    assert product.stat().st_size < 10**6
    assert main(["inspect", str(product)]) == EXIT_BAD_INPUT
    assert "/metadata/zz: expected a metadata value of at most 256 MiB" in capsys.readouterr().err
    with pytest.raises(InputError, match="0.5 GiB declared"):
        read_product(product, images=False)


def test_full_listing_says_links_and_those_that_cannot_be_followed(tmp_path):
    """A soft link to itself (or to nothing) was left out of ``inspect --full``, silently."""
    import h5py

    from pyapred.io.summary import describe

    path = tmp_path / "links.h5"
    with h5py.File(path, "w") as handle:
        handle["data"] = np.zeros(3)
        handle["group/alias"] = h5py.SoftLink("/data")
        handle["loop"] = h5py.SoftLink("/loop")
        handle["gone"] = h5py.SoftLink("/nothing")
    text = describe(path, full=True)
    assert "  data: float64" in text and "  group/alias: a link to /data" in text.splitlines()
    assert "  loop: a link to /loop (that cannot be followed" in text
    assert "  gone: a link to /nothing (that cannot be followed" in text


def test_inspect_says_why_the_readers_refuse_an_hdf5_product(tmp_path, capsys):
    """It summarised them (a wrong format version) as if they were readable products: their
    structure is described, with the readers' reason (FITS products were already checked)."""
    import h5py

    ones = np.ones((3, 5))
    product = write_product(
        tmp_path / "p.h5", chips={"B": ChipImages(ones, ones, ones, ones.astype(int))}
    )
    with h5py.File(product, "r+") as handle:
        handle.attrs["pyapred_product_format"] = 99
    for full in ([], ["--full"]):
        assert main(["inspect", *full, str(product)]) == EXIT_OK
        last = capsys.readouterr().out.splitlines()[-1]
        assert last.startswith("  not readable as a product (read_product, pyapred guider): ")
        assert "guider): attribute pyapred_product_format: expected product format 1 or 2" in last


def test_inspect_describes_every_file_and_names_each_bad_one(tmp_path, capsys):
    """The first bad file stopped the rest: the good ones after it went undescribed."""
    ones = np.ones((3, 5))
    product = write_product(
        tmp_path / "p.h5", chips={"B": ChipImages(ones, ones, ones, ones.astype(int))}
    )
    (tmp_path / "empty.apz").write_bytes(b"")
    bad = [tmp_path / "empty.apz", tmp_path / "missing.h5"]
    assert main(["inspect", str(bad[0]), str(product), str(bad[1])]) == EXIT_BAD_INPUT
    out, err = capsys.readouterr()
    assert "pyapred product format 2" in out
    assert all(f"pyapred inspect: error: {path}" in err for path in bad)
