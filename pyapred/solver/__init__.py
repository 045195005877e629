"""Pure numerics: up-the-ramp fits, arrays in and arrays out, no I/O.

See :mod:`pyapred.solver.api` for the conventions shared by every function.
"""

from ._flags import Flag, describe_flags
from ._julia import JuliaBackendError, julia_available
from ._julia import load as load_julia
from .api import (
    ChromaticFit,
    FluxFit,
    JumpResult,
    OmegaFit,
    OmegaSamples,
    StopReason,
    extract_fluxes,
    find_jumps,
    fit_constant,
    fit_equal_weight,
    fit_omega,
    fit_omega_chromatic,
    initial_guess,
    read_intervals,
    sample_omega,
)

__all__ = [
    "ChromaticFit",
    "Flag",
    "FluxFit",
    "JuliaBackendError",
    "JumpResult",
    "OmegaFit",
    "OmegaSamples",
    "StopReason",
    "describe_flags",
    "extract_fluxes",
    "find_jumps",
    "fit_constant",
    "fit_equal_weight",
    "fit_omega",
    "fit_omega_chromatic",
    "initial_guess",
    "julia_available",
    "load_julia",
    "read_intervals",
    "sample_omega",
]
