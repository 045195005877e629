# ApogeeReduction.jl's 3D->2D stage: `sutr_omega`, called where `process_3D` (src/ar3D.jl) calls
# `sutr_wood`, with the same positional arguments, units and axis order. Without traces it is the
# constant-flux fit (`compat = true`: sutr_wood's recipe); with traces it runs pyapred's exposure
# stages (prepare -> fit fibers -> extract) on the same chip.

"""
    gls_pixel_wood(d, x, valid, s2, a0, n_pass, work)

ApogeeReduction.jl's `sutr_wood` recipe for one pixel: `n_pass` GLS passes, each with the
covariance at the previous pass's rate clipped at 0 (the first at `a0`), and chi2 of the final
rate with the covariance of the last pass (not re-evaluated at the final rate, as
[`gls_pixel`](@ref) does). Returns `(flux, variance, chi2)`; arguments as [`gls_pixel`](@ref).
"""
function gls_pixel_wood(d, x, valid, s2, a0, n_pass, work)
    alpha, beta, piv, low = view(work, :, 1), view(work, :, 2), view(work, :, 3), view(work, :, 4)
    yx, yd = view(work, :, 5), view(work, :, 6)
    rate = a0
    flux = 0.0
    var = NaN
    chi2 = 0.0
    for _ in 1:n_pass
        factor!(alpha, beta, piv, low, x, valid, s2, rate)
        forward!(yx, low, x)
        forward!(yd, low, d)
        sxx = 0.0
        sxd = 0.0
        @inbounds for k in eachindex(yx)
            sxx += yx[k] * yx[k] / piv[k]
            sxd += yx[k] * yd[k] / piv[k]
        end
        flux = sxd / sxx
        var = 1.0 / sxx
        # (d - f x)' C^-1 (d - f x) with this pass's C: L^-1 (d - f x) = yd - f yx.
        chi2 = 0.0
        @inbounds for k in eachindex(yx)
            r = yd[k] - flux * yx[k]
            chi2 += r * r / piv[k]
        end
        rate = max(flux, 0.0)
    end
    return flux, var, chi2
end

"""
    sutr_fit_pixel(diffs, good, gain, last, read_var, n_repeat, compat, d, design, valid, buf,
                   work)

The constant-flux fit of one pixel from ApogeeReduction.jl's arrays, in DN per read: returns
`(rate, ivar, chi2, n_used)`, `(0, 0, 0, 0)` without a usable difference (as `sutr_wood`). A
difference is used when it is at most `last` (`last_unsaturated`), `good` (`not_cosmic_ray`) and
finite; one usable difference gives its own rate.

With `compat`, `sutr_wood`'s recipe: the first guess is the median of all the pixel's
differences (saturated and cosmic-ray ones included) and chi2 uses the last pass's covariance
([`gls_pixel_wood`](@ref)). Otherwise pyapred's: the median of the usable differences and chi2 at
the final rate ([`gls_pixel`](@ref)).
"""
function sutr_fit_pixel(diffs, good, gain, last, read_var, n_repeat, compat, d, design, valid,
        buf, work)
    n = 0
    @inbounds for k in eachindex(d)
        ok = k <= last && good[k] && isfinite(diffs[k])
        valid[k] = ok
        d[k] = ok ? diffs[k] * gain : 0.0
        design[k] = ok ? 1.0 : 0.0
        n += ok
    end
    n == 0 && return 0.0, 0.0, 0.0, 0
    s2 = read_var * gain^2
    if compat
        copyto!(buf, diffs)
        flux, var, chi2 = gls_pixel_wood(d, design, valid, s2, median!(buf) * gain, n_repeat,
            work)
    else
        flux, var, chi2 = gls_pixel(d, design, valid, s2, median_rate(d, design, valid, buf),
            n_repeat, work)
    end
    return flux / gain, gain^2 / var, chi2, n
end

"""
    sutr_region!(rates, ivars, chi2s, n_used, dimages, gain_mat, read_var_mat,
                 last_unsaturated, not_cosmic_ray, n_repeat, compat)

[`sutr_fit_pixel`](@ref) for every pixel (`n_used`: the differences each fit used), threaded
over rows: each row is read in blocks of `BLOCK` columns, one read plane at a time, so that
neighbouring pixels are neighbours in memory (the layout `(nx, ny, n_diffs)` has x fastest) and
threads write different rows.
"""
function sutr_region!(rates, ivars, chi2s, n_used, dimages, gain_mat, read_var_mat,
        last_unsaturated, not_cosmic_ray, n_repeat, compat)
    nx, ny, K = size(dimages)
    Threads.@threads for y in 1:ny
        block = Matrix{Float64}(undef, K, BLOCK)
        good = Matrix{Bool}(undef, K, BLOCK)
        d, design, buf, work = zeros(K), zeros(K), zeros(K), zeros(K, 6)
        valid = Vector{Bool}(undef, K)
        for x0 in 1:BLOCK:nx
            x1 = min(x0 + BLOCK - 1, nx)
            @inbounds for k in 1:K, x in x0:x1
                block[k, x - x0 + 1] = dimages[x, y, k]
                good[k, x - x0 + 1] = not_cosmic_ray[x, y, k]
            end
            for x in x0:x1
                i = x - x0 + 1
                rates[x, y], ivars[x, y], chi2s[x, y], n_used[x, y] = sutr_fit_pixel(
                    view(block, :, i),
                    view(good, :, i), Float64(gain_mat[x, y]), last_unsaturated[x, y],
                    Float64(read_var_mat[x, y]), n_repeat, compat, d, design, valid, buf, work)
            end
        end
    end
    return nothing
end

"""
    reads_from_differences(dimages, last_unsaturated)

Reads `(nx, ny, n_diffs + 1)` rebuilt from differences (the first read 0), NaN after each pixel's
last unsaturated difference, so that the stages see ApogeeReduction.jl's saturation as unusable
reads. A non-finite difference ends the pixel's ramp there.
"""
function reads_from_differences(dimages::AbstractArray{<:Real, 3}, last_unsaturated)
    nx, ny, K = size(dimages)
    reads = zeros(nx, ny, K + 1)
    @inbounds for k in 1:K, y in 1:ny, x in 1:nx
        reads[x, y, k + 1] = k <= last_unsaturated[x, y] ? reads[x, y, k] + dimages[x, y, k] :
                             NaN
    end
    return reads
end

"ApogeeReduction.jl's chip letters, as pyapred names the chips."
const AR_CHIP_NAMES = Dict("a" => "R", "b" => "G", "c" => "B")

"""
    without_uncalibrated_pixels!(reads, gain_mat)

`(gain, uncalibrated)`: `gain_mat` with its pixels without a gain (NaN or 0) set to the median
of the others, and the `(nx, ny)` mask of those pixels, whose `reads` are set to NaN (no flux
without a gain; the stages flag them `NONFINITE_READ`), with a warning: pyapred's `load_chip`
rule for an ar3Dcal file's gainMat.

# Arguments
- `reads`: `(nx, ny, n_reads)` floats, changed in place.
- `gain_mat`: `(nx, ny)` e-/DN.
"""
function without_uncalibrated_pixels!(reads::AbstractArray{<:AbstractFloat, 3},
        gain_mat::AbstractMatrix)
    uncalibrated = [isnan(g) || iszero(g) for g in gain_mat]
    any(uncalibrated) || return gain_mat, uncalibrated
    all(uncalibrated) &&
        throw(ArgumentError("gain_mat: expected a gain (e-/DN) for some pixels, got NaN or 0 everywhere"))
    fill_value = median(Float64.(gain_mat[.!uncalibrated]))
    gain = ifelse.(uncalibrated, fill_value, Float64.(gain_mat))
    for y in axes(reads, 2), x in axes(reads, 1)
        uncalibrated[x, y] && (reads[x, y, :] .= NaN)
    end
    first_at = Tuple(findfirst(uncalibrated))
    @warn "gain_mat: $(count(uncalibrated)) pixel(s) without a gain (NaN or 0, first at x, y $first_at): their reads are not used (flagged NONFINITE_READ)"
    return gain, uncalibrated
end

"""
    sutr_omega(dimages, gain_mat, read_var_mat, last_unsaturated, not_cosmic_ray;
               traces = nothing, options = FitOptions(), compat = false, n_repeat = 2,
               chip = "")

ApogeeReduction.jl's 3D->2D fit, called where `process_3D` calls `sutr_wood`, with its positional
arguments, units and axis order; the first three fields of the result, `dimage`, `ivarimage` and
`chisqimage`, are what `process_3D` saves in the ar2D file.

Without `traces`, the constant-flux fit of every pixel, threaded over rows. `compat = true`
follows `sutr_wood`'s recipe (first guess the median of all differences, chi2 with the last
pass's covariance), so that swapping it in can be checked before changing anything else; the
numbers agree with `sutr_wood`'s to rounding (this is the tridiagonal GLS, `sutr_wood` uses a
Woodbury/sine-transform solve), not bit for bit. `compat = false` (default) uses pyapred's rules
(first guess the median of the usable differences, chi2 at the final rate): the same estimator,
with slightly different numbers.

With `traces` ([`Traces`](@ref), e.g. [`traces_from_params`](@ref) of the night's or the fallback
`traceMain` file), the pyapred exposure stages ([`run_chips`](@ref)) on the reads rebuilt from
`dimages`: jumps and saturation found by the stages' first pass (AR's `last_unsaturated` cuts each
ramp; `not_cosmic_ray` is not used, the first pass finds cosmic rays itself), omega fitted per
fiber, the model chosen per fiber, every pixel extracted with its fiber's omega (mean 1, so
fluxes are exposure averages like `sutr_wood`'s). Pixels the stages give no flux (fewer than 2
usable differences, or omega 0 on all of them: `TOO_FEW_DIFFS`) keep the constant fit's values.
A pixel cut by `last_unsaturated` is flagged `SATURATED`, not `NONFINITE_READ`; pyapred's
`load_chip` ends an ar3Dcal file's ramps at its `last_unsaturated` by the same rule.

# Arguments
- `dimages`: `(nx, ny, n_diffs)` read differences in DN (`diffify_datacube!`), any real type.
- `gain_mat`: `(nx, ny)` e-/DN; `read_var_mat`: `(nx, ny)` single-read variance, DN^2.
- `last_unsaturated`: `(nx, ny)` last usable difference, as after `diffify_datacube!` (<= 0: none).
- `not_cosmic_ray`: `(nx, ny, n_diffs)` `Bool`, `false` drops that difference (`outlier_mask`).

# Keyword Arguments
- `traces`: `nothing` (constant model) or [`Traces`](@ref) of the chip (columns `1:n_columns`).
- `options`: [`FitOptions`](@ref) of the stages.
- `compat`: `sutr_wood`'s recipe for the constant fit; only without `traces`.
- `n_repeat`: GLS passes of the constant fit (2, as `sutr_wood`); the stages use 2.
- `chip`: the chip's name, `"R"`, `"G"` or `"B"` (or ApogeeReduction's `"a"`, `"b"`, `"c"`):
  needed with `options.chromatic` (its wavelengths give the coordinate).

Pixels that `gain_mat` leaves without a gain (NaN or 0: ApogeeReduction copies the gain file's
bad pixels into it, and skips them for its median) get that median as their gain and no usable
read in the stages (`NONFINITE_READ`), as pyapred's `load_chip` does with an ar3Dcal file; with
`traces` their `dimage`, `ivarimage`, `chisqimage` and `n_diff` are 0 (the constant fit's
`rates`, `ivars`, `chi2s` stay NaN there).

# Returns
A NamedTuple:
- `dimage`, `ivarimage`, `chisqimage` `(nx, ny)`: DN/read, 1/(DN/read)^2 and chi2, 0 where
  nothing is usable: the constant fit without traces, the stages' extraction with them;
- `rates`, `ivars`, `chi2s` `(nx, ny)`: the constant fit (what `sutr_wood` returns);
- `omega`, `omega_cov` `(K, n_fibers)`, `(K, K, n_fibers)`: omega per fiber as pyapred's products
  store it ([`product_omega`](@ref): `omega[ref_index, f] = 1`); `omega_used` `(K, n_fibers)` the
  mean-1 omega each fiber was extracted with; `model` `(n_fibers,)` (`MODEL_CONSTANT`,
  `MODEL_TIME_VARIABLE`, `MODEL_BORROWED`; `MODEL_NAMES[model + 1]`), `fiber_flags`
  `(n_fibers,)`, `ref_index` (1-based);
- `pixel_flags`, `fiber`, `cr_image` `(nx, ny)`: the stages' pixel flags (`SATURATED` where
  `last_unsaturated` cut the ramp), each pixel's fiber (0: background), and the number of jumps
  the first pass found (one masked read each, which removes two differences);
- `n_diff` `(nx, ny)`: the differences behind each pixel's `dimage` (chi2 has `n_diff - 1`
  degrees of freedom);
- `stages`: [`run_chips`](@ref)'s result.
Without traces the per-fiber fields are empty, `ref_index` is 0, `pixel_flags` and `fiber` are
0, `cr_image` counts the differences `not_cosmic_ray` drops, and `stages` is `nothing`. So it is,
with a warning, with traces and fewer than 2 differences (a 4-read exposure after
ApogeeReduction.jl drops its first two reads): the stages need at least 2.
"""
function sutr_omega(dimages::AbstractArray{<:Real, 3}, gain_mat::AbstractMatrix,
        read_var_mat::AbstractMatrix, last_unsaturated::AbstractMatrix,
        not_cosmic_ray::AbstractArray{Bool, 3}; traces = nothing,
        options::FitOptions = FitOptions(), compat::Bool = false, n_repeat::Integer = 2,
        chip::AbstractString = "")
    nx, ny, K = size(dimages)
    for (name, a) in (("gain_mat", gain_mat), ("read_var_mat", read_var_mat),
        ("last_unsaturated", last_unsaturated))
        size(a) == (nx, ny) ||
            throw(DimensionMismatch("$name: expected size $((nx, ny)), got $(size(a))"))
    end
    size(not_cosmic_ray) == size(dimages) ||
        throw(DimensionMismatch("not_cosmic_ray: expected size $(size(dimages)), got $(size(not_cosmic_ray))"))
    n_repeat >= 1 || throw(ArgumentError("n_repeat: expected >= 1, got $n_repeat"))
    traces === nothing || traces isa Traces ||
        throw(ArgumentError("traces: expected nothing or APRampFit.Traces (traces_from_params)"))
    compat && traces !== nothing &&
        throw(ArgumentError("compat = true reproduces sutr_wood's constant fit: call it without traces"))
    chip_name = get(AR_CHIP_NAMES, chip, chip)
    traces !== nothing && options.chromatic && !haskey(CHIP_WAVELENGTH_UM, chip_name) &&
        throw(ArgumentError("chip: expected \"R\", \"G\" or \"B\" (or \"a\", \"b\", \"c\") with " *
                            "options.chromatic (its wavelengths give the coordinate), got $(repr(chip))"))
    if traces !== nothing && K < 2
        # ApogeeReduction.jl sends 4-read exposures here with one difference (it drops two
        # reads); the stages need two. The night's other exposures go on.
        @warn("sutr_omega: $K read difference(s), too few for the exposure stages (at least " *
              "2): the constant fit is returned, as without traces")
        traces = nothing
    end
    rates, ivars, chi2s = zeros(nx, ny), zeros(nx, ny), zeros(nx, ny)
    n_diff = zeros(Int, nx, ny)
    sutr_region!(rates, ivars, chi2s, n_diff, dimages, gain_mat, read_var_mat, last_unsaturated,
        not_cosmic_ray, n_repeat, compat)
    if traces === nothing
        cr_image = [count(k -> !not_cosmic_ray[x, y, k], 1:K) for x in 1:nx, y in 1:ny]
        return (; dimage = rates, ivarimage = ivars, chisqimage = chi2s, rates, ivars, chi2s,
            omega = zeros(K, 0), omega_cov = zeros(K, K, 0), omega_used = zeros(K, 0),
            model = Int[], fiber_flags = Int[], ref_index = 0, pixel_flags = zeros(Int, nx, ny),
            fiber = zeros(Int, nx, ny), cr_image, n_diff, stages = nothing)
    end
    reads = reads_from_differences(dimages, last_unsaturated)
    gain_use, uncalibrated = without_uncalibrated_pixels!(reads, gain_mat)
    exposure = ChipExposure(reads, sqrt.(read_var_mat); gain = gain_use, name = chip_name)
    stages = run_chips([exposure], [traces], options)
    result, fits = stages.results[1], stages.fibers[1]
    dimage, ivarimage, chisqimage = copy(rates), copy(ivars), copy(chi2s)
    pixel_flags = copy(result.flags)
    for y in 1:ny, x in 1:nx
        # No flux (TOO_FEW_DIFFS: under 2 usable differences, or omega 0 on all of them, where
        # n_diff can be 2 or more): the constant fit's values stay, never a NaN.
        if result.n_diff[x, y] >= 2 && isfinite(result.flux[x, y])
            n_diff[x, y] = result.n_diff[x, y]
            dimage[x, y] = result.flux[x, y]
            v = result.flux_var[x, y]
            ivarimage[x, y] = isfinite(v) && v > 0 ? 1.0 / v : 0.0
            chisqimage[x, y] = result.chi2[x, y]
        elseif uncalibrated[x, y]
            # No gain, so no constant fit either (its rate is NaN): nothing usable, 0, the
            # pixel flagged NONFINITE_READ by the stages.
            dimage[x, y] = ivarimage[x, y] = chisqimage[x, y] = 0.0
            n_diff[x, y] = 0
        end
        last = last_unsaturated[x, y]
        # The ramp was cut after `last`: saturation, not a non-finite read of the detector (nor
        # a pixel without a gain).
        if last < K && !uncalibrated[x, y] && all(k -> isfinite(dimages[x, y, k]), 1:max(last, 0))
            pixel_flags[x, y] = (pixel_flags[x, y] & ~NONFINITE_READ) | SATURATED
        end
    end
    cr_image = zeros(Int, nx, ny)
    for j in stages.prepared[1].jumps
        cr_image[j[1], j[2]] += 1
    end
    omega, omega_cov = product_omega(fits)
    return (; dimage, ivarimage, chisqimage, rates, ivars, chi2s, omega, omega_cov,
        omega_used = fits.omega, model = fits.model, fiber_flags = fits.flags,
        ref_index = fits.ref_index, pixel_flags, fiber = result.fiber, cr_image, n_diff, stages)
end
