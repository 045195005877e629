"""Guider file readers: SDSS-V proc-gimg, gcam summaries, plate-era frames, bad files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.time import Time

from pyapred import guider
from pyapred.errors import InputError

from .scenario import FIXTURES, START, exposure_header, needs_fixtures


def test_sdssv_frame_keywords_are_read(tmp_path):
    path = tmp_path / "proc-gimg-gfa3s-0042.fits"
    start = Time("2024-12-04 01:35:06.421088", scale="tai")
    guider.write_proc_gimg(
        path, date_obs=start, exptime=15.0, fwhm=1.31, fwhm_fit=1.05,
        source_id=[11, 12, 13], zp=[25.1, 24.9, np.nan], config_id=10000123, camera="gfa3s",
        rms=0.07,
    )  # fmt: skip
    header = fits.getheader(path, "RAW")
    assert header["DATE-OBS"] == "2024-12-04 01:35:06.421088" and header["TIMESYS"] == "TAI"
    frame = guider.read_guider_frame(path)
    assert frame.kind == "proc-gimg" and frame.usable
    assert frame.start.scale == "tai" and frame.start.isot == "2024-12-04T01:35:06.421"
    assert abs((frame.mid - start).sec - 7.5) < 1e-3  # from TAI_MID
    assert (frame.fwhm, frame.fwhm_fit, frame.camera_fwhm, frame.rms) == (1.05, 1.05, 1.31, 0.07)
    assert (frame.config_id, frame.camera, frame.site, frame.frame_number) == (
        10000123, "gfa3s", "lco", 42,
    )  # fmt: skip
    assert frame.star_ids.tolist() == ["11", "12"]  # the NaN zero point is left out
    np.testing.assert_allclose(frame.star_zp, [25.1, 24.9])


def test_frames_without_gaiamatch_fall_back_to_the_camera_zero_point(tmp_path):
    rng = np.random.default_rng(3)
    for i, zp in enumerate([25.0, 24.9, 25.0]):
        guider.write_proc_gimg(
            tmp_path / f"proc-gimg-gfa1n-{i:04d}.fits", date_obs=START + 20 * i * u.s,
            exptime=15.0, fwhm=1.2, r_zpt=zp + rng.normal(0, 1e-9),
        )  # fmt: skip
    series = guider.guider_series(tmp_path)
    np.testing.assert_allclose(series.transparency, [1.0, 10 ** (-0.04), 1.0], rtol=1e-6)


def test_gcam_summary_is_read_as_tai_seeing_only(tmp_path):
    dates = ["2024-12-04 01:35:06.4", "2024-12-04 01:35:26.4", "2024-12-04 01:35:46.4"]
    fwhm = np.array([[1.1, 1.3, 1.2, 0, 1.0, 1.4]] * 3)
    fwhm[2] = np.nan
    columns = [
        fits.Column("indx", "J", array=np.arange(3)),
        fits.Column("date-obs", "A21", array=dates),
        fits.Column("mjd", "D", array=Time(dates).mjd),  # parsed as UTC by its producer
        fits.Column("gdrms", "E", array=[0.1, 0.2, 0.3]),
        fits.Column("nstars", "6J", array=np.full((3, 6), 5)),
        fits.Column("fwhm", "6E", array=fwhm),
    ]
    path = tmp_path / "gcam-60648.fits"
    fits.BinTableHDU.from_columns(columns).writeto(path)
    frames = guider.read_guider_frames(path).frames
    assert [f.kind for f in frames] == ["gcam"] * 3
    assert frames[0].start.scale == "tai" and frames[0].start.isot == "2024-12-04T01:35:06.400"
    assert frames[0].fwhm == pytest.approx(1.2) and frames[1].rms == pytest.approx(0.2)
    assert not frames[2].usable
    series = guider.guider_series(frames)
    assert not series.has_photometry and np.all(series.transparency == 1.0) and len(series) == 2


@needs_fixtures
def test_processed_plate_era_frame_yields_seeing_and_probe_fwhm():
    frame = guider.read_guider_frame(FIXTURES / "lco" / "expect-gimg-0040.fits.gz")
    assert frame.kind == "plate-gproc" and frame.usable
    assert frame.fwhm == pytest.approx(1.173738681714761, abs=1e-12)  # SEEING
    assert frame.rms == pytest.approx(0.287183967477125, abs=1e-12)  # GDRMS
    # DATE-OBS '2015-12-01 01:41:26.6Z' is TAI despite the Z.
    assert frame.start.scale == "tai" and frame.start.isot == "2015-12-01T01:41:26.600"
    assert frame.exptime == 12.0 and frame.image_type == "object"
    # Guide probes that exist and are enabled (3 and 11 are acquisition probes, 17 tritium).
    assert frame.probe_id.tolist() == [1, 2, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16]
    fwhm = dict(zip(frame.probe_id.tolist(), frame.probe_fwhm, strict=True))
    assert fwhm[1] == pytest.approx(1.458587, abs=1e-6)
    assert fwhm[16] == pytest.approx(1.5744234, abs=1e-6)
    assert frame.star_ids[0] == "probe:1"
    assert frame.star_zp[0] == pytest.approx(16.060898 - 15.93198, abs=1e-5)  # ref_mag - mag


@needs_fixtures
def test_a_plate_era_probe_without_a_magnitude_is_left_out(tmp_path):
    """A probe's ``mag`` of -999 (SDSS's "no value") gave a light of 1015 mag, which
    overflowed the transparency with a numpy warning."""
    with fits.open(FIXTURES / "lco" / "expect-gimg-0040.fits.gz") as hdul:
        hdul[6].data["mag"][0] = -999.0
        hdul.writeto(tmp_path / "expect-gimg-0040.fits")
    frame = guider.read_guider_frame(tmp_path / "expect-gimg-0040.fits")
    assert frame.star_ids[0] == "probe:2" and np.all(np.abs(frame.star_zp) < 5)


@needs_fixtures
def test_plate_era_directory_reads_with_unusable_frames_dropped():
    frames = guider.read_guider_frames(FIXTURES)
    kinds = {Path(f.path).name: f.kind for f in frames.frames}
    assert len(kinds) == 10 and frames.rejected == []
    assert kinds["gimg-0004.fits.gz"] == "plate-raw"
    raw = next(f for f in frames.frames if Path(f.path).name == "gimg-0004.fits.gz")
    assert raw.start.isot == "2013-10-22T00:47:02.800" and raw.exptime == 5.0
    series = guider.guider_series(frames)
    assert len(series) == 1 and series.fwhm[0] == pytest.approx(1.173738681714761)
    reasons = dict(series.dropped)
    assert len(reasons) == 9
    flat = str(FIXTURES / "lco" / "expect-gimg-0003.fits.gz")
    assert "'flat'" in reasons[flat]


def test_unknown_time_system_is_a_clear_error(tmp_path):
    path = tmp_path / "proc-gimg-gfa1n-0001.fits"
    guider.write_proc_gimg(path, date_obs=START, exptime=15.0, fwhm=1.2, source_id=[1], zp=[25.0])
    with fits.open(path, mode="update") as hdul:
        hdul["RAW"].header["TIMESYS"] = "LOCAL"
    with pytest.raises(InputError) as err:
        guider.read_guider_frame(path)
    assert err.value.field == "TIMESYS" and "'LOCAL'" in str(err.value)
    assert str(path) in str(err.value)
    # The exposure's TIMESYS: tests/guider/test_timing.py.


def test_bad_date_obs_and_bad_plate_files_name_the_field(tmp_path):
    path = tmp_path / "proc-gimg-gfa1n-0001.fits"
    guider.write_proc_gimg(path, date_obs=START, exptime=15.0, fwhm=1.2, source_id=[1], zp=[25.0])
    with fits.open(path, mode="update") as hdul:
        hdul["RAW"].header["DATE-OBS"] = "yesterday"
    with pytest.raises(InputError) as err:
        guider.read_guider_frame(path)
    assert err.value.field == "DATE-OBS" and "'yesterday'" in str(err.value)
    gproc = tmp_path / "proc-gimg-0001.fits"
    header = fits.Header({"SDSSFMT": "GPROC 1 4", "DATE-OBS": "2015-12-01 01:41:26.6Z"})
    header["EXPTIME"] = 12.0
    fits.PrimaryHDU(np.zeros((4, 4)), header).writeto(gproc)
    with pytest.raises(InputError) as err:
        guider.read_guider_frame(gproc)
    assert err.value.field == "HDU 6" and str(gproc) in str(err.value)
    with pytest.raises(InputError, match="glob matching"):
        guider.read_guider_frames(str(tmp_path / "nothing-*.fits"))


def test_an_unreadable_file_among_good_ones_is_rejected_not_fatal(sky, tmp_path):
    junk = tmp_path / "proc-gimg-gfa9n-0001.fits"
    junk.write_bytes(b"not a FITS file")
    some = guider.read_guider_frames([*sorted(sky.directory.glob("*-000[1-3].fits")), junk])
    assert len(some.frames) == 6 and some.rejected[0][0] == str(junk)
    frames = guider.GuiderFrames(sky.frames.frames, some.rejected)
    result = guider.compare(sky.fit, frames, read_times=exposure_header())
    assert "frames-dropped" in result.flags
    assert any("gfa9n" in path and "readable FITS" in reason for path, reason in result.dropped)


def test_corrupt_fwhm_and_exptime_cards_are_not_taken(tmp_path):
    """FWHM 1e300 gave all-NaN comparisons with no flag (and exit 0); EXPTIME 1e300 too."""
    from .scenario import write_frames

    write_frames(tmp_path / "wide", np.random.default_rng(4), fwhm=lambda t: np.full_like(t, 1e300))
    frames = guider.read_guider_frames(tmp_path / "wide")
    assert all("outside 0.1-30 arcsec" in "; ".join(f.problems) for f in frames.frames)
    write_frames(tmp_path / "long", np.random.default_rng(4))
    path = sorted((tmp_path / "long").glob("*.fits"))[0]
    with fits.open(path, mode="update") as hdul:
        for hdu in hdul:
            for card in ("EXPTIME", "EXPTIMEN"):
                if card in hdu.header:
                    hdu.header[card] = 1e300
    with pytest.raises(InputError, match="EXPTIME: expected an integration time"):
        guider.read_guider_frame(path)


def test_a_truncated_frame_is_named_as_such(tmp_path):
    """A header cut short read as a missing DATE-OBS card, after astropy's raw warning."""
    from .scenario import write_frames

    write_frames(tmp_path / "frames", np.random.default_rng(5))
    path = sorted((tmp_path / "frames").glob("*.fits"))[0]
    cut = tmp_path / "cut.fits"
    cut.write_bytes(path.read_bytes()[:4000])
    with pytest.raises(InputError, match="file: expected a complete FITS file, .*corrupted"):
        guider.read_guider_frame(cut)


def test_names_with_glob_characters_are_read_as_they_are(sky, tmp_path):
    """A file or folder whose name holds ``[`` was taken for a pattern (``frame[1].fits``
    matches ``frame1.fits``): not found, or another file read. A name that exists is itself."""
    import shutil

    folder = tmp_path / "night[2]"
    shutil.copytree(sky.directory, folder)
    first, second = sorted(folder.glob("*.fits"))[:2]
    odd = first.with_name(first.stem + "[1]" + first.suffix)
    first.rename(odd)
    decoy = first.with_name(first.stem + "1" + first.suffix)  # what "[1]" matches as a glob
    shutil.copyfile(second, decoy)
    for name in (odd, str(odd), [str(odd)]):
        one = guider.read_guider_frames(name)
        assert [f.path for f in one.frames] == [str(odd)] and not one.rejected
    assert len(guider.read_guider_frames(folder).frames) == len(sky.frames.frames) + 1
    pattern = str(folder).replace("[", "[[]") + "/*.fits"  # a glob, with the folder escaped
    assert len(guider.read_guider_frames(pattern).frames) == len(sky.frames.frames) + 1


def test_links_to_a_folder_are_walked_once(tmp_path):
    """Two links to ``.`` made the glob's ``**`` walk ever longer paths: a hang."""
    from .scenario import write_frames

    folder = tmp_path / "frames"
    write_frames(folder, np.random.default_rng(6))
    plain = guider.read_guider_frames(folder)
    (folder / "a").symlink_to(".")
    (folder / "b").symlink_to(".")
    (folder / "sub").mkdir()
    (folder / "sub" / "up").symlink_to("..")
    looped = guider.read_guider_frames(folder)
    assert [f.path for f in looped.frames] == [f.path for f in plain.frames]


def test_damaged_gaia_tables_times_and_truncated_data_drop_the_frame(tmp_path):
    """A GAIAMATCH declaring 2e9 rows in 14 kB (33.5 GiB allocated: a MemoryError traceback), a
    GAIAMATCH image (AttributeError), a TAI_MID 400 s early (the times went back, blamed on the
    product), EXPTIME 1e-300 (every result NaN) and data cut short (used as it was)."""
    from .scenario import write_frames

    write_frames(tmp_path / "frames", np.random.default_rng(7))
    good = sorted((tmp_path / "frames").glob("*.fits"))[0]
    assert guider.read_guider_frame(good).usable

    def damaged(name, change):
        path = tmp_path / f"{name}.fits"
        with fits.open(good) as hdul:
            change(hdul)
            hdul.writeto(path, output_verify="ignore")
        return path

    def image(hdul):
        hdul["GAIAMATCH"] = fits.ImageHDU(np.zeros((4, 4)), name="GAIAMATCH")

    def early(hdul):
        hdul["RAW"].header["TAI_MID"] -= 400.0

    def instant(hdul):
        for card in ("EXPTIME", "EXPTIMEN"):
            if card in hdul["RAW"].header:
                hdul["RAW"].header[card] = 1e-300

    assert "GAIAMATCH" in [h.name for h in fits.open(good)]
    for name, change, words in (
        ("huge", None, "file: expected a complete FITS file, found File may have been trunc"),
        ("image", image, "GAIAMATCH: expected a binary table"),
        ("early", early, "TAI_MID: expected the integration's mid-point"),
        ("instant", instant, "EXPTIME: expected an integration time in s, 0.001 to 3600"),
    ):
        path = damaged(name, change) if name != "huge" else None
        if name == "huge":  # astropy will not write it: the card is changed in the bytes
            data = bytearray(good.read_bytes())
            at = data.index(b"GAIAMATCH")
            start = data.index(b"NAXIS2  =", at - 2880 if at > 2880 else 0)
            data[start : start + 30] = b"NAXIS2  = ".ljust(10) + b"2000000000".rjust(20)
            path = tmp_path / "huge.fits"
            path.write_bytes(bytes(data))
        with pytest.raises(InputError, match=words):
            guider.read_guider_frame(path)
    cut = tmp_path / "cut.fits"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size - 500])  # inside the last HDU's data
    with pytest.raises(InputError, match="file: expected a complete FITS file, .*truncated"):
        guider.read_guider_frame(cut)


def test_gcam_counts_of_stars_per_camera_as_fwhm(tmp_path):
    columns = [
        fits.Column("date-obs", "A21", array=["2024-12-04 01:35:06.4"]),
        fits.Column("nstars", "3J", array=np.full((1, 3), 5)),
        fits.Column("fwhm", "6E", array=np.ones((1, 6))),
    ]
    path = tmp_path / "gcam-60648.fits"
    fits.BinTableHDU.from_columns(columns).writeto(path)
    with pytest.raises(InputError, match=r"nstars: expected one value per camera, as fwhm "
                       r"\(1, 6\), found shape \(1, 3\)"):  # fmt: skip
        guider.read_guider_frames(path)


def test_gcam_rows_are_parsed_at_once_and_a_summary_of_no_rows_is_named(tmp_path, monkeypatch):
    """Each gcam row had a Time of its own (20 000 rows: 11 s); a summary of no rows, read
    without a window, was a TypeError building the message."""
    from pyapred.guider import frames as frames_module

    dates = [f"2024-12-04 01:{m:02d}:06.4" for m in range(40)]
    columns = [
        fits.Column("date-obs", "A21", array=dates),
        fits.Column("fwhm", "6E", array=np.full((40, 6), 1.2)),
    ]
    path = tmp_path / "gcam-60648.fits"
    fits.BinTableHDU.from_columns(columns).writeto(path)
    calls = []
    parse = frames_module._parse_date
    monkeypatch.setattr(frames_module, "_parse_date",
                        lambda *a, **k: calls.append(a) or parse(*a, **k))  # fmt: skip
    read = guider.read_guider_frames(path).frames
    assert len(read) == 40 and not calls
    assert read[7].start.isot == "2024-12-04T01:07:06.400" and read[7].start.scale == "tai"
    assert abs((read[7].mid - read[7].start).sec - 7.5) < 1e-6
    empty = tmp_path / "gcam-60649.fits"
    fits.BinTableHDU.from_columns([fits.Column("date-obs", "A21", array=[]),
                                   fits.Column("fwhm", "6E", array=np.zeros((0, 6)))]
                                  ).writeto(empty)  # fmt: skip
    with pytest.raises(InputError, match="guider frames: expected at least one frame"):
        guider.read_guider_frames(empty)


@needs_fixtures
def test_plate_era_probes_without_a_whole_fiberid_are_left_out(tmp_path):
    """A float fiberid of NaN or 1e30 named every such probe "probe:nan": one star, averaged
    over probes, with no word."""
    source = FIXTURES / "lco" / "expect-gimg-0040.fits.gz"
    with fits.open(source) as hdul:
        copy = fits.HDUList([hdu.copy() for hdu in hdul])
    table = copy[6]
    ids = np.asarray(table.data["fiberid"], dtype=np.float64)
    ids[[0, 1]] = [np.nan, 1e30]  # probes 1 and 2
    columns = [c for c in table.columns if c.name.lower() != "fiberid"]
    copy[6] = fits.BinTableHDU.from_columns([*columns, fits.Column("fiberid", "E", array=ids)])
    path = tmp_path / "gimg-0040.fits"
    copy.writeto(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "invalid value in cast"
        frame = guider.read_guider_frame(path)
    assert frame.probe_id.tolist() == [4, 5, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16]
    assert frame.star_ids[0] == "probe:4" and len(set(frame.star_ids)) == len(frame.star_ids)


@pytest.mark.parametrize("card", ["FWHMFIT", "FWHM", "EXPTIMEN", "EXPTIME", "TAI_MID",
                                  "CONFIGID", "RMS", "R_ZPT"])  # fmt: skip
def test_a_logical_number_card_drops_the_frame_with_its_reason(tmp_path, card):
    """astropy reads a FITS ``T`` as True and ``float(True)`` is 1.0: ``FWHMFIT = T`` was a
    seeing of 1 arcsec, ``EXPTIMEN = T`` an integration of 1 s. The frame is dropped, named, as
    for an implausible EXPTIME; the other frames are read."""
    good, bad = tmp_path / "proc-gimg-gfa1n-0001.fits", tmp_path / "proc-gimg-gfa1n-0002.fits"
    for i, path in enumerate((good, bad)):  # no stars: R_ZPT is read too
        guider.write_proc_gimg(path, date_obs=START + 20 * i * u.s, exptime=15.0, fwhm=1.2,
                               fwhm_fit=1.1, r_zpt=25.0)  # fmt: skip
    assert guider.read_guider_frame(bad).usable
    with fits.open(bad, mode="update") as hdul:
        if card == "EXPTIME":  # read where EXPTIMEN is absent
            del hdul["RAW"].header["EXPTIMEN"]
        hdul["RAW"].header[card] = True
    words = rf"{bad.name}: {card}: expected a number, not a FITS logical, found True"
    with pytest.raises(InputError, match=words):
        guider.read_guider_frame(bad)
    frames = guider.read_guider_frames(tmp_path)
    assert [f.path for f in frames.frames] == [str(good)]
    assert frames.rejected[0][0] == str(bad) and card in frames.rejected[0][1]
    from pyapred.guider.frames import header_number  # (compare reads CONFIGID with it)

    assert np.isnan(header_number(True)) and np.isnan(header_number(np.True_))


@pytest.mark.parametrize("card", ["SEEING", "GDRMS"])
def test_a_logical_number_card_of_a_plate_era_frame_drops_it(tmp_path, card):
    """The same for a processed plate-era frame's SEEING (1 arcsec) and GDRMS."""
    path = tmp_path / "gimg-0001.fits"
    header = fits.Header({"SDSSFMT": "GPROC 1 4", "DATE-OBS": "2015-12-01 01:41:26.6Z",
                          "EXPTIME": 12.0, "IMAGETYP": "object", "SEEING": 1.2,
                          "GDRMS": 0.3})  # fmt: skip
    probes = fits.BinTableHDU.from_columns([
        fits.Column(name, "D", array=values) for name, values in
        (("fiberid", [1, 2]), ("fwhm", [1.3, 1.4]), ("mag", [15.0, 14.0]), ("ref_mag", [16, 15]))
    ])  # fmt: skip
    images = [fits.ImageHDU(np.zeros((2, 2))) for _ in range(5)]
    fits.HDUList([fits.PrimaryHDU(np.zeros((4, 4)), header), *images, probes]).writeto(path)
    frame = guider.read_guider_frame(path)
    assert frame.usable and (frame.fwhm, frame.rms) == (1.2, 0.3)
    with fits.open(path, mode="update") as hdul:
        hdul[0].header[card] = True
    with pytest.raises(InputError, match=rf"{card}: expected a number, not a FITS logical"):
        guider.read_guider_frame(path)


def test_an_absurd_zero_point_is_left_out_without_a_numpy_warning(tmp_path):
    """One camera's ``zp`` of 1e10 overflowed the transparency with a RuntimeWarning (its
    source line on stderr), the value kept."""
    for i in range(4):
        zp = [25.0, 25.1, 1e10 if i == 2 else 25.2]
        guider.write_proc_gimg(tmp_path / f"proc-gimg-gfa1n-{i + 1:04d}.fits",
                               date_obs=START + 20 * i * u.s, exptime=15.0, fwhm=1.2,
                               source_id=[1, 2, 3], zp=zp)  # fmt: skip
    assert guider.read_guider_frame(tmp_path / "proc-gimg-gfa1n-0003.fits").star_zp.size == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        series = guider.guider_series(tmp_path)
    assert np.all(np.isfinite(series.transparency)) and np.all(series.transparency > 0.9)
