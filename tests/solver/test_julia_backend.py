"""The juliacall bridge: lazy loading, errors without Julia, ``backend="auto"``, and (where Julia
runs) agreement with the NumPy backend on awkward inputs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

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


def test_inputs_are_handed_over_transposed_and_copied_only_when_byte_swapped():
    big_endian = np.arange(6.0).reshape(2, 3).astype(">f8")
    big_endian.flags.writeable = False
    handed = _julia._jl(big_endian)
    assert handed.shape == (3, 2) and handed.dtype.isnative and handed.flags.f_contiguous
    native = np.zeros((2, 3))
    assert np.shares_memory(_julia._jl(native), native)  # no copy for ordinary arrays
    # Read-only arrays and raw uint16 reads cross as they are: PythonCall wraps both.
    frozen = np.zeros((4, 3))
    frozen.flags.writeable = False
    raw = np.arange(12, dtype=np.uint16).reshape(4, 3)
    for array in (frozen, raw):
        handed = _julia._jl_reads(array)
        assert np.shares_memory(handed, array) and handed.dtype == array.dtype


def test_one_value_calibration_crosses_to_julia_as_one_value_per_pixel():
    """The NumPy kernels take a calibration that is one number as ``(1,)``; the Julia kernels
    want one value per pixel, which the bridge gives them."""
    reads = np.zeros((4, 5))
    noise, gain = _julia._jl_calibration(reads, np.array([12.0]), np.arange(5.0))
    assert np.array_equal(noise, np.full(5, 12.0)) and np.array_equal(gain, np.arange(5.0))
    (single,) = _julia._jl_calibration(np.zeros((4, 1)), np.array([3.0]))
    assert np.array_equal(single, [3.0])


def _fake_juliacall(tmp_path):
    """A directory with an importable-looking ``juliacall`` (never imported: the check only looks
    for it) and a ``bin`` with a ``julia`` that does nothing."""
    package = tmp_path / "site" / "juliacall"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('the check must not import me')\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    julia = bin_dir / "julia"
    julia.write_text("#!/bin/sh\nexit 0\n")
    julia.chmod(0o755)
    return tmp_path / "site", bin_dir


def _available_in_subprocess(tmp_path, site, path, **variables) -> tuple[bool, str]:
    """``julia_available()`` and the reason in a fresh Python with only these juliacall/juliapkg
    variables set, ``PATH`` as given and the fake juliacall importable."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON_JULIACALL_", "PYTHON_JULIAPKG_", "PYAPRED_", "JULIA_"))
    }
    env.update(PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]), PATH=str(path),
               PYTHON_JULIAPKG_PROJECT=str(tmp_path / "juliapkg-env"), **variables)  # fmt: skip
    code = ("from pyapred.solver._julia import julia_available, _missing_reason\n"
            "print(julia_available()); print(_missing_reason())\n")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                         text=True).stdout.splitlines()  # fmt: skip
    return out[0] == "True", out[1]


ROOT = Path(__file__).resolve().parents[2]


def test_half_configured_juliacall_is_not_available(tmp_path):
    """juliacall refuses to start with only one of EXE (or BINDIR) and PROJECT, and tries the
    network when juliapkg's environment lacks PythonCall: Julia is not available there."""
    site, bin_dir = _fake_juliacall(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    project = tmp_path / "prepared-env"
    project.mkdir()
    exe, bindir = "PYTHON_JULIACALL_EXE", "PYTHON_JULIACALL_BINDIR"
    proj, nowhere = "PYTHON_JULIACALL_PROJECT", str(tmp_path / "nowhere")
    julia = str(bin_dir / "julia")
    # name: (variables, PATH, available, words of the reason)
    cases = {
        "EXE only": ({exe: julia}, empty, False, f"without {proj}"),
        "BINDIR only": ({bindir: str(bin_dir)}, empty, False, f"{bindir} is set"),
        "PROJECT only": ({proj: str(project)}, bin_dir, False, f"without {exe}"),
        "PROJECT missing": ({exe: julia, proj: nowhere}, empty, False, "does not exist"),
        "EXE not julia": ({exe: nowhere, proj: str(project)}, empty, False, "not a julia"),
        "julia on PATH, no network": ({}, bin_dir, False, "does not hold PythonCall"),
        "nothing": ({}, empty, False, "no julia executable found"),
        "EXE and PROJECT": ({exe: julia, proj: str(project)}, empty, True, "None"),
        "BINDIR and PROJECT": ({bindir: str(bin_dir), proj: str(project)}, empty, True, "None"),
        "download allowed": ({"PYAPRED_ALLOW_JULIA_DOWNLOAD": "1"}, empty, True, "None"),
    }
    for name, (variables, path, want, reason) in cases.items():
        got, said = _available_in_subprocess(tmp_path, site, path, **variables)
        assert (got, reason in said) == (want, True), (name, said)
    # juliapkg's environment holding PythonCall (resolved once, online): no network needed.
    env = tmp_path / "juliapkg-env"
    env.mkdir()
    (env / "Manifest.toml").write_text('[[deps.PythonCall]]\nuuid = "6099a3de"\n')
    assert _available_in_subprocess(tmp_path, site, bin_dir) == (True, "None")


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


# --------------------------------------------------------------------------------------------
# The jump search: find_jumps and fit_omega(jump_search=True)
# --------------------------------------------------------------------------------------------
def _jump_case(seed: int = 5):
    """A small chip with cosmic rays, a masked read, a cloud in omega and per-pixel gain."""
    rng = np.random.default_rng(seed)
    omega = pyapred.omega_cloud(11, 0.4, 5, 2)
    sim = pyapred.simulate_ramps(rng.uniform(50, 1500, (4, 15)), 12.0, omega=omega, rng=rng,
                                 gain=1.7, cosmic_ray_rate=0.03,
                                 cosmic_ray_charge=(500, 4000))  # fmt: skip
    mask = np.zeros(sim.reads.shape, dtype=bool)
    mask[6, 1, 2] = True
    return sim, omega, mask


def _assert_jumps_equal(got, want, rtol):
    for field in ("diff_mask", "jumps", "n_jumps"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
    np.testing.assert_allclose(got.jump_size, want.jump_size, rtol=rtol, atol=1e-9)
    for field in ("flux", "flux_var", "chi2"):
        np.testing.assert_allclose(getattr(got.flux, field), getattr(want.flux, field), rtol=rtol)
    for field in ("n_diff", "flags"):
        np.testing.assert_array_equal(getattr(got.flux, field), getattr(want.flux, field))


def _assert_omega_fits_equal(got, want, rtol):
    for field in ("omega", "omega_cov", "flux", "flux_var", "chi2", "inflation"):
        np.testing.assert_allclose(getattr(got, field), getattr(want, field), rtol=rtol,
                                   atol=1e-14, err_msg=field)  # fmt: skip
    for field in ("ref_index", "n_diff", "n_iter", "converged", "flags", "group_flags"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
    assert (got.offsets is None) == (want.offsets is None)
    if want.offsets is not None:
        np.testing.assert_allclose(got.offsets, want.offsets, rtol=rtol, atol=1e-14)


def _jump_calls(backend, sim, omega, mask):
    """find_jumps under the constant and the time-variable model, and the jump-searching fit."""
    groups = np.repeat(np.arange(2), 30).reshape(4, 15)
    omega2d = np.stack([omega, np.ones_like(omega)])
    common = {"gain": 1.7, "mask": mask, "backend": backend}
    constant = pyapred.find_jumps(sim.reads, 12.0 / 1.7, two_adjacent=True, **common)
    variable = pyapred.find_jumps(sim.reads, 12.0 / 1.7, omega=omega2d, groups=groups,
                                  saturation=30000.0, max_jumps=2, **common)  # fmt: skip
    cube = sim.reads.reshape(12, 4, 15)
    fit = pyapred.fit_omega(cube, 12.0 / 1.7, jump_search=True, ref_index=[3, 3, 7, 7],
                            **common)  # fmt: skip
    single = pyapred.fit_omega(cube[:, 0], 12.0 / 1.7, jump_search=True, gain=1.7,
                               mask=mask.reshape(12, 4, 15)[:, 0], backend=backend)  # fmt: skip
    offsets = pyapred.fit_omega(cube, 12.0 / 1.7, jump_search=True, ref_index=[3, 3, 7, 7],
                                segments=np.arange(15) % 3, **common)  # fmt: skip
    return constant, variable, fit, single, offsets


def test_jump_search_backend_julia_without_julia_fails_with_guidance(no_julia):
    reads = np.cumsum(np.ones((6, 3)), axis=0)
    with pytest.raises(pyapred.JuliaBackendError) as info:
        pyapred.find_jumps(reads, 1.0, backend="julia")
    assert info.value.reason.startswith("no Julia runtime")
    for hint in ("pyapred[julia]", "PYTHON_JULIACALL_EXE", "PYTHON_JULIACALL_PROJECT"):
        assert hint in str(info.value)
    with pytest.raises(pyapred.JuliaBackendError, match="PYTHON_JULIACALL_EXE"):
        pyapred.fit_omega(reads, 1.0, jump_search=True, backend="julia")
    with pytest.raises(ValueError, match="backend"):
        pyapred.find_jumps(reads, 1.0, backend="fortran")


def test_auto_backend_runs_the_jump_search_on_numpy_without_julia(no_julia, caplog):
    from pyapred.solver import _jumps, api

    sim, omega, mask = _jump_case()
    with caplog.at_level(logging.INFO, logger="pyapred"):
        auto = _jump_calls("auto", sim, omega, mask)
        assert api._jump_backend("auto") is _jumps
    numpy = _jump_calls("numpy", sim, omega, mask)
    assert api._jump_backend("numpy") is _jumps
    assert auto[0].jumps.any() and auto[2].flags.any()  # the case has jumps to find
    for got, want in zip(auto[:2], numpy[:2], strict=True):
        _assert_jumps_equal(got, want, rtol=0)
    for got, want in zip(auto[2:], numpy[2:], strict=True):
        _assert_omega_fits_equal(got, want, rtol=0)
    messages = [r.getMessage() for r in caplog.records if "backend='auto'" in r.getMessage()]
    assert messages == ["pyapred: backend='auto' uses NumPy (no Julia runtime: (test))"]


class _JuliaFunction:
    """A function as juliacall hands it out: the bridge calls ``_jl_call_nogil``."""

    def __init__(self, function):
        self._jl_call_nogil = function


def _emulated_aprampfit():
    """APRampFit's jump entry points (and ``prepare_diffs_kernel!``) emulated on the NumPy kernels.

    Each takes its arguments in the order and layout of its Julia signature (``julia/src``):
    axes reversed, 1-based ``groups`` and ``ref_index``, outputs first for ``!`` kernels, and
    returns what the Julia function returns. Run through the bridge, they must reproduce the
    NumPy backend exactly; a swapped argument, a missing transpose or index shift would not.
    """
    from types import SimpleNamespace

    from pyapred.solver import _jumps, _numpy

    def numpy_types(groups, *maps):
        """``groups`` and the maps as the NumPy backend passes them to the jump kernels: 0-based
        int32 groups and read-only maps (other types would compile each kernel once more, a
        minute and a half)."""
        views = [m.view() for m in maps]
        for view in views:
            view.flags.writeable = False
        return (groups - 1).astype(np.int32), *views

    def prepare_diffs_kernel(diffs, valid, flags, reads, bad, use_mask, gain, saturation):
        P, G, N = reads.shape
        assert diffs.shape == valid.shape == (N - 1, P, G)
        assert flags.shape == gain.shape == saturation.shape == (P, G)
        _numpy.prepare_diffs_kernel(reads.T, bad.T, use_mask, gain.T, saturation.T, diffs.T,
                                    valid.T, flags.T)  # fmt: skip

    def find_jumps_kernel(usable, jumps, jump_size, n_jumps, flux, flux_var, chi2, n_diff, flags,
                          reads, bad, use_mask, omega, groups, dt, read_noise, gain, saturation,
                          thr_one, thr_two, two_adjacent, max_jumps, n_pass):  # fmt: skip
        n_pix, N = reads.shape
        assert usable.shape == (n_pix, N - 1)
        assert jumps.shape == jump_size.shape and jumps.shape in ((n_pix, N - 1), (0, N - 1))
        assert omega.shape[0] == dt.shape[0] == N - 1
        assert groups.min() >= 1 and groups.max() <= omega.shape[1]
        assert all(a.shape == (n_pix,) for a in (n_jumps, flux, flux_var, chi2, n_diff, flags,
                                                 read_noise, gain, saturation, groups))  # fmt: skip
        assert isinstance(two_adjacent, bool) and isinstance(max_jumps, int)
        diff_bits = np.empty((N - 1, (n_pix + 7) // 8), dtype=np.uint8)  # NumPy packs the mask
        groups0, *maps = numpy_types(groups, read_noise, gain, saturation)
        _jumps.find_jumps_kernel(
            reads.T, bad.T, use_mask, omega.T, groups0, dt, *maps, thr_one, thr_two,
            two_adjacent, max_jumps, n_pass, diff_bits, jumps.T, jump_size.T,
            n_jumps, flux, flux_var, chi2, n_diff, flags,
        )  # fmt: skip
        usable[...] = ~np.unpackbits(diff_bits, axis=1, count=n_pix).view(bool).T

    def jump_sizes_kernel(jumps, jump_size, reads, bad, use_mask, omega, groups, dt, read_noise,
                          gain, saturation, pixels, usable, flux):  # fmt: skip
        n_pix, N = reads.shape
        assert jumps.shape == jump_size.shape == (pixels.shape[0], N - 1)
        assert usable.shape == (n_pix, N - 1) and flux.shape == (n_pix,)
        assert pixels.size == 0 or (pixels.min() >= 1 and pixels.max() <= n_pix)
        assert groups.min() >= 1 and groups.max() <= omega.shape[1]
        groups0, *maps = numpy_types(groups, read_noise, gain, saturation)
        _jumps.jump_sizes_kernel(
            reads.T, bad.T, use_mask, omega.T, groups0, dt, *maps, pixels - 1,
            np.packbits(~usable.T, axis=1), flux, jumps.T, jump_size.T,
        )  # fmt: skip

    def fit_omega_with_jumps(diffs, valid, s2, dt, fit_pixel, *, threshold, max_rounds,
                             **fit_options):  # fmt: skip
        K, P, G = diffs.shape
        assert valid.shape == (K, P, G) and s2.shape == fit_pixel.shape == (P, G)
        ref_index = fit_options["ref_index"]
        assert ref_index is None or (ref_index.shape == (G,) and ref_index.min() >= 1)
        fit_options["ref_index"] = None if ref_index is None else ref_index - 1
        segments = fit_options.get("segments")
        if segments is not None:  # 1-based (P, G) from Julia
            assert segments.shape == (P, G) and segments.min() >= 1
            fit_options["segments"] = np.ascontiguousarray(segments.T - 1)
        res, used, n_jumps = _jumps.fit_omega_with_jumps(
            diffs.T, valid.T, s2.T, dt, fit_pixel.T, threshold=threshold,
            max_rounds=max_rounds, **fit_options,
        )  # fmt: skip
        named = {key: value.T for key, value in res.items()}  # as fit_omega_groups returns
        named["omega_cov"] = res["omega_cov"].transpose(1, 2, 0)  # (K, K, G)
        named["ref_index"] = res["ref_index"] + 1
        return SimpleNamespace(**named), used.T, n_jumps.T

    functions = {"prepare_diffs_kernel!": prepare_diffs_kernel,
                 "find_jumps_kernel!": find_jumps_kernel,
                 "jump_sizes_kernel!": jump_sizes_kernel,
                 "fit_omega_with_jumps": fit_omega_with_jumps}  # fmt: skip
    return SimpleNamespace(**{name.replace("!", "_b"): _JuliaFunction(function)
                              for name, function in functions.items()})  # fmt: skip


def test_jump_bridge_hands_julia_its_layout(fresh_bridge, monkeypatch):
    monkeypatch.setattr(_julia, "_module", _emulated_aprampfit())
    sim, omega, mask = _jump_case()
    got = _jump_calls("julia", sim, omega, mask)
    want = _jump_calls("numpy", sim, omega, mask)
    for have, expected in zip(got[:2], want[:2], strict=True):
        _assert_jumps_equal(have, expected, rtol=0)
    for have, expected in zip(got[2:], want[2:], strict=True):
        _assert_omega_fits_equal(have, expected, rtol=0)


@pytest.mark.julia
def test_julia_jump_search_matches_numpy(fresh_bridge):
    sim, omega, mask = _jump_case()
    got = _jump_calls("julia", sim, omega, mask)
    want = _jump_calls("numpy", sim, omega, mask)
    assert want[0].jumps.any() and want[2].flags.any()
    for have, expected in zip(got[:2], want[:2], strict=True):
        _assert_jumps_equal(have, expected, rtol=1e-10)
    for have, expected in zip(got[2:], want[2:], strict=True):
        _assert_omega_fits_equal(have, expected, rtol=1e-10)


@pytest.mark.julia
def test_julia_find_jumps_on_fits_like_raw_reads(fresh_bridge):
    rng = np.random.default_rng(8)
    sim = pyapred.simulate_ramps(np.full((5, 6), 300.0), 10.0, n_reads=10, rng=rng,
                                 cosmic_ray_rate=0.03, cosmic_ray_charge=(1000, 3000))  # fmt: skip
    raw = np.clip(np.round(sim.reads + 1000), 0, 65535).astype(">u2")  # raw FITS cube
    raw.flags.writeable = False
    want = pyapred.find_jumps(raw, 10.0, gain=1.0)
    got = pyapred.find_jumps(raw, 10.0, gain=1.0, backend="julia")
    assert want.jumps.any()
    _assert_jumps_equal(got, want, rtol=1e-10)
