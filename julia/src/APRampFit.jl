"""
    APRampFit

Optimal up-the-ramp fluxes for APOGEE under constant and time-variable illumination: the Julia
twin of `pyapred.solver` (the NumPy/Numba backend), function for function.

Conventions (`docs/julia.md`):
- Arrays are `AbstractArray` with axis order `(pixels..., read)`: a C-order NumPy cube
  `(n_reads, ny, nx)` arrives without copying as `(nx, ny, n_reads)`, ApogeeReduction.jl's order.
- Kernels ending in `!` work in electrons and write into arrays the caller allocates; the
  high-level functions (`fit_constant`, `extract_fluxes`, `fit_equal_weight`, `fit_omega`,
  `initial_guess`, `sample_omega`, `find_jumps`) take reads in DN or e- with a `gain` and return
  NamedTuples.
- Group and reference indices are 1-based here (0-based in Python).
"""
module APRampFit

using LinearAlgebra
using Random
using Statistics

export MASKED_READ, NONFINITE_READ, SATURATED, TOO_FEW_DIFFS, NOT_IN_OMEGA_FIT, JUMP_DETECTED
export FEW_CLEAN_DIFFS, BACKGROUND, BORROWED_OMEGA, FALLBACK_CONSTANT, FPI_FIBER
export NOT_CONVERGED, OMEGA_ELEMENT_NO_DATA, EMPTY_GROUP, describe_flags
export fit_constant, extract_fluxes, fit_equal_weight, fit_omega, initial_guess, sample_omega
export extract_kernel!, equal_weight_kernel!, chi2_kernel!, prepare_diffs_kernel!
export normal_equations_kernel!, initial_guess!, fit_omega_groups, gauss_newton_step, gibbs
export sutr_omega
export find_jumps, find_jumps_kernel!, search_pixel!, search_groups_kernel!, fit_omega_with_jumps
export chi2_thresholds

include("flags.jl")
include("tridiagonal.jl")
include("extract.jl")
include("omega.jl")
include("jumps.jl")
include("apogee.jl")

end # module
