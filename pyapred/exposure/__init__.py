"""The exposure stages: file -> exposure -> per-fiber omega -> extraction -> product.

One stage contract: each stage takes arrays and :class:`FitOptions` and returns a frozen result;
no stage does file I/O or reaches back up. One driver, :func:`run_exposure`, runs them for every
entry point (``pyapred fit``, ``pyapred night``, ``pyapred demo`` and notebooks).

=====================  =======================  ==============================================
stage                  function                 result
=====================  =======================  ==============================================
inputs                 :func:`load_chip`        :class:`ChipExposure` (reads, calibration)
1. prepare a chip      :func:`prepare_chip`     :class:`PreparedChip` (jumps, maps, fit pixels)
2. fit the fibers      :func:`fit_fibers`       :class:`FiberFits` (omega, model per fiber)
3. extract a chip      :func:`extract_chip`     :class:`ChipResult` (every pixel's flux)
4. product parts       :func:`product_parts`    :class:`ProductParts` (fiber groups, metadata)
=====================  =======================  ==============================================

Units follow the solver: reads in DN with ``gain`` in e-/DN, fluxes in DN per read interval.
Extraction uses omega normalised to mean 1, so every flux is the exposure-averaged flux whatever
the model (the same normalisation as the constant model and ApogeeReduction.jl's ``dimage``).
Arrays are ``(n_reads, ny, nx)`` C order; fiber indices are 0-based internally
(``300 - fiberId``). ``docs/architecture.md`` is the map.
"""

from .driver import ChipSource, resolve_backend, run_exposure, write_exposure
from .extract import ChipResult, extract_chip
from .fibers import (
    MODEL_BORROWED,
    MODEL_CHROMATIC,
    MODEL_CONSTANT,
    MODEL_NAMES,
    MODEL_TIME_VARIABLE,
    FiberFits,
    choose_chromatic,
    choose_models,
    fit_fibers,
)
from .inputs import (
    DEFAULT_SATURATION_DN,
    TIMING_CARDS,
    ChipExposure,
    check_calibration_options,
    identify_exposure,
    load_chip,
    match_inputs,
)
from .options import (
    FitOptions,
    add_option_arguments,
    config_source,
    options_from_arguments,
    read_config,
)
from .prepare import PreparedChip, correct_1f, prepare_chip, release_fit_reads
from .product import ProductParts, product_parts
from .result import ExposureResult
from .truth import truth_metrics

__all__ = [
    "DEFAULT_SATURATION_DN",
    "MODEL_BORROWED",
    "MODEL_CHROMATIC",
    "MODEL_CONSTANT",
    "MODEL_NAMES",
    "MODEL_TIME_VARIABLE",
    "TIMING_CARDS",
    "ChipExposure",
    "ChipResult",
    "ChipSource",
    "ExposureResult",
    "FiberFits",
    "FitOptions",
    "PreparedChip",
    "ProductParts",
    "add_option_arguments",
    "check_calibration_options",
    "choose_chromatic",
    "choose_models",
    "correct_1f",
    "extract_chip",
    "fit_fibers",
    "identify_exposure",
    "load_chip",
    "match_inputs",
    "options_from_arguments",
    "config_source",
    "prepare_chip",
    "product_parts",
    "read_config",
    "release_fit_reads",
    "resolve_backend",
    "run_exposure",
    "truth_metrics",
    "write_exposure",
]
