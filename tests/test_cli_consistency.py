"""One command line (issue 19): the output flags, help on every flag, messages naming flags,
progress on stderr, the Numba notice, and ``pyapred simulate`` streaming its chips."""

from __future__ import annotations

import argparse
import json
import logging

import numpy as np
import pytest

from pyapred import cli
from pyapred.cli import build_parser, main

OUTPUT_DESTS = ("json", "quiet", "verbose", "log")
SIMULATE = ["simulate", "--columns", "16", "--fibers", "12", "--ref-columns", "4", "--reads", "5"]


def parsers(parser: argparse.ArgumentParser | None = None, name: str = "pyapred"):
    """``(name, parser)`` of the top-level parser and every subcommand and sub-subcommand."""
    parser = parser or build_parser()
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child_name, child in action.choices.items():
                yield from parsers(child, f"{name} {child_name}")


def leaves() -> dict:
    """The parsers that run something (no sub-subcommands of their own)."""
    return {
        name: parser
        for name, parser in parsers()
        if name != "pyapred"
        and not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
    }


# --------------------------------------------------------------------------------------------
# Help
# --------------------------------------------------------------------------------------------
def test_every_option_has_help_of_its_own():
    names = [name for name, _ in parsers()]
    assert {"pyapred noise simulate", "pyapred noise stress", "pyapred noise train",
            "pyapred noise evaluate"} <= set(names)  # fmt: skip
    for name, parser in parsers():
        seen: dict = {}
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            flags = "/".join(action.option_strings)
            assert action.help and action.help.strip(), f"{name} {flags}: no help"
            assert action.help not in seen, f"{name}: {flags} has the help of {seen[action.help]}"
            seen[action.help] = flags
        for action in parser._actions:  # positionals too
            if not action.option_strings and not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"{name} {action.dest}: no help"
        parser.format_help()  # renders: a lone % in a help text would raise here


def test_no_raw_rst_in_any_help(capsys):
    for name, parser in parsers():
        assert "``" not in parser.format_help(), name
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and "Exit codes" in text
    with pytest.raises(SystemExit):  # the % of "paper: 3.5 %" in a fit setting's help
        main(["fit", "--help"])
    assert "3.5 %" in capsys.readouterr().out


def test_output_flags_are_declared_once_on_every_long_command():
    reference = argparse.ArgumentParser()
    cli.add_output_arguments(reference)
    expected = {
        a.dest: (tuple(a.option_strings), a.help)
        for a in reference._actions
        if a.dest in OUTPUT_DESTS
    }
    assert set(expected) == set(OUTPUT_DESTS)
    found = leaves()
    assert set(found) == {f"pyapred {n}" for n in cli.COMMANDS if n != "noise"} | {
        f"pyapred noise {n}" for n in ("simulate", "stress", "train", "evaluate")
    }
    for name, parser in found.items():
        got = {
            a.dest: (tuple(a.option_strings), a.help)
            for a in parser._actions
            if a.dest in OUTPUT_DESTS
        }
        assert got == ({} if name == "pyapred inspect" else expected), name


# --------------------------------------------------------------------------------------------
# One meaning of --json, --quiet, --verbose, --log (on a command that takes a moment)
# --------------------------------------------------------------------------------------------
def test_default_summary_on_stdout_progress_on_stderr(tmp_path, capsys):
    assert main([*SIMULATE, "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert len(out.split()) == 7 and all((tmp_path.parent / p).exists() for p in out.split())
    for chip in ("R (1 of 3)", "G (2 of 3)", "B (3 of 3)"):
        assert f"pyapred simulate: chip {chip}: simulating" in err
        assert f"pyapred simulate: chip {chip}: writing" in err


def test_json_is_all_of_stdout_and_silences_progress(tmp_path, capsys):
    assert main([*SIMULATE, "--out", str(tmp_path), "--json"]) == 0
    out, err = capsys.readouterr()
    paths = json.loads(out)
    assert len(paths["apz"]) == 3 and len(paths["traces"]) == 3 and "truth" in paths
    assert err == ""


def test_quiet_prints_nothing_but_errors(tmp_path, capsys):
    assert main([*SIMULATE, "--out", str(tmp_path), "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")
    assert main([*SIMULATE, "--out", str(tmp_path), "--quiet"]) == 2  # exists: an error
    out, err = capsys.readouterr()
    assert out == "" and "--out" in err and "--overwrite" in err
    assert main([*SIMULATE, "--out", str(tmp_path), "--quiet", "--json", "--overwrite"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["truth"] and err == ""


def test_verbose_adds_debug_detail(tmp_path, capsys):
    assert main([*SIMULATE, "--out", str(tmp_path), "--verbose"]) == 0
    err = capsys.readouterr().err
    assert "pyapred simulate: arguments" in err and "'seed': 0" in err
    assert main([*SIMULATE, "--out", str(tmp_path), "--overwrite"]) == 0
    assert "arguments" not in capsys.readouterr().err


def test_log_file_gets_the_log_and_the_output(tmp_path, capsys):
    log = tmp_path / "new" / "folder" / "run.log"
    out = tmp_path / "sim"
    assert main([*SIMULATE, "--out", str(out), "--log", str(log), "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")  # --quiet: the console only
    text = log.read_text()
    assert "INFO pyapred.run: pyapred simulate" in text
    assert "chip B (3 of 3): writing" in text and "apR-c-52190001.apz" in text
    assert "exit code 0" in text and "DEBUG" not in text
    assert main([*SIMULATE, "--out", str(out), "--log", str(log), "-v"]) == 2  # exists
    capsys.readouterr()
    appended = log.read_text()
    assert appended.startswith(text) and "DEBUG" in appended
    assert "--out: expected a new file (or pass --overwrite)" in appended
    assert "exit code 2" in appended


def test_log_is_checked_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    out = tmp_path / "sim"
    assert main([*SIMULATE, "--out", str(out), "--log", str(a_file / "run.log")]) == 2
    assert "--log" in capsys.readouterr().err and not out.exists()
    data = tmp_path / "data.bin"  # an existing file that is no log: never appended to
    data.write_bytes(b"\x00\x01 precious")
    assert main([*SIMULATE, "--out", str(out), "--log", str(data)]) == 2
    assert "an earlier pyapred log" in capsys.readouterr().err
    assert data.read_bytes() == b"\x00\x01 precious" and not out.exists()
    assert main([*SIMULATE, "--out", str(out), "--log", str(out)]) == 2  # --out itself
    assert "--log" in capsys.readouterr().err


def test_no_output_replaces_the_log(tmp_path, capsys):
    # --log naming a file the command derives from --out: with --overwrite the output replaced
    # the log (the run's record lost, exit 0); without, the refusal said "an existing file".
    # Refused, the log it had started there is removed (a text file named like a raw file was
    # left), with the folder made for it.
    out = tmp_path / "sim"
    log = out / "apR-a-52190001.apz"
    assert main([*SIMULATE, "--out", str(out), "--log", str(log), "--overwrite"]) == 2
    assert "--out: expected an output path of its own, found --log's file" in (
        capsys.readouterr().err
    )
    assert not out.exists()


def test_log_words_globs_and_input_folders(tmp_path, capsys, monkeypatch):
    """`--log fit` was refused as the command's name; a log named like a raw file that the
    command's glob or input folder finds was read as an input after it had been made."""
    monkeypatch.chdir(tmp_path)
    assert main([*SIMULATE, "--out", "sim", "--log", "simulate"]) == 0  # a word, not a path
    assert (tmp_path / "simulate").is_file()
    capsys.readouterr()
    night = ["night", "sim/apR-*.apz", "--traces", "sim", "--out", "n"]
    assert main([*night, "--log", "sim/apR-a-52190002.apz"]) == 2
    assert "--log: expected a file that no input glob matches" in capsys.readouterr().err
    assert main([*night, "--log", "sim/traceMain_x.h5"]) == 2
    assert "a file in the input folder sim" in capsys.readouterr().err
    assert not (tmp_path / "sim" / "apR-a-52190002.apz").exists() and not (tmp_path / "n").exists()


def test_logging_state_is_restored_after_a_run(tmp_path, capsys):
    loggers = [logging.getLogger(name) for name in ("pyapred", "py.warnings")]
    before = [(list(lg.handlers), lg.level, lg.propagate) for lg in loggers]
    assert main([*SIMULATE, "--out", str(tmp_path), "--log", str(tmp_path / "x.log")]) == 0
    assert [(list(lg.handlers), lg.level, lg.propagate) for lg in loggers] == before


# --------------------------------------------------------------------------------------------
# Messages name flags; progress; the Numba notice
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, flag",
    [
        (["simulate", "--out", "x", "--reads", "2"], "--reads"),
        (["simulate", "--out", "x", "--fibers", "0"], "--fibers"),
        (["demo", "--chips", "RX"], "--chips"),
        (["noise", "stress", "--exposures", "0"], "--exposures"),
        (["noise", "simulate", "--out", "x", "--gain", "-1"], "--gain"),
        (["fit", "a.apz", "--traces", "t.h5", "--out", "p.h5", "--mjd", "12"], "--mjd"),
    ],
)
def test_bad_values_are_refused_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "Traceback" not in err


def test_crossval_names_its_flags(capsys):
    """Every input checked before Julia is looked for: the bad one is named with or without it
    (a bad --rows, --rtol, --gain was reported as "no Julia runtime")."""
    for argv in (
        ["--simulate", "--reads", "2"],
        ["--simulate", "--reads", "100000"],
        ["--simulate", "--seed=-1"],
        ["--simulate", "--pixels", "1000000000"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(["crossval", *argv])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and argv[1].split("=")[0] in err and "Traceback" not in err
    for argv, flag in ((["--simulate", "--rtol", "nan"], "--rtol"),
                       (["--apz", "missing.apz"], "--apz")):  # fmt: skip
        assert main(["crossval", *argv]) == 2
        err = capsys.readouterr().err
        assert flag in err and "Julia" not in err, err


def test_compilation_notice_only_without_the_numba_cache(monkeypatch):
    """The notice where a kernel's cache index has no entry for this CPU: missing, stale
    (Numba's index of a kernel compiled from sources that have changed since reads as empty,
    ``pyapred.jit``), or written on another machine."""
    from pyapred.solver import first_pass
    from pyapred.solver.api import backend_kernels

    messages = []
    log = logging.getLogger("test-notice")
    log.addHandler(handler := logging.Handler())
    handler.emit = lambda record: messages.append(record.getMessage())
    log.setLevel(logging.INFO)
    kernels = (first_pass.first_pass_kernel, backend_kernels("numpy").extract_kernel)
    here = kernels[0].targetctx.codegen().magic_tuple()
    elsewhere = (here[0], "another-cpu", "")

    def index_with(cpu):
        return lambda: {("a signature", cpu, ("code", "closure")): "its data file"}

    for kernel in kernels:
        monkeypatch.setattr(kernel._cache._cache_file, "_load_index", index_with(here))
    cli._announce_compilation("fit", log)
    assert messages == []
    for index in (lambda: {}, index_with(elsewhere)):  # missing or stale; another machine's
        monkeypatch.setattr(kernels[1]._cache._cache_file, "_load_index", index)
        cli._announce_compilation("fit", log)
    cli._announce_compilation("simulate", log)  # no kernels there
    assert messages == ["pyapred: compiling the numerical kernels (once, a few minutes)..."] * 2
    cli._announce_compilation("noise stress", log)
    assert len(messages) == 3


# --------------------------------------------------------------------------------------------
# pyapred simulate: one chip at a time, the same files
# --------------------------------------------------------------------------------------------
def test_streamed_simulation_writes_the_same_bytes(tmp_path):
    from pyapred.simulate import (
        simulate_exposure,
        simulate_exposure_files,
        write_simulated_exposure,
    )

    settings = dict(seed=4, n_fibers=12, n_columns=24, ref_columns=8, n_reads=6)
    kept = write_simulated_exposure(simulate_exposure("seeing", **settings), tmp_path / "kept")
    messages = []
    streamed = simulate_exposure_files(
        tmp_path / "streamed", "seeing", progress=messages.append, **settings
    )
    for key in ("apz", "traces"):
        for a, b in zip(kept[key], streamed[key], strict=True):
            assert a.name == b.name and a.read_bytes() == b.read_bytes()
    a, b = np.load(kept["truth"]), np.load(streamed["truth"])
    assert sorted(a.files) == sorted(b.files)
    for name in a.files:
        np.testing.assert_array_equal(a[name], b[name])
    assert messages[:2] == ["chip R (1 of 3): simulating", "chip R (1 of 3): writing"]
    with pytest.raises(TypeError, match="n_fibres"):
        simulate_exposure_files(tmp_path / "x", n_fibres=3)


def test_simulate_removes_a_killed_runs_temporaries(tmp_path, capsys):
    """A killed ``pyapred simulate`` left its temporary file (``.NAME.*.tmp``) beside the chip
    it was writing; a rerun with --overwrite wrote the chips and left it there for good."""
    out = tmp_path / "sim"
    out.mkdir()
    stale = [out / ".apR-b-52190001.apz.ab12cd34.tmp", out / ".truth_apo_60781_0001.npz.x_1.tmp"]
    other = out / ".notes.txt.ab12cd34.tmp"  # not a temporary of simulate's files
    for path in [*stale, other]:
        path.write_text("half")
    assert main([*SIMULATE, "--out", str(out), "--quiet"]) == 0
    assert not any(p.exists() for p in stale) and other.exists()
    assert (out / "apR-b-52190001.apz").is_file()


# --------------------------------------------------------------------------------------------
# docs/api.md
# --------------------------------------------------------------------------------------------
def test_api_reference_is_up_to_date():
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "make_api_docs.py"
    spec = importlib.util.spec_from_file_location("make_api_docs", script)
    make_api_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_api_docs)
    current = make_api_docs.OUTPUT.read_text()
    assert current == make_api_docs.render(), (
        "docs/api.md is out of date: run python scripts/make_api_docs.py"
    )
    assert "### `pyapred.exposure.run_exposure`" in current
    assert "[api.md](api.md)" in (make_api_docs.OUTPUT.parent / "index.md").read_text()


@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", "--out", "x", "--fibers", "301"],
        ["simulate", "--out", "x", "--seed=-1"],
        ["simulate", "--out", "x", "--reads", "1000000"],
        ["noise", "simulate", "--out", "x", "--exposure", "10000"],
        ["noise", "simulate", "--out", "x", "--gain", "1e-300"],
        ["noise", "simulate", "--out", "x", "--reads", "100000"],
        ["noise", "stress", "--fibers", "100000"],
        ["noise", "stress", "--seed=-1"],
        ["validate", "--seed=-1"],
    ],
    ids=lambda argv: " ".join(argv[:1] + argv[-2:]),
)
def test_values_no_run_can_use_are_refused_by_the_flags(argv, tmp_path, capsys):
    """Each passed the flag's check and failed inside the run: a traceback, a MemoryError after
    gigabytes, an exposure number spilling into the night's digits of the file name."""
    argv = [str(tmp_path / a) if a == "x" else a for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    flag = next(a for a in reversed(argv) if a.startswith("--")).split("=")[0]
    assert exc.value.code == 2 and flag in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_noise_commands_refuse_what_they_cannot_use(tmp_path, capsys):
    """One fiber in all printed '+nan +- nan' (and JSON NaN tokens); a FIFO among --darks hung."""
    import os

    assert main(["noise", "stress", "--exposures", "1", "--fibers", "1"]) == 2
    assert "at least 2 fibers" in capsys.readouterr().err
    fifo = tmp_path / "apR-a-52190001.apz"
    os.mkfifo(fifo)
    argv = ["noise", "train", "--darks", str(fifo), "--out", str(tmp_path / "model")]
    try:
        import score_models  # noqa: F401
    except ImportError:
        pytest.skip("noise train needs the sbm extra")
    assert main(argv) == 2
    assert "--darks: expected a regular file, found a FIFO" in capsys.readouterr().err


def test_noise_simulate_says_overwrite_and_has_it(tmp_path, capsys):
    """An existing output said 'pass --overwrite' after the work, and the flag did not exist."""
    argv = ["noise", "simulate", "--rows", "16", "--reads", "3", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    assert "--out: expected a new file (or pass --overwrite)" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert main(["noise", "stress", "--white", "0"]) == 2
    assert "--white: expected a white read noise of at least 1e-30" in capsys.readouterr().err
