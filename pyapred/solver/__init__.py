"""Pure numerics: up-the-ramp fits, arrays in and arrays out, no I/O.

See :mod:`pyapred.solver.api` for the conventions shared by every function.
"""

from ._flags import Flag, describe_flags
from .api import (
    FluxFit,
    OmegaFit,
    OmegaSamples,
    extract_fluxes,
    fit_constant,
    fit_equal_weight,
    fit_omega,
    initial_guess,
    read_intervals,
    sample_omega,
)

__all__ = [
    "Flag",
    "FluxFit",
    "OmegaFit",
    "OmegaSamples",
    "describe_flags",
    "extract_fluxes",
    "fit_constant",
    "fit_equal_weight",
    "fit_omega",
    "initial_guess",
    "read_intervals",
    "sample_omega",
]
