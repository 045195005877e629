"""Atomic writes: all or nothing, with the permissions of a newly created file."""

import os
import stat

import pytest

from pyapred.io.atomic import atomic_path, write_bytes_atomic


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
