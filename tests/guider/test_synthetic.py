"""Synthetic SDSS-V guider frames: names, compression by suffix, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.time import Time

from pyapred import guider

from .scenario import START


def test_simulated_frames_are_named_per_camera_and_frame(tmp_path):
    paths = guider.simulate_guider_frames(
        tmp_path / "frames", start=START, duration=60.0, transparency=np.ones_like,
        fwhm=np.ones_like, rng=np.random.default_rng(0), cameras=("gfa1s", "gfa2s"),
        n_stars=3, first_frame=7,
    )  # fmt: skip
    names = [p.split("/")[-1] for p in paths]
    assert names == [f"proc-gimg-gfa{c}s-{i:04d}.fits" for i in (7, 8, 9) for c in (1, 2)]
    frames = guider.read_guider_frames(tmp_path / "frames").frames
    assert len(frames) == 6 and all(f.usable and f.site == "lco" for f in frames)
    assert abs((frames[-1].start - (START + 40 * u.s)).sec) < 1e-3


def test_write_proc_gimg_compresses_by_suffix_and_replaces_atomically(tmp_path):
    path = tmp_path / "proc-gimg-gfa1n-0001.fits.gz"
    for fwhm in (1.2, 1.4):  # the second write replaces the first
        guider.write_proc_gimg(path, date_obs=START, exptime=15.0, fwhm=fwhm, r_zpt=25.0)
    assert path.read_bytes()[:2] == b"\x1f\x8b"  # gzip: the temporary file kept ".gz"
    assert fits.getheader(path, "RAW")["FWHM"] == 1.4
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left


def test_synthetic_writers_check_their_arguments(tmp_path):
    """cadence 0 was a ZeroDivisionError, a NaN FWHM an astropy error, a string date an
    AttributeError, and a negative EXPTIME was written (read_guider_frame refuses it)."""
    from pyapred.guider.synthetic import write_proc_gimg

    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="cadence: expected a time > 0"):
        guider.simulate_guider_frames(tmp_path, start=Time("2025-05-01T04:00:00", scale="tai"),
                                      duration=60.0, transparency=np.ones_like,
                                      fwhm=np.ones_like, rng=rng, cadence=0.0)  # fmt: skip
    with pytest.raises(TypeError, match="date_obs: expected an astropy Time"):
        write_proc_gimg(tmp_path / "a.fits", date_obs="yesterday", exptime=15.0, fwhm=1.2)
    with pytest.raises(ValueError, match="exptime"):
        write_proc_gimg(tmp_path / "a.fits", date_obs=Time.now(), exptime=-15.0, fwhm=1.2)
    path = write_proc_gimg(tmp_path / "b.fits", date_obs=Time.now(), exptime=15.0, fwhm=np.nan)
    assert fits.getheader(path or tmp_path / "b.fits", 1)["FWHM"] == -999.0
