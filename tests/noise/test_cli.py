"""pyapred noise simulate / stress."""

import json

import numpy as np
import pytest

from pyapred.cli import main
from pyapred.io import read_apz


def test_simulate_writes_a_raw_exposure_with_1f_noise(tmp_path, capsys):
    args = ["noise", "simulate", "--out", str(tmp_path), "--reads", "3", "--rows", "16",
            "--read-time", "0", "--flux", "200"]  # fmt: skip
    assert main([*args, "--one-over-f"]) == 0
    path = capsys.readouterr().out.strip()
    raw = read_apz(path)
    assert raw.reads.shape == (3, 16, 2560)
    diffs = np.diff(raw.reads.astype(float), axis=0)
    # 200 e- per read at gain 1.9 on the lit pixels; the reference output stays dark.
    assert abs(np.median(diffs[:, 4:12, 4:2044]) - 200 / 1.9) < 3
    assert abs(np.median(diffs[..., 2048:])) < 3
    assert main([*args, "--exposure", "2"]) == 0  # white noise only: smaller row offsets
    plain = np.diff(read_apz(capsys.readouterr().out.strip()).reads.astype(float), axis=0)
    row_std = lambda d: d[..., 2048:].mean(axis=-1).std()  # noqa: E731
    assert row_std(diffs) > 2 * row_std(plain)


def test_stress_json(capsys):
    code = main(["noise", "stress", "--exposures", "1", "--fibers", "2", "--read-time", "0",
                 "--json"])  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    failed = [c for c, v in summary.items() if v["must_pass"] and v["verdict"] == "FAIL"]
    assert code == (1 if failed else 0)  # a failed check is exit code 1
    assert {c for c, v in summary.items() if v["must_pass"]} == {
        "no_1f", "nuisance", "refcorr_nuisance"
    }  # fmt: skip
    assert set(summary) == {
        "no_1f", "uncorrected", "refcorr", "nuisance", "refcorr_nuisance", "rowmedian"
    }  # fmt: skip
    assert all(np.isfinite(v["z_std"]) for v in summary.values())


def test_simulate_makes_its_output_folder(tmp_path, capsys):
    out = tmp_path / "new" / "folder"
    args = ["noise", "simulate", "--out", str(out), "--reads", "3", "--rows", "8"]
    assert main([*args, "--read-time", "0"]) == 0
    assert read_apz(capsys.readouterr().out.strip()).reads.shape == (3, 8, 2560)


def test_stress_one_exposure_at_a_time_gives_the_same_numbers(capsys):
    from pyapred.noise.stress import stress_test

    # Every 64th column: 8 pixels per row, so the nuisance segments are whole output rows.
    argv = ["noise", "stress", "--exposures", "2", "--fibers", "2", "--read-time", "0",
            "--column-step", "64", "--seed", "3", "--segment-columns", "512"]  # fmt: skip
    main([*argv, "--json"])
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert "exposure" not in err  # --json: no progress bar
    from pyapred.noise import HxrgNoise

    noise = HxrgNoise(white=10.0, c_pink=6.0, u_pink=3.0, acn=2.0, read_time=0.0)
    direct = stress_test(2, n_fibers=2, column_step=64, noise=noise, segment_columns=512,
                         refcorr_options={"reference_columns": False}, rng=3).summary()  # fmt: skip
    for case, (bias, z_std, error) in direct.items():
        assert (summary[case]["bias"], summary[case]["z_std"]) == (bias, z_std)
        assert summary[case]["bias_error"] == error
    main(argv)  # the table on stdout, a bar per exposure on stderr
    out, err = capsys.readouterr()
    assert "no_1f" in out and "pyapred noise stress" in err and "2/2" in err


def test_noise_simulate_json(tmp_path, capsys):
    args = ["noise", "simulate", "--out", str(tmp_path), "--reads", "2", "--rows", "8"]
    assert main([*args, "--read-time", "0", "--json"]) == 0
    assert read_apz(json.loads(capsys.readouterr().out)["apz"]).reads.shape == (2, 8, 2560)


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        # 1e308 overflowed to inf and NaN, cast into every pixel as 0 or 65535, exit 0.
        (["--white", "1e308"], "argument --white: expected at most 100000"),
        # Ignored, silently, without --one-over-f.
        (["--acn", "5"], "--acn: expected --one-over-f with it"),
        # 39 GiB at once: a MemoryError traceback.
        (["--reads", "1000", "--rows", "2048"], "--reads, --rows: expected a simulation that"),
        # The 1/f noise is drawn at the pixel rate over the read: 1000 s asked for 8 GiB.
        (["--read-time", "1000", "--one-over-f"], "argument --read-time: expected at most 30"),
        # Its time streams were not counted: 22 GiB asked for after the flags were taken.
        (
            ["--one-over-f", "--rows", "1", "--reads", "1000", "--read-time", "30"],
            "with the 1/f noise of 30 s reads",
        ),
        # Within MAX_NOISE in e-, but 1.4e7 DN at this gain: every pixel 0 or 65535, exit 0.
        (["--white", "1e5", "--gain", "0.01"], "expected a read noise of at most 2000 DN"),
    ],
)
def test_simulate_refuses_what_it_would_ignore_or_cannot_hold(tmp_path, capsys, flags, words,
                                                               monkeypatch):  # fmt: skip
    from pyapred.io import paths

    monkeypatch.setattr(paths, "physical_memory", lambda: 24 * 2.0**30)
    try:
        code = main(["noise", "simulate", "--out", str(tmp_path / "o"), "--reads", "2", "--rows",
                     "8", *flags])  # fmt: skip
    except SystemExit as stop:  # argparse's own refusal of a flag
        code = stop.code
    assert code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_stress_refuses_one_column_segments(capsys):
    """One column a segment gives each pixel offsets of its own: the nuisance cases printed NaN
    biases (and a RuntimeWarning) before."""
    with pytest.raises(SystemExit) as info:  # an argparse type: the usage and exit 2
        main(["noise", "stress", "--segment-columns", "1"])
    assert info.value.code == 2
    assert "divisor of 512 other than 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        # An integer of 31 digits: an IndexError traceback (np.arange of Python objects).
        (["--column-step", "10" + "0" * 30], "argument --column-step: expected an integer 1 to"),
        # One lit pixel a segment: NaN z-scores for the nuisance cases, exit 1.
        (["--column-step", "32"], "expected 2 or more lit pixels in every readout segment"),
        (["--column-step", "17", "--segment-columns", "16"], "found 1: a lit column every 17"),
        # Below the fits' smallest read noise: their ValueError after the simulation.
        (["--white", "1e-300"], "expected a white read noise of at least 1e-30"),
    ],
)
def test_stress_refuses_what_it_cannot_fit(capsys, flags, words):
    try:
        code = main(["noise", "stress", "--exposures", "1", "--fibers", "2", "--read-time", "0",
                     *flags])  # fmt: skip
    except SystemExit as stop:
        code = stop.code
    assert code == 2 and words in capsys.readouterr().err


def test_stress_test_refuses_segments_of_one_pixel():
    from pyapred.noise.stress import stress_test

    with pytest.raises(ValueError, match="2 or more lit pixels"):
        stress_test(1, n_fibers=2, column_step=32, segment_columns=32)
    with pytest.raises(ValueError, match="column_step: expected 1 to 2040"):
        stress_test(1, n_fibers=2, column_step=3000, cases=("no_1f",))


def test_white_noise_alone_builds_no_time_streams():
    """The 1/f time streams (tens of bytes a pixel time, gaps included) were made even with
    every 1/f amplitude 0: --rows 1 --reads 1000 asked for 8 GiB."""
    import tracemalloc

    from pyapred.noise import HxrgNoise, simulate_hxrg

    noise = HxrgNoise(white=3.0, c_pink=0.0, u_pink=0.0, acn=0.0, read_time=30.0)
    tracemalloc.start()
    try:
        out = simulate_hxrg(20, noise, rows=slice(100, 101), rng=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (20, 1, 2560) and abs(out[..., 4:2044].std() - 3.0) < 0.1
    assert peak < 10 * out.nbytes  # the streams were 1.7 GB here (60 million samples)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        # 10**29 steps were taken and ran until killed.
        (["train", "--steps", "1" + "0" * 29], "argument --steps: expected an integer 1 to"),
        (["evaluate", "--model", "m", "--steps", "1" + "0" * 29], "argument --steps"),
        # Darks of zeros: evaluate divided by their zero row-mean scatter after sampling.
        (
            ["train", "--white", "0", "--c-pink", "0", "--u-pink", "0", "--acn", "0"],
            "expected some noise for the simulated darks",
        ),
    ],
)
def test_score_model_commands_refuse_what_cannot_run(tmp_path, capsys, argv, words):
    out = ["--out", str(tmp_path / "o")] if argv[0] == "train" else []
    try:
        code = main(["noise", *argv, *out, "--patches", "20", "--patch", "8", "8"])
    except SystemExit as stop:
        code = stop.code
    assert code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_stress_verdict_allows_the_bias_its_own_error():
    """|bias| < 0.2 alone passed or failed the same code by the seed (its standard error is
    0.1-0.2 with the defaults): a bias must be shown beyond 0.2 to fail."""
    from pyapred.noise.cli import _stress_verdict

    assert _stress_verdict(0.25, 1.0, 0.1) == "pass"  # within 0.2 + 2 x 0.1
    assert _stress_verdict(0.45, 1.0, 0.1) == "FAIL"
    assert _stress_verdict(0.0, 1.2, 0.05) == "FAIL"
    assert _stress_verdict(-0.1, 0.9, 0.05) == "pass"
