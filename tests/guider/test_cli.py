"""``pyapred guider``: figure and JSON, read times from the exposure file, exit codes."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest
from astropy.io import fits

from pyapred.cli import main
from pyapred.errors import InputError
from pyapred.guider.cli import add_arguments, run

from .scenario import exposure_header


def write_product(path, fit, *, times=True):
    """A product with fiber group "R": fibers 5 and 7 fitted, 6 not (zero covariance)."""
    omega = np.stack([fit.omega, np.ones_like(fit.omega), fit.omega])
    cov = np.stack([fit.omega_cov, np.zeros_like(fit.omega_cov), fit.omega_cov])
    meta = exposure_header(TIMESYS="UTC", CONFIGID=1) if times else {}
    try:
        from pyapred.io import FiberResults, write_product
    except ImportError:  # the I/O layer is not on this branch: write its layout with h5py
        import h5py

        with h5py.File(path, "w") as handle:
            handle.attrs["pyapred_product_format"] = 1
            group = handle.create_group("fibers/R")
            group["omega"], group["omega_cov"] = omega, cov
            group["fiber_index"] = np.array([5, 6, 7]) + 1
            group["fiber_index"].attrs["index_base"] = 1
            metadata = handle.create_group("metadata")
            for key, value in meta.items():
                metadata[key] = value
        return
    results = FiberResults(
        fiber_index=np.array([5, 6, 7]), omega=omega, omega_cov=cov,
        ref_index=np.full(3, fit.ref_index), model=("time_variable", "constant", "time_variable"),
        flags=np.zeros(3, np.int64),
    )  # fmt: skip
    write_product(path, fibers={"R": results}, metadata=meta)


def test_cli_guider_writes_figure_and_json(sky, tmp_path, capsys):
    product = tmp_path / "product.h5"
    write_product(product, sky.fit)
    figure = tmp_path / "guider.png"
    argv = ["guider", "--product", str(product), "--guider", str(sky.directory)]
    code = main([*argv, "--fibers", "293", "--lag", "--out", str(figure), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 1  # the 37 s clock offset is flagged
    assert summary["fiber_ids"] == [293] and summary["clock"] == "date-obs-is-tai"
    assert abs(summary["lag_s"] + 37) < 3 and figure.read_bytes()[:4] == b"\x89PNG"
    code = main([*argv, "--timesys", "TAI", "--out", str(figure)])
    out = capsys.readouterr().out
    assert code == 0 and "flags: none" in out
    # fiberIds 295, 294, 293 are indices 5, 6, 7; 294 is not fitted
    assert re.search(r"fiberId 295: scale \d\.\d+", out) and "fiberId 294" not in out


def test_timesys_reads_the_product_s_header_over_its_read_times(sky, tmp_path, capsys):
    """A product of `pyapred fit` records its read times (TAI) and the header they came from:
    --timesys was ignored (the same result for TAI, UTC and TT)."""
    from astropy import units as u
    from astropy.time import Time

    from .scenario import N_READS, START

    product = tmp_path / "product.h5"
    # Read times as the pipeline recorded them, DATE-OBS read as UTC (37 s from the truth).
    utc = Time(START.isot, scale="utc").tai + np.arange(N_READS) * 10.647 * u.s
    write_product(product, sky.fit)
    with __import__("h5py").File(product, "a") as handle:
        handle["metadata/read_times_tai_mjd"] = utc.mjd
    argv = ["guider", "--product", str(product), "--guider", str(sky.directory), "--fibers",
            "293", "--lag", "--json", "--out", str(tmp_path / "g.png")]  # fmt: skip
    main(argv)
    as_recorded = json.loads(capsys.readouterr().out)
    main([*argv, "--timesys", "TAI"])
    as_tai = json.loads(capsys.readouterr().out)
    assert abs(as_recorded["lag_s"] + 37) < 3 and abs(as_tai["lag_s"]) < 3


def test_cli_guider_takes_read_times_from_the_exposure_file(sky, tmp_path, capsys):
    product = tmp_path / "product.h5"
    write_product(product, sky.fit, times=False)
    argv = ["guider", "--product", str(product), "--guider", str(sky.directory)]
    argv += ["--out", str(tmp_path / "g.png")]
    assert main(argv) == 2
    assert "--exposure" in capsys.readouterr().err
    exposure = tmp_path / "exposure.fits"  # any FITS file with the exposure's header
    header = fits.Header(exposure_header(TIMESYS="TAI"))
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(np.zeros((2, 2), np.int32), header)]
    fits.HDUList(hdus).writeto(exposure)
    assert main([*argv, "--exposure", str(exposure)]) == 0
    assert "fiberId 293: scale" in capsys.readouterr().out


def test_an_apz_exposure_gives_the_times_of_the_reads_it_holds(sky, tmp_path, capsys):
    """The header's NREAD gave the times: a file whose NREAD says 100 while it holds its 47
    reads shifted every window by 53 reads (exit 1, no warning), and a read missing mid-file,
    which ``fit`` refuses, was taken. The reads the file holds count, as in ``fit``; an omega
    over fewer reads (an ar3Dcal product's) covers the last ones."""
    from pyapred.simulate import write_simulated_apz

    from .scenario import N_READS, START

    product = tmp_path / "product.h5"
    write_product(product, sky.fit, times=False)
    argv = ["guider", "--product", str(product), "--guider", str(sky.directory), "--json",
            "--out", str(tmp_path / "g.png"), "--exposure"]  # fmt: skip

    def run_on(n_reads, *, date_obs=START, nread=None, folder="a"):
        path = write_simulated_apz(tmp_path / folder, np.zeros((n_reads, 2, 8)),
                                   date_obs=date_obs.isot, timesys="TAI")  # fmt: skip
        if nread is not None:
            with fits.open(path, mode="update") as hdul:
                hdul[1].header["NREAD"] = nread
        code = main([*argv, str(path)])
        out, err = capsys.readouterr()
        return code, (json.loads(out) if code != 2 else None), err

    code, intact, _ = run_on(N_READS)
    assert code == 0 and intact["t0_tai"].startswith(START.isot[:19])
    code, wrong, err = run_on(N_READS, nread=100, folder="b")
    assert code == 0 and wrong["t0_tai"] == intact["t0_tai"]
    assert "NREAD = 100 but the file holds 47 reads" in err
    # Three more reads before the omega's (ApogeeReduction.jl dropped them): the last 47.
    earlier = START - 3 * 10.647 * __import__("astropy.units").units.s
    code, dropped, _ = run_on(N_READS + 3, date_obs=earlier, folder="c")
    assert code == 0 and dropped["t0_tai"] == intact["t0_tai"]
    code, _, err = run_on(N_READS - 1, folder="d")
    assert code == 2 and "reads: expected at least the 47 reads of the omega" in err


def test_cli_guider_bad_input_exits_2(sky, tmp_path, capsys):
    product = tmp_path / "product.h5"
    write_product(product, sky.fit)
    out = str(tmp_path / "x.png")
    argv = ["guider", "--product", str(product), "--out", out, "--guider"]
    assert main([*argv, str(tmp_path / "none-*.fits")]) == 2
    assert "guider frames" in capsys.readouterr().err
    assert main([*argv, str(sky.directory), "--fibers", "3"]) == 2  # fiberId 3: index 297
    assert "no fiberIds [3]" in capsys.readouterr().err
    # fiberId 294 (index 6) has no fitted omega, as a constant-model fiber: all NaN, exit 0.
    assert main([*argv, str(sky.directory), "--fibers", "294"]) == 2
    assert "fiberIds [294] without one" in capsys.readouterr().err
    assert main([*argv, str(sky.directory), "--group", "G"]) == 2
    assert "fibers/G" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_cli_guider_refuses_before_any_work(sky, tmp_path, capsys):
    """--out naming a guider frame replaced that FITS file with a PNG; a FIFO among the frames
    hung; a reversed --fibers range was an IndexError; --diameter 1e300 and --out x.pdf (PNG
    bytes under that name) were taken; every compare error blamed the product's omega."""
    import os
    import shutil

    product = tmp_path / "product.h5"
    write_product(product, sky.fit)
    frames = tmp_path / "frames"
    shutil.copytree(sky.directory, frames)
    frame = sorted(frames.glob("*.fits"))[0]
    before = frame.read_bytes()
    argv = ["guider", "--product", str(product), "--guider", str(frames)]
    for extra, words in (
        (["--out", str(frame.with_suffix(".png"))], None),  # the control: runs
        (["--out", str(tmp_path / "g.pdf")], "--out: expected a .png file name"),
        (["--out", str(tmp_path / "g.png"), "--fibers", "290-285"], "--fibers: expected"),
        (["--out", str(tmp_path / "g.png"), "--fibers", " , "], "--fibers: expected"),
        # An unset shell variable: every fiber compared before.
        (["--out", str(tmp_path / "g.png"), "--fibers", ""], "--fibers: expected"),
        (["--out", str(tmp_path / "g.png"), "--fibers", "1-200000000"], "--fibers: expected"),
        (["--out", str(tmp_path / "g.png"), "--diameter", "1e300"], "--diameter: expected"),
        # A fiber of 1e-300 arcsec coupled no light: every result NaN, exit 1.
        (["--out", str(tmp_path / "g.png"), "--diameter", "1e-300"], "--diameter: expected"),
        # int() took these as fiberId 293.
        (["--out", str(tmp_path / "g.png"), "--fibers", "2_93"], "--fibers: expected"),
        (
            ["--out", str(tmp_path / "g.png"), "--fibers", "\u0662\u0669\u0663"],
            "--fibers: expected",
        ),
    ):
        code = main([*argv, *extra])
        err = capsys.readouterr().err
        assert (code in (0, 1)) if words is None else (code == 2 and words in err), (extra, err)
    frame.with_suffix(".png").unlink()
    shutil.copy(frame, frame.with_suffix(".png"))  # a frame that the --out name would replace
    code = main([*argv, str(frame.with_suffix(".png")), "--out", str(frame.with_suffix(".png"))])
    assert code == 2 and "none of the inputs" in capsys.readouterr().err
    assert frame.read_bytes() == before
    fifo = tmp_path / "pipe.fits"
    os.mkfifo(fifo)
    code = main(["guider", "--product", str(product), "--guider", str(fifo), "--out",
                 str(tmp_path / "g.png")])  # fmt: skip
    assert code == 2 and "FIFO" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists() and not (tmp_path / "g.pdf").exists()


def test_cli_guider_names_the_file_of_bad_read_times(sky, tmp_path, capsys, monkeypatch):
    """The read-timing cards of a product's metadata were blamed on '<header>'."""
    import pyapred.guider.cli as guider_cli

    product = tmp_path / "product.h5"
    write_product(product, sky.fit)
    real = guider_cli.read_product_omega

    def with_bad_date(path, group):
        data = real(path, group)
        return {**data, "read_times": None, "header": {**data["header"], "DATE-OBS": "garbage"}}

    monkeypatch.setattr(guider_cli, "read_product_omega", with_bad_date)
    argv = ["guider", "--product", str(product), "--guider", str(sky.directory), "--out",
            str(tmp_path / "g.png")]  # fmt: skip
    assert main(argv) == 2
    assert f"{product}: metadata/DATE-OBS: expected an ISO 8601" in capsys.readouterr().err


def test_add_arguments_and_run_are_the_subcommand(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = str(tmp_path / "g.png")
    args = parser.parse_args(["--product", "p.h5", "--guider", "a", "b", "--out", out])
    assert args.guider == ["a", "b"] and not args.lag and args.timesys is None
    with pytest.raises(SystemExit):  # argparse: only UTC, TAI, TT
        parser.parse_args(["--product", "p", "--guider", "a", "--out", out, "--timesys", "UT"])
    args = parser.parse_args(["--product", "p.h5", "--guider", "a", "--out", out, "--fibers", "x"])
    with pytest.raises(InputError, match="--fibers"):
        run(args)


def test_cli_guider_drops_folders_among_the_frames_as_before(sky, tmp_path, capsys):
    """A glob that also matches a folder (or a broken link) ran before the inputs were checked:
    the reader drops them; only a FIFO (a hang) or a file --out would replace is refused."""
    import shutil

    product = tmp_path / "product.h5"
    write_product(product, sky.fit)
    frames = tmp_path / "frames"
    shutil.copytree(sky.directory, frames)
    (frames / "sub.fits").mkdir()
    (frames / "gone.fits").symlink_to(tmp_path / "nothing.fits")
    argv = ["guider", "--product", str(product), "--guider", str(frames / "*"), "--out",
            str(tmp_path / "g.png")]  # fmt: skip
    assert main(argv) in (0, 1)
    assert (tmp_path / "g.png").exists()


@pytest.mark.parametrize("flag", ["--product", "--guider", "--group", "--exposure"])
def test_empty_values_are_refused(tmp_path, capsys, flag):
    """An unset shell variable: --group "" and --exposure "" were taken as not given,
    --product "" and --guider "" named the current folder."""
    argv = ["guider", "--product", "p.h5", "--guider", "g", "--out", str(tmp_path / "g.png")]
    with pytest.raises(SystemExit) as stop:
        main([*argv, flag, ""])
    assert stop.value.code == 2
    assert f"argument {flag}: expected a value, found an empty string" in capsys.readouterr().err
