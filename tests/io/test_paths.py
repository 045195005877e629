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
