"""Paths checked before any work, and the temporaries of killed writers."""

from __future__ import annotations

from pyapred.io.atomic import kept_file
from pyapred.io.paths import remove_stale_temporaries


def test_only_a_killed_writers_temporaries_are_removed(tmp_path):
    """Any file named ``.{out}.*.tmp*`` was removed: an input or the log of the run too."""
    out = tmp_path / "p.h5"
    stale = [tmp_path / ".p.h5.ab_c1234.tmp", tmp_path / ".p.h5.zzzzzzzz.tmp.h5"]
    an_input = tmp_path / ".p.h5.inputs12.tmp"
    log = tmp_path / ".p.h5.runlog00.tmp"
    other = [tmp_path / ".p.h5.two.parts.tmp", tmp_path / ".p.h5.abcdefgh.tmp.bak"]
    for path in [*stale, an_input, log, *other]:
        path.write_text("data")
    with kept_file(log, "--log's file"):
        removed = remove_stale_temporaries(out, keep=[an_input])
    assert sorted(removed) == sorted(stale)
    assert all(p.exists() for p in [an_input, log, *other])


def test_an_output_that_is_no_regular_file_is_said_as_it_is(tmp_path):
    """A FIFO or a broken link as --out was "an existing file (or pass --overwrite)"."""
    import os

    import pytest

    from pyapred.errors import InputError
    from pyapred.io.paths import check_output_path

    fifo, broken = tmp_path / "ff", tmp_path / "dl.h5"
    os.mkfifo(fifo)
    broken.symlink_to(tmp_path / "nowhere.h5")
    for path, found in ((fifo, "a FIFO"), (broken, "a link to nothing")):
        for overwrite in (False, True):
            with pytest.raises(InputError, match=f"expected a new or regular file, found {found}"):
                check_output_path(path, "--out", overwrite=overwrite)
    with pytest.raises(InputError, match="expected a folder, found a FIFO"):
        check_output_path(fifo, "--plots", folder=True)


def test_read_product_names_a_fifo_instead_of_hanging(tmp_path):
    import os

    import pytest

    from pyapred.errors import InputError
    from pyapred.io import read_product

    os.mkfifo(tmp_path / "p.h5")
    with pytest.raises(InputError, match="product: expected a regular file, found a FIFO"):
        read_product(tmp_path / "p.h5")


def test_temporaries_of_a_name_with_glob_characters_are_found(tmp_path):
    """``p[1].h5``'s temporaries were looked for with ``[1]`` as a pattern: never found."""
    out = tmp_path / "p[1].h5"
    stale = tmp_path / ".p[1].h5.ab_c1234.tmp"
    other = tmp_path / ".p1.h5.ab_c1234.tmp"  # what the pattern matched: another output's
    for path in (stale, other):
        path.write_text("data")
    assert remove_stale_temporaries(out) == [stale]
    assert other.exists()


def test_an_output_through_dot_dot_of_a_folder_to_be_made_is_named(tmp_path):
    """``--out nofolder/../p.h5`` passed the checks, then the writer's mkdir of ``nofolder/..``
    failed with a bare "File exists". Through a folder that exists, ``..`` is fine."""
    import pytest

    from pyapred.errors import InputError
    from pyapred.io.paths import check_output_path

    with pytest.raises(InputError, match="'..' after a folder that does not exist yet"):
        check_output_path(tmp_path / "nofolder" / ".." / "p.h5", "--out")
    (tmp_path / "sub").mkdir()
    assert check_output_path(tmp_path / "sub" / ".." / "new" / "p.h5", "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]


def test_a_live_writers_temporary_is_left_and_a_killed_ones_removed(tmp_path):
    """Two ``pyapred fit`` on one --out: the second's cleanup deleted the first's temporary
    as it was being written, and the first failed after its whole fit. A live writer (another
    process, inside ``atomic_path``) holds its temporary's lock; once killed, it is stale."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "p.h5"
    writer = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time\n"
            "from pyapred.io.atomic import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_text('half')\n"
            "    print(tmp, flush=True)\n"
            "    time.sleep(60)\n"
        ), str(out)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        live = tmp_path / writer.stdout.readline().strip()
        assert live.exists()
        assert remove_stale_temporaries(out) == []
        assert live.read_text() == "half"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    deadline = time.monotonic() + 10
    while remove_stale_temporaries(out) != [live] and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel releases a killed process's lock as it reaps it
    assert not live.exists() and not out.exists()


def test_a_product_written_beside_a_cleanup_is_complete(tmp_path):
    """The writer's own HDF5 file lock would conflict with atomic_path's: h5py opens the
    temporary without one, and a cleanup in the middle of the write leaves it alone."""
    import numpy as np

    from pyapred.io import read_product
    from pyapred.io.product import ProductWriter
    from pyapred.traces import Traces, read_trace_file, write_trace_file

    out = tmp_path / "p.h5"
    with ProductWriter(out) as writer:
        assert remove_stale_temporaries(out) == []
        writer.finish()
    assert read_product(out).chips == {}
    traces = Traces(y_center=np.full((2, 4), 5.0) + [[0.0], [6.0]], sigma=1.0)
    write_trace_file(tmp_path / "t.h5", traces)
    assert np.array_equal(read_trace_file(tmp_path / "t.h5").y_center, traces.y_center)
