"""
    APRampFit

Optimal up-the-ramp fluxes for APOGEE under constant and time-variable illumination: the Julia
twin of pyapred, standard library only.

- The solver, function for function with `pyapred.solver`: `fit_constant`, `extract_fluxes`,
  `fit_equal_weight`, `fit_omega`, `fit_omega_chromatic` (omega linear in wavelength),
  `initial_guess`, `sample_omega`, `find_jumps` and their `!` kernels.
- The exposure stages, with pyapred's rules and `FitOptions`: `prepare_chip` -> `fit_fibers`
  (model choice, borrowing, fallback; with `FitOptions(chromatic = true)` the chromatic model,
  `choose_chromatic`) -> `extract_chip` (a chromatic fiber's pixels with their column's omega,
  `column_omega`), or `run_chips` for all three; the chips' wavelengths and the chromatic
  coordinate: `chip_wavelength`, `coordinate_span`, `wavelength_coordinate`.
- ApogeeReduction.jl's 3D->2D entry, `sutr_omega`, where `process_3D` calls `sutr_wood`.

Conventions (`docs/julia.md`):
- Arrays are `AbstractArray` with axis order `(pixels..., read)`: a C-order NumPy cube
  `(n_reads, ny, nx)` arrives without copying as `(nx, ny, n_reads)`, ApogeeReduction.jl's order.
- Kernels ending in `!` work in electrons and write into arrays the caller allocates; the
  high-level functions take reads in DN or e- with a `gain` and return NamedTuples or structs.
- Indices (groups, reference read, fibers, rows, columns) are 1-based here (0-based in Python);
  fiber `f` is ApogeeReduction.jl's `fiberIndx`.
"""
module APRampFit

using LinearAlgebra
using Random
using Statistics

export MASKED_READ, NONFINITE_READ, SATURATED, TOO_FEW_DIFFS, NOT_IN_OMEGA_FIT, JUMP_DETECTED
export FEW_CLEAN_DIFFS, BACKGROUND, BORROWED_OMEGA, FALLBACK_CONSTANT, FPI_FIBER, NO_OMEGA_FIT
export NOT_CONVERGED, OMEGA_ELEMENT_NO_DATA, EMPTY_GROUP, LOW_SEGMENT_CONTRAST, describe_flags
export fit_constant, extract_fluxes, fit_equal_weight, fit_omega, initial_guess, sample_omega
export extract_kernel!, equal_weight_kernel!, chi2_kernel!, prepare_diffs_kernel!
export normal_equations_kernel!, initial_guess!, fit_omega_groups, gauss_newton_step, gibbs
export find_jumps, find_jumps_kernel!, jump_sizes_kernel!, search_pixel!, search_at_rate!,
    search_groups_kernel!
export fit_omega_with_jumps
export chi2_thresholds
export fit_omega_chromatic, fit_chromatic_groups, chromatic_normal_kernel!, chromatic_chi2_kernel!
export chromatic_objective_change_kernel!
export FitOptions, Traces, traces_from_params, traces_from_centers, PixelMap, FitPixels
export pixel_fiber_map, trace_brightness, select_fit_pixels
export ChipExposure, PreparedChip, FiberFits, ChipResult, prepare_chip, fit_fibers
export choose_models, choose_chromatic, column_omega, extract_chip, run_chips, product_omega
export MODEL_CONSTANT, MODEL_TIME_VARIABLE, MODEL_BORROWED, MODEL_CHROMATIC, MODEL_NAMES
export CHIP_WAVELENGTH_UM, chip_wavelength, coordinate_span, wavelength_coordinate
export sutr_omega

include("flags.jl")
include("special.jl")
include("tridiagonal.jl")
include("extract.jl")
include("omega.jl")
include("jumps.jl")
include("chromatic.jl")
include("wavelength.jl")
include("segments.jl")
include("options.jl")
include("traces.jl")
include("prepare.jl")
include("fibers.jl")
include("stages.jl")
include("apogee.jl")
include("precompile.jl")

end # module
