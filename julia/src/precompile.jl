# Compile the entry points for the argument types ApogeeReduction.jl and pyapred pass while the
# package is precompiled, so that the first call in a pipeline worker does not pay for it. Standard
# library only: `precompile` statements (no PrecompileTools); each returns false, harmlessly, if
# a signature does not match.

function _precompile_()
    ccall(:jl_generating_output, Cint, ()) == 1 || return nothing
    for T in (Float32, Float64)
        cube, image = Array{T, 3}, Matrix{T}
        # ApogeeReduction.jl's 3D->2D call, with and without traces.
        precompile(sutr_omega,
            (cube, Matrix{Float64}, Matrix{Float64}, Matrix{Int}, Array{Bool, 3}))
        precompile(Core.kwcall, (NamedTuple{(:traces,), Tuple{Traces}}, typeof(sutr_omega), cube,
            Matrix{Float64}, Matrix{Float64}, Matrix{Int}, Array{Bool, 3}))
        precompile(Core.kwcall, (NamedTuple{(:compat,), Tuple{Bool}}, typeof(sutr_omega), cube,
            Matrix{Float64}, Matrix{Float64}, Matrix{Int}, Array{Bool, 3}))
        precompile(sutr_region!, (Matrix{Float64}, Matrix{Float64}, Matrix{Float64}, Matrix{Int},
            cube, Matrix{Float64}, Matrix{Float64}, Matrix{Int}, Array{Bool, 3}, Int, Bool))
        # The stages on in-memory chips.
        precompile(prepare_chip, (ChipExposure{cube, Float64, Float64, Float64}, Traces,
            FitOptions))
        precompile(prepare_chip, (ChipExposure{Array{Float64, 3}, Matrix{Float64},
            Matrix{Float64}, Nothing}, Traces, FitOptions))
        # The solver kernels pyapred's bridge calls (reads as NumPy hands them over).
        precompile(extract_kernel!, (Vector{Float64}, Vector{Float64}, Vector{Float64},
            Vector{Int}, Vector{Int}, image, Matrix{Bool}, Bool, Matrix{Float64}, Vector{Int},
            Vector{Float64}, Vector{Float64}, Vector{Float64}, Vector{Float64}, Int))
        precompile(fit_constant, (image, Float64))
        precompile(fit_omega, (image, Float64))
        precompile(fit_omega, (cube, Matrix{Float64}))
        precompile(fit_omega_chromatic, (image, Float64, Vector{Float64}))
        precompile(fit_omega_chromatic, (cube, Matrix{Float64}, Matrix{Float64}))
    end
    # ApogeeReduction.jl's call as docs/julia.md writes it: the differences a view of its
    # Float64 cube (`diffify_datacube!`), the keywords `traces`, `options` and `chip`.
    host_diffs = typeof(view(zeros(1, 1, 2), :, :, 2:2))
    host_keywords = NamedTuple{(:traces, :options, :chip), Tuple{Traces, FitOptions, String}}
    for mask in (Array{Bool, 3}, BitArray{3})
        precompile(Core.kwcall, (host_keywords, typeof(sutr_omega), host_diffs, Matrix{Float64},
            Matrix{Float64}, Matrix{Int}, mask))
    end
    precompile(fit_fibers, (Vector{PreparedChip}, FitOptions))
    precompile(extract_chip, (ChipExposure{Array{Float64, 3}, Matrix{Float64}, Matrix{Float64},
        Nothing}, PreparedChip, FiberFits, FitOptions))
    precompile(prepare_diffs_kernel!, (Array{Float64, 3}, Array{Bool, 3}, Matrix{Int},
        Array{Float64, 3}, Array{Bool, 3}, Bool, Matrix{Float64}, Matrix{Float64}))
    precompile(chi2_sf, (Float64, Int))
    precompile(ndtr, (Float64,))
    return nothing
end

_precompile_()
