"""pyapred: optimal, unbiased up-the-ramp fluxes for APOGEE under variable illumination.

The numerical API (:mod:`pyapred.solver`) and the simulator are re-exported here. Importing
pyapred loads NumPy only; Numba, astropy, h5py and Julia (juliacall, ``backend="julia"``) load
when first needed.
"""

from .simulate import SimulatedRamps, omega_cloud, omega_drift, omega_uniform, simulate_ramps
from .solver import (
    ChromaticFit,
    Flag,
    FluxFit,
    JuliaBackendError,
    JumpResult,
    OmegaFit,
    OmegaSamples,
    StopReason,
    describe_flags,
    extract_fluxes,
    find_jumps,
    fit_constant,
    fit_equal_weight,
    fit_omega,
    fit_omega_chromatic,
    initial_guess,
    julia_available,
    sample_omega,
)

__version__ = "0.1.0"

__all__ = [
    "Flag",
    "FluxFit",
    "JuliaBackendError",
    "JumpResult",
    "ChromaticFit",
    "OmegaFit",
    "OmegaSamples",
    "SimulatedRamps",
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
    "omega_cloud",
    "omega_drift",
    "omega_uniform",
    "sample_omega",
    "simulate_ramps",
]
