"""``pyapred night``: runlists, resume after SIGKILL, byte-identical reruns, failures.json.

The nights run on 2 spawned local workers (about 10 s each, mostly worker start-up), so the
uninterrupted reference night is shared by the tests through a module fixture.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dask.distributed")
h5py = pytest.importorskip("h5py")

from pyapred.cli import main  # noqa: E402
from pyapred.errors import InputError  # noqa: E402
from pyapred.io import read_product  # noqa: E402
from pyapred.night import find_exposures, process_exposure  # noqa: E402
from pyapred.simulate import simulate_exposure, write_simulated_exposure  # noqa: E402

N_EXPOSURES = 4


def small_night(directory: Path, n_exposures: int = N_EXPOSURES) -> Path:
    """``n_exposures`` small three-chip exposures of night 60781 (one trace set)."""
    for number in range(1, n_exposures + 1):
        sim = simulate_exposure(
            "clouds", seed=number, n_fibers=12, n_columns=48, ref_columns=0, n_reads=10
        )
        write_simulated_exposure(sim, directory, exposure=number, overwrite=True)
    return directory


def night_argv(raw: Path, out: Path, *extra: str) -> list[str]:
    return ["night", str(raw / "apR-a-*.apz"), "--traces", str(raw), "--out", str(out), *extra]


def products(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("pyapred_*.h5"))}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """Four simulated exposures and the products of one uninterrupted night on 2 workers."""
    raw = small_night(tmp_path_factory.mktemp("raw"))
    reference = tmp_path_factory.mktemp("reference")
    assert main(night_argv(raw, reference, "--workers", "2", "--quiet")) == 0
    return raw, reference


def test_glob_and_text_runlist_name_the_same_exposures(night, tmp_path):
    raw, _ = night
    by_glob = find_exposures(raw / "apR-?-*.apz", [raw], tmp_path)
    runlist = tmp_path / "night.txt"
    runlist.write_text(
        f"# one line per exposure\n{raw}/apR-b-52190001.apz\n{raw}/apR-c-5219000[2-4].apz\n"
    )
    by_text = find_exposures(runlist, [raw / "traceMain_apo_60781_?.h5"], tmp_path)
    assert by_glob == by_text
    assert [t.name for t in by_glob] == [f"apo_60781_{n:04d}" for n in range(1, 5)]
    first = by_glob[0]
    assert [Path(p).name for p in first.inputs] == [f"apR-{c}-52190001.apz" for c in "abc"]
    assert [Path(p).name for p in first.traces] == [f"traceMain_apo_60781_{c}.h5" for c in "RGB"]
    assert first.product == str(tmp_path / "pyapred_apo_60781_0001.h5") and first.problem is None


@pytest.mark.parametrize(
    ("line", "found"),
    [
        ("confSummary-test.par", "'confSummary-test.par'"),
        ("apR-a-52190001.apz  apR-b-52190001.apz", "'apR-a-52190001.apz  apR-b-52190001.apz'"),
        ("apR-a-5219999*.apz", "'apR-a-5219999*.apz', a glob matching nothing"),
        ("*.h5", "'*.h5' matching 'traceMain_apo_60781_B.h5'"),
    ],
)
def test_a_runlist_line_that_names_no_raw_file_stops_the_night(night, tmp_path, capsys, line,
                                                                found):  # fmt: skip
    """Every such line was a failed exposure (1572 of them for a confSummary given as the
    runlist, exit 1, a failures.json written); a glob matching nothing said "file name:
    expected apR-[abc]-NNNNNNNN.apz"."""
    raw, _ = night
    runlist = tmp_path / "night.txt"
    runlist.write_text(f"{raw}/apR-a-52190002.apz\n{raw}/{line}\n")
    out = tmp_path / "out"
    assert main(["night", str(runlist), "--traces", str(raw), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    entry = f"{raw}/{line}"
    assert "night.txt: line 2: expected" in err and f"found {found.replace(line, entry, 1)}" in err
    assert not out.exists()


def test_a_raw_file_named_with_glob_characters_is_that_file(night, tmp_path):
    """A raw file in ``raw[1]/`` was globbed: ``[1]`` matched ``raw1``, not itself."""
    raw, _ = night
    odd = tmp_path / "raw[1]"
    odd.mkdir()
    for path in [*raw.glob("apR-?-52190001.apz"), *raw.glob("traceMain_*.h5")]:
        (odd / path.name).symlink_to(path)
    decoy = tmp_path / "raw1"  # what "raw[1]" matches as a pattern
    decoy.mkdir()
    (decoy / "apR-a-52190001.apz").symlink_to(raw / "apR-a-52190002.apz")
    runlist = tmp_path / "night.txt"
    runlist.write_text("raw[1]/apR-a-52190001.apz\n")
    for source in (odd / "apR-a-52190001.apz", runlist):
        tasks = find_exposures(source, [odd], tmp_path)
        assert [t.name for t in tasks] == ["apo_60781_0001"]
        assert [Path(p).parent for p in tasks[0].inputs] == [odd] * 3


@pytest.mark.parametrize("damage", ["input_files", "pyapred_version", "fit_options"])
def test_a_damaged_record_is_refitted_not_an_internal_error(night, tmp_path, damage):
    """A product whose record holds a number, an array or a 400-digit integer where a list, a
    text or settings belong failed its exposure with a TypeError (ValueError, OverflowError)
    in the resume check; an unreadable record means "fit it again"."""
    import shutil

    from pyapred.exposure import FitOptions
    from pyapred.night import _up_to_date

    raw, reference = night
    name = "pyapred_apo_60781_0001.h5"
    shutil.copyfile(reference / name, tmp_path / name)
    (task,) = find_exposures(raw / "apR-a-52190001.apz", [raw], tmp_path)
    assert _up_to_date(task, FitOptions())
    value = {"input_files": 5, "pyapred_version": [1, 2],
             "fit_options": '{"p_value": 1' + "0" * 400 + "}"}[damage]  # fmt: skip
    with h5py.File(tmp_path / name, "a") as handle:
        del handle[f"metadata/{damage}"]
        handle[f"metadata/{damage}"] = value
    assert not _up_to_date(task, FitOptions())


@pytest.mark.parametrize(
    ("key", "value"), [("pyapred_version", "0.0.1"), ("fit_options", '{"p_value": 0.01}')]
)
def test_another_version_or_setting_is_refitted(night, tmp_path, key, value):
    """Resume skips a product only if it records this pyapred version and these settings: after
    an upgrade (a bug fixed) or with other settings every exposure is fitted again."""
    import shutil

    from pyapred.exposure import FitOptions
    from pyapred.night import _up_to_date

    raw, reference = night
    name = "pyapred_apo_60781_0001.h5"
    shutil.copyfile(reference / name, tmp_path / name)
    (task,) = find_exposures(raw / "apR-a-52190001.apz", [raw], tmp_path)
    assert _up_to_date(task, FitOptions())
    with h5py.File(tmp_path / name, "a") as handle:
        del handle[f"metadata/{key}"]
        handle[f"metadata/{key}"] = value
    assert not _up_to_date(task, FitOptions())


def test_an_unreachable_scheduler_is_refused_before_the_output_folder_is_made(
    night, tmp_path, monkeypatch, capsys
):
    """It was found only once --out was made and locked: an empty folder was left behind."""
    import dask.distributed

    def refused(address, timeout):
        raise OSError(f"Timed out trying to connect to {address}")

    monkeypatch.setattr(dask.distributed, "Client", refused)  # (a real one waits 10 s)
    raw, _ = night
    out = tmp_path / "new"
    argv = ["night", str(raw / "apR-a-52190001.apz"), "--traces", str(raw), "--out", str(out)]
    assert main([*argv, "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert "--scheduler: expected a reachable dask scheduler" in capsys.readouterr().err
    assert not out.exists()


def test_runlist_h5_maps_tele_mjd_expid_to_raw_files(night, tmp_path):
    raw, _ = night
    runlist = tmp_path / "runlist_test.h5"
    with h5py.File(runlist, "w") as handle:  # as make_runlist_all.jl writes it
        handle["tele"] = np.array([b"apo", b"apo"])
        handle["mjd"] = np.array([60781, 60781])
        handle["expid"] = np.array([b"52190002", b"3"])  # full exposure string, or n
        handle["dfindx"] = np.array([2, 3])
    tasks = find_exposures(runlist, [raw], tmp_path, raw_dir=raw)
    assert [t.name for t in tasks] == ["apo_60781_0002", "apo_60781_0003"]
    assert tasks[1].inputs[0] == str(raw / "apR-a-52190003.apz") and tasks[1].problem is None
    # A fractional MJD was truncated and fitted; inf and 2-D columns were tracebacks.
    # 1e300 and -5 made file names of them (one too long for the file system); a tele of
    # bytes that are no UTF-8 was a UnicodeDecodeError.
    for key, column, field in (("mjd", np.array([60781.7, 60781]), "mjd, expid (row 0)"),
                               ("mjd", np.array([np.inf, 60781]), "mjd, expid (row 0)"),
                               ("mjd", np.array([[60781, 60781]]), "mjd"),
                               ("mjd", np.array([1e300, 60781]), "mjd, expid (row 0)"),
                               ("mjd", np.array([-5, 60781]), "mjd, expid (row 0)"),
                               ("tele", np.array([b"\xff\xfe", b"apo"]),
                                "tele, mjd, expid (row 0)")):  # fmt: skip
        with h5py.File(runlist, "a") as handle:
            del handle["mjd"], handle["tele"]
            handle["mjd"] = np.array([60781, 60781])
            handle["tele"] = np.array([b"apo", b"apo"])
            del handle[key]
            handle[key] = column
        with pytest.raises(InputError) as caught:
            find_exposures(runlist, [raw], tmp_path, raw_dir=raw)
        assert caught.value.field == field


def test_products_hold_input_hashes_and_are_byte_identical_on_a_second_night(night, tmp_path):
    raw, reference = night
    expected = products(reference)
    assert len(expected) == N_EXPOSURES and leftovers(reference) == []
    assert json.loads((reference / "failures.json").read_text()) == []
    meta = read_product(reference / "pyapred_apo_60781_0002.h5").metadata
    assert meta["input_files"] == [
        *(f"apR-{c}-52190002.apz" for c in "abc"),
        *(f"traceMain_apo_60781_{c}.h5" for c in "RGB"),
    ]
    assert len(meta["input_sha256"]) == 6 and all(len(h) == 64 for h in meta["input_sha256"])
    # The product holds no timestamps, so the same night gives the same bytes (here on one
    # worker running two tasks at a time).
    argv = night_argv(raw, tmp_path, "--workers", "1", "--threads-per-worker", "2", "--quiet")
    assert main(argv) == 0
    assert products(tmp_path) == expected


def test_sigkill_mid_night_then_resume_matches_an_uninterrupted_night(night, tmp_path, capsys):
    raw, reference = night
    command = [sys.executable, "-m", "pyapred.cli", *night_argv(raw, tmp_path, "--quiet")]
    # A session of its own: killing its process group kills the nanny and worker processes too.
    process = subprocess.Popen(command, start_new_session=True, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not products(tmp_path) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = products(tmp_path)
    assert 1 <= len(finished) < N_EXPOSURES, "the kill should land partway through the night"
    expected = products(reference)
    assert all(finished[name] == expected[name] for name in finished)  # nothing half-written

    capsys.readouterr()
    argv = night_argv(raw, tmp_path, "--workers", "1", "--threads-per-worker", "2", "--json")
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped"] == len(finished)
    assert summary["done"] == N_EXPOSURES - len(finished) and summary["failed"] == 0
    assert products(tmp_path) == expected
    assert leftovers(tmp_path) == []


def test_changed_input_is_recomputed(night, tmp_path):
    raw, reference = night
    task = find_exposures(raw / "apR-a-52190001.apz", [raw], tmp_path)[0]
    product = Path(task.product)
    product.write_bytes(products(reference)[product.name])
    assert process_exposure(task).status == "skipped"
    with h5py.File(product, "r+") as handle:  # as if an input had changed since
        del handle["metadata/input_sha256"]
        handle["metadata/input_sha256"] = ["0" * 64] * 6
    assert process_exposure(task).status == "done"
    assert product.read_bytes() == products(reference)[product.name]


@pytest.mark.parametrize("damage", ["chunk", "chip group", "fiber group"])
def test_a_product_that_cannot_be_read_back_is_refitted_not_skipped(night, tmp_path, damage):
    """Resume checked only the product's record: a product with a damaged compressed chunk, or
    without a chip's images or fibers, was "skipped" (exit 0) and kept."""
    from pyapred.exposure import FitOptions
    from pyapred.night import _up_to_date

    raw, reference = night
    task = find_exposures(raw / "apR-a-52190001.apz", [raw], tmp_path)[0]
    product = Path(task.product)
    product.write_bytes(products(reference)[product.name])
    assert _up_to_date(task, FitOptions())
    if damage == "chunk":  # 50 bytes of the first compressed chunk of R/dimage zeroed
        with h5py.File(product) as handle:
            chunk = handle["R/dimage"].id.get_chunk_info(0)
            assert handle["R/dimage"].compression == "gzip" and chunk.size > 60
        data = bytearray(product.read_bytes())
        data[chunk.byte_offset + 10 : chunk.byte_offset + 60] = bytes(50)
        product.write_bytes(bytes(data))
        with pytest.raises(InputError, match="R/dimage"):
            read_product(product)
    else:
        with h5py.File(product, "a") as handle:
            del handle["G" if damage == "chip group" else "fibers/G"]
    assert not _up_to_date(task, FitOptions())
    assert process_exposure(task).status == "done"
    assert product.read_bytes() == products(reference)[product.name]


def test_two_files_of_one_exposure_are_refused_naming_both(night, tmp_path, capsys):
    """``raw1/apR-a-52190001.apz`` and ``raw2/apR-a-52190001.apz``, matched by one glob or
    listed in one runlist: the second was silently ignored (``1 done``, exit 0)."""
    raw, _ = night
    for folder, number in (("raw1", 1), ("raw2", 2), ("copy", 1)):  # raw2: other bytes
        (tmp_path / folder).mkdir()
        for chip in "abc":
            (tmp_path / folder / f"apR-{chip}-52190001.apz").write_bytes(
                (raw / f"apR-{chip}-5219000{number}.apz").read_bytes()
            )
    first, second = (str(tmp_path / f / "apR-a-52190001.apz") for f in ("raw1", "raw2"))
    out = tmp_path / "out"
    argv = ["night", str(tmp_path / "raw[12]" / "apR-a-*.apz"), "--traces", str(raw),
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{second}: RUNLIST_OR_GLOB: expected one file per exposure and chip" in err
    assert f"another file of exposure apo_60781_0001, chip R: {first}" in err
    assert "Traceback" not in err and not out.exists()  # refused before any work
    runlist = tmp_path / "night.txt"
    runlist.write_text("raw1/apR-b-52190001.apz\n# a comment\nraw2/apR-b-52190001.apz\n")
    with pytest.raises(InputError) as caught:
        find_exposures(runlist, [raw], tmp_path)
    assert caught.value.path == str(tmp_path / "raw2" / "apR-a-52190001.apz")
    assert caught.value.field == "night.txt:3"
    assert caught.value.found.endswith(f"chip R: {first} (night.txt:1)")
    # The same bytes at another path are refused too: which file is meant cannot be told.
    runlist.write_text("raw1/apR-a-52190001.apz\ncopy/apR-a-52190001.apz\n")
    with pytest.raises(InputError, match="copy/apR-a-52190001.apz: night.txt:2: expected one"):
        find_exposures(runlist, [raw], tmp_path)
    # --chips: the chip named is the first of those compared.
    with pytest.raises(InputError, match="chip B: "):
        find_exposures(runlist, [raw], tmp_path, chips="BG")


def test_the_same_file_named_twice_is_one_exposure(night, tmp_path):
    """A line repeated (spelled otherwise), the three chips of one exposure, a folder reached
    through a link and a hard link are the same files, not two exposures."""
    raw, _ = night
    (tmp_path / "linked").symlink_to(raw)
    (tmp_path / "hard").mkdir()
    for chip in "abc":
        os.link(raw / f"apR-{chip}-52190001.apz", tmp_path / "hard" / f"apR-{chip}-52190001.apz")
    runlist = tmp_path / "night.txt"
    runlist.write_text(
        f"{raw}/apR-a-52190001.apz\n{raw}/apR-a-52190001.apz\n{raw}/./apR-c-52190001.apz\n"
        "linked/apR-b-52190001.apz\nhard/apR-a-52190001.apz\n"
        f"{raw}/apR-?-52190002.apz\n"
    )
    expected = find_exposures(raw / "apR-a-5219000[12].apz", [raw], tmp_path)
    assert find_exposures(runlist, [raw], tmp_path) == expected
    assert find_exposures(tmp_path / "*" / "apR-?-52190001.apz", [raw], tmp_path) == [
        find_exposures(tmp_path / "hard" / "apR-a-52190001.apz", [raw], tmp_path)[0]
    ]  # the first named is kept: hard/ sorts before linked/


def test_missing_file_is_a_failure_and_stale_temp_files_are_removed(night, tmp_path, capsys):
    raw, _ = night
    (tmp_path / ".pyapred_apo_60781_0009.h5.abc123.tmp").write_bytes(b"left by a killed run")
    runlist = tmp_path / "runlist.txt"
    runlist.write_text("apR-a-52190009.apz  # not there\n")
    (tmp_path / "apR-b-52190009.apz").write_bytes(b"")
    argv = ["night", str(runlist), "--traces", str(raw), "--out", str(tmp_path), "--json"]
    assert main(argv) == 1  # no cluster is started for exposures that cannot run
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert (summary["done"], summary["skipped"], summary["failed"]) == (0, 0, 1)
    missing = str(tmp_path / "apR-a-52190009.apz")
    assert missing in summary["failures"]["apo_60781_0009"]
    assert missing in captured.err and "Traceback" not in captured.err
    failures = json.loads((tmp_path / "failures.json").read_text())
    assert [f["exposure"] for f in failures] == ["apo_60781_0009"]
    assert f"{missing}: chip R: expected a file, found nothing" in failures[0]["error"]
    assert "chip G" not in failures[0]["error"]
    assert leftovers(tmp_path) == [] and products(tmp_path) == {}


def test_a_second_night_on_the_same_out_is_refused_naming_the_holder(night, tmp_path, capsys):
    import fcntl
    import os

    from pyapred.night import LOCK_FILE

    out = tmp_path / "products"
    out.mkdir()
    with open(out / LOCK_FILE, "a+") as held:  # a first run, as far as the lock can tell
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write(f"PID {os.getpid()} on this host\n")
        held.flush()
        code = main(night_argv(night[0], out, "--quiet"))
    err = capsys.readouterr().err
    assert code == 2 and f"locked by PID {os.getpid()}" in err and "--wait" in err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing fitted or written


def test_settings_no_exposure_can_run_with_are_refused_before_the_out_folder(night, tmp_path,
                                                                            capsys):  # fmt: skip
    """`--workers 0` was refused after --out was made and locked (an empty folder left); a gain
    of 0 failed on every worker, exit 1, where `pyapred fit` refuses it first."""
    raw, _ = night
    for extra, words in ((["--workers", "0"], "--workers"),
                         (["--threads-per-worker", "0"], "--threads-per-worker"),
                         # Spawned workers until memory ran out; an OverflowError traceback.
                         (["--workers", "100000"], "--workers: expected 1 to"),
                         (["--threads-per-worker", "9" * 20], "--threads-per-worker: expected"),
                         (["--raw-dir", str(tmp_path / "nowhere")], "--raw-dir: expected"),
                         (["--gain", "0"], "--gain: expected"),
                         (["--saturation", "0.5"], "--saturation: expected")):  # fmt: skip
        out = tmp_path / f"out{extra[0]}"
        assert main(night_argv(raw, out, *extra)) == 2
        assert words in capsys.readouterr().err
        assert not out.exists()


def test_no_product_replaces_the_log(night, tmp_path, capsys):
    """`--log` named like a product: the worker's product replaced the log (exit 0), or, named
    like failures.json, the run fitted every exposure before failing at the end. Refused, the
    log started under that name is removed, with the folder made for it (a text file named
    like a product was left)."""
    from pyapred.night import FAILURES_FILE, LOCK_FILE

    raw, reference = night
    for name in (sorted(products(reference))[0], FAILURES_FILE, LOCK_FILE):
        out = tmp_path / name.strip(".")
        log = out / name
        assert main([*night_argv(raw, out, "--workers", "1"), "--log", str(log)]) == 2
        assert "expected an output path of its own, found --log's file" in capsys.readouterr().err
        assert not out.exists()


def test_the_lock_file_is_never_written_through_a_link(night, tmp_path, capsys):
    """A lock file that was a link to an input had that input truncated to the holder's PID."""
    from pyapred.night import LOCK_FILE

    raw, _ = night
    trace = raw / "traceMain_apo_60781_R.h5"
    before = trace.read_bytes()
    for kind in ("symlink", "hardlink", "folder"):
        out = tmp_path / kind
        out.mkdir()
        if kind == "symlink":
            (out / LOCK_FILE).symlink_to(trace)
        elif kind == "hardlink":
            os.link(trace, out / LOCK_FILE)
        else:
            (out / LOCK_FILE).mkdir()
        assert main(night_argv(raw, out, "--quiet")) == 2
        err = capsys.readouterr().err
        assert f"{LOCK_FILE}: --out: expected a regular file of pyapred night's own" in err
        assert trace.read_bytes() == before
        assert not list(out.glob("pyapred_*.h5"))


def test_runlist_h5_damage_is_named_not_a_traceback(night, tmp_path):
    """A null dataspace (TypeError), an external link to nothing (KeyError), 1e11 rows declared
    in 2 kB (MemoryError), data kept in an external FIFO (a hang), a complex MJD (taken as its
    real part): each an InputError naming the dataset."""
    raw, _ = night
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases = {
        "null": (lambda h: h.create_dataset("mjd", data=h5py.Empty("f8")), r"empty \(null\)"),
        "link": (lambda h: h.__setitem__("mjd", h5py.ExternalLink("nowhere.h5", "/mjd")),
                 "expected an object in this file, found an external link to nowhere.h5:/mjd"),
        "huge": (lambda h: h.create_dataset("mjd", shape=(10**11,), dtype="f8", chunks=(1000,)),
                 "expected at most 100000 exposures"),
        "fifo": (lambda h: h.create_dataset("mjd", shape=(2,), dtype="f8",
                                            external=[(str(fifo), 0, 16)]),
                 "expected data stored in the file itself"),
        "complex": (lambda h: h.__setitem__("mjd", np.array([60781 + 1j, 60781])),
                    "expected dtype kind"),
    }  # fmt: skip
    for name, (make, words) in cases.items():
        runlist = tmp_path / f"runlist_{name}.h5"
        with h5py.File(runlist, "w") as handle:
            handle["tele"] = np.array([b"apo", b"apo"])
            handle["expid"] = np.array([1, 2])
            make(handle)
        with pytest.raises(InputError, match=words) as caught:
            find_exposures(runlist, [raw], tmp_path, raw_dir=raw)
        assert caught.value.field == "mjd", name


def test_runlist_rows_once_and_a_text_runlist_with_a_byte_order_mark(night, tmp_path, monkeypatch):
    """Repeated rows were each looked for on disk before being merged (3e7 rows: most of an
    hour); a text runlist saved with a BOM made its first path relative."""
    import pyapred.night

    raw, _ = night
    looked = []
    exists = pyapred.night._exists
    monkeypatch.setattr(pyapred.night, "_exists", lambda path: looked.append(path) or exists(path))
    runlist = tmp_path / "runlist_repeats.h5"
    with h5py.File(runlist, "w") as handle:
        handle["tele"] = np.array([b"apo"] * 50_000)
        handle["mjd"] = np.full(50_000, 60781)
        handle["expid"] = np.tile([1, 2], 25_000)
    tasks = find_exposures(runlist, [raw], tmp_path, raw_dir=raw)
    assert [t.name for t in tasks] == ["apo_60781_0001", "apo_60781_0002"]
    assert len(looked) <= 4  # two places for each of the two exposures, not 50 000 rows
    text = tmp_path / "night.txt"
    text.write_text(f"{raw}/apR-a-52190003.apz\n", encoding="utf-8-sig")
    (task,) = find_exposures(text, [raw], tmp_path)
    assert task.problem is None and task.name == "apo_60781_0003"


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    import pyapred.night

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(pyapred.night, "run", interrupted)
    assert main(["night", "x", "--traces", "t", "--out", "o"]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "pyapred night: interrupted (finished exposures are kept: run it again to resume)"
    ]


def test_an_unreadable_night_folder_fails_its_exposures_alone(night, tmp_path, monkeypatch):
    """A raw folder without permission stopped the whole runlist with a bare "Permission
    denied" (exit 2); its exposures are failures naming their files, the others run."""
    import pathlib

    raw, _ = night
    runlist = tmp_path / "runlist_two.h5"
    with h5py.File(runlist, "w") as handle:
        handle["tele"] = np.array([b"apo", b"apo"])
        handle["mjd"] = np.array([60781, 60781])
        handle["expid"] = np.array([1, 2])
    # Exposure 2 as if its night folder RAW/apo/60781 were unreadable (tests run as root).
    denied = raw / "apo" / "60781" / "apR-a-52190002.apz"
    for method in ("exists", "is_file"):
        original = getattr(pathlib.Path, method)

        def guarded(path, original=original):
            if path in (denied, raw / denied.name):
                raise PermissionError(13, "Permission denied", str(path))
            return original(path)

        monkeypatch.setattr(pathlib.Path, method, guarded)
    first, second = find_exposures(runlist, [raw], tmp_path, raw_dir=raw)
    assert first.problem is None
    assert second.problem.startswith(
        f"{denied}: chip R: expected a readable file, found Permission denied"
    )


def test_fit_problems_make_the_night_exit_1_with_a_line_on_stderr(monkeypatch, tmp_path, capsys):
    """A night whose exposures are done but flagged (fibers fallen back to the constant model)
    exits 1, as documented: a batch script checking the exit code must see it. With --quiet it
    said nothing at all; without, one line listed every fiber (tens of kB at 300 fibers x 3
    chips). One line per exposure on stderr, even with --quiet; --verbose lists the fibers."""
    import pyapred.night
    from pyapred.night import NightResult, TaskResult

    fibers = [f"R: fiberId {300 - i}: omega fit failed (not converged after 1 iterations; 48 fit "
              "pixels); constant model used" for i in range(23)]  # fmt: skip
    fibers.append("G: fiberId 7: omega fit failed (with the 1/f nuisance term; not converged "
                  "after 1 iterations; 48 fit pixels); the bright fibers' omega used")  # fmt: skip
    chip = "chip B: 93 % of the traced pixels have no flux (of those: jumps 93 %)"
    flagged = TaskResult("apo_60781_0001", "done", str(tmp_path / "p.h5"),
                         problems=[*fibers, chip])  # fmt: skip
    monkeypatch.setattr(pyapred.night, "find_exposures", lambda *args, **kwargs: [])
    monkeypatch.setattr(pyapred.night, "run_night",
                        lambda *args, **kwargs: NightResult([flagged], 1.0))  # fmt: skip
    argv = ["night", "x.apz", "--traces", str(tmp_path), "--out", str(tmp_path / "out")]
    assert main([*argv, "--quiet"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "pyapred night: warning: apo_60781_0001: 23 fibers fell back to the constant model; "
        f"1 fiber fell back to the bright fibers' omega; {chip} (see its product; --verbose "
        "lists them)"
    ]
    assert main([*argv, "--verbose"]) == 1
    listed = [line for line in capsys.readouterr().out.splitlines() if "flagged" in line]
    assert listed == [f"  flagged apo_60781_0001: {problem}" for problem in [*fibers, chip]]
    clean = TaskResult("apo_60781_0001", "done", str(tmp_path / "p.h5"))
    monkeypatch.setattr(pyapred.night, "run_night",
                        lambda *args, **kwargs: NightResult([clean], 1.0))  # fmt: skip
    assert main([*argv, "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_a_product_kept_on_resuming_reports_the_problems_it_records(night, tmp_path):
    """A resumed night exited 0 with no flagged lines where the night run in one go exited 1:
    a kept product's fit problems were not reported."""
    from pyapred.exposure import FitOptions

    raw, _ = night
    (task,) = find_exposures(raw / "apR-a-52190001.apz", [raw], tmp_path)
    options = FitOptions(max_iter=1)  # fits that do not converge: fibers fall back
    done = process_exposure(task, options, resume=True)
    assert done.status == "done" and done.problems
    kept = process_exposure(task, options, resume=True)
    assert kept.status == "skipped" and kept.problems == done.problems


def test_runlist_h5_finds_the_folder_of_the_chips_asked_for(night, tmp_path):
    """Only chip a's file decided the folder: with --chips GB and no chip a file, the raw
    files next to the runlist were looked for under apo/60781/ and reported missing there."""
    import shutil

    raw, _ = night
    folder = tmp_path / "raw"
    folder.mkdir()
    for chip in "bc":
        shutil.copyfile(raw / f"apR-{chip}-52190001.apz", folder / f"apR-{chip}-52190001.apz")
    runlist = folder / "runlist_gb.h5"
    with h5py.File(runlist, "w") as handle:
        handle["tele"], handle["mjd"], handle["expid"] = [b"apo"], [60781], [b"1"]
    (task,) = find_exposures(runlist, [raw], tmp_path / "out", chips="GB")
    assert task.problem is None, task.problem
    assert sorted(Path(p).name for p in task.inputs) == ["apR-b-52190001.apz", "apR-c-52190001.apz"]


def test_an_interrupted_night_removes_its_workers_temporaries(night, tmp_path, monkeypatch):
    """SIGTERM (or Ctrl-C) ended the night with exit 130 but left the workers' temporaries in
    --out until the next run; the command's own outputs had theirs removed."""
    import pyapred.night

    raw, _ = night
    out = tmp_path / "out"

    def stopped(client, runnable, *args, **kwargs):
        for task in runnable:  # a worker's half-written product, its writer gone
            Path(task.product).with_name(f".{Path(task.product).name}.abc123_x.tmp").write_bytes(
                b"half"
            )
        raise KeyboardInterrupt

    monkeypatch.setattr(pyapred.night, "_run_tasks", stopped)
    assert main(night_argv(raw, out, "--workers", "1", "--quiet")) == 130
    assert leftovers(out) == []


def test_tasks_from_relative_paths_carry_absolute_paths(night, tmp_path, monkeypatch):
    """With --scheduler tcp://... the paths went to the workers as typed: relative ones named
    inputs in the worker's own folder (missing) and products were written there, the night
    saying "done"."""
    import pyapred.night
    from pyapred.night import ExposureTask, run_night

    raw, _ = night
    (tmp_path / "raw").symlink_to(raw)  # (absolute() keeps the link's name, as typed)
    monkeypatch.chdir(tmp_path)
    Path("night.txt").write_text("raw/apR-a-52190001.apz\n")
    with h5py.File("runlist_one.h5", "w") as handle:
        handle["tele"], handle["mjd"], handle["expid"] = [b"apo"], [60781], [1]
    for source, traces, raw_dir in (("raw/apR-a-5219000[1].apz", "raw", None),
                                    ("night.txt", "raw/traceMain_apo_60781_?.h5", None),
                                    ("runlist_one.h5", "raw/traceMain_apo_60781_R.h5", "raw"),
                                    ("raw/apR-a-52190001.apz", "raw", None)):  # fmt: skip
        traces = [traces, "raw/traceMain_apo_60781_[GB].h5"] if "_R" in traces else [traces]
        (task,) = find_exposures(source, traces, "out", raw_dir=raw_dir)
        assert task.problem is None, source
        assert task.inputs == tuple(str(tmp_path / "raw" / f"apR-{c}-52190001.apz") for c in "abc")
        assert task.traces == tuple(str(tmp_path / "raw" / f"traceMain_apo_60781_{c}.h5")
                                    for c in "RGB")  # fmt: skip
        assert task.product == str(tmp_path / "out" / "pyapred_apo_60781_0001.h5")
    # run_night, given tasks made by hand and a relative --out, makes them absolute too.
    ran = {}
    monkeypatch.setattr(pyapred.night, "_run_night",
                        lambda tasks, out, *rest: ran.update(tasks=tasks, out=out))  # fmt: skip
    by_hand = ExposureTask(
        "apo_60781_0001",
        ("raw/apR-a-52190001.apz",),
        ("raw/traceMain_apo_60781_R.h5",),
        "out/pyapred_apo_60781_0001.h5",
    )
    run_night([by_hand], "out", progress=False)
    assert ran["out"] == tmp_path / "out"
    assert ran["tasks"] == [ExposureTask("apo_60781_0001", (str(tmp_path / by_hand.inputs[0]),),
                                         (str(tmp_path / by_hand.traces[0]),),
                                         str(tmp_path / by_hand.product))]  # fmt: skip
    # A product outside --out is refused, before the folder is made.
    with pytest.raises(InputError, match=rf"--out: expected a product in {tmp_path}/elsewhere"):
        run_night([by_hand], "elsewhere", progress=False)
    assert not Path("elsewhere").exists()


def test_a_glob_matching_files_that_are_no_raw_files_is_refused(night, tmp_path, capsys):
    """``'raw/*'`` matched the trace and truth files: each was counted as a failed exposure
    (exit 1), where a runlist line naming one is refused."""
    raw, _ = night
    out = tmp_path / "out"
    assert main(["night", str(raw / "*"), "--traces", str(raw), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{raw}/*: RUNLIST_OR_GLOB: expected a glob matching only raw files (apR-" in err
    assert f"found a match '{raw}/traceMain_apo_60781_B.h5'" in err
    assert not out.exists()


class _FakeFuture:
    """A submitted exposure that finishes (done) when its result is asked for."""

    def __init__(self, task):
        self.task, self.finished = task, False

    def done(self):
        return self.finished

    def result(self):
        from pyapred.night import TaskResult

        self.finished = True
        return TaskResult(self.task.name, "done", self.task.product)


class _FakeClient:
    def __init__(self):
        self.futures, self.cancelled = [], []

    def submit(self, function, task, *args, **kwargs):
        self.futures.append(_FakeFuture(task))
        return self.futures[-1]

    def cancel(self, futures):
        self.cancelled += futures


@pytest.fixture
def stopped_after_the_first(monkeypatch, tmp_path):
    """A night on a fake cluster, Ctrl-C as the first exposure is done; records what
    ``OUT/failures.json`` held when the first finished and when Ctrl-C came."""
    import contextlib

    import dask.distributed

    import pyapred.night

    client, seen = _FakeClient(), {}
    out = tmp_path / "out"

    def failures():
        path = out / "failures.json"
        return json.loads(path.read_text()) if path.exists() else None

    def first_then_ctrl_c(futures):
        seen["running"] = failures()
        yield next(iter(futures))
        seen["one done"] = failures()
        raise KeyboardInterrupt

    monkeypatch.setattr(pyapred.night, "_client", lambda *args: contextlib.nullcontext(client))
    monkeypatch.setattr(dask.distributed, "as_completed", first_then_ctrl_c)
    return out, client, seen


def test_an_interrupted_night_lists_its_unfinished_exposures_in_failures_json(
    night, stopped_after_the_first, capsys
):
    """A night stopped by Ctrl-C (or killed) left the previous run's ``[]``, "complete", and
    while it ran the file showed the previous run's list."""
    from pyapred.night import NOT_FINISHED

    raw, _ = night
    out, client, seen = stopped_after_the_first
    out.mkdir()
    (out / "failures.json").write_text("[]\n")  # a previous night's, complete
    assert main(night_argv(raw, out, "--quiet")) == 130
    names = [f"apo_60781_{n:04d}" for n in range(1, N_EXPOSURES + 1)]
    assert [(f["exposure"], f["error"]) for f in seen["running"]] == [
        (name, NOT_FINISHED) for name in names
    ]
    assert [f["exposure"] for f in seen["one done"]] == names[1:]
    failures = json.loads((out / "failures.json").read_text())
    assert [(f["exposure"], f["error"]) for f in failures] == [
        (name, "interrupted") for name in names[1:]
    ]
    assert set(failures[0]) == {"exposure", "inputs", "product", "error", "details"}
    assert leftovers(out) == [] and client.cancelled == []  # (its workers end with the run)


def test_an_interrupted_night_cancels_its_unfinished_exposures(night, stopped_after_the_first,
                                                               capsys):  # fmt: skip
    """With --scheduler the exposures submitted went on running on the cluster after the run
    ended and released its lock. (A local cluster ends with the run.)"""
    raw, _ = night
    out, client, _ = stopped_after_the_first
    assert main(night_argv(raw, out, "--quiet", "--scheduler", "tcp://127.0.0.1:1")) == 130
    assert client.cancelled == client.futures[1:] and len(client.futures) == N_EXPOSURES
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("pyapred night: 3 unfinished exposures cancelled")
    assert err[1].startswith("pyapred night: interrupted") and len(err) == 2


def test_stale_temporaries_of_other_products_and_of_failures_json_are_removed(night, tmp_path):
    """Only the temporaries of this run's products were removed: those of failures.json and of
    products of another runlist stayed, where the docs promise every ``.pyapred_*.h5.*.tmp``
    goes (except one a live writer holds)."""
    import fcntl

    raw, _ = night
    out = tmp_path / "out"
    out.mkdir()
    stale = [".pyapred_apo_60781_0007.h5.abc12345.tmp", ".failures.json.abc12345.tmp"]
    for name in stale:
        (out / name).write_bytes(b"left by a killed run")
    live = out / ".pyapred_apo_60781_0008.h5.def67890.tmp"
    runlist = tmp_path / "night.txt"
    runlist.write_text("apR-a-52190009.apz\n")  # missing: no cluster is started
    with open(live, "wb") as held:  # a writer still at work
        fcntl.flock(held, fcntl.LOCK_EX)
        argv = ["night", str(runlist), "--traces", str(raw), "--out", str(out), "--quiet"]
        assert main(argv) == 1
    assert leftovers(out) == [live.name]


def test_a_failures_json_that_is_no_file_is_refused_before_any_work(
    night, tmp_path, capsys, monkeypatch, caplog
):
    """A folder named failures.json was found by the last write, after every exposure was
    fitted, in an error naming a temporary file. A write that fails while the night runs is
    logged, and the night goes on."""
    import pyapred.night

    raw, _ = night
    out = tmp_path / "out"
    (out / "failures.json").mkdir(parents=True)
    assert main(night_argv(raw, out, "--quiet")) == 2
    err = capsys.readouterr().err
    assert f"{out}/failures.json: --out: expected a regular file" in err and "found a folder" in err
    assert products(out) == {} and not (out / ".pyapred-night.lock").exists()

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pyapred.night, "_write_failures", full)
    pyapred.night._rewrite_failures(out, [], {})  # logged, not raised
    assert f"could not update {out}/failures.json: No space left on device" in caplog.text


@pytest.mark.parametrize(
    "error",
    [OSError("Unable to synchronously open file\n  (file signature not found)"),
     InputError("x.h5", "R/dimage", "a chunk", "HDF5 error\n  (file signature not found)")],
)  # fmt: skip
def test_an_error_of_several_lines_is_reported_on_one(night, tmp_path, monkeypatch, error):
    """An HDF5 error's lines broke the one-line ``failed:`` format (and failures.json's
    error); the traceback keeps its lines."""
    import pyapred.exposure

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(pyapred.exposure, "run_exposure", broken)
    raw, _ = night
    (task,) = find_exposures(raw / "apR-a-52190001.apz", [raw], tmp_path)
    result = process_exposure(task, resume=False)
    assert result.status == "failed" and "\n" not in result.error
    assert result.error.endswith("found HDF5 error (file signature not found)") or (
        result.error == "OSError: Unable to synchronously open file (file signature not found)"
    )
    if isinstance(error, OSError):
        assert "\n  (file signature not found)" in result.details


def test_local_workers_start_with_ctrl_c_ignored():
    """A terminal's Ctrl-C reaches the whole process group: each local worker printed its own
    tracebacks (and a leaked-semaphore warning) before the night's one line. They start with
    SIGINT ignored, which they keep; the night's own handler is back afterwards."""
    import signal

    from pyapred.night import _sigint_ignored

    before = signal.getsignal(signal.SIGINT)
    with _sigint_ignored():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is before
