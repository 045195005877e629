"""Deprecated: the exposure pipeline is now :mod:`pyapred.exposure` (kept for one release).

Every name this module had is still here, taken from :mod:`pyapred.exposure`;
``fit_exposure``, ``fit_files``, ``fit_to_product`` and ``write_result`` call
:func:`pyapred.exposure.run_exposure` and :func:`pyapred.exposure.write_exposure`.
"""

from __future__ import annotations

import dataclasses
import warnings

from .exposure import (
    MODEL_BORROWED,
    MODEL_CONSTANT,
    MODEL_NAMES,
    MODEL_TIME_VARIABLE,
    ChipExposure,
    ChipResult,
    ExposureResult,
    FiberFits,
    FitOptions,
    PreparedChip,
    choose_models,
    correct_1f,
    load_chip,
    match_inputs,
    prepare_chip,
    run_exposure,
    truth_metrics,
    write_exposure,
)

warnings.warn(
    "pyapred.pipeline is deprecated: use pyapred.exposure (run_exposure, FitOptions, ...)",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "MODEL_BORROWED",
    "MODEL_CONSTANT",
    "MODEL_NAMES",
    "MODEL_TIME_VARIABLE",
    "ChipExposure",
    "ChipResult",
    "ExposureResult",
    "FiberFits",
    "FitOptions",
    "PreparedChip",
    "choose_models",
    "correct_1f",
    "fit_exposure",
    "fit_files",
    "fit_options_json",
    "fit_to_product",
    "load_chip",
    "match_inputs",
    "prepare_chip",
    "truth_metrics",
    "write_result",
]


def fit_exposure(chips, traces, options=None, *, progress=False, on_chip=None) -> ExposureResult:
    """Deprecated: :func:`pyapred.exposure.run_exposure` on chips in memory."""
    return run_exposure(chips, traces, options, progress=progress, on_chip=on_chip)


def fit_files(inputs, trace_paths, options=None, *, gain=None, read_noise=None, saturation=None,
              progress=False, on_chip=None) -> ExposureResult:  # fmt: skip
    """Deprecated: :func:`pyapred.exposure.run_exposure` on files."""
    options = _with_calibration(options, gain, read_noise, saturation)
    return run_exposure(inputs, trace_paths, options, progress=progress, on_chip=on_chip)


def fit_to_product(inputs, trace_paths, path, options=None, *, overwrite=False, backend=None,
                   **fit_kwargs):  # fmt: skip
    """Deprecated: :func:`pyapred.exposure.run_exposure` with ``product=path``."""
    calibration = {k: fit_kwargs.pop(k, None) for k in ("gain", "read_noise", "saturation")}
    options = _with_calibration(options, **calibration)
    if backend is not None:  # the backend was once an argument; it is now an option
        options = dataclasses.replace(options, backend=backend)
    result = run_exposure(
        inputs, trace_paths, options, product=path, overwrite=overwrite, **fit_kwargs
    )
    from pathlib import Path

    return result, Path(result.meta["product"])


def write_result(result: ExposureResult, path, *, overwrite: bool = False, backend=None):
    """Deprecated: :func:`pyapred.exposure.write_exposure` (``backend`` is ignored: writing runs
    no solver)."""
    return write_exposure(result, path, overwrite=overwrite)


def fit_options_json(options: FitOptions) -> str:
    """Deprecated: :meth:`pyapred.exposure.FitOptions.to_record`."""
    return options.to_record()


def _with_calibration(options, gain=None, read_noise=None, saturation=None) -> FitOptions:
    given = {"gain": gain, "read_noise": read_noise, "saturation": saturation}
    given = {k: v for k, v in given.items() if v is not None}
    return dataclasses.replace(options or FitOptions(), **given)
