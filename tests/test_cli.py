import argparse
import json
import os
import re
import time

import numpy as np
import pytest

from pyapred.cli import main


def test_demo_runs_and_reports(tmp_path, capsys):
    argv = ["demo", "--out", str(tmp_path), "--fibers", "40", "--columns", "64", "--reads", "16"]
    assert main([*argv, "--chips", "R"]) == 0
    out, err = capsys.readouterr()
    # Each step is said on stderr as it starts (the summary alone goes to stdout).
    steps = ("simulating", "writing the raw files", "fitting omega", "drawing the plots",
             "comparing with the truth")  # fmt: skip
    positions = [err.index(f"pyapred demo: {step}") for step in steps]
    assert positions == sorted(positions) and "pyapred demo: simulating" not in out
    assert "omega R" in out and "z-score std" in out and "flux bias, chip R" in out
    z_std = float(re.search(r"z-score std ([0-9.]+)", out).group(1))
    assert 0.7 < z_std < 1.4
    constant = float(re.search(r"constant model ([-+0-9.]+) sigma", out).group(1))
    variable = float(re.search(r"time-variable ([-+0-9.]+) sigma", out).group(1))
    assert constant < -0.5 and abs(variable) < 0.15
    assert f"plots: {tmp_path / 'plots'}" in out
    kinds = ("omega", "omega_image", "chi2", "fibers", "ramps", "flux")  # tests/test_plots.py
    assert {p.name for p in (tmp_path / "plots").glob("*.png")} == {f"{k}_R.png" for k in kinds}
    assert (tmp_path / "product.h5").exists()


def test_old_fibres_flag_still_works_with_a_warning(tmp_path, capsys):
    argv = ["simulate", "--out", str(tmp_path), "--fibres", "12", "--columns", "48"]
    with pytest.warns(DeprecationWarning, match="--fibers"):
        assert main([*argv, "--reads", "6", "--stable"]) == 0
    assert "--fibres is deprecated" in capsys.readouterr().err
    from pyapred.traces import read_trace_file

    assert read_trace_file(next(tmp_path.glob("traceMain_*_R.h5"))).n_fibers == 12
    with pytest.warns(DeprecationWarning):  # --quiet: not even the warning on stderr
        assert main([*argv, "--reads", "6", "--stable", "--overwrite", "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")


def test_an_os_error_is_exit_2_naming_the_path(monkeypatch, capsys):
    """The last resort: an OSError that no check foresaw is bad input, never a traceback."""
    from pyapred import cli

    def fail(args):
        raise PermissionError(13, "Permission denied", "/data/apR-a-52190001.apz")

    name, (text, add_arguments, _) = "inspect", cli.COMMANDS["inspect"]
    monkeypatch.setitem(cli.COMMANDS, name, (text, add_arguments, fail))
    assert main(["inspect", "whatever"]) == 2
    err = capsys.readouterr().err
    assert "/data/apR-a-52190001.apz: Permission denied" in err and "Traceback" not in err


_MEMORY_VARIABLES = ("NUMPY_MADVISE_HUGEPAGE", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")
_REPORT_MEMORY_SETUP = """
import os, sys
from pyapred.cli import console
code = console(["inspect", sys.argv[1]])
try:
    from numpy._core.multiarray import _set_madvise_hugepage
except ImportError:  # NumPy 1.x
    from numpy.core.multiarray import _set_madvise_hugepage
names = ("NUMPY_MADVISE_HUGEPAGE", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")
print(code, _set_madvise_hugepage(True), *(os.environ.get(name, "-") for name in names))
"""


@pytest.mark.parametrize(
    "user_set, expected",
    [
        ({}, ("False", ["0", "0", str(2**31 - 1)])),
        (
            {"NUMPY_MADVISE_HUGEPAGE": "1", "MALLOC_MMAP_MAX_": "65536"},
            ("True", ["1", "65536", "-"]),
        ),
        ({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=8"}, ("False", ["0", "-", "-"])),
    ],
)
def test_the_executable_sets_up_its_process_memory_unless_the_user_did(
    tmp_path, user_set, expected
):
    """``pyapred`` (``cli.console``) owns its process: no NumPy huge-page advice (on a virtual
    machine a huge page's first touch can wait for the host), large arrays from glibc's heap,
    and the same for the processes it starts (the variables). What the user set is kept."""
    import subprocess
    import sys

    names = (*_MEMORY_VARIABLES, "GLIBC_TUNABLES")
    env = {k: v for k, v in os.environ.items() if k not in names} | user_set
    missing = str(tmp_path / "missing.apz")
    run = subprocess.run(
        [sys.executable, "-c", _REPORT_MEMORY_SETUP, missing],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    code, advice, *variables = run.stdout.split()
    assert code == "2" and missing in run.stderr  # the command itself ran
    assert (advice, variables) == expected


_REPORT_FREEZE = """
import gc, sys
from pyapred.cli import console, main
main(["inspect", sys.argv[1]])
after_main = gc.get_freeze_count()
code = console(["inspect", sys.argv[1]])
print(code, after_main, gc.get_freeze_count())
"""


def test_the_executable_spares_its_teardown_the_collections(tmp_path):
    """As the command ends, ``console`` exempts what is left from the cyclic collector (the
    interpreter's teardown collected it all again, 0.25 s a command); ``main``, which notebooks
    call, leaves the collector alone."""
    import subprocess
    import sys

    missing = str(tmp_path / "missing.apz")
    run = subprocess.run(
        [sys.executable, "-c", _REPORT_FREEZE, missing], capture_output=True, text=True, check=True
    )
    code, after_main, after_console = run.stdout.split()
    assert code == "2" and missing in run.stderr  # the command itself ran
    assert after_main == "0" and int(after_console) > 1000


def test_python_dash_m_runs_the_executable(tmp_path):
    """``python -m pyapred`` is the ``pyapred`` command (for an environment whose scripts folder
    is not on the PATH): the same parser, exit codes and process set-up."""
    import subprocess
    import sys

    import pyapred

    env = {k: v for k, v in os.environ.items() if k not in _MEMORY_VARIABLES}
    run = subprocess.run([sys.executable, "-m", "pyapred", "--version"], env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0 and pyapred.__version__ in run.stdout
    missing = str(tmp_path / "missing.apz")
    run = subprocess.run([sys.executable, "-m", "pyapred", "inspect", missing], env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 2 and missing in run.stderr
    assert run.stderr.startswith("pyapred")


def test_main_leaves_the_process_as_it_is(tmp_path, monkeypatch):
    """Notebooks and tests call ``main``: NumPy's settings and the environment stay theirs."""
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import _set_madvise_hugepage

    for name in _MEMORY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    before = _set_madvise_hugepage(True)
    try:
        assert main(["inspect", str(tmp_path / "missing.apz")]) == 2
        assert _set_madvise_hugepage(before) is True
    finally:
        _set_madvise_hugepage(before)
    assert not any(name in os.environ for name in _MEMORY_VARIABLES)


def test_demo_json_summary(tmp_path, capsys):
    argv = ["demo", "--out", str(tmp_path), "--fibers", "30", "--columns", "32", "--reads", "10"]
    assert main([*argv, "--chips", "G", "--json"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["models"]["G"]["time_variable"] > 0 and "G" in summary["flux"]
    assert "pyapred demo:" not in err  # no progress with --json


def test_fit_quiet_prints_nothing_and_json_only_json(tmp_path, capsys):
    from pyapred.simulate import simulate_exposure, write_simulated_exposure

    sim = simulate_exposure("clouds", seed=3, n_fibers=12, n_columns=32, ref_columns=0,
                            n_reads=8, chips=("R",))  # fmt: skip
    paths = write_simulated_exposure(sim, tmp_path)
    argv = ["fit", str(paths["apz"][0]), "--traces", str(paths["traces"][0])]
    assert main([*argv, "--out", str(tmp_path / "q.h5"), "--quiet"]) == 0  # no problem found
    assert capsys.readouterr() == ("", "")
    assert main([*argv, "--out", str(tmp_path / "j.h5"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["chips"] == ["R"] and "pyapred fit:" not in err  # no progress bar
    assert json.loads(out)["problems"] == []


def test_a_refused_fit_leaves_no_folder_behind(tmp_path, capsys):
    """``--out`` in folders that do not exist yet: a run refused before its work makes none."""
    trace = tmp_path / "traceMain_apo_60781_R.h5"
    trace.write_bytes(b"not HDF5")
    raw = tmp_path / "apR-a-00000001.apz"
    raw.write_bytes(b"not FITS")
    out = tmp_path / "new" / "sub" / "p.h5"
    assert main(["fit", str(raw), "--traces", str(trace), "--out", str(out)]) == 2
    assert "apR-a-00000001.apz" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("name", ["p.apz", "p.txt", "product"])
def test_a_product_named_as_no_product_is_refused(tmp_path, capsys, name):
    """An HDF5 product was written under .apz or .txt: `pyapred inspect` and `--config` could
    not read it back."""
    trace = tmp_path / "traceMain_apo_60781_R.h5"
    raw = tmp_path / "apR-a-52190001.apz"
    trace.write_bytes(b"")
    raw.write_bytes(b"")
    assert main(["fit", str(raw), "--traces", str(trace), "--out", str(tmp_path / name)]) == 2
    assert "--out: expected a product name ending .h5 (HDF5) or .fits" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([trace.name, raw.name])


def test_chromatic_fits_chip_by_chip_with_constant_fibers(tmp_path, capsys):
    """`--chromatic` with a constant fiber of the automatic choice (flags 0, chromatic columns
    NaN: not tried) crashed writing its product; chip by chip, each group's wavelength span was
    overwritten by the last chip's (the guider then evaluated R's gamma on B's span)."""
    import h5py

    from pyapred.guider.omega import read_product_omega

    sim = tmp_path / "sim"
    assert main(["simulate", "--out", str(sim), "--columns", "64", "--reads", "8", "--seed", "2",
                 "--stable", "--ref-columns", "0", "--quiet"]) == 0  # fmt: skip
    out = tmp_path / "p.h5"
    raws, traces = sorted(sim.glob("apR-*.apz")), sorted(sim.glob("traceMain_*.h5"))
    argv = ["fit", *map(str, raws), "--traces", *map(str, traces), "--chromatic", "--out", str(out)]
    assert main([*argv, "--quiet"]) in (0, 1), capsys.readouterr().err
    with h5py.File(out) as handle:
        models = [m.decode() if isinstance(m, bytes) else m for m in handle["fibers/R/model"]]
        flags = handle["fibers/R/flags"][()]
        assert np.isnan(handle["fibers/R/chromatic_p_value"][()][flags == 0]).any()
        assert "constant" in models
        spans = {key: handle["metadata"][key][()] for key in handle["metadata"]
                 if key.startswith("coordinate_span_um")}  # fmt: skip
    assert set(spans) == {"coordinate_span_um_R", "coordinate_span_um_G", "coordinate_span_um_B"}
    np.testing.assert_array_equal(spans["coordinate_span_um_R"], [1.6475, 1.6965])
    np.testing.assert_array_equal(read_product_omega(out, "R")["span"], [1.6475, 1.6965])
    np.testing.assert_array_equal(read_product_omega(out, "B")["span"], [1.5145, 1.5808])


def test_seeing_change_simulated_and_fitted_with_the_chromatic_model(tmp_path, capsys):
    """``pyapred simulate --seeing-change``, then ``pyapred fit --joint-chips --chromatic``."""
    argv = ["simulate", "--out", str(tmp_path), "--fibers", "40", "--columns", "96", "--reads",
            "16", "--ref-columns", "0", "--seeing-change", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    truth = np.load(tmp_path / "truth_apo_60781_0001.npz")
    assert truth["fwhm"].shape == truth["transparency"].shape == (40, 15)
    apz = sorted(str(p) for p in tmp_path.glob("apR-*.apz"))
    traces = sorted(str(p) for p in tmp_path.glob("traceMain_*.h5"))
    argv = ["fit", *apz, "--traces", *traces, "--out", str(tmp_path / "p.h5"), "--joint-chips",
            "--chromatic", "--json"]  # fmt: skip
    assert main(argv) in (0, 1)
    summary = json.loads(capsys.readouterr().out)["fibers"]["joint"]
    assert summary["chromatic"]["tried"] > 0
    assert summary["models"]["time_variable_chromatic"] == summary["chromatic"]["chosen"]
    from pyapred.io import read_product

    product = read_product(tmp_path / "p.h5", images=False)
    assert product.fibers["joint"].gamma.shape == (40, 15)
    assert json.loads(product.metadata["fit_options"])["chromatic"] is True


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--plots", ""], "argument --plots: expected a path, found an empty name"),
        (["--out", "new/"], "argument --out: expected a file name, found a folder name 'new/'"),
        (["--log", ""], "argument --log: expected a path"),
    ],
)
def test_empty_paths_and_folder_names_for_files_are_refused_at_the_flag(
    tmp_path, capsys, flags, words
):
    """``Path("")`` is the current folder: ``--plots ""`` wrote the plots there; ``Path("new/")``
    is ``new``: ``--out new/`` wrote a product file of that name."""
    argv = ["fit", str(tmp_path / "apR-a-52190001.apz"), "--traces", str(tmp_path / "t.h5")]
    if "--out" not in flags:
        argv += ["--out", str(tmp_path / "p.h5")]
    with pytest.raises(SystemExit) as caught:
        main([*argv, *flags])
    assert caught.value.code == 2 and words in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_json_lines_say_null_for_nan_and_infinity():
    """``pyapred demo --json`` and ``noise stress --json`` printed bare NaN: no JSON."""
    from pyapred.arguments import json_line

    line = json_line({"a": float("nan"), "b": [np.float64("inf"), 1.5], "c": np.float32(2.0)})
    assert json.loads(line) == {"a": None, "b": [None, 1.5], "c": 2.0}
    # The indented form (night's summary, validate's results.json) cleans the same way.
    text = json_line({"a": [float("-inf")], "b": {"c": np.float64("nan")}}, indent=1)
    assert text.count("\n") > 1 and json.loads(text) == {"a": [None], "b": {"c": None}}


def test_demo_checks_what_it_writes_before_the_work(tmp_path, capsys):
    """A FIFO at ``--out/product.h5`` was refused after the simulation and the fit, with the
    simulated ``data/`` left behind."""
    out = tmp_path / "o"
    out.mkdir()
    os.mkfifo(out / "product.h5")
    argv = ["demo", "--out", str(out), "--fibers", "4", "--columns", "16", "--reads", "3"]
    assert main([*argv, "--chips", "R"]) == 2
    assert "product.h5: --out: expected a new or regular file" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["product.h5"]


def test_demo_replaces_a_product_or_raw_file_only_with_overwrite(tmp_path, capsys):
    """A ``product.h5`` of the user's own in ``--out`` was replaced without a word (fit and
    simulate refused it without ``--overwrite``)."""
    out = tmp_path / "o"
    (out / "data").mkdir(parents=True)
    argv = ["demo", "--out", str(out), "--fibers", "4", "--columns", "16", "--reads", "3",
            "--chips", "R"]  # fmt: skip
    for name in ("product.h5", "data/apR-a-52190001.apz"):
        (out / name).write_bytes(b"mine")
        assert main(argv) == 2
        assert f"{name}: --out: expected" in capsys.readouterr().err
        assert (out / name).read_bytes() == b"mine"
        assert sorted(p.name for p in out.rglob("*")) == sorted(["data", name.split("/")[-1]])
        (out / name).unlink()
    assert main(argv) == 0  # demo_run returns EXIT_OK only
    capsys.readouterr()
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err  # a second run
    assert main([*argv, "--overwrite"]) == 0


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        # 37 GiB at full size: a MemoryError traceback after 4 s (37 s with 1/f noise).
        (["simulate", "--reads", "1000"], "1000 reads x 300 fibers x 2048 columns: about"),
        (["simulate", "--fibers", "4", "--reads", "1000", "--one-over-f"], "with 1/f noise"),
        # Every chip in memory, then the fit: 15.6 GiB asked for, an empty --out left behind.
        (["demo", "--columns", "2048", "--reads", "1000"], "x 3 chips: about"),
        # 21.6 GiB for one chunk of the sweep, after 75 s of III.1 and III.2.
        (["validate", "--quick", "--examples", "100000"], "100000 examples x 11 flux levels"),
    ],
)
def test_work_that_cannot_fit_in_memory_is_refused_first(tmp_path, capsys, monkeypatch, argv,
                                                         words):  # fmt: skip
    from pyapred.io import paths

    monkeypatch.setattr(paths, "physical_memory", lambda: 1 * 2.0**30)
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "expected work that fits in memory (1 GiB)" in err and words in err, err
    assert not (tmp_path / "o").exists()


def test_validate_fits_fewer_omega_draws_at_once_where_memory_is_short(tmp_path, monkeypatch):
    """The sweep's chunk shrinks to what memory holds; the draws are the same (one generator
    each), so the results do not depend on it."""
    from pyapred import validate

    seen = {}

    def stop(seed, sizes, backend, progress=None):
        seen["sizes"] = sizes
        raise KeyboardInterrupt

    monkeypatch.setattr(validate, "run_validation", stop)
    monkeypatch.setattr("pyapred.io.paths.physical_memory", lambda: 2.0**30)
    parser = argparse.ArgumentParser()
    validate.add_arguments(parser)
    with pytest.raises(KeyboardInterrupt):
        validate.run(parser.parse_args(["--quick", "--examples", "2000", "--out", str(tmp_path)]))
    per_draw = 4 * 33 * (100 + 2000 * 11) * 8  # 23 MB: 22 draws in half of 1 GiB
    assert seen["sizes"].chunk == 2**29 // per_draw and seen["sizes"].sweep_examples == 2000


# ------------------------------------------------------------------------------------------
# Outputs named oddly, stops asked for, a setting that cannot be had (an audit's cases)
# ------------------------------------------------------------------------------------------
@pytest.fixture
def small_fit(tmp_path):
    """``pyapred fit``'s arguments for a small one-chip exposure (no ``--out``)."""
    from pyapred.simulate import simulate_exposure, write_simulated_exposure

    sim = simulate_exposure("clouds", seed=3, n_fibers=12, n_columns=32, ref_columns=0,
                            n_reads=8, chips=("R",))  # fmt: skip
    paths = write_simulated_exposure(sim, tmp_path / "raw")
    return ["fit", str(paths["apz"][0]), "--traces", str(paths["traces"][0])]


def test_a_fit_with_a_problem_to_report_exits_1_with_its_product(small_fit, tmp_path, capsys):
    """Exit 1 (``EXIT_FLAGGED``, pyapred/errors.py) says the run finished with a problem in
    its summary: here every pixel saturated (a saturation of 1 DN) leaves the chip without
    flux. The product is written all the same; the same exposure without the problem exits 0."""
    from pyapred.errors import EXIT_FLAGGED

    argv = [*small_fit, "--json"]
    assert EXIT_FLAGGED == 1
    assert main([*argv, "--out", str(tmp_path / "s.h5"), "--saturation", "1"]) == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert len(problems) == 1 and problems[0].startswith("chip R: 100 % of the traced pixels")
    assert (tmp_path / "s.h5").is_file()
    assert main([*argv, "--out", str(tmp_path / "ok.h5")]) == 0
    assert json.loads(capsys.readouterr().out)["problems"] == []


def test_a_log_refused_for_its_name_leaves_nothing_there(small_fit, tmp_path, capsys):
    """``--log`` named like one of the run's plots is refused, but the log it had started was
    left: a text file named ``omega_R.png`` in a folder made for it. An earlier log is kept."""
    plots = tmp_path / "new" / "plots"
    log = plots / "omega_R.png"
    argv = [*small_fit, "--out", str(tmp_path / "p.h5"), "--plots", str(plots)]
    assert main([*argv, "--log", str(log)]) == 2
    assert "--log: expected a name that no plot in" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    plots.mkdir(parents=True)
    log.write_text("2026-01-01 00:00:00,000 INFO pyapred.run: an earlier run\n")
    assert main([*argv, "--log", str(log)]) == 2
    assert log.read_text().startswith("2026-01-01 00:00:00,000 INFO pyapred.run: an earlier")


def test_file_names_that_are_not_utf8_are_printed_and_logged(small_fit, tmp_path, capsys):
    """A name's undecodable bytes (held as surrogates) reach the summary and the log: with
    ``--quiet`` the summary went to a strict devnull and failed after the fit, and the log
    lost its command line to a logging error on stderr."""
    out = tmp_path / "p\udcff.h5"
    log = tmp_path / "run.log"
    assert main([*small_fit, "--out", str(out), "--quiet", "--log", str(log)]) == 0
    assert out.exists()
    assert "Logging error" not in capsys.readouterr().err
    text = log.read_text(encoding="utf-8")
    assert "pyapred fit " in text and "p\\udcff.h5" in text


def test_plot_paths_are_checked_before_the_fit(small_fit, tmp_path, capsys):
    """A ``--plots`` that is a loop of links, and a folder named like a plot in it, are refused
    before any work (a traceback, and an error after the product was written)."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    out = tmp_path / "p.h5"
    assert main([*small_fit, "--out", str(out), "--plots", str(loop)]) == 2
    assert "--plots" in capsys.readouterr().err and not out.exists()
    plots = tmp_path / "plots"
    (plots / "omega_R.png").mkdir(parents=True)
    assert main([*small_fit, "--out", str(out), "--plots", str(plots)]) == 2
    err = capsys.readouterr().err
    assert "omega_R.png" in err and "--plots" in err and "a file name" in err
    assert not out.exists()


def test_sigterm_stops_a_command_as_ctrl_c_does(small_fit, tmp_path, monkeypatch, capsys):
    """The executable's SIGTERM and SIGHUP raise where the command is (its temporaries are
    removed on the way out) and end it with one line and exit 130."""
    import os
    import signal

    from pyapred import cli, commands

    saved = {name: signal.getsignal(getattr(signal, name)) for name in ("SIGTERM", "SIGHUP")}
    try:
        for name in saved:  # as a shell starts a command (the suite may run under nohup)
            signal.signal(getattr(signal, name), signal.SIG_DFL)
        cli._stop_as_interrupted()
        with pytest.raises(KeyboardInterrupt, match="SIGHUP"):
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(5)  # the handler raises at the next instruction, well before
    finally:
        for name, handler in saved.items():
            signal.signal(getattr(signal, name), handler)

    # An ignored SIGHUP (``nohup``) stays ignored.
    try:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        cli._stop_as_interrupted()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        for name, handler in saved.items():
            signal.signal(getattr(signal, name), handler)

    def stopped(args):
        raise cli._Stopped("SIGTERM")

    monkeypatch.setattr(commands, "fit_run", stopped)
    assert main([*small_fit, "--out", str(tmp_path / "p.h5")]) == 130
    assert capsys.readouterr().err.strip() == "pyapred fit: interrupted by SIGTERM"


def test_a_julia_backend_from_a_config_file_names_the_file(small_fit, tmp_path, monkeypatch,
                                                           capsys):  # fmt: skip
    from pyapred.solver import _julia

    monkeypatch.setattr(_julia, "_missing_reason", lambda: "no Julia runtime: (test)")
    config = tmp_path / "c.toml"
    config.write_text("[solver]\nbackend = 'julia'\n")
    argv = [*small_fit, "--out", str(tmp_path / "p.h5"), "--config", str(config)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{config}: backend: expected a Julia runtime" in err
    assert main([*argv, "--backend", "julia"]) == 2  # the flag given: named
    assert "--backend: expected a Julia runtime" in capsys.readouterr().err
