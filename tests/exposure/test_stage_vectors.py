"""The exposure-stage vectors (``julia/test/stages``): the NumPy stages reproduce every one.

``scripts/make_stage_vectors.py`` wrote them from ``prepare_chip``, ``fit_fibers`` and
``extract_chip``; ``julia/test/runtests.jl`` holds APRampFit's stages to the same files. Here the
NumPy stages run again on each vector's inputs and options and must give every stage's outputs
at ``rtol`` (1e-10) of each output's largest value, integers and masks exactly.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from pyapred import Flag
from pyapred.conformance import compare, default_stage_dir, load_vector
from pyapred.exposure import MODEL_BORROWED, MODEL_CONSTANT, MODEL_TIME_VARIABLE, FitOptions

ROOT = Path(__file__).resolve().parents[2]
STAGE_DIR = ROOT / "julia" / "test" / "stages"
VECTORS = sorted(STAGE_DIR.glob("*.toml"))
#: Outputs the stages keep in float32: compared as float32.
FLOAT32 = {"rate", "purity", "omega_rough"}


def _generator():
    """``scripts/make_stage_vectors.py`` as a module: its ``run_stages`` is the reference."""
    spec = importlib.util.spec_from_file_location(
        "make_stage_vectors", ROOT / "scripts" / "make_stage_vectors.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator():
    return _generator()


@pytest.fixture(scope="module")
def vectors():
    return {path.stem: load_vector(path) for path in VECTORS}


def _as_compared(name: str, value):
    value = np.asarray(value)
    return value.astype(np.float32) if name in FLOAT32 else value


def test_the_default_stage_dir_is_the_julia_package_s():
    assert default_stage_dir() == STAGE_DIR


def test_there_are_enough_small_stage_vectors(vectors):
    assert len(vectors) >= 10
    total = sum(path.stat().st_size for path in VECTORS)
    # 16 vectors of 20-60 KiB; the cap keeps each one small rather than their number.
    assert total < 700 * 1024, f"{total / 1024:.0f} KiB of stage vectors"
    for name, vector in vectors.items():
        assert vector["kind"] == "stages" and vector["rtol"] <= 1e-10, name
        reads = vector["inputs"]["reads"]
        n_chips, n_reads, ny, nx = reads.shape
        assert n_chips <= 2 and n_reads <= 12 and ny * nx <= 400, name
        assert set(vector["expected"]) == {"prepare", "fibers", "extract"}, name
        # Every option is a FitOptions field with a valid value.
        FitOptions(**vector["options"])


def test_stage_vectors_cover_the_cases_of_issue_17(vectors):
    """A dead pixel in an omega fit, a saturated fiber, a cosmic ray in a fit pixel, a fiber that
    falls back, a faint fiber that borrows, every model, FPI fibers and joint chips."""
    found = set()
    for vector in vectors.values():
        inputs, expected = vector["inputs"], vector["expected"]
        prepare, fibers, extract = expected["prepare"], expected["fibers"], expected["extract"]
        reads = inputs["reads"]
        traced = prepare["fit_pixel_fiber"].shape[-1]
        dead = np.all(np.diff(reads, axis=1) == 0, axis=1)[..., :traced]
        if np.any(dead & (prepare["fit_pixel_fiber"] >= 0)):
            found.add("dead pixel in an omega fit")
        if np.any(prepare["saturated"]) and np.any(extract["flags"] & Flag.SATURATED):
            found.add("saturated fiber")
        if "fit_flags" in fibers and np.any(fibers["fit_flags"] & Flag.JUMP_DETECTED):
            found.add("cosmic ray in a fit pixel")
        if np.any(prepare["jump_reads"]) and np.any(extract["flags"] & Flag.JUMP_DETECTED):
            found.add("cosmic ray masked in the extraction")
        if np.any(fibers["flags"] & Flag.FALLBACK_CONSTANT):
            found.add("fallback")
        if np.any(fibers["model"] == MODEL_BORROWED):
            assert np.all(fibers["flags"][fibers["model"] == MODEL_BORROWED] & Flag.BORROWED_OMEGA)
            found.add("borrowed")
        if np.any(fibers["model"] == MODEL_TIME_VARIABLE):
            found.add("time-variable")
        if np.all(fibers["model"] == MODEL_CONSTANT):
            found.add("all constant")
        if np.any(inputs["excluded"]):
            found.add("FPI fiber")
        if reads.shape[0] == 2:
            found.add("joint chips")
        if np.ndim(inputs["gain"]) == 3:
            found.add("calibration maps")
        untraced = np.arange(reads.shape[-1]) >= inputs["y_center"].shape[-1]
        if np.any((extract["fiber"] < 0) & untraced):
            found.add("untraced columns")
    assert found == {
        "dead pixel in an omega fit", "saturated fiber", "cosmic ray in a fit pixel",
        "cosmic ray masked in the extraction", "fallback", "borrowed", "time-variable",
        "all constant", "FPI fiber", "joint chips", "calibration maps", "untraced columns",
    }  # fmt: skip


def test_every_nan_fiber_statistic_carries_a_fiber_flag(vectors):
    """No silent NaN (docs/flags.md): a NaN amplitude, delta_chi2, p_value or chi2 per dof of a
    fiber has a nonzero fiber flag, in every vector, so in both implementations."""
    statistics = ("amplitude", "delta_chi2", "p_value", "chi2_dof_constant", "chi2_dof_variable")
    for name, vector in vectors.items():
        fibers = vector["expected"]["fibers"]
        for statistic in statistics:
            silent = np.isnan(fibers[statistic]) & (fibers["flags"] == 0)
            assert not silent.any(), f"{name}: {statistic} NaN without a flag"
    flags = vectors["stage_model_constant"]["expected"]["fibers"]["flags"]
    assert np.all(flags & Flag.NO_OMEGA_FIT)


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_numpy_stages_reproduce_vector(generator, path):
    vector = load_vector(path)
    got = generator.run_stages(vector)
    for stage, expected in vector["expected"].items():
        assert set(got[stage]) == set(expected), stage
        want = {name: _as_compared(name, value) for name, value in expected.items()}
        have = {name: _as_compared(name, value) for name, value in got[stage].items()}
        report = compare(want, have, vector["rtol"])
        bad = {name: values for name, values in report.items() if not values[2]}
        assert not bad, f"{stage}: {bad}"


def test_compare_sees_a_changed_stage_output(generator, vectors):
    vector = vectors["stage_cloud"]
    got = generator.run_stages(vector)
    omega = got["fibers"]["omega"] * (1 + 1e-9)
    assert not compare({"omega": vector["expected"]["fibers"]["omega"]}, {"omega": omega},
                       vector["rtol"])["omega"][2]  # fmt: skip
    model = got["fibers"]["model"].copy()
    model[0] = MODEL_CONSTANT
    assert not compare({"model": vector["expected"]["fibers"]["model"]}, {"model": model},
                       vector["rtol"])["model"][2]  # fmt: skip
