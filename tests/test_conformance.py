"""The solver conformance vectors: the NumPy backend reproduces every one; Julia too where it runs.

The vectors live in the Julia package (``julia/test/conformance``), where ``Pkg.test`` of an
installed APRampFit finds them; ``pyapred.conformance.default_vector_dir`` finds them from Python.
"""

from pathlib import Path

import numpy as np
import pytest

from pyapred.conformance import (
    FUNCTIONS,
    NUMPY_ONLY,
    compare,
    default_vector_dir,
    dumps,
    load_vector,
    run_vector,
)

VECTOR_DIR = Path(__file__).resolve().parent.parent / "julia" / "test" / "conformance"
VECTORS = sorted(VECTOR_DIR.glob("*.toml"))


def test_the_default_vector_dir_is_the_julia_package_s():
    assert default_vector_dir() == VECTOR_DIR


def test_there_are_enough_vectors_covering_every_function():
    assert len(VECTORS) >= 30
    functions = {load_vector(path)["function"] for path in VECTORS}
    assert functions == set(FUNCTIONS)


def test_vectors_cover_the_edge_cases():
    outputs = {path.stem: load_vector(path)["expected"] for path in VECTORS}
    # Masks: too few differences (all masked, none usable, one usable) give NaN and the flag.
    masks = outputs["constant_masks"]
    assert list(masks["n_diff"][3:]) == [0, 0, 1] and np.isnan(masks["flux"][3:]).all()
    assert outputs["constant_two_usable_diffs"]["n_diff"][0] == 2
    assert outputs["fit_omega_fixed_last"]["ref_index"] == 6
    assert np.isnan(outputs["fit_omega_element_no_data"]["omega"][3:5]).all()
    assert list(outputs["fit_omega_empty_group"]["group_flags"]) == [0, 1 << 10 | 1 << 9]
    assert not outputs["fit_omega_not_converged"]["converged"]
    assert (outputs["constant_negative_flux"]["flux"] < 0).all()
    # Dead pixels (every difference exactly 0) in the initial guess and the joint fit.
    for name in ("initial_guess_dead_pixel", "fit_omega_dead_pixel", "fit_omega_dead_pixel_groups"):
        reads = load_vector(VECTOR_DIR / f"{name}.toml")["inputs"]["reads"]
        assert np.any(np.all(np.diff(reads, axis=0) == 0, axis=0)), name
        assert np.all(np.isfinite(outputs[name]["omega"])), name
    assert outputs["fit_omega_dead_pixel"]["converged"]
    assert list(outputs["fit_omega_dead_pixel_groups"]["group_flags"]) == [0, 0]


def test_find_jumps_vectors_expect_only_what_the_julia_twin_returns():
    """runtests.jl compares every expected key with the Julia result's field of that name: a key
    only Python's JumpResult has (its compact ``diff_mask_bits``, ``jump_index``,
    ``jump_charge``) would be a KeyError there. The Julia fields are read from the NamedTuple
    that ``find_jumps`` in julia/src/jumps.jl returns."""
    import re

    source = (VECTOR_DIR.parent.parent / "src" / "jumps.jl").read_text()
    body = source[source.index("\nfunction find_jumps(") :]
    returned = body[body.index("    return (") : body.index("\nend")]
    fields = set(re.findall(r"\b(\w+) = ", returned))
    assert {"diff_mask", "jumps", "flux_var", "flags"} <= fields
    for path in VECTORS:
        vector = load_vector(path)
        if vector["function"] == "find_jumps":
            assert set(vector["expected"]) <= fields, (path.stem, set(vector["expected"]) - fields)


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_numpy_backend_reproduces_vector(path):
    vector = load_vector(path)
    report = compare(vector["expected"], run_vector(vector, "numpy"), vector["rtol"])
    assert vector["rtol"] <= 1e-12
    assert all(ok for _, _, ok in report.values()), report


@pytest.mark.julia
@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_julia_backend_reproduces_vector(path):
    vector = load_vector(path)
    if vector["function"] in NUMPY_ONLY:
        pytest.skip(f"{vector['function']} has no backend argument; runtests.jl checks its twin")
    report = compare(vector["expected"], run_vector(vector, "julia"), vector["rtol"])
    assert all(ok for _, _, ok in report.values()), report


def test_compare_catches_a_small_difference():
    vector = load_vector(VECTOR_DIR / "fit_omega_default.toml")
    got = run_vector(vector, "numpy")
    got["omega"] = got["omega"] * (1 + 1e-11)
    assert not compare(vector["expected"], got, 1e-12)["omega"][2]
    got["n_iter"] = got["n_iter"] + 1
    assert not compare(vector["expected"], got, 1e-12)["n_iter"][2]


def test_compare_catches_an_infinity_either_way():
    finite, overflow = {"x": np.array([1.0, 2.0])}, {"x": np.array([np.inf, 2.0])}
    assert compare(finite, overflow, 1e-10)["x"] == (np.inf, np.inf, False)  # passed before
    assert compare(overflow, finite, 1e-10)["x"] == (np.inf, np.inf, False)
    assert compare(overflow, {"x": np.array([-np.inf, 2.0])}, 1e-10)["x"][2] is False
    assert compare(overflow, overflow, 1e-10)["x"] == (0.0, 0.0, True)


def test_toml_round_trip_is_exact(tmp_path):
    values = np.array([[0.1, -0.0, 1e-300, 5e-324], [np.nan, np.inf, -np.inf, 1.5e300]])
    vector = {"name": "x", "function": "fit_constant", "rtol": 1e-12,
              "inputs": {"a": values, "b": np.array([True, False]), "c": 3, "d": "default"},
              "expected": {"e": np.arange(3)}}  # fmt: skip
    path = tmp_path / "x.toml"
    path.write_text(dumps(vector))
    back = load_vector(path)
    np.testing.assert_array_equal(back["inputs"]["a"], values)
    assert np.signbit(back["inputs"]["a"][0, 1])
    assert back["inputs"]["b"].dtype == bool and back["inputs"]["c"] == 3
    assert back["inputs"]["d"] == "default" and back["expected"]["e"].dtype.kind == "i"
