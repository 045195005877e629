import pytest

from pyapred.cli import main
from pyapred.solver import _julia


def test_crossval_without_julia_exits_2_with_one_line(monkeypatch, capsys):
    monkeypatch.setattr(_julia, "_module", None)
    monkeypatch.setattr(_julia, "_failure", None)
    monkeypatch.setattr(_julia, "_missing_reason", lambda: "no Julia runtime: (test)")
    assert main(["crossval", "--vectors"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no Julia runtime" in err


@pytest.mark.julia
def test_crossval_vectors_agree_with_julia(capsys):
    assert main(["crossval", "--vectors"]) == 0
    assert "max rel diff" in capsys.readouterr().out


def test_apz_cases_run_on_the_numpy_backend(tmp_path):
    import argparse

    import numpy as np

    from pyapred.conformance import run_vector
    from pyapred.crossval import _apz_cases
    from pyapred.simulate import simulate_ramps, write_simulated_apz

    rng = np.random.default_rng(3)
    sim = simulate_ramps(rng.uniform(0, 50, (4, 2560)), 10.0, n_reads=5, gain=1.9, rng=rng)
    path = write_simulated_apz(tmp_path, sim.reads)
    args = argparse.Namespace(apz=str(path), rows="1:3", read_noise=5.0, gain=1.9, rtol=None)
    cases = _apz_cases(args)
    assert [case["function"] for case in cases] == ["fit_constant", "fit_equal_weight"]
    fit = run_vector(cases[0], "numpy")
    assert fit["flux"].shape == (2, 2048) and np.all(np.isfinite(fit["flux"]))


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--simulate", "--rows", "1:3"], "--rows"),
        (["--simulate", "--gain", "2"], "--gain"),
        (["--apz", "raw.apz", "--pixels", "10"], "--pixels"),
        (["--vectors", "--seed", "7"], "--seed"),
        (["--vectors", "--read-noise", "5"], "--read-noise"),
    ],
)
def test_a_flag_of_another_source_is_refused(argv, flag, capsys):
    """A flag that the chosen source does not take was ignored, silently (the same run with
    or without it): it is refused, naming it, before any file is read and without Julia."""
    assert main(["crossval", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{flag}: expected --" in err and "with it" in err


def test_each_source_gets_its_defaults():
    import argparse

    from pyapred.crossval import _source_flags

    args = argparse.Namespace(simulate=True, apz=None, rows=None, read_noise=None, gain=None,
                              seed=None, pixels=50, reads=None)  # fmt: skip
    _source_flags(args)
    assert (args.seed, args.pixels, args.reads) == (7, 50, 20)
    assert (args.rows, args.read_noise, args.gain) == ("1000:1016", 10.0, 1.9)


def test_json_of_a_mismatch_is_json(monkeypatch, capsys):
    """A twin's output of another shape, or with NaN elsewhere, is an infinite difference:
    ``--json`` printed ``Infinity``, which no JSON reader takes."""
    import json

    import numpy as np

    from pyapred import conformance, solver

    monkeypatch.setattr(solver, "load_julia", lambda: None)
    monkeypatch.setattr(
        conformance,
        "run_vector",
        lambda case, backend: {"flux": np.ones(3 if backend == "numpy" else 2)},
    )
    assert main(["crossval", "--simulate", "--pixels", "2", "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(r["max_abs_diff"] is None and r["ok"] is False for r in rows)
