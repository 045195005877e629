# Constant model, extraction with omega fixed (eq 15) and the equal-weight baseline: the twins of
# `extract_kernel` and `equal_weight_kernel` in `pyapred/solver/_numpy.py` and of the public
# `fit_constant`, `extract_fluxes` and `fit_equal_weight` in `pyapred/solver/api.py`.

# Pixels gathered per block from the (n_pix, n_reads) cube: reads along a read plane are
# contiguous, and a block stays in cache.
const BLOCK = 256

"""
    extract_kernel!(flux, flux_var, chi2, n_diff, flags, reads, bad, use_mask, omega, groups, dt,
                    read_noise, gain, saturation, n_pass)

Eq-15 fluxes with omega fixed, for every pixel of a flattened cube (threaded over pixel blocks).

# Arguments
- `flux`, `flux_var`, `chi2`, `n_diff`, `flags`: `(n_pix,)` outputs; fluxes in e- per unit time
  (gain applied), variances in e-^2.
- `reads`: `(n_pix, n_reads)`, any real type, in the caller's units (DN or e-).
- `bad`: `(n_pix, n_reads)` `Bool`, `true` = bad read; ignored unless `use_mask`.
- `omega`: `(K, n_groups)`; a non-finite element masks that difference.
- `groups`: `(n_pix,)` column of `omega` used by each pixel, 1-based.
- `dt`: `(K,)` read intervals.
- `read_noise`, `gain`, `saturation`: `(n_pix,)`, in the caller's units.
- `n_pass`: number of GLS passes (covariance refreshes).
"""
function extract_kernel!(flux::AbstractVector, flux_var::AbstractVector, chi2::AbstractVector,
        n_diff::AbstractVector, flags::AbstractVector, reads::AbstractMatrix, bad::AbstractArray,
        use_mask::Bool, omega::AbstractMatrix, groups::AbstractVector, dt::AbstractVector,
        read_noise::AbstractVector, gain::AbstractVector, saturation::AbstractVector,
        n_pass::Integer)
    n_pix, N = size(reads)
    K = N - 1
    n_blocks = cld(n_pix, BLOCK)
    Threads.@threads for b in 1:n_blocks
        p0 = (b - 1) * BLOCK + 1
        p1 = min(p0 + BLOCK - 1, n_pix)
        local_reads = Matrix{Float64}(undef, N, p1 - p0 + 1)
        local_bad = falses(N, p1 - p0 + 1)
        @inbounds for j in 1:N, p in p0:p1
            local_reads[j, p - p0 + 1] = reads[p, j]
            use_mask && (local_bad[j, p - p0 + 1] = bad[p, j])
        end
        valid_read = Vector{Bool}(undef, N)
        ramp_bad = Vector{Bool}(undef, N)
        valid = Vector{Bool}(undef, K)
        d = zeros(K)
        x = zeros(K)
        buf = zeros(K)
        work = zeros(K, 6)
        for p in p0:p1
            ramp = view(local_reads, :, p - p0 + 1)
            ramp_bad .= view(local_bad, :, p - p0 + 1)
            g = gain[p]
            pflags = valid_reads!(valid_read, ramp, ramp_bad, use_mask, saturation[p])
            row = groups[p]
            n = 0
            @inbounds for k in 1:K
                w = omega[k, row]
                ok = valid_read[k] && valid_read[k + 1] && isfinite(w)
                valid[k] = ok
                if ok
                    d[k] = (ramp[k + 1] - ramp[k]) * g
                    x[k] = w * dt[k]
                    n += 1
                else
                    d[k] = 0.0
                    x[k] = 0.0
                end
            end
            n_diff[p] = n
            if n < 2
                flags[p] = pflags | TOO_FEW_DIFFS
                flux[p] = NaN
                flux_var[p] = NaN
                chi2[p] = NaN
                continue
            end
            s = read_noise[p] * g
            a0 = median_rate(d, x, valid, buf)
            f, v, c = gls_pixel(d, x, valid, s * s, a0, n_pass, work)
            if !(v < Inf)  # x' C^-1 x = 0: omega is 0 on every usable difference, no flux
                flags[p] = pflags | TOO_FEW_DIFFS
                flux[p], flux_var[p], chi2[p] = NaN, NaN, NaN
                continue
            end
            flags[p] = pflags
            flux[p], flux_var[p], chi2[p] = f, v, c
        end
    end
    return nothing
end

"""
    equal_weight_kernel!(flux, flux_var, chi2, n_diff, flags, reads, bad, use_mask, read_noise,
                         gain, saturation)

Equal-weight (ordinary least-squares) slope of Rauscher et al. (2007) for every pixel, with its
exact variance under the ramp noise model, `sigma^2 sum_j w_j^2 + max(f, 0) sum_i (sum_{j>i} w_j)^2`
for slope weights `w`, and the eq-24 chi2 of the slope against the optimal covariance.

# Arguments
- `flux`, `flux_var`, `chi2`, `n_diff`, `flags`: `(n_pix,)` outputs, in electrons.
- `reads`, `bad`, `use_mask`, `read_noise`, `gain`, `saturation`: as in [`extract_kernel!`](@ref);
  reads are equally spaced.
"""
function equal_weight_kernel!(flux::AbstractVector, flux_var::AbstractVector,
        chi2::AbstractVector, n_diff::AbstractVector, flags::AbstractVector,
        reads::AbstractMatrix, bad::AbstractArray, use_mask::Bool, read_noise::AbstractVector,
        gain::AbstractVector, saturation::AbstractVector)
    n_pix, N = size(reads)
    K = N - 1
    Threads.@threads for b in 1:cld(n_pix, BLOCK)
        counts = zeros(N)
        usable = Vector{Bool}(undef, N)
        weights = zeros(N)
        d = zeros(K)
        x = zeros(K)
        valid = Vector{Bool}(undef, K)
        work = zeros(K, 6)
        for p in ((b - 1) * BLOCK + 1):min(b * BLOCK, n_pix)
            g = gain[p]
            sat = saturation[p] * g
            pflags = 0
            saturated = false
            @inbounds for j in 1:N
                counts[j] = Float64(reads[p, j]) * g
                usable[j] = isfinite(counts[j])
                usable[j] || (pflags |= NONFINITE_READ)
                if use_mask && bad[p, j]
                    pflags |= MASKED_READ
                    usable[j] = false
                end
                # An infinite read is a bad read, not the start of saturation.
                saturated |= isfinite(counts[j]) && counts[j] >= sat
                if saturated
                    pflags |= SATURATED
                    usable[j] = false
                end
            end
            n_use = count(usable)
            n = 0
            @inbounds for k in 1:K
                valid[k] = usable[k] && usable[k + 1]
                d[k] = valid[k] ? counts[k + 1] - counts[k] : 0.0
                x[k] = valid[k] ? 1.0 : 0.0
                n += valid[k]
            end
            n_diff[p] = n
            if n_use < 3 || n < 2
                flags[p] = pflags | TOO_FEW_DIFFS
                flux[p] = NaN
                flux_var[p] = NaN
                chi2[p] = NaN
                continue
            end
            flags[p] = pflags
            # Read times 0, 1, ..., N - 1; sums in read order, as NumPy reduces along axis 0.
            t_sum = 0.0
            @inbounds for j in 1:N
                t_sum += usable[j] * (j - 1)
            end
            t_mean = t_sum / n_use
            c2 = 0.0
            @inbounds for j in 1:N
                weights[j] = usable[j] ? (j - 1) - t_mean : 0.0
                c2 += weights[j]^2
            end
            slope = 0.0
            w2 = 0.0
            @inbounds for j in 1:N
                weights[j] /= c2
                slope += weights[j] * (usable[j] ? counts[j] : 0.0)
                w2 += weights[j]^2
            end
            # Photon increment i (between reads i and i+1) enters every later read.
            tail = 0.0
            tail2 = 0.0
            @inbounds for j in N:-1:2
                tail += weights[j]
                tail2 += tail^2
            end
            sigma_e = read_noise[p] * g
            flux[p] = slope
            flux_var[p] = sigma_e^2 * w2 + max(slope, 0.0) * tail2
            chi2[p] = chi2_pixel(d, x, valid, sigma_e^2, slope, work)
        end
    end
    return nothing
end

# ---------------------------------------------------------------------------------------------
# Argument handling of the high-level functions
# ---------------------------------------------------------------------------------------------
"""
The magnitudes the arithmetic takes (pyapred's `SCALE_RANGE` and `MAX_READ`): gains, read noises
and read intervals within it, and reads a Float32 can hold, keep every square and quotient of the
fits finite; outside, variances overflow or underflow to Inf or 0 and fluxes become NaN or Inf
without a flag.
"""
const SCALE_RANGE = (1e-30, 1e30)
const MAX_READ = Float64(floatmax(Float32))

"""
    pixel_map(value, pixel_shape, name; positive = true)

A per-pixel parameter broadcast to `pixel_shape`, as a flat `Vector{Float64}` (pyapred's
`_pixel_map`): real numbers (one, or an array that broadcasts), each within `SCALE_RANGE`
where `positive`; anything else an `ArgumentError` naming `name`.
"""
function pixel_map(value, pixel_shape, name; positive = true)
    value isa Real || (value isa AbstractArray && eltype(value) <: Real) ||
        throw(ArgumentError("$name: expected real numbers, got $(typeof(value))"))
    out = zeros(pixel_shape)
    try
        out .= value
    catch err
        err isa DimensionMismatch || rethrow()
        throw(ArgumentError("$name: size $(size(value)) does not broadcast to the pixel shape $pixel_shape"))
    end
    low, high = SCALE_RANGE
    if positive && !all(v -> low <= v <= high, out)  # NaN fails too
        throw(ArgumentError("$name: expected finite values > 0, within [$low, $high]"))
    end
    return vec(out)
end

"""
    read_intervals(read_times, n_reads)

Read intervals `dt` (length `n_reads - 1`); `nothing` means unit spacing.
"""
function read_intervals(read_times, n_reads)
    read_times === nothing && return ones(n_reads - 1)
    # As pyapred's: a vector of n_reads real numbers (a matrix of as many was taken too).
    read_times isa Union{AbstractVector, Tuple} && all(t -> t isa Real, read_times) ||
        throw(ArgumentError("read_times: expected a vector of $n_reads real numbers, got $(typeof(read_times))"))
    length(read_times) == n_reads ||
        throw(ArgumentError("read_times: expected $n_reads values, got $(length(read_times))"))
    dt = diff(Float64.(collect(read_times)))
    low, high = SCALE_RANGE
    all(v -> low <= v <= high, dt) ||  # NaN fails too
        throw(ArgumentError("read_times: expected finite, strictly increasing values, $low to $high apart"))
    return dt
end

"""
    omega_table(omega, K)

`omega`, `(K,)` or `(K, n_groups)` real numbers, as a `(K, n_groups)` `Matrix{Float64}`
(pyapred's `_omega_rows`). A NaN or Inf element masks its difference; a finite one beyond
`SCALE_RANGE` would overflow the variances (omega 1e160 gave flux 0 and variance 0, unflagged)
and is an `ArgumentError`.
"""
function omega_table(omega, K)
    omega isa AbstractArray && ndims(omega) <= 2 && eltype(omega) <: Real &&
        size(omega, 1) == K ||
        throw(ArgumentError("omega: expected size ($K,) or ($K, n_groups) of real numbers (one row per read difference), got " *
                            (omega isa AbstractArray ? "size $(size(omega))" : "$(typeof(omega))")))
    table = reshape(Float64.(collect(omega)), K, :)
    high = SCALE_RANGE[2]
    all(v -> !isfinite(v) || abs(v) <= high, table) ||
        throw(ArgumentError("omega: expected values within +-$high (a NaN or inf element masks its difference)"))
    return table
end

"""
    count_option(value, name, minimum)

An integer option as pyapred's `_count` takes it: an integer or a whole float (not a `Bool`)
from `minimum` to 2^62, as `Int`; anything else an `ArgumentError` naming `name`.
"""
function count_option(value, name, minimum)
    value isa Real && !(value isa Bool) && isfinite(value) && isinteger(value) &&
        minimum <= value <= 2.0^62 ||
        throw(ArgumentError("$name: expected an integer >= $minimum, got $(repr(value))"))
    return Int(value)
end

"""
    positive_option(value, name)

A finite number above 0 as pyapred's `_positive` takes it (`rtol`): a real number, not a
`Bool`, as `Float64`; anything else an `ArgumentError` naming `name`.
"""
function positive_option(value, name)
    value isa Real && !(value isa Bool) && isfinite(value) && value > 0 ||
        throw(ArgumentError("$name: expected a finite value > 0, got $(repr(value))"))
    return Float64(value)
end

"""
    flag_option(value, name)

A true/false option as pyapred's `_flag` takes it: a `Bool`, or the integer 0 or 1.
"""
function flag_option(value, name)
    value isa Bool && return value
    value isa Integer && value in (0, 1) && return value == 1
    throw(ArgumentError("$name: expected true or false, got $(repr(value))"))
end

"""
    group_columns(groups, n_groups, pixel_shape)

Each pixel's column of the omega table, as a vector (pyapred's `_omega_rows`): `groups`
integers (not `Bool`) in `1:n_groups` of the pixel shape; all 1 without `groups`, which one
column of omega needs.
"""
function group_columns(groups, n_groups, pixel_shape)
    if groups === nothing
        n_groups == 1 ||
            throw(ArgumentError("groups: required when omega has one column per group"))
        return ones(Int, prod(pixel_shape))
    end
    groups isa AbstractArray && eltype(groups) <: Integer && !(eltype(groups) <: Bool) &&
        size(groups) == pixel_shape && all(g -> 1 <= g <= n_groups, groups) ||
        throw(ArgumentError("groups: expected integers in 1:$n_groups of the pixel shape $pixel_shape"))
    return vec(Int.(groups))
end

function check_reads(reads; min_dims = 2, max_dims = typemax(Int))
    # As pyapred's: real numbers; Bool reads are no counts, complex ones failed in a kernel.
    eltype(reads) <: Real && !(eltype(reads) <: Bool) ||
        throw(ArgumentError("reads: expected a real numeric array, got element type $(eltype(reads))"))
    min_dims <= ndims(reads) <= max_dims ||
        throw(ArgumentError("reads: expected $min_dims to $max_dims dimensions (pixels..., read), got size $(size(reads))"))
    size(reads, ndims(reads)) >= 3 ||
        throw(ArgumentError("reads: expected n_reads >= 3 along the last axis, got size $(size(reads))"))
    if eltype(reads) <: Float64  # Float32 and integers are inside MAX_READ by type
        # Non-finite reads are masked and flagged, not refused.
        largest = maximum(v -> isfinite(v) ? abs(v) : 0.0, reads; init = 0.0)
        largest <= MAX_READ ||
            throw(ArgumentError("reads: expected values a Float32 can hold (within +-$MAX_READ), found $largest"))
    end
    return nothing
end

function check_mask(mask, reads)
    mask === nothing && return falses(1, 1), false
    eltype(mask) <: Bool ||
        throw(ArgumentError("mask: expected a Bool array (true = bad read), got element type $(eltype(mask))"))
    size(mask) == size(reads) ||
        throw(ArgumentError("mask: expected the size of reads $(size(reads)), got $(size(mask))"))
    return reshape(mask, :, size(reads, ndims(reads))), true
end

function saturation_map(saturation, pixel_shape)
    saturation === nothing && return fill(Inf, prod(pixel_shape))
    sat = pixel_map(saturation, pixel_shape, "saturation"; positive = false)
    # A NaN level would mask nothing and flag nothing (every `read >= NaN` is false).
    any(isnan, sat) && throw(ArgumentError("saturation: expected numbers (Inf for none), got NaN"))
    return sat
end

# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------
"""
    extract_fluxes(reads, read_noise, omega; groups = nothing, gain = 1.0, mask = nothing,
                   read_times = nothing, saturation = nothing, n_pass = 2)

Optimal fluxes with a fixed transparency vector omega (the paper's eq 15), per pixel: the model is
`d_k = f omega_k dt_k` with covariance `diag(max(a, 0) max(omega_k, 0) dt_k) + sigma^2 T` (the
rate clipped at 0 before it meets omega, as pyapred's); `omega = 1` is exactly
[`fit_constant`](@ref). The first pass evaluates the photon noise at the median of
`d_k / (omega_k dt_k)`.

# Arguments
- `reads`: `(pixels..., n_reads)` up-the-ramp reads, e- if `gain = 1`, else DN.
- `read_noise`: single-read sigma in the units of `reads`, scalar or of the pixel shape.
- `omega`: `(K,)` or `(K, n_groups)`, `K = n_reads - 1`.

# Keyword Arguments
- `groups`: column of `omega` (1-based) for each pixel; required when `omega` is a matrix.
- `gain`: e-/DN, scalar or of the pixel shape.
- `mask`: `Bool`, the size of `reads`; `true` = bad read (it removes the two differences using it).
- `read_times`: `(n_reads,)` strictly increasing; default unit spacing.
- `saturation`: in the units of `reads`; the first read at or above it and all later ones are masked.
- `n_pass`: GLS passes (2 as in Brandt 2024 and ApogeeReduction.jl).

# Returns
A NamedTuple `(flux, flux_var, chi2, n_diff, flags)` of arrays of the pixel shape; fluxes per read
interval in the units of `reads`, at omega's normalisation.
"""
function extract_fluxes(reads::AbstractArray, read_noise, omega; groups = nothing, gain = 1.0,
        mask = nothing, read_times = nothing, saturation = nothing, n_pass = 2)
    check_reads(reads; min_dims = 1)
    N = size(reads, ndims(reads))
    K = N - 1
    pixel_shape = size(reads)[1:(end - 1)]
    omega2d = omega_table(omega, K)
    group_index = group_columns(groups, size(omega2d, 2), pixel_shape)
    n_pass = count_option(n_pass, "n_pass", 1)
    sigma = pixel_map(read_noise, pixel_shape, "read_noise")
    gain_map = pixel_map(gain, pixel_shape, "gain")
    bad, use_mask = check_mask(mask, reads)
    sat = saturation_map(saturation, pixel_shape)
    dt = read_intervals(read_times, N)
    n_pix = prod(pixel_shape)
    flux, flux_var, chi2 = zeros(n_pix), zeros(n_pix), zeros(n_pix)
    n_diff, flags = zeros(Int, n_pix), zeros(Int, n_pix)
    extract_kernel!(flux, flux_var, chi2, n_diff, flags, reshape(reads, n_pix, N), bad, use_mask,
        omega2d, group_index, dt, sigma, gain_map, sat, n_pass)
    shape(v) = reshape(v, pixel_shape)
    return (flux = shape(flux ./ gain_map), flux_var = shape(flux_var ./ gain_map .^ 2),
        chi2 = shape(chi2), n_diff = shape(n_diff), flags = shape(flags))
end

"""
    fit_constant(reads, read_noise; gain = 1.0, mask = nothing, read_times = nothing,
                 saturation = nothing, n_pass = 2)

Brandt (2024) optimal constant-flux fit of every pixel's ramp: [`extract_fluxes`](@ref) with
`omega = 1`. The first pass evaluates the photon noise at the median difference rate (clipped at
0); each further pass re-evaluates it at the previous estimate.

# Returns
A NamedTuple `(flux, flux_var, chi2, n_diff, flags)` of arrays of the pixel shape.
"""
function fit_constant(reads::AbstractArray, read_noise; kwargs...)
    check_reads(reads; min_dims = 1)
    return extract_fluxes(reads, read_noise, ones(size(reads, ndims(reads)) - 1); kwargs...)
end

"""
    fit_equal_weight(reads, read_noise; gain = 1.0, mask = nothing, saturation = nothing)

Equal-weight (ordinary least-squares) slope of Rauscher et al. (2007) with its exact variance;
see [`equal_weight_kernel!`](@ref). Arguments as in [`fit_constant`](@ref); reads equally spaced.

# Returns
A NamedTuple `(flux, flux_var, chi2, n_diff, flags)` of arrays of the pixel shape.
"""
function fit_equal_weight(reads::AbstractArray, read_noise; gain = 1.0, mask = nothing,
        saturation = nothing)
    check_reads(reads; min_dims = 1)
    N = size(reads, ndims(reads))
    pixel_shape = size(reads)[1:(end - 1)]
    n_pix = prod(pixel_shape)
    sigma = pixel_map(read_noise, pixel_shape, "read_noise")
    gain_map = pixel_map(gain, pixel_shape, "gain")
    bad, use_mask = check_mask(mask, reads)
    sat = saturation_map(saturation, pixel_shape)
    flux, flux_var, chi2 = zeros(n_pix), zeros(n_pix), zeros(n_pix)
    n_diff, flags = zeros(Int, n_pix), zeros(Int, n_pix)
    equal_weight_kernel!(flux, flux_var, chi2, n_diff, flags, reshape(reads, n_pix, N), bad,
        use_mask, sigma, gain_map, sat)
    shape(v) = reshape(v, pixel_shape)
    return (flux = shape(flux ./ gain_map), flux_var = shape(flux_var ./ gain_map .^ 2),
        chi2 = shape(chi2), n_diff = shape(n_diff), flags = shape(flags))
end
