"""pyapred products: round trip (float32 images), Julia-friendly layout, atomic writes.

Format 2 specifics (compression, self-description, format 1 still read): test_product_v2.py.
"""

from __future__ import annotations

import hashlib
import threading

import h5py
import numpy as np
import pytest

import pyapred
from pyapred import Flag, FluxFit
from pyapred.io import (
    FORMAT_VERSION,
    BackgroundHashes,
    ChipImages,
    FiberResults,
    Product,
    ProductWriter,
    read_product,
    write_product,
)
from pyapred.io import product as product_module


def make_chip(rng, shape=(6, 9)) -> ChipImages:
    flags = np.zeros(shape, np.int64)
    flags[0, 0] = Flag.SATURATED | Flag.MASKED_READ
    return ChipImages(
        rate=rng.normal(100, 10, shape),
        ivar=rng.uniform(0.01, 0.1, shape),
        chi2=rng.chisquare(10, shape),
        flags=flags,
        n_diff=rng.integers(0, 33, shape).astype(np.int16),
    )


def make_fibers(rng, n=4, k=5) -> FiberResults:
    omega = rng.uniform(0.5, 1.0, (n, k))
    ref = rng.integers(0, k, n)
    omega[np.arange(n), ref] = 1.0
    cov = np.einsum("nij,nkj->nik", *(2 * [rng.normal(0, 0.01, (n, k, k))]))
    return FiberResults(
        fiber_index=np.array([0, 74, 150, 299])[:n],
        omega=omega,
        omega_cov=cov,
        ref_index=ref,
        model=("time_variable", "constant", "time_variable", "constant")[:n],
        flags=np.array([0, int(Flag.NOT_CONVERGED), 0, 0])[:n],
    )


def assert_products_equal(a, b):
    """Images equal up to float32 rounding (``b`` rounded), flags and n_diff exactly."""
    assert a.chips.keys() == b.chips.keys() and a.fibers.keys() == b.fibers.keys()
    for key in a.chips:
        for name in ("rate", "ivar", "chi2"):
            expected = np.asarray(getattr(b.chips[key], name), np.float32)
            assert np.array_equal(getattr(a.chips[key], name), expected)
        for name in ("flags", "n_diff"):
            assert np.array_equal(getattr(a.chips[key], name), getattr(b.chips[key], name))
    for key in a.fibers:
        for name in ("fiber_index", "omega", "omega_cov", "ref_index", "flags"):
            assert np.array_equal(getattr(a.fibers[key], name), getattr(b.fibers[key], name))
        assert a.fibers[key].model == b.fibers[key].model


@pytest.mark.parametrize("suffix", [".h5", ".fits"])
def test_product_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(5)
    raw = tmp_path / "apR-a-52190065.apz"
    raw.write_bytes(b"raw bytes")
    chips = {"R": make_chip(rng), "G": make_chip(rng)}
    fibers = {"R": make_fibers(rng), "joint": make_fibers(rng, n=2)}
    extra = {"telescope": "apo", "mjd": 60781, "exposure": 65, "omega_source": ["R", "G"]}
    path = write_product(
        tmp_path / f"pyapred_apo_60781_0065{suffix}",
        chips=chips,
        fibers=fibers,
        inputs=[raw],
        metadata=extra,
    )
    product = read_product(path)
    assert_products_equal(product, Product(str(path), chips, fibers))
    meta = product.metadata
    assert meta["input_files"] == ["apR-a-52190065.apz"]
    assert meta["input_sha256"] == [hashlib.sha256(b"raw bytes").hexdigest()]
    assert meta["backend"] == "numpy" and meta["format_version"] == FORMAT_VERSION == 2
    assert meta["pyapred_version"] == pyapred.__version__
    for key, value in extra.items():
        assert meta[key] == value
    commit, clean = product_module._git_info()
    assert meta.get("git_commit") == commit
    if commit is not None:
        assert len(commit) == 40 and meta["git_clean"] == clean


def test_product_layout_is_what_julia_expects(tmp_path):
    rng = np.random.default_rng(6)
    chip = make_chip(rng, shape=(2048, 2560))
    fibers = make_fibers(rng)
    path = write_product(tmp_path / "p.h5", chips={"R": chip}, fibers={"R": fibers})
    with h5py.File(path, "r") as handle:
        # h5py shows (ny, nx) = (2048, 2560): Julia reads (2560, 2048), ar2D's dimage order.
        assert handle["R/dimage"].shape == (2048, 2560)
        assert handle["R/dimage"].attrs["units"] == "DN/read"
        assert handle["R/dimage"].dtype == np.float32 and handle["R/ndiff"].dtype == np.uint8
        assert handle["R/flags"].dtype == np.uint16  # 14 bits of pyapred.Flag
        assert handle["fibers/R/omega"].shape == (4, 5)  # Julia (K, n): omega[:, fiber]
        # 1-based indices in the file, like ApogeeReduction.jl's fiberIndx = 301 - fiberId.
        assert handle["fibers/R/fiber_index"][()].tolist() == [1, 75, 151, 300]
        assert np.array_equal(handle["fibers/R/ref_index"][()], fibers.ref_index + 1)
        assert handle["fibers/R/model"].asstr()[1] == "constant"
        assert handle.attrs["pyapred_product_format"] == 2


def test_chip_images_from_a_flux_fit():
    flux_var = np.array([[4.0, np.nan], [0.0, 0.5]])  # NaN, 0: no usable variance
    flags = np.array([[0, Flag.TOO_FEW_DIFFS], [Flag.TOO_FEW_DIFFS, 0]])
    fit = FluxFit(np.ones((2, 2)), flux_var, np.ones((2, 2)), np.full((2, 2), 4), flags)
    images = ChipImages.from_fit(fit)
    assert images.ivar.tolist() == [[0.25, 0.0], [0.0, 2.0]]
    assert images.flags is fit.flags and images.rate is fit.flux and images.n_diff is fit.n_diff


def test_crash_mid_write_leaves_nothing(tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    path = tmp_path / "product.h5"

    def crash(group, results, pool):
        group["fiber_index"] = np.arange(3)  # something is already on disk when it fails
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(product_module, "_write_fibers", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_product(path, chips={"R": make_chip(rng)}, fibers={"R": make_fibers(rng)})
    assert list(tmp_path.iterdir()) == []


def test_product_written_in_parts_is_the_same_product(tmp_path):
    rng = np.random.default_rng(8)
    chips = {"R": make_chip(rng), "G": make_chip(rng)}
    fibers = {"R": make_fibers(rng)}
    whole = write_product(tmp_path / "whole.h5", chips=chips, fibers=fibers, metadata={"a": 1})
    with ProductWriter(tmp_path / "parts.h5") as writer:
        for key, images in chips.items():
            writer.add_chip(key, images)
            assert not (tmp_path / "parts.h5").exists()  # only complete products appear
        writer.finish(fibers=fibers, metadata={"a": 1})
    parts = read_product(tmp_path / "parts.h5")
    assert_products_equal(read_product(whole), parts)
    assert parts.metadata["a"] == 1


def test_product_writer_leaves_nothing_unless_finished(tmp_path):
    rng = np.random.default_rng(9)
    with pytest.raises(RuntimeError, match="finish"):
        with ProductWriter(tmp_path / "p.h5") as writer:
            writer.add_chip("R", make_chip(rng))
    with pytest.raises(KeyError):
        with ProductWriter(tmp_path / "p.h5") as writer:
            writer.add_chip("R", make_chip(rng))
            raise KeyError("a failure mid-exposure")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="HDF5"):
        ProductWriter(tmp_path / "p.fits")


def test_a_product_that_cannot_be_written_is_an_os_error_naming_it(tmp_path, monkeypatch):
    """A full disk: HDF5's failed write (an OSError naming no file), and its RuntimeError from
    the close that follows, become one OSError naming the product (the commands' exit 2); the
    temporary file goes and an earlier product stays."""
    import errno

    rng = np.random.default_rng(10)
    path = write_product(tmp_path / "p.h5", chips={"R": make_chip(rng)})
    before = path.read_bytes()

    def full(group, images, **kwargs):
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr(product_module, "_write_images", full)
    with pytest.raises(OSError, match="File too large") as raised:
        with ProductWriter(path, overwrite=True) as writer:
            writer.add_chip("R", make_chip(rng))
    assert raised.value.filename == str(path) and raised.value.errno == errno.EFBIG
    monkeypatch.undo()

    def failing_close(self):
        raise RuntimeError("Can't decrement id ref count (unable to extend file properly)")

    monkeypatch.setattr(h5py.File, "close", failing_close)
    with pytest.raises(OSError, match="unable to extend file") as raised:
        with ProductWriter(path, overwrite=True) as writer:
            writer.add_chip("R", make_chip(rng))
            writer.finish()
    assert raised.value.filename == str(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.h5"]


def test_an_error_of_the_work_inside_the_writer_stays_as_it_was(tmp_path, monkeypatch):
    """What fails in the block but the writer's own writes (an input that cannot be read, the
    fit itself) is raised as it was, with its traceback, and names no product; an input whose
    read fails while it is hashed is named."""
    import errno
    import io
    import traceback

    def read_input():
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError) as raised:
        with ProductWriter(tmp_path / "p.h5"):
            read_input()
    assert raised.value.filename is None
    frames = [frame.name for frame in traceback.extract_tb(raised.value.__traceback__)]
    assert "read_input" in frames
    assert list(tmp_path.iterdir()) == []

    class FailingStream(io.BytesIO):
        def read(self, size=-1):
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(product_module, "open", lambda path, mode: FailingStream(), raising=False)
    with pytest.raises(OSError, match="Input/output error") as raised:
        product_module.sha256_file(tmp_path / "raw.apz")
    assert raised.value.filename == str(tmp_path / "raw.apz")


def test_crash_mid_fits_write_leaves_nothing(tmp_path, monkeypatch):
    def crash(tmp, *args):
        tmp.write_bytes(b"SIMPLE  =                    T")  # a partial file
        raise OSError("disk full")

    monkeypatch.setattr(product_module, "write_fits", crash)
    with pytest.raises(OSError, match="disk full"):
        write_product(tmp_path / "p.fits", chips={"R": make_chip(np.random.default_rng(1))})
    assert list(tmp_path.iterdir()) == []


def test_crash_mid_write_keeps_the_previous_file(tmp_path, monkeypatch):
    rng = np.random.default_rng(8)
    path = write_product(tmp_path / "product.h5", chips={"R": make_chip(rng)})
    before = path.read_bytes()

    def crash(group, images, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(product_module, "_write_images", crash)
    with pytest.raises(KeyboardInterrupt):
        write_product(path, chips={"R": make_chip(rng)}, overwrite=True)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["product.h5"]


def test_write_product_rejects_bad_arguments(tmp_path):
    rng = np.random.default_rng(9)
    chip = make_chip(rng)
    bad_chip = ChipImages(chip.rate, chip.ivar[:, :3], chip.chi2, chip.flags)
    with pytest.raises(ValueError, match="one shape"):
        write_product(tmp_path / "a.h5", chips={"R": bad_chip})
    fibers = make_fibers(rng)
    bad = FiberResults(fibers.fiber_index, fibers.omega, fibers.omega_cov[:, :2],
                       fibers.ref_index, fibers.model, fibers.flags)  # fmt: skip
    with pytest.raises(ValueError, match="omega_cov"):
        write_product(tmp_path / "a.h5", fibers={"R": bad})
    with pytest.raises(ValueError, match="written by pyapred"):
        write_product(tmp_path / "a.h5", metadata={"backend": "x"})
    with pytest.raises(ValueError, match="plain name"):
        write_product(tmp_path / "a.h5", chips={"metadata": chip})
    assert list(tmp_path.iterdir()) == []


def _damaged(path, edit):
    with h5py.File(path, "a") as handle:
        edit(handle)
    return path


def _with_bit_16(h, name: str, index) -> None:
    """Dataset ``name`` rewritten as uint32 with bit 16 set at ``index``: every bit that its
    uint16 holds is a known flag."""
    flags = h[name][()].astype(np.uint32)
    flags[index] = 1 << 16
    del h[name]
    h.create_dataset(name, data=flags)


@pytest.mark.parametrize(
    ("label", "edit", "field", "words"),
    [
        ("format as a string", lambda h: h.attrs.__setitem__("pyapred_product_format", "2"),
         "attribute pyapred_product_format", "'2'"),
        ("format as a bool", lambda h: h.attrs.__setitem__("pyapred_product_format", True),
         "attribute pyapred_product_format", "True"),
        ("format as an array", lambda h: h.attrs.__setitem__("pyapred_product_format", [1, 2]),
         "attribute pyapred_product_format", "array"),
        ("a chip that is a dataset",
         lambda h: (h.__delitem__("G"), h.create_dataset("G", data=np.zeros(3))),
         "G", "a dataset"),
        ("fibers that are a dataset",
         lambda h: (h.__delitem__("fibers"), h.create_dataset("fibers", data=np.zeros(3))),
         "fibers", "a dataset"),
        ("a fiber table that is a dataset",
         lambda h: (h.__delitem__("fibers/R"), h.create_dataset("fibers/R", data=np.zeros(3))),
         "fibers/R", "a dataset"),
        ("pixel flags of an unknown bit",
         lambda h: _with_bit_16(h, "R/flags", (0, 0)), "R/flags", "unknown bits 0x10000"),
        ("fiber flags of an unknown bit",
         lambda h: _with_bit_16(h, "fibers/R/flags", 0), "fibers/R/flags", "Flag"),
        ("fiber index out of range",
         lambda h: (h["fibers/R/fiber_index"].__setitem__(0, 500),
                    h.__delitem__("fibers/R/fiberId")),
         "fibers/R/fiber_index", "0..299"),
        ("a fiber twice",
         lambda h: (h["fibers/R/fiber_index"].__setitem__(0, 75),
                    h.__delitem__("fibers/R/fiberId")),
         "fibers/R/fiber_index", "each fiber once"),
        ("fiberIds that are not 301 - fiber_index",
         lambda h: h["fibers/R/fiberId"].__setitem__(0, 7), "fibers/R/fiberId",
         "301 - fiber_index"),
    ],
    ids=lambda v: v if isinstance(v, str) and " " in v else "",
)  # fmt: skip
def test_damaged_products_are_named_errors(tmp_path, label, edit, field, words):
    """What write_product refuses is refused on reading too, naming the file and the group:
    these read silently (or with an AttributeError) before."""
    rng = np.random.default_rng(1)
    path = write_product(tmp_path / "p.h5", chips={"R": make_chip(rng), "G": make_chip(rng)},
                         fibers={"R": make_fibers(rng)})  # fmt: skip
    _damaged(path, edit)
    with pytest.raises(pyapred.errors.InputError) as caught:
        read_product(path)
    message = str(caught.value)
    assert str(path) in message and f"{field}:" in message and words in message, message


def test_damaged_fits_products_are_named_errors(tmp_path):
    from astropy.io import fits

    rng = np.random.default_rng(1)
    path = write_product(tmp_path / "p.fits", fibers={"R": make_fibers(rng)})
    with fits.open(path, mode="update") as hdul:
        hdul[0].header["PAPFMT"] = True
    with pytest.raises(pyapred.errors.InputError, match="PAPFMT: expected .* integer, found True"):
        read_product(path)
    with fits.open(path, mode="update") as hdul:
        del hdul[0].header["PAPFMT"]
    with pytest.raises(pyapred.errors.InputError, match="PAPFMT: expected a pyapred product"):
        read_product(path)


def test_write_product_refuses_what_it_cannot_keep(tmp_path):
    rng = np.random.default_rng(2)
    fibers = make_fibers(rng)
    import dataclasses

    for change, words in (
        ({"model": ("banana",) * 4}, "model: expected names"),
        ({"flags": fibers.flags + 0.7}, "flags: expected integers"),
        ({"fiber_index": fibers.fiber_index + 0.5}, "fiber_index: expected integers"),
        ({"gamma": fibers.omega}, "gamma, gamma_cov: expected both or neither"),
        ({"fiber_index": np.array([3, 3, 4, 5])}, "each fiber once"),
        # A ref_index beyond omega made a file read_product refused as pyapred's own.
        ({"ref_index": np.full(4, fibers.omega.shape[1])}, "ref_index: expected 0-based"),
        ({"ref_index": np.full(4, -1)}, "ref_index: expected 0-based"),
    ):
        with pytest.raises(ValueError, match=words):
            write_product(tmp_path / "w.h5", fibers={"R": dataclasses.replace(fibers, **change)},
                          overwrite=True)  # fmt: skip


def test_the_product_s_model_names_are_the_pipeline_s():
    from pyapred.exposure import MODEL_NAMES

    assert product_module.PRODUCT_MODELS == MODEL_NAMES


def test_write_product_names_a_wrong_argument(tmp_path):
    """h5py's and NumPy's errors named no key; a key with '/' was lost on reading; one input path
    was hashed character by character; add_chip or finish twice were h5py 'name exists' errors."""
    rng = np.random.default_rng(3)
    chip, fibers = make_chip(rng), make_fibers(rng)
    for kwargs, kind, words in (
        ({"chips": [chip]}, TypeError, "chips: expected a mapping"),
        ({"chips": {"R": {"rate": 1}}}, TypeError, r"chips\['R'\]: expected ChipImages"),
        ({"chips": {1: chip}}, ValueError, "chips: expected plain names, got 1"),
        ({"metadata": {"a": {"b": 1}}}, TypeError, r"metadata\['a'\]: expected a number"),
        ({"metadata": {"a": None}}, TypeError, r"metadata\['a'\]"),
        ({"metadata": {"a": [1, "x"]}}, TypeError, r"metadata\['a'\]"),
        ({"metadata": {"a/b": 1}}, ValueError, "metadata: expected plain names"),
        ({"metadata": {"": 1}}, ValueError, "metadata: expected plain names"),
    ):
        with pytest.raises(kind, match=words):
            write_product(tmp_path / "p.h5", overwrite=True, **kwargs)
    with pytest.raises(ValueError, match="path: expected a file name, got the folder"):
        write_product(tmp_path, chips={"R": chip})
    source = tmp_path / "input.apz"
    source.write_bytes(b"raw")
    written = read_product(write_product(tmp_path / "one.h5", fibers={"R": fibers},
                                         inputs=str(source)))  # fmt: skip
    assert written.metadata["input_files"] == ["input.apz"]
    with ProductWriter(tmp_path / "w.h5") as writer:
        writer.add_chip("R", chip)
        with pytest.raises(ValueError, match="chip 'R' was added already"):
            writer.add_chip("R", chip)
        writer.finish(fibers={"R": fibers})
        with pytest.raises(ValueError, match="finish: called already"):
            writer.finish()


def test_a_fiber_group_of_no_fiber_in_both_formats(tmp_path):
    empty = FiberResults(fiber_index=np.zeros(0, int), omega=np.zeros((0, 5)),
                         omega_cov=np.zeros((0, 5, 5)), ref_index=np.zeros(0, int), model=(),
                         flags=np.zeros(0, int))  # fmt: skip
    for name in ("p.h5", "p.fits"):  # FITS: a reshape error before
        back = read_product(write_product(tmp_path / name, fibers={"R": empty}))
        assert back.fibers["R"].omega.shape == (0, 5) and back.fibers["R"].omega_cov.shape[0] == 0


def test_background_hashes_are_the_files_digests(tmp_path):
    files = []
    for i, content in enumerate((b"first", b"second", b"third")):
        files.append(tmp_path / f"f{i}")
        files[-1].write_bytes(content * 100_000)
    expected = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    with BackgroundHashes([files[0], files[1], files[0]]) as hashes:
        # In any order, and a file it was not given is hashed on the spot.
        assert hashes.digests([files[2], files[0], str(files[1])]) == [
            expected[i] for i in (2, 0, 1)
        ]
    with BackgroundHashes([tmp_path / "missing"]) as hashes:
        with pytest.raises(FileNotFoundError):
            hashes.digests([tmp_path / "missing"])
    stop = threading.Event()
    stop.set()  # a stopped hash ends at its next block, with no digest
    assert product_module._sha256_unless_stopped(files[0], stop) is None


def test_finish_writes_the_digests_it_is_given(tmp_path):
    raw = tmp_path / "apR-a-52190065.apz"
    raw.write_bytes(b"raw bytes")
    with ProductWriter(tmp_path / "p.h5") as writer:
        with pytest.raises(ValueError, match="one digest per input"):
            writer.finish(inputs=[raw], input_sha256=[])
        writer.finish(inputs=[raw], input_sha256=["ab" * 32])
    assert read_product(tmp_path / "p.h5").metadata["input_sha256"] == ["ab" * 32]


def test_fiber_indices_stored_in_small_integer_types_read_as_they_are(tmp_path):
    """``fiber_index`` and ``ref_index`` as uint8, ``fiberId`` as uint16 (valid values, another
    writer's choice): ``301 - fiber_index`` overflowed uint8, an OverflowError traceback."""
    rng = np.random.default_rng(2)
    fibers = make_fibers(rng, n=3)  # fiber_index up to 151 (1-based)
    path = write_product(tmp_path / "p.h5", chips={"R": make_chip(rng)}, fibers={"R": fibers})

    def small(handle):
        for name, kind in (("fiber_index", np.uint8), ("fiberId", np.uint16),
                           ("ref_index", np.uint8)):  # fmt: skip
            values = handle[f"fibers/R/{name}"][()]
            del handle[f"fibers/R/{name}"]
            handle[f"fibers/R/{name}"] = values.astype(kind)

    product = read_product(_damaged(path, small))
    for name in ("fiber_index", "ref_index"):
        assert np.array_equal(getattr(product.fibers["R"], name), getattr(fibers, name))


def test_h5py_errors_of_a_damaged_structure_are_input_errors(tmp_path, monkeypatch):
    """A few flipped bytes in a product's symbol table make h5py raise RuntimeError ("Unable
    to get group info") or OSError while groups are read: it escaped read_product and
    ``pyapred inspect`` as a traceback. (h5py's error is simulated: which bytes trip which
    error depends on the file's layout.)"""
    rng = np.random.default_rng(3)
    path = write_product(tmp_path / "p.h5", chips={"R": make_chip(rng)},
                         fibers={"R": make_fibers(rng)})  # fmt: skip
    for error in (RuntimeError("Unable to get group info"), OSError("Can't synchronously read")):

        def damaged(self, name, error=error):
            raise error

        with monkeypatch.context() as patch:
            patch.setattr(h5py.Group, "__getitem__", damaged)
            with pytest.raises(pyapred.errors.InputError) as caught:
                read_product(path)
        assert str(path) in str(caught.value) and "HDF5 structure" in str(caught.value)


def test_the_git_state_is_read_without_taking_the_index_lock(monkeypatch):
    """`git status` refreshing the index takes .git/index.lock: a night worker killed then (the
    SIGKILL test) left it, and the next `git commit` in the checkout failed."""
    import subprocess

    calls = []

    def run(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, stdout="", stderr="")

    monkeypatch.setattr(product_module.subprocess, "run", run)
    product_module._git_info.cache_clear()  # (asked once a process)
    try:
        product_module._git_info()
    finally:
        product_module._git_info.cache_clear()
    assert calls and all(c[:2] == ["git", "--no-optional-locks"] for c in calls)
