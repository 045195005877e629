"""Atomic writes: all or nothing, with the permissions of a newly created file."""

import os
import stat
from pathlib import Path

import pytest

from pyapred.errors import InputError
from pyapred.io.atomic import atomic_path, kept_file, write_bytes_atomic
from pyapred.io.paths import check_output_path


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_output_gets_the_usual_permissions(tmp_path, umask_022):
    path = tmp_path / "product.h5"
    write_bytes_atomic(path, b"data")
    assert path.read_bytes() == b"data"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "product.h5"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(path, overwrite=True) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["product.h5"]
    with pytest.raises(FileExistsError, match="product.h5"):
        with atomic_path(path):
            pass


def test_keep_suffix_lets_the_writer_pick_the_format_from_the_name(tmp_path):
    from fnmatch import fnmatch

    import numpy as np
    from astropy.io import fits

    path = tmp_path / "frame.fits.gz"
    with atomic_path(path, keep_suffix=True) as tmp:
        assert tmp.name.endswith(".tmp.gz") and fnmatch(tmp.name, f".{path.name}.*.tmp*")
        fits.PrimaryHDU(np.zeros((4, 4), np.float32)).writeto(tmp, overwrite=True)
    assert path.read_bytes()[:2] == b"\x1f\x8b"  # gzip, chosen by astropy from ".gz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frame.fits.gz"]
    # Without it the name ends in ".tmp": the pattern `pyapred night` cleans up.
    with atomic_path(tmp_path / "product.h5") as tmp:
        assert fnmatch(tmp.name, ".product.h5.*.tmp") and tmp.suffix == ".tmp"
        tmp.write_bytes(b"data")


def test_missing_folders_are_made_by_the_write_and_removed_if_it_fails(tmp_path):
    path = tmp_path / "new" / "sub" / "product.h5"
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        assert tmp.parent == path.parent
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []  # neither "new" nor "new/sub" stays behind
    write_bytes_atomic(path, b"data")
    assert path.read_bytes() == b"data"


def test_an_output_is_checked_without_making_its_folder(tmp_path):
    from pyapred.errors import InputError
    from pyapred.io.paths import check_output_path

    path = tmp_path / "new" / "sub" / "product.h5"
    assert check_output_path(path, "--out") == path
    assert check_output_path(tmp_path / "plots" / "a", "--plots", folder=True)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="--out: expected a folder pyapred can write to"):
        check_output_path(tmp_path / "file" / "sub" / "product.h5", "--out")


def test_folders_made_before_a_failing_one_are_removed(tmp_path):
    """A name too long for the file system, three levels down: nothing stays behind."""
    with pytest.raises(OSError), atomic_path(tmp_path / "a" / "b" / ("x" * 300) / "f.h5"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_kept_file_is_replaced_by_no_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    log = tmp_path / "run.log"
    log.write_text("the record")
    link = tmp_path / "link.log"
    link.symlink_to(log)
    with kept_file(log, "--log's file"):
        for path in (log, link):
            with pytest.raises(InputError, match="--log's file"):
                check_output_path(path, "--out", overwrite=True)
            with pytest.raises(FileExistsError, match="no output may replace"):
                with atomic_path(path, overwrite=True) as tmp:
                    tmp.write_text("an output")
        check_output_path(tmp_path / "other", "--out")
        with kept_file(log, "--log's file"):  # nested on the same file: still kept after
            pass
        with kept_file(link, "--log's file"):  # and through a link
            pass
        with pytest.raises(InputError, match="--log's file"):
            check_output_path(log, "--out", overwrite=True)
        os.chdir(tmp_path.parent)  # another working folder: a relative spelling finds it
        with pytest.raises(InputError, match="--log's file"):
            check_output_path(Path(tmp_path.name) / "run.log", "--out", overwrite=True)
    assert log.read_text() == "the record"
    with atomic_path(log, overwrite=True) as tmp:  # kept no longer
        tmp.write_text("an output")
    assert log.read_text() == "an output"
