"""``FitOptions``, declared once: the flags of ``fit`` and ``night``, config files, records."""

import argparse
import dataclasses
import json
import os

import pytest

from pyapred.cli import build_parser, main
from pyapred.errors import InputError
from pyapred.exposure import FitOptions, options_from_arguments, read_config


def option_actions(command: str) -> dict:
    """``{dest: (flags, help, choices)}`` of the fit-option flags of a subcommand's parser."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    fields = {f.name for f in dataclasses.fields(FitOptions)}
    return {
        action.dest: (tuple(action.option_strings), action.help, action.choices)
        for action in sub.choices[command]._actions
        if action.dest in fields
    }


def test_every_field_has_the_same_flag_in_fit_and_night():
    fields = [f.name for f in dataclasses.fields(FitOptions)]
    fit, night = option_actions("fit"), option_actions("night")
    assert sorted(fit) == sorted(fields)
    # A night keeps no result in memory: --keep-constant ran an extraction no product stores.
    memory = {"keep_constant", "keep_fit_reads"}
    assert {name: fit[name] for name in fit if name not in memory} == night
    # same names, same help, same choices
    for name in fields:
        assert f"--{name.replace('_', '-')}" in fit[name][0]
        assert fit[name][1], f"--{name} has no help"
    assert "--no-jump-search" in fit["jump_search"][0]  # the old flag still works
    assert set(fit["backend"][2]) == {"numpy", "julia", "auto"}


def test_each_flag_says_its_default_and_range_once():
    """The help gives each setting's default and range once, whether its own text says them or
    the declaration adds them (it said "(default: all) (...; default: from the file)")."""
    declared = {f.name: f.metadata["valid"] for f in dataclasses.fields(FitOptions)}
    for name, (_, text, _) in option_actions("fit").items():
        assert text.count("default:") == 1, (name, text)
        if declared[name] is not None:
            assert text.count(declared[name][1]) == 1, (name, text)
    assert option_actions("fit")["max_fit_pixels"][1].endswith("(default: all) (an integer >= 1)")


def test_every_field_is_a_config_key_and_the_file_round_trips(tmp_path):
    options = FitOptions(
        model="time-variable", min_snr=12.5, max_fit_pixels=80, backend="numpy",
        joint_chips=True, jump_search=False, gain=1.9, correct_1f="refpix", keep_constant=True,
    )  # fmt: skip
    text = options.to_toml()
    for item in dataclasses.fields(FitOptions):
        assert f"{item.name} = " in text or f"# {item.name} =" in text, item.name
    path = tmp_path / "fit.toml"
    path.write_text(text)
    assert read_config(path) == options
    # None (read from the file) is the default: a commented key.
    assert read_config_text(tmp_path, FitOptions().to_toml()) == FitOptions()


def read_config_text(tmp_path, text: str) -> FitOptions:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return read_config(path)


def test_config_tables_flat_keys_and_errors(tmp_path):
    assert read_config_text(tmp_path, "min_snr = 10\n[model]\np_value = 0.01\n") == FitOptions(
        min_snr=10.0, p_value=0.01
    )
    bad = {
        "[pixels]\nmin_snr = 'many'\n": "pixels",  # wrong type
        "[model]\nmin_snr = 3.0\n": "[model] min_snr",  # key in the wrong table
        "[nonsense]\nx = 1\n": "[nonsense]",
        "speed = 3\n": "speed",
        "model = 'fast'\n": "model",
        "gain = 'high'\n": "gain",
        "min_snr = \n": "TOML",
        "[model]\np_value = 1" + "0" * 400 + "\n": "[model] p_value",  # no float holds it
        # Checked when the chip was loaded, blamed on the raw file and a --gain never given:
        "[calibration]\ngain = inf\n": "[calibration] gain",
        "[calibration]\nsaturation = 0.0\n": "[calibration] saturation",
        "[noise]\nsegment_columns = 1\n": "[noise] segment_columns",  # degenerate fits
        # Without a nuisance route it did nothing, and was recorded in the product as if.
        "[noise]\nsegment_columns = 64\n": "[noise] segment_columns: expected the default 32",
        # Flat and in its table: the later won, silently.
        "p_value = 0.01\n[model]\np_value = 0.5\n": "[model] p_value: expected p_value given once",
    }
    for text, field in bad.items():
        with pytest.raises(InputError) as info:
            read_config_text(tmp_path, text)
        assert field in str(info.value) and "c.toml" in str(info.value), text


def test_flags_override_the_config_file(tmp_path):
    config = tmp_path / "fit.toml"
    config.write_text("[model]\nmodel = 'constant'\np_value = 0.01\n[solver]\nmax_iter = 7\n")
    parser = argparse.ArgumentParser()
    from pyapred.exposure import add_option_arguments

    add_option_arguments(parser)
    args = parser.parse_args(["--config", str(config), "--max-iter", "9", "--no-jump-search"])
    options = options_from_arguments(args)
    assert (options.model, options.p_value, options.max_iter) == ("constant", 0.01, 9)
    assert options.jump_search is False
    assert options_from_arguments(parser.parse_args([])) == FitOptions()


def test_a_config_is_checked_with_the_flags_laid_over_it(tmp_path):
    """The file was checked alone first: a setting that a flag makes valid was refused
    (segment_columns with --correct-1f nuisance), and a conflict of the file's own setting was
    blamed on a flag never typed."""
    from pyapred.exposure import add_option_arguments

    parser = argparse.ArgumentParser()
    add_option_arguments(parser)
    seg, nuisance = tmp_path / "seg.toml", tmp_path / "nuisance.toml"
    seg.write_text("[noise]\nsegment_columns = 64\n")
    nuisance.write_text("[noise]\ncorrect_1f = 'nuisance'\n")
    options = options_from_arguments(
        parser.parse_args(["--config", str(seg), "--correct-1f", "nuisance"])
    )
    assert (options.segment_columns, options.correct_1f) == (64, "nuisance")
    fewest = tmp_path / "fewest.toml"
    fewest.write_text("[pixels]\nmax_fit_pixels = 5\n")
    options = options_from_arguments(
        parser.parse_args(["--config", str(fewest), "--min-fit-pixels", "3"])
    )
    assert (options.max_fit_pixels, options.min_fit_pixels) == (5, 3)
    with pytest.raises(
        InputError, match=r"nuisance.toml: \[noise\] correct_1f: expected no nuisance"
    ):
        options_from_arguments(parser.parse_args(["--config", str(nuisance), "--chromatic"]))
    with pytest.raises(InputError, match=r"seg.toml: \[noise\] segment_columns: expected the def"):
        options_from_arguments(parser.parse_args(["--config", str(seg)]))  # alone: refused


def test_settings_that_would_do_nothing_are_refused_and_dropped_from_old_records():
    """A nuisance route with the constant model forced on every fiber, and a chromatic p-value
    without chromatic, changed nothing in the run (products identical) but were recorded."""
    with pytest.raises(ValueError, match="correct_1f: expected no nuisance term with the const"):
        FitOptions(model="constant", correct_1f="refpix+nuisance")
    with pytest.raises(ValueError, match="chromatic_p_value: expected the default 0.0001 with"):
        FitOptions(chromatic_p_value=0.5)
    assert FitOptions(chromatic=True, chromatic_p_value=0.5).chromatic_p_value == 0.5
    assert FitOptions(model="constant", correct_1f="refpix").correct_1f == "refpix"
    old = {"model": "constant", "correct_1f": "refpix+nuisance", "segment_columns": 64,
           "chromatic_p_value": 0.5}  # fmt: skip
    options = FitOptions.from_record(json.dumps(old))
    assert (options.correct_1f, options.segment_columns) == ("refpix", 32)
    assert options.chromatic_p_value == FitOptions().chromatic_p_value


def test_records_of_older_products_read_with_defaults():
    # The fit_options record of products written before backend and the calibration
    # overrides were settings: night must still recognise them as up to date.
    old = {
        "model": "auto", "joint_chips": False, "min_snr": 30.0, "core_halfwidth": 0.5,
        "min_purity": 0.95, "max_fit_pixels": None, "map_halfwidth": 2.5, "min_fit_pixels": 20,
        "max_omega_error": 0.05, "p_value": 0.001, "amplitude_threshold": 0.035,
        "jump_threshold": 8.0, "max_iter": 50, "jump_search": True, "correct_1f": "none",
    }  # fmt: skip
    record = json.dumps(old, sort_keys=True)
    assert FitOptions.from_record(record) == FitOptions()
    assert FitOptions().matches_record(record)
    assert not FitOptions(joint_chips=True).matches_record(record)
    assert not FitOptions(backend="julia").matches_record(record)
    assert not FitOptions().matches_record("not json")
    for bad in ("[" * 100000 + "]" * 100000, '{"p_value": 1' + "0" * 400 + "}"):
        with pytest.raises(InputError, match="fit_options"):  # a RecursionError, OverflowError
            FitOptions.from_record(bad)
    assert FitOptions(keep_constant=True).matches_record(FitOptions().to_record())
    assert "keep_fit_reads" not in FitOptions().to_record()
    # A segment width recorded without a nuisance route (taken before it was refused) did
    # nothing in that run: the record still reads, and a resume matches it.
    noop = json.dumps({**old, "segment_columns": 64})
    assert FitOptions.from_record(noop) == FitOptions() and FitOptions().matches_record(noop)
    nuisance = json.dumps({**old, "correct_1f": "nuisance", "segment_columns": 64})
    assert FitOptions.from_record(nuisance).segment_columns == 64


def test_invalid_options_are_refused():
    with pytest.raises(ValueError, match="model"):
        FitOptions(model="sometimes")
    with pytest.raises(ValueError, match="correct_1f"):
        FitOptions(correct_1f="fft")
    with pytest.raises(ValueError, match="backend"):
        FitOptions(backend="cuda")


def test_bad_config_on_the_command_line_is_exit_2(tmp_path, capsys):
    config = tmp_path / "fit.toml"
    config.write_text("[solver]\nbackend = 'cuda'\n")
    out = tmp_path / "p.h5"
    code = main(["fit", "x.apz", "--traces", "t.h5", "--out", str(out), "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2 and "fit.toml" in err and "backend" in err and "Traceback" not in err
    assert not out.exists()


def test_backend_julia_without_julia_is_exit_2_naming_the_runtime(tmp_path, capsys, no_julia):
    out = tmp_path / "p.h5"
    for argv in (
        ["fit", "x.apz", "--traces", "t.h5", "--out", str(out), "--backend", "julia"],
        ["night", "x*.apz", "--traces", "t.h5", "--out", str(tmp_path / "n"), "--backend",
         "julia"],
    ):  # fmt: skip
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, argv
        assert "--backend" in err and "Julia" in err and "no Julia runtime" in err, err
        assert "--backend: backend" not in err  # the flag, named once
    assert not out.exists()
    # From a config file, the file and its key are named, not a flag that was never given.
    config = tmp_path / "julia.toml"
    config.write_text('backend = "julia"\n')
    assert (
        main(["fit", "x.apz", "--traces", "t.h5", "--out", str(out), "--config", str(config)]) == 2
    )
    assert f"{config}: backend: expected a Julia runtime" in capsys.readouterr().err


@pytest.fixture
def no_julia(monkeypatch):
    from pyapred.solver import _julia

    monkeypatch.setattr(_julia, "_module", None)
    monkeypatch.setattr(_julia, "_failure", None)
    monkeypatch.setattr(_julia, "_missing_reason", lambda: "no Julia runtime: (test)")


def test_config_works_in_fit_and_night_alike(tmp_path):
    config = tmp_path / "fit.toml"
    config.write_text("[solver]\njump_search = false\nmax_iter = 12\n[model]\nmodel = 'constant'\n")
    parser = build_parser()
    for argv in (
        ["fit", "a.apz", "--traces", "t.h5", "--out", "p.h5"],
        ["night", "runlist.txt", "--traces", "t.h5", "--out", "products"],
    ):
        args = parser.parse_args([*argv, "--config", str(config), "--max-iter", "20"])
        options = options_from_arguments(args)
        assert (options.jump_search, options.max_iter, options.model) == (False, 20, "constant")


def test_config_from_a_product_repeats_its_settings(tmp_path):
    from pyapred.exposure import run_exposure
    from pyapred.simulate import simulate_exposure, write_simulated_exposure

    sim = simulate_exposure("clouds", seed=4, n_fibers=12, n_columns=48, ref_columns=0,
                            n_reads=8, chips=("R",))  # fmt: skip
    paths = write_simulated_exposure(sim, tmp_path)
    options = FitOptions(min_snr=12.0, jump_search=False, max_fit_pixels=30)
    run_exposure(paths["apz"], paths["traces"], options, product=tmp_path / "p.h5")
    assert read_config(tmp_path / "p.h5") == options
    # The FITS flavour keeps the record in its METADATA table (it was read as TOML).
    run_exposure(paths["apz"], paths["traces"], options, product=tmp_path / "p.fits")
    assert read_config(tmp_path / "p.fits") == options


def test_chromatic_with_the_nuisance_term_is_refused_naming_the_setting(tmp_path, capsys):
    with pytest.raises(ValueError, match="correct_1f"):
        FitOptions(chromatic=True, correct_1f="refpix+nuisance")
    FitOptions(chromatic=True, correct_1f="refpix")  # a correction of the reads goes with it
    with pytest.raises(ValueError, match="chromatic_p_value"):
        FitOptions(chromatic_p_value=1.5)
    argv = ["fit", str(tmp_path / "a.apz"), "--traces", str(tmp_path / "t.h5"), "--out",
            str(tmp_path / "p.h5"), "--chromatic", "--correct-1f", "nuisance"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--correct-1f: expected no nuisance term with chromatic" in err
    assert "Traceback" not in err
    config = tmp_path / "c.toml"
    config.write_text('[model]\nchromatic = true\n[noise]\ncorrect_1f = "nuisance"\n')
    with pytest.raises(InputError, match=r"c.toml: \[noise\] correct_1f: expected no nuisance"):
        read_config(config)
    assert not (tmp_path / "p.h5").exists()


@pytest.mark.parametrize(
    "name, value",
    [("p_value", 0.0), ("p_value", -1.0), ("p_value", float("inf")), ("amplitude_threshold", -1.0),
     ("max_omega_error", 0.0), ("min_snr", -1.0), ("core_halfwidth", 0.0),
     ("core_halfwidth", float("inf")), ("core_halfwidth", 1e5), ("min_purity", 2.0),
     ("max_fit_pixels", 0), ("map_halfwidth", -1.0), ("map_halfwidth", 1e6), ("max_iter", 0),
     ("jump_threshold", 0.0), ("jump_threshold", -1.0),
     # inf made --model auto constant for every fiber, and the record invalid JSON.
     ("amplitude_threshold", float("inf")), ("max_omega_error", float("inf"))],
)  # fmt: skip
def test_settings_out_of_range_are_refused_before_any_work(tmp_path, capsys, name, value):
    """Each range is declared once, on the field: the constructor, the flags and the config
    files refuse the value, naming the setting (a fit with it ran to nonsense, or crashed)."""
    with pytest.raises(ValueError, match=name):
        FitOptions(**{name: value})
    flag = "--" + name.replace("_", "-")
    argv = ["fit", str(tmp_path / "a.apz"), "--traces", str(tmp_path / "t.h5"), "--out",
            str(tmp_path / "p.h5"), flag, str(value)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{flag}: expected" in err and "Traceback" not in err
    group = _field_group(name)
    config = tmp_path / "c.toml"
    config.write_text(f"[{group}]\n{name} = {value}\n")  # Python's inf is TOML's too
    with pytest.raises(InputError, match=rf"\[{group}\] {name}: expected"):
        read_config(config)


def _field_group(name):
    import dataclasses

    return next(f.metadata["group"] for f in dataclasses.fields(FitOptions) if f.name == name)


def test_a_boolean_is_not_a_number_in_a_config_and_chromatic_needs_the_model_choice(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[model]\np_value = true\n")
    with pytest.raises(InputError, match=r"\[model\] p_value: expected"):
        read_config(config)
    with pytest.raises(ValueError, match="chromatic"):
        FitOptions(model="constant", chromatic=True)


def test_a_config_that_is_no_toml_file_is_an_input_error(tmp_path):
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # reading it would hang
    with pytest.raises(InputError, match="--config: expected a regular file"):
        read_config(fifo)
    with pytest.raises(InputError, match="--config: expected an existing file"):
        read_config(tmp_path / "nothere.toml")
    binary = tmp_path / "b.toml"
    binary.write_bytes(b"[model]\np_value = 0.1 # \xff\xfe\n")
    with pytest.raises(InputError, match="TOML: expected a valid TOML file"):
        read_config(binary)
    deep = tmp_path / "d.toml"
    deep.write_text("x = " + "[" * 100000 + "]" * 100000 + "\n")
    with pytest.raises(InputError, match="TOML: expected a valid TOML file"):
        read_config(deep)


def test_the_config_and_the_plots_are_never_the_product(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text("[model]\np_value = 0.01\n")
    before = config.read_bytes()
    base = ["fit", str(tmp_path / "a.apz"), "--traces", str(tmp_path / "t.h5")]
    (tmp_path / "a.apz").write_bytes(b"")
    (tmp_path / "t.h5").write_bytes(b"")
    argv = [*base, "--config", str(config), "--out", str(config), "--overwrite"]
    assert main(argv) == 2
    assert "--out: expected an output path that is none of the inputs" in capsys.readouterr().err
    assert config.read_bytes() == before
    out = tmp_path / "p.h5"
    assert main([*base, "--out", str(out), "--plots", str(out)]) == 2
    assert "--plots: expected a folder other than --out" in capsys.readouterr().err
    assert not out.exists()
    # A product or a log named like a plot of --plots: the plot replaced the product (exit 0)
    # or was refused after the whole fit.
    plots = tmp_path / "plots"
    for flag, path in (("--out", plots / "flux_B.png"), ("--log", plots / "omega_R.png")):
        extra = ["--out", str(out)] if flag == "--log" else []
        assert main([*base, "--plots", str(plots), *extra, flag, str(path)]) == 2
        assert f"{flag}: expected a name that no plot in" in capsys.readouterr().err
    # A config named like a plot in the --plots folder was replaced by that plot (exit 0).
    plots.mkdir(exist_ok=True)
    named = plots / "omega_R.png"
    named.write_text("[model]\np_value = 0.01\n")
    assert main([*base, "--out", str(out), "--plots", str(plots), "--config", str(named)]) == 2
    assert "--config: expected a name that no plot in" in capsys.readouterr().err
    assert named.read_text() == "[model]\np_value = 0.01\n"


def test_a_second_config_is_refused_not_laid_over_the_first(tmp_path, capsys):
    first, second = tmp_path / "a.toml", tmp_path / "b.toml"
    first.write_text("[model]\np_value = 0.01\n")
    second.write_text("[pixels]\nmin_snr = 10\n")
    argv = ["fit", "x.apz", "--traces", "t.h5", "--out", str(tmp_path / "p.h5")]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--config", str(first), "--config", str(second)])
    assert info.value.code == 2
    assert f"--config: expected one, got a second: {second}" in capsys.readouterr().err


def test_counts_and_numbers_beyond_what_the_run_takes_are_refused_at_once():
    """``max_iter`` above int64 passed, and the fit failed after the chip was prepared; a
    400-digit integer for a float setting passed ``< inf`` and overflowed in the run."""
    with pytest.raises(ValueError, match="max_iter: expected an integer at most 2"):
        FitOptions(max_iter=2**63 - 1)
    for name in ("min_snr", "jump_threshold", "gain", "read_noise", "amplitude_threshold"):
        with pytest.raises(ValueError, match=f"{name}: expected a number a float holds, got an "):
            FitOptions(**{name: 10**400})
    assert FitOptions(max_iter=2**62, min_snr=10**10).max_iter == 2**62


def test_numpy_numbers_are_taken_as_python_s():
    """``max_iter=np.int64(5)`` was refused as "expected an integer >= 0"."""
    import numpy as np

    options = FitOptions(max_iter=np.int64(5), p_value=np.float32(0.01), chromatic=np.bool_(True))
    assert options.max_iter == 5 and type(options.max_iter) is int
    assert type(options.p_value) is float and options.chromatic is True


def test_fewer_fit_pixels_than_a_fit_needs_and_a_non_integer_count_are_refused(tmp_path):
    """max_fit_pixels below min_fit_pixels fitted no fiber, silently (exit 0); max_iter = 1e3
    in a config was refused as "an integer >= 0", though the range is >= 1."""
    with pytest.raises(ValueError, match=r"max_fit_pixels: expected at least min_fit_pixels"):
        FitOptions(max_fit_pixels=1)
    assert FitOptions(max_fit_pixels=5, min_fit_pixels=5).max_fit_pixels == 5
    config = tmp_path / "c.toml"
    config.write_text("[solver]\nmax_iter = 1e3\n")
    with pytest.raises(InputError, match="max_iter: expected an integer >= 1"):
        read_config(config)
