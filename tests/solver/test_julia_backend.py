"""The juliacall bridge: lazy loading, errors without Julia, ``backend="auto"``, and (where Julia
runs) agreement with the NumPy backend on awkward inputs."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import numpy as np
import pytest

import pyapred
from pyapred.solver import _julia


@pytest.fixture
def fresh_bridge(monkeypatch):
    """The bridge as in a new process: nothing loaded, nothing failed, nothing logged."""
    monkeypatch.setattr(_julia, "_module", None)
    monkeypatch.setattr(_julia, "_failure", None)
    monkeypatch.setattr(_julia, "_auto_logged", False)


@pytest.fixture
def no_julia(fresh_bridge, monkeypatch):
    """A machine without Julia, even where one is installed."""
    monkeypatch.setattr(_julia, "_missing_reason", lambda: "no Julia runtime: (test)")


def test_import_pyapred_does_not_import_juliacall():
    code = (
        "import sys, numpy as np, pyapred\n"
        "pyapred.fit_constant(np.arange(12.0).reshape(4, 3), 1.0)\n"
        "pyapred.julia_available()\n"
        "assert 'juliacall' not in sys.modules and 'juliapkg' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_julia_backend_without_julia_fails_fast_with_guidance(no_julia):
    reads = np.cumsum(np.ones((5, 3)), axis=0)
    start = time.perf_counter()
    with pytest.raises(pyapred.JuliaBackendError) as info:
        pyapred.fit_constant(reads, 1.0, backend="julia")
    assert time.perf_counter() - start < 1.0
    message = str(info.value)
    assert isinstance(info.value, ImportError)
    assert info.value.reason.startswith("no Julia runtime")
    for hint in ("pyapred[julia]", "PYTHON_JULIACALL_EXE", "PYTHON_JULIACALL_PROJECT"):
        assert hint in message
    with pytest.raises(pyapred.JuliaBackendError):  # the failure is remembered
        pyapred.fit_omega(reads, 1.0, backend="julia")


def test_auto_backend_falls_back_to_numpy_and_logs_once(no_julia, caplog):
    rng = np.random.default_rng(0)
    sim = pyapred.simulate_ramps(rng.uniform(100, 500, 20), 10.0, n_reads=6, rng=rng)
    with caplog.at_level(logging.INFO, logger="pyapred"):
        auto = pyapred.fit_constant(sim.reads, 10.0, backend="auto")
        pyapred.fit_omega(sim.reads, 10.0, backend="auto")
    numpy = pyapred.fit_constant(sim.reads, 10.0)
    np.testing.assert_array_equal(auto.flux, numpy.flux)
    messages = [r.getMessage() for r in caplog.records if "backend='auto'" in r.getMessage()]
    assert messages == ["pyapred: backend='auto' uses NumPy (no Julia runtime: (test))"]


def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match="backend"):
        pyapred.fit_constant(np.ones((4, 2)), 1.0, backend="fortran")


def test_julia_package_dir_is_the_repository_package():
    path = _julia.julia_package_dir()
    assert (path / "Project.toml").is_file() and (path / "src" / "APRampFit.jl").is_file()


def test_inputs_are_handed_over_transposed_native_and_writeable():
    big_endian = np.arange(6.0).reshape(2, 3).astype(">f8")
    big_endian.flags.writeable = False
    handed = _julia._jl(big_endian)
    assert handed.shape == (3, 2) and handed.dtype.isnative and handed.flags.writeable
    assert handed.flags.f_contiguous
    native = np.zeros((2, 3))
    assert np.shares_memory(_julia._jl(native), native)  # no copy for ordinary arrays


@pytest.mark.julia
def test_julia_matches_numpy_on_fits_like_input(fresh_bridge):
    rng = np.random.default_rng(1)
    sim = pyapred.simulate_ramps(rng.uniform(10, 2000, (6, 7)), 12.0, n_reads=9, rng=rng,
                                 gain=1.9, cosmic_ray_rate=0.02)  # fmt: skip
    reads = sim.reads.astype(">f4")  # big-endian Float32, as astropy gives FITS data
    reads.flags.writeable = False
    kwargs = {"gain": 1.9, "saturation": 20000.0}
    for name in ("fit_constant", "fit_equal_weight"):
        want = getattr(pyapred, name)(reads, 12.0, **kwargs)
        got = getattr(pyapred, name)(reads, 12.0, backend="julia", **kwargs)
        for field in ("flux", "flux_var", "chi2"):
            np.testing.assert_allclose(getattr(got, field), getattr(want, field), rtol=1e-10)
        np.testing.assert_array_equal(got.flags, want.flags)
    want = pyapred.fit_omega(reads.reshape(9, 42), 12.0, **kwargs)
    got = pyapred.fit_omega(reads.reshape(9, 42), 12.0, backend="julia", **kwargs)
    np.testing.assert_allclose(got.omega, want.omega, rtol=1e-10)
    assert got.ref_index == want.ref_index and got.n_iter == want.n_iter
