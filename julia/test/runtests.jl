# Tests of APRampFit: every conformance vector of pyapred (tests/conformance/*.toml, generated from
# the NumPy backend) plus checks of the Julia-only parts. Run with `julia --project=julia -e
# 'using Pkg; Pkg.test()'` from the repository root.

using APRampFit
using Random
using Test
using TOML

const VECTOR_DIR = normpath(joinpath(@__DIR__, "..", "..", "tests", "conformance"))

"Nested TOML arrays, written in NumPy C order, as a Julia array with the axes reversed."
function toml_array(x)
    x isa AbstractVector || return x
    isempty(x) && return Float64[]
    first(x) isa AbstractVector || return [v for v in x]
    parts = [toml_array(v) for v in x]
    return cat(parts...; dims = ndims(first(parts)) + 1)
end

"Positional inputs of each function a vector may name (the others are keywords)."
const POSITIONAL = Dict(
    "fit_constant" => ["reads", "read_noise"],
    "extract_fluxes" => ["reads", "read_noise", "omega"],
    "fit_equal_weight" => ["reads", "read_noise"],
    "fit_omega" => ["reads", "read_noise"],
    "find_jumps" => ["reads", "read_noise"],
    "initial_guess" => ["reads", "read_noise"],
    "gauss_newton_step" => ["diffs", "valid", "s2", "dt", "flux", "omega", "ref_index",
        "fit_pixel"],
    "gibbs" => ["diffs", "valid", "s2", "dt", "fit_pixel", "omega", "flux", "kstar", "burn_in",
        "noise"],
)

"Names of the outputs of the functions that return tuples."
const TUPLE_OUTPUTS = Dict(
    "initial_guess" => ["omega", "flux", "ref_index"],
    "gauss_newton_step" => ["d_flux", "d_omega", "schur"],
    "gibbs" => ["omega_samples", "flux_samples"],
)

"Indices are 0-based in the vectors (Python) and 1-based here."
const INDEX_KEYS = ("groups", "ref_index", "kstar", "segments")

"Fields of a NamedTuple by name; a nested NamedTuple (`find_jumps`'s `flux`) adds its own."
function flat_outputs(result::NamedTuple)
    outputs = Dict{String, Any}()
    for (k, v) in pairs(result)
        v isa NamedTuple ? merge!(outputs, flat_outputs(v)) : (outputs[string(k)] = v)
    end
    return outputs
end

function run_vector(vector)
    name = vector["function"]
    inputs = Dict{String, Any}(k => toml_array(v) for (k, v) in vector["inputs"])
    for key in INDEX_KEYS
        haskey(inputs, key) && (inputs[key] = inputs[key] .+ 1)
    end
    args = [pop!(inputs, key) for key in POSITIONAL[name]]
    result = getfield(APRampFit, Symbol(name))(args...; (Symbol(k) => v for (k, v) in inputs)...)
    outputs = name in keys(TUPLE_OUTPUTS) ? Dict(zip(TUPLE_OUTPUTS[name], result)) :
              flat_outputs(result)
    haskey(outputs, "ref_index") && (outputs["ref_index"] = outputs["ref_index"] .- 1)
    return outputs
end

"""
    matches(want, have, rtol)

Same shape, NaN pattern, infinities and integers; floats within `rtol` times the output's largest
absolute expected value (the rule of `pyapred.conformance.compare`).
"""
function matches(want, have, rtol)
    want = want isa AbstractArray ? want : fill(want)
    have = have isa AbstractArray ? have : fill(have)
    size(want) == size(have) || return false
    eltype(want) <: Integer && return want == have
    w, h = Float64.(want), Float64.(have)
    isnan.(w) == isnan.(h) || return false
    infinite = isinf.(w)
    w[infinite] == h[infinite] || return false
    finite = isfinite.(w) .& isfinite.(h)
    any(finite) || return true
    scale = maximum(abs, w[finite])
    return maximum(abs.(h[finite] .- w[finite])) <= rtol * scale
end

@testset verbose = true "APRampFit" begin
    @testset "conformance vectors" begin
        paths = filter(endswith(".toml"), readdir(VECTOR_DIR; join = true))
        @test length(paths) >= 20
        for path in paths
            vector = TOML.parsefile(path)
            @testset "$(vector["name"])" begin
                outputs = run_vector(vector)
                for (key, want) in vector["expected"]
                    @test matches(toml_array(want), outputs[key], vector["rtol"])
                end
            end
        end
    end

    @testset "flags" begin
        @test describe_flags(SATURATED | TOO_FEW_DIFFS) == ["SATURATED", "TOO_FEW_DIFFS"]
        @test describe_flags(0) == String[]
    end

    @testset "jump search" begin
        # SciPy: -2 (log 2 + log_ndtr(-t)); the series and the continued fraction of log_erfc.
        @test chi2_thresholds(4.5)[1] == 20.25
        @test chi2_thresholds(4.5)[2] ≈ 23.79854511030627 rtol = 1e-13
        @test APRampFit.log_erfc(1.0) ≈ log(0.15729920705028516) rtol = 1e-14
        @test APRampFit.log_erfc(3.0) ≈ log(2.2090496998585445e-5) rtol = 1e-14
        # A noiseless ramp with one jump: found exactly, with its size; omega = 1 is the default.
        omega = [1.0, 0.8, 0.5, 0.9, 1.0, 0.7, 0.9, 1.0]
        diffs = 300.0 .* omega' .* ones(3)
        diffs[2, 4] += 500.0
        reads = hcat(zeros(3), cumsum(diffs; dims = 2))
        res = find_jumps(reads, 10.0; omega)
        @test res.n_jumps == [0, 1, 0]
        @test findall(res.jumps) == [CartesianIndex(2, 4)]
        @test res.jump_size[2, 4] ≈ 500.0 rtol = 1e-9
        @test res.flux.flux ≈ fill(300.0, 3) rtol = 1e-12
        @test res.flux.flags == [0, JUMP_DETECTED, 0]
        @test find_jumps(reads, 10.0; omega = ones(8)) == find_jumps(reads, 10.0)
        @test_throws ArgumentError find_jumps(reads, 10.0; threshold = 0.0)
    end

    @testset "noiseless ramps are fitted exactly" begin
        flux = [0.0, 3.0, 250.0, 4000.0]
        omega = [1.0, 0.8, 0.5, 0.9, 1.0, 0.7]
        reads = hcat(zeros(4), cumsum(flux .* omega'; dims = 2))  # (n_pix, n_reads)
        fit = extract_fluxes(reads, 10.0, omega)
        @test fit.flux ≈ flux atol = 1e-9
        @test all(fit.chi2 .< 1e-12)
        @test fit.n_diff == fill(6, 4)
        # Float32 data and a non-Array view give the same answer.
        view_fit = extract_fluxes(PermutedDimsArray(Float32.(reads'), (2, 1)), 10.0, omega)
        @test view_fit.flux ≈ flux rtol = 1e-5
    end

    @testset "omega is recovered and the kernels agree with the public API" begin
        rng = Xoshiro(3)
        n_pix, n_reads = 60, 12
        omega = 1.0 .- 0.4 .* rand(rng, n_reads - 1)
        flux = 500.0 .+ 1000.0 .* rand(rng, n_pix)
        expected = flux .* omega'
        counts = round.(expected .+ sqrt.(expected) .* randn(rng, n_pix, n_reads - 1))
        reads = hcat(zeros(n_pix), cumsum(counts; dims = 2)) .+ 15.0 .* randn(rng, n_pix, n_reads)
        fit = fit_omega(reads, 15.0)
        @test fit.converged
        truth = omega ./ omega[fit.ref_index]
        errors = sqrt.(max.(0.0, [fit.omega_cov[k, k] for k in 1:(n_reads - 1)]))
        free = errors .> 0
        @test all(abs.(fit.omega[free] .- truth[free]) .< 5 .* errors[free])
        guess, _, k_ref = initial_guess(reads, 15.0)
        @test guess[k_ref] == 1.0
        samples = sample_omega(reads, 15.0, 50; burn_in = 10, rng = Xoshiro(1))
        @test size(samples.omega_samples) == (n_reads - 1, 50)
        @test samples.omega_cov[fit.ref_index, :] == zeros(n_reads - 1)
    end

    @testset "offsets per (segment, difference) are recovered exactly" begin
        rng = MersenneTwister(5)
        n_pix, n_diff, n_seg = 24, 8, 3
        omega = collect(range(1.0, 0.7; length = n_diff))
        flux = 200.0 .+ 1800.0 .* rand(rng, n_pix)
        segments = [mod(p - 1, n_seg) + 1 for p in 1:n_pix]
        offsets = 30.0 .* randn(rng, n_diff, n_seg)
        diffs = flux .* omega' .+ transpose(offsets[:, segments])  # (n_pix, n_diff)
        reads = hcat(zeros(n_pix), cumsum(diffs; dims = 2))
        fit = fit_omega(reads, 10.0; segments, ref_index = 1)
        @test fit.converged
        @test fit.omega ≈ omega atol = 1e-12
        # The fit's convention: each segment's offsets sum to 0, its fluxes absorb the rest.
        shift = vec(sum(offsets; dims = 1)) ./ sum(omega)
        @test fit.offsets ≈ offsets .- omega .* shift' atol = 1e-9
        @test fit.flux ≈ flux .+ shift[segments] rtol = 1e-12
        @test_throws ArgumentError fit_omega(reads, 10.0; segments = zeros(Int, n_pix))
        @test_throws ArgumentError fit_omega(reads, 10.0; segments, mode = "reference")
    end

    @testset "sutr_omega: the sutr_wood contract" begin
        rng = Xoshiro(5)
        nx, ny, n_diffs = 40, 30, 10
        omega = 1.0 .- 0.3 .* rand(rng, n_diffs)
        rate = 200.0 .+ 50.0 .* rand(rng, nx, ny)  # e- per read
        gain = fill(1.9, nx, ny)
        read_var = fill(25.0, nx, ny)  # DN^2
        trace_y = fill(15.4, nx, 1)  # one fiber along row 15 (1-based)
        light = [abs(y - 15) <= 2 ? 20.0 : 1.0 for x in 1:nx, y in 1:ny]
        e_diffs = rate .* light .* reshape(omega, 1, 1, :) .+
                  sqrt.(rate .* light) .* randn(rng, nx, ny, n_diffs)
        dimages = Float32.(e_diffs ./ gain)  # DN, Float32 like ApogeeReduction.jl
        last_unsaturated = fill(n_diffs, nx, ny)
        last_unsaturated[1, 1] = 0  # nothing usable: zeros, as sutr_wood
        not_cosmic_ray = trues(nx, ny, n_diffs)
        not_cosmic_ray[2, 2, 3] = false
        rates, ivars, chi2s = sutr_omega(dimages, gain, read_var, last_unsaturated,
            not_cosmic_ray)
        @test size(rates) == (nx, ny) && eltype(rates) == Float64
        @test (rates[1, 1], ivars[1, 1], chi2s[1, 1]) == (0.0, 0.0, 0.0)
        reads = cumsum(cat(zeros(nx, ny), Float64.(dimages); dims = 3); dims = 3)
        const_fit = fit_constant(reads, sqrt.(read_var); gain)
        @test rates[3:end, 3:end] ≈ const_fit.flux[3:end, 3:end] rtol = 1e-10
        @test ivars[3:end, 3:end] ≈ 1 ./ const_fit.flux_var[3:end, 3:end] rtol = 1e-10
        result = sutr_omega(dimages, gain, read_var, last_unsaturated, not_cosmic_ray;
            trace_centers = trace_y, n_bright = 30)
        @test size(result.omega) == (n_diffs, 1) && result.omega_converged[1]
        truth = omega ./ omega[result.omega_ref_index[1]]
        @test maximum(abs.(result.omega[:, 1] .- truth)) < 0.05
        on_trace = result.tv_rates[5:end, 13:17] ./ (rate[5:end, 13:17] .* 20.0 ./ 1.9)
        # Fluxes come at omega's normalisation (omega[ref_index] = 1).
        @test abs(sum(on_trace) / length(on_trace) - omega[result.omega_ref_index[1]]) < 0.05
        @test result.tv_rates[:, 1:10] == result.rates[:, 1:10]
    end
end
