"""The Julia backend: the APRampFit package (``julia/``) called through juliacall.

This is the only module that knows about Julia, and it imports juliacall lazily, on the first
call that needs it: ``import pyapred`` never starts Julia. Its kernel functions have the names,
arguments and results of :mod:`pyapred.solver._numpy` and, for the jump search, of
:mod:`pyapred.solver._jumps` (``find_jumps_kernel``, ``fit_omega_with_jumps``), so
:mod:`pyapred.solver.api` runs either backend unchanged (``backend="numpy" | "julia" | "auto"``).

Arrays cross without copying: a C-order NumPy array ``a`` is handed over as ``a.T``, which Julia
sees as a column-major array with the axes reversed (``(n_reads, ny, nx)`` becomes
``(nx, ny, n_reads)``). Raw ``uint16`` reads and read-only arrays cross as they are (PythonCall's
``PyArray`` wraps both; the kernels only read their inputs and convert each read to Float64);
only big-endian (FITS) inputs are converted first, because ``PyArray`` cannot byte-swap. Outputs
are preallocated NumPy arrays that the Julia ``!`` kernels fill in place. Long kernels run without
holding the GIL. Indices are 0-based here and 1-based in Julia.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
import threading
import warnings
from pathlib import Path

import numpy as np

__all__ = [
    "JULIA_FUNCTIONS",
    "JuliaBackendError",
    "auto_kernels",
    "julia_available",
    "julia_package_dir",
    "kernels",
    "load",
]

log = logging.getLogger("pyapred")

#: Every APRampFit function this module calls (the tests check each is defined in julia/src).
JULIA_FUNCTIONS = (
    "extract_kernel!",
    "equal_weight_kernel!",
    "chi2_kernel!",
    "prepare_diffs_kernel!",
    "initial_guess!",
    "fit_omega_groups",
    "gauss_newton_step",
    "gibbs",
    "find_jumps_kernel!",
    "jump_sizes_kernel!",
    "fit_omega_with_jumps",
    "fit_chromatic_groups",
)

GUIDANCE = (
    "To use backend='julia': pip install 'pyapred[julia]' (juliacall). Where the internet is "
    "reachable, juliacall installs Julia and PythonCall on first use (allow it here with "
    "PYAPRED_ALLOW_JULIA_DOWNLOAD=1). On clusters and offline machines, point juliacall at an "
    "existing Julia and a prepared environment, both together: PYTHON_JULIACALL_EXE="
    "/path/to/julia and PYTHON_JULIACALL_PROJECT=/abs/path/to/env (an environment holding "
    "PythonCall at juliacall's version); see docs/julia.md."
)


class JuliaBackendError(ImportError):
    """Julia, juliacall or APRampFit could not be loaded; the message says how to fix it.

    Attributes
    ----------
    reason : str
        Why, in one short line (the message adds :data:`GUIDANCE`).
    """

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f"{reason}. {GUIDANCE}")


def julia_package_dir() -> Path:
    """Directory of the APRampFit package: inside the wheel, or the repository's ``julia/``.

    Raises
    ------
    JuliaBackendError
        If neither holds ``Project.toml`` and ``src/APRampFit.jl``.
    """
    package = Path(__file__).resolve().parent.parent  # pyapred/
    here = package
    for candidate in (package / "julia", package.parent / "julia"):
        if (candidate / "Project.toml").is_file() and (candidate / "src/APRampFit.jl").is_file():
            return candidate
    raise JuliaBackendError(f"the APRampFit Julia package is not installed next to {here}")


def _juliacall_option(name: str) -> str | None:
    """A juliacall setting where juliacall reads it: ``-X juliacall-NAME=...``, else the
    environment variable ``PYTHON_JULIACALL_NAME``; None when unset or empty."""
    value = sys._xoptions.get(f"juliacall-{name}")
    if isinstance(value, str) and value:
        return value
    return os.environ.get(f"PYTHON_JULIACALL_{name.upper()}") or None


def _juliapkg_project() -> Path:
    """The environment juliapkg resolves juliacall's packages into (juliapkg's own rule,
    ``juliapkg/state.py``, without importing it): ``PYTHON_JULIAPKG_PROJECT``, else
    ``julia_env`` in the virtual or conda environment, else ``pyjuliapkg`` in the first depot."""
    project = sys._xoptions.get("juliapkg-project") or os.environ.get("PYTHON_JULIAPKG_PROJECT")
    if isinstance(project, str) and project:
        return Path(project)
    prefix = sys.prefix if sys.prefix != sys.base_prefix else os.environ.get("CONDA_PREFIX")
    if prefix:
        return Path(prefix).absolute() / "julia_env"
    depots = os.environ.get("JULIA_DEPOT_PATH", "").split(os.pathsep)
    depot = Path(depots[0]) if depots[0] else Path.home() / ".julia"
    return depot.absolute() / "environments" / "pyjuliapkg"


def _holds_pythoncall(project: Path) -> bool:
    """Whether a Julia environment's manifest lists PythonCall (juliapkg then installs nothing)."""
    for manifest in project.glob("Manifest*.toml"):
        try:
            text = manifest.read_text(errors="replace")
        except OSError:
            continue
        if "[[deps.PythonCall]]" in text or "[[PythonCall]]" in text:
            return True
    return False


def _missing_reason() -> str | None:
    """Why Julia cannot start here, or None when it may; starts nothing, reads no network.

    juliacall 0.9 starts a Julia in one of two ways. Given ``PYTHON_JULIACALL_EXE`` (or
    ``PYTHON_JULIACALL_BINDIR``) and ``PYTHON_JULIACALL_PROJECT`` together, it uses them as they
    are; given only one of them it refuses to start. Given none, juliapkg picks a Julia and
    installs PythonCall into its environment, from the network unless that environment already
    holds it: a machine without network access waits for a download that cannot succeed.
    """
    if importlib.util.find_spec("juliacall") is None:
        return "no Julia runtime: juliacall is not installed"
    exe, project, bindir = (_juliacall_option(n) for n in ("exe", "project", "bindir"))
    if exe or project or bindir:
        if not project:
            named = "PYTHON_JULIACALL_EXE" if exe else "PYTHON_JULIACALL_BINDIR"
            return (f"no Julia runtime: {named} is set without PYTHON_JULIACALL_PROJECT "
                    "(juliacall starts only with both)")  # fmt: skip
        if not (exe or bindir):
            return ("no Julia runtime: PYTHON_JULIACALL_PROJECT is set without "
                    "PYTHON_JULIACALL_EXE (juliacall starts only with both)")  # fmt: skip
        if not Path(project).exists():
            return f"no Julia runtime: PYTHON_JULIACALL_PROJECT={project} does not exist"
        executable = "julia.exe" if os.name == "nt" else "julia"
        julia = shutil.which(exe) if exe else shutil.which(str(Path(bindir) / executable))
        if julia is None:
            named = f"PYTHON_JULIACALL_EXE={exe}" if exe else f"PYTHON_JULIACALL_BINDIR={bindir}"
            return f"no Julia runtime: {named} is not a julia executable"
        return None
    if os.environ.get("PYAPRED_ALLOW_JULIA_DOWNLOAD") == "1":
        return None  # juliapkg may download Julia and PythonCall
    name = "julia.exe" if os.name == "nt" else "julia"
    chosen = sys._xoptions.get("juliapkg-exe") or os.environ.get("PYTHON_JULIAPKG_EXE")
    env = _juliapkg_project()
    installed = env / "pyjuliapkg" / "install" / "bin" / name  # a Julia juliapkg downloaded
    julia = shutil.which(chosen) if isinstance(chosen, str) and chosen else shutil.which(name)
    if julia is None and not installed.is_file():
        return "no Julia runtime: no julia executable found and downloading one is not enabled"
    if not _holds_pythoncall(env):
        return (f"no Julia runtime: juliapkg's environment {env} does not hold PythonCall yet, so "
                "juliacall would install it from the network (allow that with "
                "PYAPRED_ALLOW_JULIA_DOWNLOAD=1, or set PYTHON_JULIACALL_EXE and "
                "PYTHON_JULIACALL_PROJECT to a prepared environment)")  # fmt: skip
    return None


def julia_available() -> bool:
    """Whether the Julia backend can be tried (juliacall and a Julia); starts nothing."""
    return _module is not None or (_failure is None and _missing_reason() is None)


_lock = threading.Lock()
_module = None  # the APRampFit module, once loaded
_failure: str | None = None  # why loading failed, once it has
_auto_logged = False


def load():
    """Start Julia (once) and return the APRampFit module as a juliacall object.

    Raises
    ------
    JuliaBackendError
        With the reason and :data:`GUIDANCE`; later calls raise it again without retrying.
    """
    global _module, _failure
    with _lock:
        if _module is not None:
            return _module
        if _failure is None:
            _failure = _missing_reason()
        if _failure is None:
            try:
                _module = _start_julia()
                return _module
            except Exception as exc:  # juliacall raises plain Exception or URLError
                _failure = f"Julia could not be started: {type(exc).__name__}: {exc}"
        raise JuliaBackendError(_failure)


def _start_julia():
    if "juliacall" in sys.modules:
        warnings.warn(
            "juliacall was imported before pyapred configured it; PYTHON_JULIACALL_THREADS and "
            "PYTHON_JULIACALL_HANDLE_SIGNALS may not take effect",
            stacklevel=3,
        )
    # Threaded Julia inside Python needs Julia's signal handling (PythonCall #219).
    os.environ.setdefault("PYTHON_JULIACALL_HANDLE_SIGNALS", "yes")
    os.environ.setdefault("PYTHON_JULIACALL_THREADS", "auto")
    import juliacall

    jl = juliacall.newmodule("PyapredBackend")
    jl.seval("path -> pushfirst!(LOAD_PATH, path)")(str(julia_package_dir()))
    jl.seval("using APRampFit")
    module = jl.APRampFit
    from .. import __version__

    version = str(jl.seval("string(pkgversion(APRampFit))"))
    if version != __version__:
        warnings.warn(f"APRampFit {version} differs from pyapred {__version__}", stacklevel=3)
    return module


def kernels():
    """This module as the kernel namespace of ``backend="julia"``, after loading Julia."""
    load()
    return sys.modules[__name__]


def auto_kernels():
    """The kernels of ``backend="auto"``: Julia where it loads, else NumPy; logs the choice once."""
    global _auto_logged
    try:
        chosen = kernels()
        message = "pyapred: backend='auto' uses Julia (APRampFit)"
    except JuliaBackendError as exc:
        from . import _numpy as chosen

        message = f"pyapred: backend='auto' uses NumPy ({exc.reason})"
    if not _auto_logged:
        _auto_logged = True
        log.info(message)
    return chosen


# --------------------------------------------------------------------------------------------
# Kernels: the signatures of pyapred.solver._numpy
# --------------------------------------------------------------------------------------------
def _fn(name: str, nogil: bool = True):
    """The Julia function ``name`` (``!`` is spelled ``_b`` in Python), called without the GIL."""
    function = getattr(load(), name.replace("!", "_b"))
    return function._jl_call_nogil if nogil else function


def _jl(array) -> np.ndarray:
    """An input array as Julia should see it, axes reversed: without a copy, except for a
    byte-swapped (big-endian, FITS) array, which PythonCall cannot wrap. Read-only arrays and
    integer reads (raw uint16) cross as they are; the kernels only read their inputs."""
    array = np.asarray(array)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="), copy=True)
    return array.T


#: Reads cross like any input (raw uint16 too: the kernels convert each read to Float64).
_jl_reads = _jl


def _jl_calibration(reads, *values) -> list:
    """Per-pixel calibrations (read noise, gain, saturation) as the Julia kernels take them, one
    value per pixel of ``reads`` (N, n_pix): the NumPy kernels also take ``(1,)``, one value for
    every pixel (``api._ravel_pixels``), which is expanded here."""
    n_pix = reads.shape[1]
    out = []
    for value in values:
        value = np.asarray(value, dtype=np.float64)
        out.append(_jl(np.full(n_pix, value[0]) if value.shape == (1,) else value))
    return out


def _from_jl(value, stack: bool = False) -> np.ndarray:
    """A Julia result as a C-order NumPy copy; ``stack`` for ``(K, K, G)`` -> ``(G, K, K)``."""
    array = np.asarray(value)
    return np.array(array.transpose(2, 0, 1) if stack else array.T)


def extract_kernel(reads, bad, use_mask, omega, groups, dt, read_noise, gain, saturation,
                   n_pass, flux, flux_var, chi2, n_diff, flags):  # fmt: skip
    """See :func:`pyapred.solver._numpy.extract_kernel`."""
    noise, gain_jl, saturation_jl = _jl_calibration(reads, read_noise, gain, saturation)
    _fn("extract_kernel!")(
        flux, flux_var, chi2, n_diff, flags, _jl_reads(reads), _jl(bad), bool(use_mask), _jl(omega),
        np.asarray(groups, dtype=np.int64) + 1, _jl(dt),
        noise, gain_jl, saturation_jl, int(n_pass),
    )  # fmt: skip


def equal_weight_kernel(reads, bad, use_mask, read_noise, gain, saturation, flux, flux_var, chi2,
                        n_diff, flags):  # fmt: skip
    """See :func:`pyapred.solver._numpy.equal_weight_kernel`."""
    noise, gain_jl, saturation_jl = _jl_calibration(reads, read_noise, gain, saturation)
    _fn("equal_weight_kernel!")(
        flux, flux_var, chi2, n_diff, flags, _jl_reads(reads), _jl(bad), bool(use_mask),
        noise, gain_jl, saturation_jl,
    )  # fmt: skip


def chi2_kernel(diffs, valid, s2, x, flux, fit_pixel, out):
    """See :func:`pyapred.solver._numpy.chi2_kernel`."""
    _fn("chi2_kernel!")(out.T, _jl(diffs), _jl(valid), _jl(s2), _jl(x), _jl(flux), _jl(fit_pixel))


def prepare_diffs_kernel(reads, bad, use_mask, gain, saturation, diffs, valid, flags):
    """See :func:`pyapred.solver._numpy.prepare_diffs_kernel`."""
    _fn("prepare_diffs_kernel!")(
        diffs.T, valid.T, flags.T, _jl_reads(reads), _jl(bad), bool(use_mask), _jl(gain),
        _jl(saturation),
    )  # fmt: skip


def _ref_index_jl(ref_index):
    return None if ref_index is None else np.asarray(ref_index, dtype=np.int64) + 1


def initial_guess(diffs, valid, s2, dt, fit_pixel, *, reference=False, ref_index=None):
    """See :func:`pyapred.solver._numpy.initial_guess`."""
    G, P, K = diffs.shape
    omega = np.empty((G, K))
    flux = np.empty((G, P))
    kstar = np.empty(G, dtype=np.int64)
    _fn("initial_guess!")(
        omega.T, flux.T, kstar, _jl(diffs), _jl(valid), _jl(s2), _jl(dt), _jl(fit_pixel),
        reference=bool(reference), ref_index=_ref_index_jl(ref_index),
    )  # fmt: skip
    return omega, flux, kstar - 1


def fit_omega_groups(diffs, valid, s2, dt, fit_pixel, *, reference, rtol, max_iter, ref_index,
                     segments=None):  # fmt: skip
    """See :func:`pyapred.solver._numpy.fit_omega_groups`."""
    res = _fn("fit_omega_groups")(
        _jl(diffs), _jl(valid), _jl(s2), _jl(dt), _jl(fit_pixel), reference=bool(reference),
        rtol=float(rtol), max_iter=int(max_iter), ref_index=_ref_index_jl(ref_index),
        segments=None if segments is None else _jl(np.asarray(segments, dtype=np.int64) + 1),
    )  # fmt: skip
    return _omega_result(res, offsets=segments is not None)


def _omega_result(res, offsets: bool = False) -> dict:
    """``fit_omega_groups``' NamedTuple as the NumPy kernel's dict: group axis first, 0-based."""
    out = {name: _from_jl(getattr(res, name)) for name in
           ("omega", "flux", "flux_var", "chi2", "n_iter", "converged", "has_data",
            "step_size", "damping")}  # fmt: skip
    out["stop_reason"] = _from_jl(res.stop_reason).astype(np.int64)  # the same codes, 0-based
    out["omega_cov"] = _from_jl(res.omega_cov, stack=True)
    out["ref_index"] = _from_jl(res.ref_index).astype(np.int64) - 1
    if offsets:
        out["offsets"] = np.array(np.asarray(res.offsets).transpose(2, 1, 0))  # (K, S, G)
    return out


def fit_chromatic_groups(diffs, valid, s2, dt, fit_pixel, coord, omega, flux, ref_index, *,
                         rtol, max_iter):  # fmt: skip
    """See :func:`pyapred.solver._chromatic.fit_chromatic_groups` (``ref_index`` 0-based here).

    Returns its dict: group axis first, ``cov`` ``(G, 2K, 2K)``, ``free`` ``(G, 2K)``.
    """
    res = _fn("fit_chromatic_groups")(
        _jl(diffs), _jl(valid), _jl(s2), _jl(dt), _jl(fit_pixel),
        _jl(np.ascontiguousarray(coord, dtype=np.float64)),
        _jl(np.ascontiguousarray(omega, dtype=np.float64)),
        _jl(np.ascontiguousarray(flux, dtype=np.float64)), _ref_index_jl(ref_index),
        rtol=float(rtol), max_iter=int(max_iter),
    )  # fmt: skip
    out = {name: _from_jl(getattr(res, name)) for name in
           ("omega", "slope", "flux", "flux_var", "chi2", "converged")}  # fmt: skip
    out["free"] = _from_jl(res.free).astype(bool)
    out["cov"] = _from_jl(res.cov, stack=True)
    out["n_iter"] = _from_jl(res.n_iter).astype(np.int64)
    out["stop_reason"] = _from_jl(res.stop_reason).astype(np.int64)  # the same codes, 0-based
    return out


def gauss_newton_step(diffs, valid, s2, dt, flux, omega, ref_index, fit_pixel):
    """See :func:`pyapred.solver._numpy.gauss_newton_step`."""
    d_flux, d_omega, sch = _fn("gauss_newton_step")(
        _jl(diffs), _jl(valid), _jl(s2), _jl(dt), _jl(flux), _jl(omega),
        _ref_index_jl(ref_index), _jl(fit_pixel),
    )  # fmt: skip
    return _from_jl(d_flux), _from_jl(d_omega), _from_jl(sch, stack=True)


def gibbs(diffs, valid, s2, dt, fit_pixel, omega, flux, kstar, burn_in, noise):
    """See :func:`pyapred.solver._numpy.gibbs`."""
    omega_s, flux_s = _fn("gibbs")(
        _jl(diffs), _jl(valid), _jl(s2), _jl(dt), _jl(fit_pixel), _jl(omega), _jl(flux),
        int(kstar) + 1, int(burn_in), _jl(noise),
    )  # fmt: skip
    return _from_jl(omega_s), _from_jl(flux_s)


# --------------------------------------------------------------------------------------------
# Jump search: the signatures of pyapred.solver._jumps
# --------------------------------------------------------------------------------------------
def find_jumps_kernel(reads, bad, use_mask, omega, groups, dt, read_noise, gain, saturation,
                      thr_one, thr_two, two_adjacent, max_jumps, n_pass, diff_bits, jumps,
                      jump_size, n_jumps, flux, flux_var, chi2, n_diff, flags):  # fmt: skip
    """See :func:`pyapred.solver._jumps.find_jumps_kernel`.

    Julia's ``find_jumps_kernel!`` takes its nine outputs first; the ``(K, n_pix)`` ones arrive
    as ``(n_pix, K)``, and its first is the dense ``usable`` (packed here into ``diff_bits``).
    ``jumps`` and ``jump_size`` of ``(K, 0)`` (not wanted) cross as ``(0, K)``, which the Julia
    kernel leaves unwritten. The thresholds are the ones Python computed, so both backends
    search with the same numbers.
    """
    usable = np.empty((diff_bits.shape[0], np.shape(reads)[1]), dtype=np.bool_)
    noise, gain_jl, saturation_jl = _jl_calibration(reads, read_noise, gain, saturation)
    _fn("find_jumps_kernel!")(
        usable.T, jumps.T, jump_size.T, n_jumps, flux, flux_var, chi2, n_diff, flags,
        _jl_reads(reads), _jl(bad), bool(use_mask), _jl(omega),
        np.asarray(groups, dtype=np.int64) + 1, _jl(dt),
        noise, gain_jl, saturation_jl, float(thr_one), float(thr_two),
        bool(two_adjacent), int(max_jumps), int(n_pass),
    )  # fmt: skip
    diff_bits[...] = np.packbits(~usable, axis=1)


def jump_sizes_kernel(reads, bad, use_mask, omega, groups, dt, read_noise, gain, saturation,
                      pixels, diff_bits, flux, jumps, jump_size):  # fmt: skip
    """See :func:`pyapred.solver._jumps.jump_sizes_kernel`.

    Julia's ``jump_sizes_kernel!`` takes its two outputs first, as ``(m, K)``; ``pixels`` and
    ``groups`` cross 1-based, and the mask as the dense ``usable``, ``(n_pix, K)``.
    """
    n_pix = np.shape(reads)[1]
    usable = ~np.unpackbits(diff_bits, axis=1, count=n_pix).view(np.bool_)
    noise, gain_jl, saturation_jl = _jl_calibration(reads, read_noise, gain, saturation)
    _fn("jump_sizes_kernel!")(
        jumps.T, jump_size.T, _jl_reads(reads), _jl(bad), bool(use_mask), _jl(omega),
        np.asarray(groups, dtype=np.int64) + 1, _jl(dt),
        noise, gain_jl, saturation_jl,
        np.asarray(pixels, dtype=np.int64) + 1, _jl(usable), _jl(flux),
    )  # fmt: skip


def fit_omega_with_jumps(diffs, valid, s2, dt, fit_pixel, *, threshold, max_rounds, reference,
                         rtol, max_iter, ref_index, segments=None):  # fmt: skip
    """See :func:`pyapred.solver._jumps.fit_omega_with_jumps` (``segments`` 0-based here).

    Returns ``(res, used (G, P, K), n_jumps (G, P))``, ``res`` as :func:`fit_omega_groups`'.
    Julia derives the chi2 thresholds from ``threshold`` itself (``chi2_thresholds``, its
    ``log_erfc``); the search it runs uses the one-jump threshold ``threshold**2`` only.
    """
    res, used, n_jumps = _fn("fit_omega_with_jumps")(
        _jl(diffs), _jl(valid), _jl(s2), _jl(dt), _jl(fit_pixel), threshold=float(threshold),
        max_rounds=int(max_rounds), reference=bool(reference), rtol=float(rtol),
        max_iter=int(max_iter), ref_index=_ref_index_jl(ref_index),
        segments=None if segments is None else _jl(np.asarray(segments, dtype=np.int64) + 1),
    )  # fmt: skip
    return (
        _omega_result(res, offsets=segments is not None),
        _from_jl(used),
        _from_jl(n_jumps).astype(np.int64),
    )
