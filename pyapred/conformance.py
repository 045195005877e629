"""Conformance vectors: small cases that bind the NumPy and Julia backends to the same numbers.

A vector is one TOML file (``julia/test/conformance/*.toml``) with the inputs and expected outputs
of one call, generated from the NumPy backend by ``scripts/make_conformance_vectors.py``. Python
reads it with ``tomllib`` and ``julia/test/runtests.jl`` with Julia's ``TOML``. The vectors live
inside the Julia package, so that ``Pkg.test`` of an installed APRampFit finds them, and the wheel
ships them (``pyapred/julia/test/``), so that ``pyapred crossval --vectors`` runs anywhere. Layout::

    name = "constant_basic"
    description = "..."
    function = "fit_constant"      # a name of FUNCTIONS
    rtol = 1e-12
    [inputs]                       # arrays in NumPy C order, e.g. reads (n_reads, n_pix)
    [expected]                     # the result's fields, same order

Indices and labels (``groups``, ``ref_index``, ``kstar``, ``segments``) are 0-based, as in
Python. Floats are written with ``repr``, so they round-trip exactly; NaN and infinities use
TOML's ``nan`` and ``inf``.

An output matches when its shape, NaN pattern and integer values are equal and every float
differs by at most ``rtol`` times the largest absolute expected value of that output.

Stage vectors (``julia/test/stages/*.toml``, ``scripts/make_stage_vectors.py``) use the same
format with nested tables: ``[inputs]``, ``[options]`` and ``[expected.prepare]``,
``[expected.fibers]``, ``[expected.extract]``, one per exposure stage.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = [
    "FUNCTIONS",
    "NUMPY_ONLY",
    "compare",
    "default_stage_dir",
    "default_vector_dir",
    "dumps",
    "load_vector",
    "run_vector",
]

#: Functions a vector may name, with their positional inputs (the rest are keywords).
FUNCTIONS = {
    "fit_constant": ("reads", "read_noise"),
    "extract_fluxes": ("reads", "read_noise", "omega"),
    "fit_equal_weight": ("reads", "read_noise"),
    "fit_omega": ("reads", "read_noise"),
    "fit_omega_chromatic": ("reads", "read_noise", "coordinate"),
    "find_jumps": ("reads", "read_noise"),
    "initial_guess": ("reads", "read_noise"),
    "gauss_newton_step": ("diffs", "valid", "s2", "dt", "flux", "omega", "ref_index", "fit_pixel"),
    "gibbs": ("diffs", "valid", "s2", "dt", "fit_pixel", "omega", "flux", "kstar", "burn_in",
              "noise"),
}  # fmt: skip

_OUTPUT_NAMES = {
    "initial_guess": ("omega", "flux", "ref_index"),
    "gauss_newton_step": ("d_flux", "d_omega", "schur"),
    "gibbs": ("omega_samples", "flux_samples"),
}


#: Functions whose Python API has no ``backend`` argument: only NumPy runs them from Python, and
#: ``julia/test/runtests.jl`` checks their Julia twins against the same vectors. None today:
#: ``find_jumps`` took a backend with the Julia jump kernels' bridge.
NUMPY_ONLY: frozenset = frozenset()


def _julia_test_dir(name: str) -> Path | None:
    """``test/<name>`` of the APRampFit copy this package runs with: the wheel's
    ``pyapred/julia``, else the source tree's ``julia`` (as ``pyapred.solver`` finds it)."""
    package = Path(__file__).resolve().parent
    for julia in (package / "julia", package.parent / "julia"):
        path = julia / "test" / name
        if path.is_dir():
            return path
    return None


def default_vector_dir() -> Path | None:
    """The solver vectors, ``julia/test/conformance``, if this installation has them."""
    return _julia_test_dir("conformance")


def default_stage_dir() -> Path | None:
    """The exposure-stage vectors, ``julia/test/stages``, if this installation has them."""
    return _julia_test_dir("stages")


def load_vector(path: str | os.PathLike) -> dict:
    """Read one vector; arrays come back as NumPy arrays."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    with open(path, "rb") as file:
        vector = tomllib.load(file)
    for section in ("inputs", "expected"):
        vector[section] = _arrays(vector[section])
    return vector


def _arrays(table: dict) -> dict:
    """Lists as NumPy arrays, recursively through nested tables."""
    return {key: _arrays(value) if isinstance(value, dict) else _array(value)
            for key, value in table.items()}  # fmt: skip


def _array(value):
    return np.asarray(value) if isinstance(value, list) else value


def run_vector(vector: Mapping, backend: str = "numpy") -> dict[str, np.ndarray]:
    """Run the vector's function on its inputs with ``backend``; returns the outputs by name.

    A nested result (``JumpResult.flux``, a ``FluxFit``) contributes its own fields.
    """
    from .solver import api

    name = vector["function"]
    inputs = dict(vector["inputs"])
    args = [inputs.pop(key) for key in FUNCTIONS[name]]
    if name in NUMPY_ONLY:
        if backend != "numpy":
            raise ValueError(f"{name} has no backend argument: it runs on NumPy only")
        result = getattr(api, name)(*args, **inputs)
    elif name in ("gauss_newton_step", "gibbs"):
        result = getattr(api.backend_kernels(backend), name)(*args, **inputs)
    else:
        result = getattr(api, name)(*args, **inputs, backend=backend)
    if name in _OUTPUT_NAMES:
        return dict(zip(_OUTPUT_NAMES[name], map(np.asarray, result), strict=True))
    outputs = {}
    if isinstance(result, api.JumpResult):  # the vectors hold its dense views
        outputs.update(diff_mask=result.diff_mask, jumps=result.jumps, jump_size=result.jump_size)
    for key, value in result.__dict__.items():
        if dataclasses.is_dataclass(value):
            outputs.update((k, np.asarray(v)) for k, v in value.__dict__.items() if v is not None)
        elif value is not None:
            outputs[key] = np.asarray(value)
    return outputs


def compare(expected: Mapping, got: Mapping, rtol: float) -> dict[str, tuple[float, float, bool]]:
    """Per output: ``(max absolute difference, max relative difference, within tolerance)``.

    The relative difference is taken against the output's largest absolute expected value.
    """
    report = {}
    for key, want in expected.items():
        want = np.asarray(want)
        have = np.asarray(got[key])
        if have.shape != want.shape:
            report[key] = (math.inf, math.inf, False)
            continue
        if want.dtype.kind in "biu":
            same = np.array_equal(have, want)
            report[key] = (0.0 if same else math.inf, 0.0 if same else math.inf, same)
            continue
        want = want.astype(np.float64)
        have = have.astype(np.float64)
        same_nan = np.array_equal(np.isnan(want), np.isnan(have))
        finite = np.isfinite(want) & np.isfinite(have)
        # Infinities where expected, and only there (an overflow against a finite expected
        # value passed: neither comparison looked at it).
        same_inf = np.array_equal(np.isinf(want), np.isinf(have)) and np.array_equal(
            want[np.isinf(want)], have[np.isinf(want)]
        )
        diff = np.abs(have[finite] - want[finite])
        abs_diff = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(want[finite]).max()) if diff.size else 0.0
        rel_diff = abs_diff / scale if scale > 0 else (0.0 if abs_diff == 0 else math.inf)
        if not (same_nan and same_inf):
            abs_diff = rel_diff = math.inf
        report[key] = (abs_diff, rel_diff, abs_diff <= rtol * scale and same_nan and same_inf)
    return report


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def _toml_value(value, digits: int | None = None) -> str:
    """TOML text of a scalar or an array; floats exact (``repr``) unless ``digits`` significant
    digits are asked for. float32 arrays are written in float32's shortest exact form."""
    if isinstance(value, np.ndarray) and value.dtype == np.float32:
        return _float32_array(value)
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item, digits) for item in value) + "]"
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        value = float(value)
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if digits is None:
            return repr(value)
        text = f"{value:.{digits}g}"
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _float32_array(array: np.ndarray) -> str:
    if array.ndim == 0:
        return _float32_text(array)
    return "[" + ", ".join(_float32_array(row) for row in array) + "]"


def _float32_text(value: np.float32) -> str:
    """The shortest text that reads back as this float32 (NaN and infinities as TOML's)."""
    if not np.isfinite(value):
        return _toml_value(float(value))
    text = str(np.float32(value))
    return text if any(c in text for c in ".en") else text + ".0"


def dumps(vector: Mapping, *, digits: Mapping | None = None) -> str:
    """The TOML text of a vector: top-level scalars, then its tables in order (``inputs``,
    ``options`` if present, ``expected``), nested tables as ``[expected.stage]``.

    ``digits`` maps a table name (``"expected"``) to the significant digits of its floats;
    by default every float is written exactly.
    """
    digits = digits or {}
    lines = [f"{key} = {_toml_value(value)}" for key, value in vector.items()
             if not isinstance(value, Mapping)]  # fmt: skip
    for section in [key for key in ("inputs", "options", "expected") if key in vector]:
        lines += _table_lines(section, vector[section], digits.get(section))
    return "\n".join(lines) + "\n"


def _table_lines(name: str, table: Mapping, digits: int | None) -> list[str]:
    lines = ["", f"[{name}]"]
    lines += [f"{key} = {_toml_value(value, digits)}" for key, value in table.items()
              if not isinstance(value, Mapping)]  # fmt: skip
    for key, value in table.items():
        if isinstance(value, Mapping):
            lines += _table_lines(f"{name}.{key}", value, digits)
    return lines
