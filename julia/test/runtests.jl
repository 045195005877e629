# Tests of APRampFit: every solver conformance vector (test/conformance/*.toml) and every
# exposure-stage vector (test/stages/*.toml) of pyapred, generated from its NumPy code by
# scripts/make_conformance_vectors.py and scripts/make_stage_vectors.py, plus checks of the
# Julia-only parts. The vectors live in this package, so `Pkg.test("APRampFit")` runs them from an
# installed copy as from a checkout: `julia --project=julia -e 'using Pkg; Pkg.test()'`.

using APRampFit
using LinearAlgebra
using Random
using Statistics
using Test
using TOML

const VECTOR_DIR = joinpath(@__DIR__, "conformance")
const STAGE_DIR = joinpath(@__DIR__, "stages")

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
    "fit_omega_chromatic" => ["reads", "read_noise", "coordinate"],
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
    # Infinities where expected, and only there (an overflow against a finite expected value
    # passed: neither comparison looked at it).
    infinite = isinf.(w)
    infinite == isinf.(h) || return false
    w[infinite] == h[infinite] || return false
    finite = isfinite.(w) .& isfinite.(h)
    any(finite) || return true
    scale = maximum(abs, w[finite])
    return maximum(abs.(h[finite] .- w[finite])) <= rtol * scale
end

# ---------------------------------------------------------------------------------------------
# Exposure-stage vectors
# ---------------------------------------------------------------------------------------------
"A per-chip calibration value of a stage vector: a number, or chip `c` of `(n_chips, ny, nx)`."
chip_value(value, c) = value isa AbstractVector ? Float64.(toml_array(value)[:, :, c]) :
                       Float64(value)

"""
The chips, traces and options of a stage vector, in Julia's layout (y-centers 1-based). Chips are
named `"R"`, `"G"`, `"B"` in order, as the generator names them (the chromatic model takes each
chip's wavelengths from its name); every option the vector has is passed to `FitOptions` (older
vectors lack `chromatic` and `chromatic_p_value`: the defaults).
"""
function stage_inputs(vector)
    inputs = vector["inputs"]
    reads = toml_array(inputs["reads"])  # (nx, ny, n_reads, n_chips)
    y_center, sigma = toml_array(inputs["y_center"]), toml_array(inputs["sigma"])
    excluded = Vector{Bool}(toml_array(inputs["excluded"]))
    saturation = get(inputs, "saturation", nothing)
    chips = [ChipExposure(UInt16.(reads[:, :, :, c]), chip_value(inputs["read_noise"], c);
                 gain = chip_value(inputs["gain"], c),
                 saturation = saturation === nothing ? nothing : chip_value(saturation, c),
                 name = "RGB"[c:c]) for c in axes(reads, 4)]
    # The vectors' 0-based centers are multiples of 2^-10: adding 1 is exact.
    traces = [Traces(y_center[:, :, c] .+ 1.0, sigma[:, :, c], excluded) for c in axes(reads, 4)]
    options = FitOptions(; (Symbol(k) => v for (k, v) in vector["options"])...)
    return chips, traces, options
end

"Every stage's outputs under the vectors' names, in their layout (axes reversed, 0-based)."
function stage_outputs(chips, stages)
    per_chip(f) = cat([f(i) for i in eachindex(chips)]...; dims = 3)
    function fit_pixel_fiber(p::PreparedChip)
        image = fill(-1, size(p.pixel_map.fiber))
        fp = p.fit_pixels
        for f in axes(fp.valid, 2), j in axes(fp.valid, 1)
            fp.valid[j, f] && (image[fp.x[j, f], fp.y[j, f]] = f - 1)
        end
        return image
    end
    function jump_reads(i)
        bits = zeros(Int, size(chips[i].reads)[1:2])
        for j in stages.prepared[i].jumps
            bits[j[1], j[2]] |= 1 << (j[3] - 1)
        end
        return bits
    end
    prepared = stages.prepared
    prepare = Dict{String, Any}(
        "omega_rough" => per_chip(i -> prepared[i].omega_rough),
        "rate" => per_chip(i -> prepared[i].rate),
        "saturated" => per_chip(i -> Int.(prepared[i].saturated)),
        "jump_reads" => per_chip(jump_reads),
        "pixel_fiber" => per_chip(i -> Int.(prepared[i].pixel_map.fiber) .- 1),
        "purity" => per_chip(i -> prepared[i].pixel_map.purity),
        "fit_pixel_fiber" => per_chip(i -> fit_pixel_fiber(prepared[i])),
        "n_fit_pixels" => hcat([APRampFit.fit_pixel_count(p.fit_pixels) for p in prepared]...),
    )
    fits = stages.fibers[1]
    fibers = Dict{String, Any}("ref_index" => fits.ref_index - 1)
    for name in (:omega_fit, :omega_cov, :omega, :model, :delta_chi2, :p_value, :amplitude,
        :chi2_dof_constant, :chi2_dof_variable, :n_fit_pixels, :flags, :bright,
        :borrowed_omega, :borrowed_cov)
        fibers[string(name)] = getfield(fits, name)
    end
    fits.fit === nothing || (fibers["fit_flags"] = fits.fit.flags)
    rms = APRampFit.offset_rms(fits)
    rms === nothing || (fibers["offset_rms"] = rms)
    if fits.chromatic !== nothing  # the chromatic fit of the time-variable fibers
        chromatic = fits.chromatic
        fibers["coordinate_span"] = collect(fits.coordinate_span)
        fibers["chromatic_omega"] = chromatic.omega  # (K, n_fibers)
        fibers["chromatic_gamma"] = chromatic.gamma
        fibers["chromatic_cov"] = chromatic.cov  # (2K, 2K, n_fibers)
        fibers["chromatic_delta_chi2"] = chromatic.delta_chi2
        fibers["chromatic_p_value"] = chromatic.p_value
        fibers["chromatic_amplitude"] = chromatic.amplitude
    end
    extract = Dict{String, Any}("fiber" => per_chip(i -> stages.results[i].fiber .- 1))
    for name in (:flux, :flux_var, :chi2, :n_diff, :flags)
        extract[string(name)] = per_chip(i -> getfield(stages.results[i], name))
    end
    return Dict("prepare" => prepare, "fibers" => fibers, "extract" => extract)
end

"""
Tolerance of a stage output. The first pass's rate, the rough omega and the purity are Float32 in
both languages; the rough omega's mean and the pixel map's normal CDF (`ndtr` here, SciPy's and
libm's `erf` in pyapred) agree to rounding, not bit for bit, which can move the last Float32 bit
(6e-8): 1e-6. The decisions they feed (fit pixels, pixel owners, jumps) are integers and compared
exactly; the generator keeps every candidate pixel at least 1e-6 from the S/N and purity
thresholds. Every other float is held to the vector's own rtol (1e-10).
"""
stage_rtol(name, rtol) = name in ("rate", "purity", "omega_rough") ? 1e-6 : rtol

"`(nx, ny)` last usable difference per pixel, as ApogeeReduction.jl's after `diffify_datacube!`."
function last_unsaturated_of(chip::ChipExposure)
    nx, ny, N = size(chip.reads)
    last = fill(N - 1, nx, ny)
    for y in 1:ny, x in 1:nx
        sat = APRampFit.pixel_value(chip.saturation, x, y)
        j = findfirst(v -> v >= sat, view(chip.reads, x, y, :))
        j === nothing || (last[x, y] = j - 2)
    end
    return last
end

# ---------------------------------------------------------------------------------------------
# sutr_wood's recipe, written out with dense matrices: what compat = true must reproduce
# ---------------------------------------------------------------------------------------------
"""
    wood_reference(d, gain, read_var, good, n_repeat)

One pixel by `sutr_wood`'s recipe (ApogeeReduction.jl, src/ar3D.jl), in DN: the first rate is the
median of every difference; each pass builds `C = tridiag(-v, r/g + 2v, -v)` at the previous
rate `r` (0 if negative), restricted to the `good` differences, and takes `ivar = 1'C^-1 1`,
`rate = 1'C^-1 d / ivar`, `chi2 = (d - rate)' C^-1 (d - rate)`; no good difference gives zeros.
"""
function wood_reference(d, gain, read_var, good, n_repeat)
    use = findall(good)
    isempty(use) && return 0.0, 0.0, 0.0
    K = length(d)
    rate = median(d)
    ivar = 0.0
    chi2 = 0.0
    for _ in 1:n_repeat
        guess = rate > 0 ? rate / gain : 0.0
        C = Matrix(SymTridiagonal(fill(guess + 2read_var, K), fill(-read_var, K - 1)))[use, use]
        unit = ones(length(use))
        ivar = dot(unit, C \ unit)
        rate = dot(unit, C \ d[use]) / ivar
        resid = d[use] .- rate
        chi2 = dot(resid, C \ resid)
    end
    return rate, ivar, chi2
end

@testset verbose = true "APRampFit" begin
    @testset "solver conformance vectors" begin
        paths = filter(endswith(".toml"), readdir(VECTOR_DIR; join = true))
        @test length(paths) >= 30
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

    @testset "exposure-stage vectors" begin
        paths = filter(endswith(".toml"), readdir(STAGE_DIR; join = true))
        @test length(paths) >= 10
        for path in paths
            vector = TOML.parsefile(path)
            @testset "$(vector["name"])" begin
                chips, traces, options = stage_inputs(vector)
                stages = run_chips(chips, traces, options)
                outputs = stage_outputs(chips, stages)
                for (stage, expected) in vector["expected"], (key, want) in expected
                    have = outputs[stage][key]
                    ok = matches(toml_array(want), have, stage_rtol(key, vector["rtol"]))
                    ok || @info "stage output differs" vector["name"] stage key
                    @test ok
                end
                # The 3D->2D entry on the same exposure, as ApogeeReduction.jl would call it
                # (differences and last_unsaturated), gives the same images where pyapred fits.
                if length(chips) == 1
                    chip = chips[1]
                    dimages = Float64.(diff(Int.(chip.reads); dims = 3))
                    nx, ny, K = size(dimages)
                    gain = fill(0.0, nx, ny)
                    gain .= chip.gain
                    read_var = fill(0.0, nx, ny)
                    read_var .= chip.read_noise .^ 2
                    result = sutr_omega(dimages, gain, read_var, last_unsaturated_of(chip),
                        trues(nx, ny, K); traces = traces[1], options, chip = chip.name)
                    expected = vector["expected"]["extract"]
                    n_diff = toml_array(expected["n_diff"])[:, :, 1]
                    flux = toml_array(expected["flux"])[:, :, 1]
                    # Pixels with a flux (n_diff >= 2 with omega 0 on all of them has none, and
                    # keeps the constant fit's values).
                    fitted = (n_diff .>= 2) .& isfinite.(flux)
                    chi2 = toml_array(expected["chi2"])[:, :, 1]
                    @test matches(flux[fitted], result.dimage[fitted], vector["rtol"])
                    @test matches(chi2[fitted], result.chisqimage[fitted], vector["rtol"])
                    want_ivar = 1 ./ toml_array(expected["flux_var"])[:, :, 1]
                    @test matches(want_ivar[fitted], result.ivarimage[fitted], vector["rtol"])
                    @test result.model == toml_array(vector["expected"]["fibers"]["model"])
                end
            end
        end
    end

    @testset "stage options and traces" begin
        options = FitOptions()
        @test (options.model, options.p_value, options.min_fit_pixels, options.min_snr) ==
              ("auto", 1e-3, 20, 30.0)
        @test options.max_fit_pixels === nothing && options.jump_search && !options.joint_chips
        # The record an ar2D file keeps names every setting and reads back as the same options.
        custom = FitOptions(p_value = 0.01, correct_1f = "nuisance", max_fit_pixels = 40)
        @test occursin("p_value = 0.01, ", repr(custom))
        @test eval(Meta.parse(repr(custom))) == custom
        @test_throws ArgumentError APRampFit.check_options(FitOptions(model = "cloudy"))
        @test_throws ArgumentError APRampFit.check_options(FitOptions(max_iter = 0))
        @test !options.chromatic && options.chromatic_p_value == 1e-4
        @test_throws ArgumentError APRampFit.check_options(FitOptions(chromatic = true,
            correct_1f = "nuisance"))
        @test_throws ArgumentError APRampFit.check_options(FitOptions(chromatic_p_value = 1.0))
        @test_throws ArgumentError APRampFit.check_options(FitOptions(chromatic_p_value = 0.0))
        # Several wrong: the first named as pyapred's FitOptions names it (its field order).
        @test_throws "min_fit_pixels:" APRampFit.check_options(FitOptions(min_snr = -1.0,
            min_fit_pixels = -1))
        @test_throws "max_iter:" APRampFit.check_options(FitOptions(jump_threshold = -1.0,
            max_iter = 0))
        @test_throws "correct_1f: expected no nuisance term" APRampFit.check_options(
            FitOptions(chromatic = true, correct_1f = "nuisance"))
        # The chips' wavelengths and the chromatic coordinate, as pyapred.chromatic's.
        @test MODEL_NAMES[MODEL_CHROMATIC + 1] == "time_variable_chromatic"
        @test chip_wavelength("R", 3) ≈ [1.6965, 1.672, 1.6475] rtol = 1e-15
        @test chip_wavelength("G", 5)[[1, 5]] == [1.6440, 1.5860]
        @test length(chip_wavelength("B")) == 2048
        @test_throws ArgumentError chip_wavelength("X", 4)
        span = coordinate_span(["R", "G"])
        @test span == (1.5860, 1.6965) && coordinate_span(["B"]) == (1.5145, 1.5808)
        @test wavelength_coordinate([1.5860, 1.6965], span) == [-1.0, 1.0]
        @test wavelength_coordinate((1.5860 + 1.6965) / 2, span) ≈ 0.0 atol = 1e-14
        params = zeros(20, 300, 3)
        params[:, :, 2] .= [5.0 + 6.5 * (f - 1) for x in 1:20, f in 1:300]
        params[:, :, 3] .= 1.1
        traces = traces_from_params(params; telescope = "apo")
        @test size(traces.y_center) == (20, 300) && traces.sigma[1, 1] == 1.1
        @test findall(traces.excluded) == [301 - 225, 301 - 75]
        @test findall(traces_from_centers(params[:, :, 2]; telescope = "lco").excluded) ==
              [301 - 213, 301 - 82]
        @test_throws ArgumentError Traces(fill(NaN, 3, 2), 1.0)
        # As pyapred's: rising centers, 1 to 300 fibers, widths in [0.1, 20] px.
        @test_throws ArgumentError Traces([5.0 4.0; 5.0 6.0], 1.0)  # crossing at column 1
        @test_throws ArgumentError Traces(zeros(3, 0), 1.0)
        @test_throws ArgumentError Traces(repeat(collect(1.0:301.0)', 2), 1.0)
        @test_throws ArgumentError Traces([5.0 12.0], 100.0)
        @test Traces([5.0 12.0], 1.1).y_center == [5.0 12.0]
        # Ties of a center between two rows go where pyapred's 0-based rint sends them.
        @test APRampFit.nearest_row(3.5) == 3.0 && APRampFit.nearest_row(4.5) == 5.0
    end

    @testset "special functions" begin
        @test APRampFit.ndtr(0.0) == 0.5
        for (a, want) in ((1.0, 0.8413447460685429), (-3.0, 0.0013498980316300933),
            (2.0, 0.9772498680518208), (5.0, 0.9999997133484281))
            @test abs(APRampFit.ndtr(a) - want) <= 1e-15
        end
        @test APRampFit.ndtr(-10.0) ≈ 7.61985302416047e-24 rtol = 1e-13
        for (x, dof, want) in ((3.0, 2, 0.22313016014842982), (1.0, 1, 0.31731050786291115),
            (20.0, 5, 0.0012497305630313773), (0.5, 7, 0.9994464813904249),
            (300.0, 40, 1.4955969722726186e-41), (1e-3, 3, 0.9999915920809419))
            @test APRampFit.chi2_sf(x, dof) ≈ want rtol = 1e-12
        end
        @test APRampFit.chi2_sf(-1.0, 3) == 1.0 && APRampFit.chi2_sf(Inf, 3) == 0.0
        @test isnan(APRampFit.chi2_sf(NaN, 3))
    end

    @testset "sutr_omega compat = true: sutr_wood's recipe" begin
        rng = Xoshiro(11)
        nx, ny, K = 12, 9, 8
        rate = 40.0 .+ 400.0 .* rand(rng, nx, ny)  # DN per read
        rate[1, 2] = -3.0  # a negative-going pixel: its photon noise is clipped at 0
        gain, read_var = fill(1.9, nx, ny), fill(25.0, nx, ny)
        gain[2, 2] = 2.3
        dimages = rate .+ sqrt.(max.(rate, 0.0) ./ gain .+ 50.0) .* randn(rng, nx, ny, K)
        last = fill(K, nx, ny)
        last[3, 3] = 0  # nothing usable: zeros
        last[4, 3] = 1  # one difference: its own rate
        last[5, 3] = 5  # saturated after 5
        good = trues(nx, ny, K)
        good[6, 3, 2] = false
        good[7, 3, [3, 4]] .= false
        dimages[7, 3, 3] += 5000.0  # a cosmic ray: in the median, not in the fit
        result = sutr_omega(dimages, gain, read_var, last, good; compat = true)
        for y in 1:ny, x in 1:nx
            use = [k <= last[x, y] && good[x, y, k] for k in 1:K]
            want = wood_reference(dimages[x, y, :], gain[x, y], read_var[x, y], use, 2)
            have = (result.rates[x, y], result.ivars[x, y], result.chi2s[x, y])
            @test all(isapprox.(have, want; rtol = 1e-10, atol = 1e-10))
        end
        @test (result.rates[3, 3], result.ivars[3, 3], result.chi2s[3, 3]) == (0.0, 0.0, 0.0)
        @test result.rates[4, 3] ≈ dimages[4, 3, 1] rtol = 1e-12
        @test result.dimage === result.rates && result.stages === nothing
        @test result.cr_image[7, 3] == 2 && sum(result.cr_image) == 3
        # The default mode: the same estimator from the median of the usable differences, chi2
        # at the final rate; close to sutr_wood's, not equal.
        default = sutr_omega(dimages, gain, read_var, last, good)
        @test default.rates ≈ result.rates rtol = 1e-2
        @test default.rates[7, 3] != result.rates[7, 3]
        @test_throws ArgumentError sutr_omega(dimages, gain, read_var, last, good; compat = true,
            traces = Traces(fill(5.0, nx, 1), 1.0))
        @test_throws DimensionMismatch sutr_omega(dimages, gain[1:2, :], read_var, last, good)
    end

    @testset "sutr_omega with traces runs the stages" begin
        rng = Xoshiro(5)
        nx, ny, n_diffs = 40, 16, 10
        omega = 1.0 .- 0.4 .* rand(rng, n_diffs)
        traces = Traces(fill(8.3, 36, 1), 0.9)  # one fiber; columns 37-40 untraced
        light = [x <= 36 ? 3000.0 * APRampFit.profile_fraction(8.3, 0.9, y) : 0.0
                 for x in 1:nx, y in 1:ny] .+ 5.0
        e_diffs = light .* reshape(omega, 1, 1, :)
        e_diffs .+= sqrt.(e_diffs .+ 90.0) .* randn(rng, nx, ny, n_diffs)
        gain, read_var = fill(1.9, nx, ny), fill(25.0, nx, ny)
        dimages = e_diffs ./ gain
        last = fill(n_diffs, nx, ny)
        last[10, 8] = 4  # saturated after 4 differences
        last[11, 8] = 0
        options = FitOptions(min_fit_pixels = 10)
        result = sutr_omega(dimages, gain, read_var, last, trues(nx, ny, n_diffs); traces,
            options)
        stages = result.stages
        @test result.model == [MODEL_TIME_VARIABLE]
        @test result.omega[result.ref_index, 1] == 1.0
        @test sum(result.omega_used[:, 1]) / n_diffs ≈ 1.0 rtol = 1e-12
        @test maximum(abs.(result.omega[:, 1] .- omega ./ omega[result.ref_index])) < 0.05
        extracted = stages.results[1]
        fitted = (extracted.n_diff .>= 2) .& isfinite.(extracted.flux)
        @test result.dimage[fitted] == extracted.flux[fitted]
        @test (result.dimage[11, 8], result.ivarimage[11, 8]) == (0.0, 0.0)
        @test result.pixel_flags[10, 8] & SATURATED != 0
        @test result.pixel_flags[10, 8] & NONFINITE_READ == 0
        @test result.fiber[8, 8] == 1 && result.fiber[38, 8] == 0
        @test all(result.pixel_flags[37:40, :] .& BACKGROUND .!= 0)
        # Fluxes are exposure averages (omega mean 1), like sutr_wood's.
        columns = [1:10; 12:36]  # column 11 has no usable difference (dimage 0)
        on_trace = result.dimage[columns, 8] ./ (light[columns, 8] ./ 1.9)
        @test abs(sum(on_trace) / length(columns) - sum(omega) / n_diffs) < 0.03
        # ApogeeReduction's gainMat keeps the gain file's NaN and 0 pixels: those pixels are not
        # used by the stages and are flagged; the rest is fitted as before.
        holes = copy(gain)
        holes[20, 4], holes[21, 4] = NaN, 0.0
        patched = @test_logs (:warn, r"2 pixel\(s\) without a gain") match_mode = :any sutr_omega(
            dimages, holes, read_var, last, trues(nx, ny, n_diffs); traces, options)
        @test patched.pixel_flags[20, 4] & NONFINITE_READ != 0
        @test patched.pixel_flags[21, 4] & NONFINITE_READ != 0
        @test patched.stages.results[1].n_diff[20, 4] == 0
        # Nothing usable there, and no NaN reaches the ar2D images (the constant fit's was NaN).
        @test patched.dimage[20, 4] == patched.ivarimage[20, 4] == patched.chisqimage[20, 4] == 0
        @test patched.n_diff[21, 4] == 0 && all(isfinite, patched.dimage)
        @test patched.model == [MODEL_TIME_VARIABLE]
        # A gain map with no gain at all: refused by the patching itself (its message), not by a
        # later check of NaN gains.
        @test_throws "NaN or 0 everywhere" sutr_omega(dimages, fill(NaN, nx, ny), read_var,
            last, trues(nx, ny, n_diffs); traces, options)
        # The chromatic model takes the chip's wavelengths from its name.
        chromatic = FitOptions(min_fit_pixels = 10, chromatic = true)
        @test_throws ArgumentError sutr_omega(dimages, gain, read_var, last,
            trues(nx, ny, n_diffs); traces, options = chromatic)
        named = sutr_omega(dimages, gain, read_var, last, trues(nx, ny, n_diffs); traces,
            options = chromatic, chip = "a")  # ApogeeReduction's letter of chip R
        @test named.model[1] in (MODEL_TIME_VARIABLE, MODEL_CHROMATIC)
        @test named.omega[named.ref_index, 1] == 1.0
        # A 4-read exposure reaches sutr_omega with one difference: the constant fit, with a
        # warning, not an error that stops the night.
        one_diff = view(dimages, :, :, 1:1)
        short = @test_logs (:warn, r"too few for the exposure stages") match_mode = :any sutr_omega(
            one_diff, gain, read_var, min.(last, 1), trues(nx, ny, 1); traces, options)
        @test short.stages === nothing && isempty(short.model)
        @test short.dimage == short.rates && all(isfinite, short.dimage)
        # ApogeeReduction.jl's differences are a view of its cube (diffify_datacube!).
        cube = zeros(nx, ny, n_diffs + 2)
        cube[:, :, 3:end] .= dimages
        as_view = sutr_omega(view(cube, :, :, 3:n_diffs + 2), gain, read_var, last,
            trues(nx, ny, n_diffs); traces, options)
        @test as_view.dimage == result.dimage
        # The driver's checks: a plausible calibration, one exposure's sizes.
        reads = APRampFit.reads_from_differences(dimages, last)
        @test_throws ArgumentError run_chips(ChipExposure(reads, 5000.0; gain = 1.9), traces)
        @test_throws ArgumentError run_chips(ChipExposure(reads, 5.0; gain = 1.9,
            saturation = 0.5), traces)
        @test_throws ArgumentError run_chips([ChipExposure(reads, 5.0; gain = 1.9),
                ChipExposure(reads[:, :, 1:5], 5.0; gain = 1.9)], [traces, traces])
        # extract_chip refuses another exposure's stages, as pyapred's does: a PreparedChip of
        # other reads, fits over another number of read differences.
        prepared, fits = extracted.prepared, extracted.fibers
        short = ChipExposure(reads[:, :, 1:(end - 1)], 5.0; gain = 1.9, name = prepared.name)
        @test_throws "prepared: expected the chip's" extract_chip(short, prepared, fits, options)
        @test_throws "fibers: expected the fits" extract_chip(short,
            prepare_chip(short, traces, options), fits, options)
        # Every fiber's fit carries the common reference read and the convergence report.
        @test all(fits.fit.ref_index .== fits.ref_index)
        @test length(fits.fit.stop_reason) == length(fits.fit.damping) == size(fits.omega, 2)
        @test_throws ArgumentError fit_constant(reads, 5.0; saturation = NaN)
        @test_throws ArgumentError fit_constant(reads, 5.0; mask = zeros(Int, size(reads)))
    end

    @testset "flags" begin
        @test describe_flags(SATURATED | TOO_FEW_DIFFS) == ["SATURATED", "TOO_FEW_DIFFS"]
        @test describe_flags(0) == String[]
        # A bit no flag names (a newer product) is named by its number (as pyapred).
        @test describe_flags(1 << 16 | 1) == ["MASKED_READ", "bit 16"]
        for bad in (-1, true, 3.7, [1, 2])
            @test_throws ArgumentError describe_flags(bad)
        end
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
        # pyapred's argument rules: a threshold at most 1e6 and not a Bool, integer groups,
        # real non-Bool reads.
        @test_throws "at most 1e+06" find_jumps(reads, 10.0; threshold = 2e6)
        @test_throws ArgumentError find_jumps(reads, 10.0; threshold = true)
        @test_throws "groups: expected integers" find_jumps(reads, 10.0;
            omega = hcat(omega, omega), groups = fill(1.0, 3))
        @test_throws "reads: expected a real numeric array" fit_constant(reads .> 0, 10.0)
        # pyapred's way: the search without its (0, K) jump outputs writes the rest the same,
        # and jump_sizes_kernel! gives the jumps of the pixels that have them.
        n_pix, K = 3, 8
        usable, n_jumps = zeros(Bool, n_pix, K), zeros(Int, n_pix)
        flux, flux_var, chi2 = zeros(n_pix), zeros(n_pix), zeros(n_pix)
        n_diff, flags = zeros(Int, n_pix), zeros(Int, n_pix)
        thr_one, thr_two = chi2_thresholds(4.5)
        inputs = (reads, falses(1, 1), false, reshape(omega, K, 1), ones(Int, n_pix), ones(K),
            fill(10.0, n_pix), ones(n_pix), fill(Inf, n_pix))
        find_jumps_kernel!(usable, zeros(Bool, 0, K), zeros(0, K), n_jumps, flux, flux_var,
            chi2, n_diff, flags, inputs..., thr_one, thr_two, false, typemax(Int), 2)
        @test n_jumps == res.n_jumps && .!usable == res.diff_mask
        @test flux ≈ res.flux.flux rtol = 1e-14
        jumps, jump_size = zeros(Bool, 1, K), zeros(1, K)
        jump_sizes_kernel!(jumps, jump_size, inputs..., [2], usable, flux)
        @test jumps == res.jumps[2:2, :]
        @test jump_size ≈ res.jump_size[2:2, :] rtol = 1e-14
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
        # ref_index as pyapred takes it: whole numbers (a float of one too), never a Bool.
        @test fit_omega(reads, 15.0; ref_index = 3.0).ref_index == 3
        @test fit_omega(reads, 15.0; ref_index = [3]).ref_index == 3
        @test_throws "ref_index: expected whole numbers" fit_omega(reads, 15.0; ref_index = 2.5)
        @test_throws ArgumentError fit_omega(reads, 15.0; ref_index = true)
        truth = omega ./ omega[fit.ref_index]
        errors = sqrt.(max.(0.0, [fit.omega_cov[k, k] for k in 1:(n_reads - 1)]))
        free = errors .> 0
        @test all(abs.(fit.omega[free] .- truth[free]) .< 5 .* errors[free])
        guess, _, k_ref = initial_guess(reads, 15.0)
        @test guess[k_ref] == 1.0
        samples = sample_omega(reads, 15.0, 50; burn_in = 10, rng = Xoshiro(1))
        @test size(samples.omega_samples) == (n_reads - 1, 50) && samples.group_flags == 0
        # Counts and switches as pyapred takes them: whole floats count, Bool does not;
        # 0 and 1 switch.
        @test_throws "n_samples: expected an integer >= 2" sample_omega(reads, 15.0, 2.5;
            burn_in = 1)
        @test fit_omega(reads, 15.0; max_iter = 50.0).omega == fit.omega
        @test_throws "max_iter: expected an integer" fit_omega(reads, 15.0; max_iter = true)
        @test_throws "rtol: expected a finite value > 0" fit_omega(reads, 15.0; rtol = true)
        @test_throws "jump_search: expected true or false" fit_omega(reads, 15.0;
            jump_search = 2)
        @test_throws "n_pass: expected an integer" extract_fluxes(reads, 15.0,
            ones(n_reads - 1); n_pass = true)
        # Per-pixel values and omega that are no real numbers, or do not fit the pixels, are
        # ArgumentErrors naming the argument (a DimensionMismatch or MethodError before).
        @test_throws "gain: size" fit_constant(reads, 15.0; gain = ones(n_pix + 1))
        @test_throws "read_noise: expected real numbers" fit_constant(reads, "15")
        @test_throws "omega: expected size" extract_fluxes(reads, 15.0,
            ones(n_reads - 1, 1, 1))
        @test_throws "omega: expected values within" extract_fluxes(reads, 15.0,
            [1e160; ones(n_reads - 2)])
        @test extract_fluxes(reads, 15.0, [NaN; ones(n_reads - 2)]).flux isa AbstractArray
        @test_throws "read_times: expected a vector" fit_constant(reads, 15.0;
            read_times = reshape(collect(1.0:n_reads), 1, :))
        @test_throws "start: expected a fit_omega result" fit_omega_chromatic(reads, 15.0,
            zeros(n_pix); start = (1, 2))
        @test samples.omega_cov[fit.ref_index, :] == zeros(n_reads - 1)
    end

    @testset "a warm start guesses only the fluxes it lacks" begin
        # NumPy's twin: tests/solver/test_omega.py, test_a_warm_start_guesses_only_the_fluxes_it_lacks.
        rng = Xoshiro(8)
        K, P, G = 9, 30, 3
        omega = 1.0 .- 0.3 .* rand(rng, K)
        omega[5] = 0.2  # below PIVOT_RATIO of the largest: a pivot asked for here moves
        flux = 200.0 .+ 700.0 .* rand(rng, P, G)
        mean = [flux[p, g] * omega[k] for k in 1:K, p in 1:P, g in 1:G]
        diffs = mean .+ sqrt.(mean .+ 288.0) .* randn(rng, K, P, G)
        valid, fit_pixel = trues(K, P, G), trues(P, G)
        s2, dt = fill(144.0, P, G), ones(K)
        some = rand(rng, P, G) .< 0.5
        function guess(flux_pixel)
            om, fl, ks = zeros(K, G), zeros(P, G), zeros(Int, G)
            initial_guess!(om, fl, ks, diffs, valid, s2, dt, fit_pixel; flux_pixel)
            return om, fl, ks
        end
        full, part = guess(nothing), guess(some)
        @test part[1] == full[1] && part[3] == full[3]  # omega and the pivots
        @test part[2][some] == full[2][some]
        @test all(isnan, part[2][.!some])
        options = (reference = false, rtol = 1e-8, max_iter = 50, ref_index = fill(5, G))
        cold = fit_omega_groups(diffs, valid, s2, dt, fit_pixel; options...)
        start_omega = copy(cold.omega)
        start_omega[:, 2] .= NaN  # group 2's start is dropped at its new pivot
        start = (start_omega, ifelse.(some, NaN, cold.flux))  # some pixels without a start flux
        warm = fit_omega_groups(diffs, valid, s2, dt, fit_pixel; options..., start)
        # Group 2 has every flux of its own guess: without them its fit would start from NaN.
        @test all(isfinite, warm.flux) && all(warm.converged)
        @test matches(cold.omega, warm.omega, 1e-6) && matches(cold.flux, warm.flux, 1e-6)
    end

    @testset "fibers fitted in batches equal one call" begin
        rng = Xoshiro(11)
        P, G, N = 20, 5, 8
        omega = 1.0 .- 0.3 .* rand(rng, N - 1, G)
        flux = 300.0 .+ 1500.0 .* rand(rng, P, G)
        counts = [flux[p, g] * omega[k, g] for p in 1:P, g in 1:G, k in 1:(N - 1)]
        counts .+= sqrt.(counts) .* randn(rng, P, G, N - 1)
        reads = cat(zeros(P, G, 1), cumsum(counts; dims = 3); dims = 3) .+
                12.0 .* randn(rng, P, G, N)
        reads[7, 3, 5:end] .+= 4000.0  # a jump for the search
        sigma, gain = fill(12.0, P, G), fill(1.5, P, G)
        valid = trues(P, G)
        valid[3, 4] = false  # a padding pixel: masked
        todo = [1, 3, 4, 5]  # fiber 2 not fitted
        Q = P - 2  # the first Q pixels of each
        # Per-fiber labels; fiber 4 has one segment more, so batches differ in their count.
        segments = [mod(p - 1, 3) + 1 + (g == 4 && p > 10 ? 1 : 0) for p in 1:Q, g in todo]
        for labels in (nothing, segments)
            whole = APRampFit.fit_batched(reads, valid, sigma, gain, todo, Q, 2, FitOptions(),
                labels)
            parts = APRampFit.fit_batched(reads, valid, sigma, gain, todo, Q, 2, FitOptions(),
                labels; batch_bytes = 1)  # one fiber per batch
            # The fibers' own call: their first Q pixels, the padding masked.
            mask = repeat(.!valid[1:Q, todo], 1, 1, N)
            options = FitOptions()
            direct = APRampFit.fit_omega(reads[1:Q, todo, :], sigma[1:Q, todo];
                gain = gain[1:Q, todo], mask, ref_index = 2, segments = labels,
                max_iter = options.max_iter, jump_search = options.jump_search)
            @test size(whole[1].flux) == (Q, length(todo))
            @test matches(direct.omega, whole[1].omega, 1e-12)
            for (want_fit, have_fit) in zip(whole, parts)
                @test keys(have_fit) == keys(want_fit)
                for name in keys(want_fit)
                    want, have = getfield(want_fit, name), getfield(have_fit, name)
                    # The same numbers (pyapred: the same bits; here to rounding, the vectors' bar).
                    @test want === nothing ? have === nothing : matches(want, have, 1e-12)
                end
            end
        end
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
        # Labels are ranks, at most one segment per pixel (a raw readout key asked for GiB).
        @test_throws "segments: expected labels 1 .. $n_pix" fit_omega(reads, 10.0;
            segments = fill(n_pix + 1, n_pix))
        @test_throws ArgumentError fit_omega(reads, 10.0; segments, mode = "reference")
    end

    @testset "segment contrast, as pyapred's" begin
        # chi2 about the weighted segment means per degree of freedom, less 1 (pyapred's
        # test_segment_contrast_by_hand, labels 1-based and pixels along the first axis).
        flux = [1.0 0.0; 3.0 3.0; 5.0 9.0; 5.0 NaN]
        flux_var = [1.0 1.0; 1.0 2.0; 1.0 1.0; 1.0 1.0]
        segments = [1 1; 1 1; 2 2; 2 2]
        valid = trues(4, 2)
        @test APRampFit.segment_contrast(flux, flux_var, segments, valid) ≈ [0.0, 2.0]
        valid[2, 1] = valid[4, 1] = false
        flux_var[1, 2] = 0.0
        @test all(isnan, APRampFit.segment_contrast(flux, flux_var, segments, valid))
        @test APRampFit.MIN_SEGMENT_CONTRAST == 10.0
        @test describe_flags(LOW_SEGMENT_CONTRAST) == ["LOW_SEGMENT_CONTRAST"]
    end

    @testset "rough shape: median and standard error, as pyapred's" begin
        # pyapred's _nanmedian_last_axis and _rough_error on the same values (0.09290715115078568).
        @test APRampFit.nanmedian32(Float32[NaN, 3, 1, 2]) == 2.0f0
        @test APRampFit.nanmedian32(Float32[NaN, 4, 1, NaN, 2, 3]) == 2.5f0
        @test isnan(APRampFit.nanmedian32(Float32[NaN, NaN]))
        ratio = Float32[1.0, 1.2, 0.9, 1.1]
        own = APRampFit.nanmedian32(ratio)
        @test own == (1.0f0 + 1.1f0) / 2
        @test APRampFit.rough_error(ratio, own) ≈ 0.09290715115078568 rtol = 1e-12
        @test APRampFit.rough_error(Float32[], NaN32) == Inf
        @test APRampFit.MAX_ROUGH_ERROR == 0.02
    end

    @testset "chromatic omega is recovered and the kernels agree with the achromatic ones" begin
        # A noiseless chromatic ramp set: the chromatic fit finds omega and gamma exactly.
        n_pix, K = 30, 7
        c = collect(range(-1.0, 1.0; length = n_pix))
        omega = [1.0, 0.9, 0.55, 0.8, 0.97, 0.7, 0.85]
        gamma = [0.0, 0.02, -0.03, 0.01, 0.04, -0.02, 0.03]
        flux = [1000.0 + 150.0 * p for p in 1:n_pix]
        rates = [flux[p] * omega[k] * (1.0 + gamma[k] * c[p]) for p in 1:n_pix, k in 1:K]
        reads = hcat(zeros(n_pix), cumsum(rates; dims = 2))  # (n_pix, n_reads)
        fit = fit_omega_chromatic(reads, 12.0, c; ref_index = 1)
        @test fit.converged && fit.stop_reason == APRampFit.STOP_CONVERGED
        @test fit.ref_index == 1 && fit.dof == K - 1
        @test fit.omega ≈ omega atol = 1e-8
        @test fit.gamma ≈ gamma atol = 1e-8
        @test fit.flux ≈ flux rtol = 1e-8
        @test all(fit.chi2 .< 1e-8) && fit.delta_chi2 > 0
        @test size(fit.cov) == (2 * K, 2 * K) && all(fit.cov[[1, K + 1], :] .== 0.0)
        # Given the achromatic fit as the start, the same result.
        again = fit_omega_chromatic(reads, 12.0, c; start = fit_omega(reads, 12.0; ref_index = 1))
        @test again.gamma ≈ fit.gamma atol = 1e-12
        @test again.flux ≈ fit.flux rtol = 1e-12

        # Achromatic data with noise: gamma is 0 within its errors, delta_chi2 is small.
        rng = Xoshiro(7)
        n_pix = 60
        c = collect(range(-1.0, 1.0; length = n_pix))
        flux = 1000.0 .+ 2000.0 .* rand(rng, n_pix)
        expected = flux .* omega'
        counts = round.(expected .+ sqrt.(expected) .* randn(rng, n_pix, K))
        reads = hcat(zeros(n_pix), cumsum(counts; dims = 2)) .+ 12.0 .* randn(rng, n_pix, K + 1)
        fit = fit_omega_chromatic(reads, 12.0, c)
        @test fit.converged && fit.gamma[fit.ref_index] == 0.0
        @test fit.delta_chi2 < 40.0 && fit.p_value > 1e-6
        errors = [sqrt(max(fit.cov[K + k, K + k], 0.0)) for k in 1:K]
        free = errors .> 0
        @test count(free) == K - 1
        @test all(abs.(fit.gamma[free]) .< 6 .* errors[free])
        # Two groups of the same pixels: the same fit twice, one coordinate for both groups.
        cube = [reads[p, j] for p in 1:n_pix, g in 1:2, j in 1:(K + 1)]
        twice = fit_omega_chromatic(cube, 12.0, c)
        @test size(twice.gamma) == (K, 2) && size(twice.cov) == (2 * K, 2 * K, 2)
        @test twice.gamma[:, 1] ≈ fit.gamma atol = 1e-7
        @test twice.gamma[:, 2] ≈ fit.gamma atol = 1e-7
        @test twice.dof == [K - 1, K - 1]

        # The kernels at b = 0 are the achromatic kernels.
        start = fit_omega(reads, 12.0)
        @test start.jump_mask === nothing
        d = reshape([reads[p, k + 1] - reads[p, k] for k in 1:K, p in 1:n_pix], K, n_pix, 1)
        v = fill(true, K, n_pix, 1)
        s2 = fill(144.0, n_pix, 1)
        dt = ones(K)
        fit_pixel = fill(true, n_pix, 1)
        a = reshape(copy(start.omega), K, 1)
        b = zeros(K, 1)
        f = reshape(copy(start.flux), n_pix, 1)
        coord = reshape(c, n_pix, 1)
        chi2_c, chi2_a = zeros(n_pix, 1), zeros(n_pix, 1)
        chromatic_chi2_kernel!(chi2_c, d, v, s2, dt, f, a, b, coord, fit_pixel)
        chi2_kernel!(chi2_a, d, v, s2, a .* dt, f, fit_pixel)
        @test chi2_c ≈ chi2_a rtol = 1e-13
        out_g, out_gw = zeros(K, K, 3, 1), zeros(K, 2, 1)
        e_hat, gf_hat, sqrt_d = zeros(K, n_pix, 1), zeros(n_pix, 1), zeros(n_pix, 1)
        chromatic_normal_kernel!(out_g, out_gw, e_hat, gf_hat, sqrt_d, d, v, s2, dt, f, a, b,
            coord, [true], fit_pixel)
        g0, gw0 = zeros(K, K, 1), zeros(K, 1)
        e0, gf0, sd0 = zeros(K, n_pix, 1), zeros(n_pix, 1), zeros(n_pix, 1)
        normal_equations_kernel!(g0, gw0, e0, gf0, sd0, d, v, s2, dt, f, a, [true], [false],
            fit_pixel)
        @test out_g[:, :, 1, 1] ≈ g0[:, :, 1] rtol = 1e-12
        @test out_gw[:, 1, 1] ≈ gw0[:, 1] rtol = 1e-10 atol = 1e-8
        @test e_hat ≈ e0 rtol = 1e-12
        @test sqrt_d ≈ sd0 rtol = 1e-12
        change = zeros(1)
        chromatic_objective_change_kernel!(change, d, v, s2, dt, f, a, b, coord, zeros(n_pix, 1),
            zeros(K, 1), zeros(K, 1), [true], fit_pixel)
        @test change == [0.0]
        @test_throws ArgumentError fit_omega_chromatic(reads, 12.0, c; rtol = 0.0)
        # As pyapred's _positive and _flag: rtol no Bool, jump_search checked with a start too.
        @test_throws "rtol: expected a finite value > 0" fit_omega_chromatic(reads, 12.0, c;
            rtol = true)
        @test_throws "jump_search: expected true or false" fit_omega_chromatic(reads, 12.0, c;
            start, jump_search = 2)
        @test_throws ArgumentError fit_omega_chromatic(reads, 12.0, fill(NaN, n_pix))
    end

    @testset "version" begin
        project = TOML.parsefile(joinpath(@__DIR__, "..", "Project.toml"))
        @test pkgversion(APRampFit) == VersionNumber(project["version"])
    end
end
