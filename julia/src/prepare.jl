# Stage 1, prepare a chip: cosmic rays, saturation, the pixel-to-fiber map and the fit pixels. The
# twin of `pyapred/exposure/prepare.py` (`prepare_chip`, `_rough_omega`) and of the first-pass
# Numba kernel `pyapred/solver/first_pass.py`.
#
# The first pass's robust rate is kept in Float32 and the rough omega is computed in Float32, as
# pyapred computes them (raw DN are exact in Float32); everything else is Float64.

"Columns that estimate each fiber's rough light curve (at most this many, evenly spaced)."
const ROUGH_COLUMNS = 512
"""
Largest standard error of a fiber's own rough shape (per difference; the shape's mean is 1) for
it to shape the fiber's jump detection; a fiber above it takes the common shape (pyapred's
`MAX_ROUGH_ERROR`).
"""
const MAX_ROUGH_ERROR = 0.02
"Differences in the first pass's rough median."
const N_ROUGH = 9

"""
    ChipExposure(reads, read_noise; gain = 1.0, saturation = nothing, name = "")

The reads of one chip and what is needed to fit them (pyapred's `ChipExposure`).

# Arguments
- `reads`: `(nx, ny, n_reads)` raw reads in DN, any real type (`UInt16`, `Float32`, `Float64`),
  ApogeeReduction.jl's axis order; reads are equally spaced.
- `read_noise`: single-read sigma, DN; a number or `(nx, ny)`.
- `gain`: e-/DN; a number or `(nx, ny)`.
- `saturation`: DN, a number or `(nx, ny)`: the first read at or above it and every later read are
  unusable; `nothing`: no level.
"""
struct ChipExposure{R <: AbstractArray{<:Real, 3}, N, G, S}
    name::String
    reads::R
    read_noise::N
    gain::G
    saturation::S
end

function ChipExposure(reads::AbstractArray{<:Real, 3}, read_noise; gain = 1.0,
        saturation = nothing, name::AbstractString = "")
    nx, ny, _ = size(reads)
    for (what, value) in (("read_noise", read_noise), ("gain", gain))
        value isa Real || size(value) == (nx, ny) ||
            throw(DimensionMismatch("$what: expected a number or size $((nx, ny)), got $(size(value))"))
        all(v -> SCALE_RANGE[1] <= v <= SCALE_RANGE[2], value) ||
            throw(ArgumentError("$what: expected finite values > 0, within [$(SCALE_RANGE[1]), $(SCALE_RANGE[2])]"))
    end
    saturation === nothing || saturation isa Real || size(saturation) == (nx, ny) ||
        throw(DimensionMismatch("saturation: expected nothing, a number or size $((nx, ny))"))
    saturation === nothing || !any(isnan, saturation) ||
        throw(ArgumentError("saturation: expected numbers (Inf for none), got NaN"))
    return ChipExposure(String(name), reads, read_noise, gain, saturation)
end

"A calibration value at pixel `(x, y)`: a number, a map, or `nothing` (no saturation: `Inf`)."
pixel_value(value::Real, x, y) = Float64(value)
pixel_value(value::AbstractMatrix, x, y) = Float64(value[x, y])
pixel_value(::Nothing, x, y) = Inf

"""
    PreparedChip

A chip after [`prepare_chip`](@ref) (pyapred's `PreparedChip`, axes reversed, 1-based):

- `name`, `traces`, `pixel_map` ([`PixelMap`](@ref)), `fit_pixels` ([`FitPixels`](@ref));
- `fit_reads` `(n_pix, n_fibers, n_reads)` Float64 reads of the fit pixels (NaN for padding),
  `fit_read_noise`, `fit_gain` `(n_pix, n_fibers)`;
- `jumps`: the reads masked after a detected jump, `CartesianIndex(x, y, read)` (a jump in
  difference `k` masks read `k + 1`), in the order row, column, read;
- `saturated` `(nx, ny)`: a read reached the saturation level (or was not finite);
- `rate` `(nx, ny)` `Float32`: the first pass's robust rate, DN per read;
- `omega_rough` `(K, n_fibers)` `Float32`: each fiber's rough light curve (mean 1).
"""
struct PreparedChip
    name::String
    traces::Traces
    pixel_map::PixelMap
    fit_pixels::FitPixels
    fit_reads::Array{Float64, 3}
    fit_read_noise::Matrix{Float64}
    fit_gain::Matrix{Float64}
    jumps::Vector{CartesianIndex{3}}
    saturated::Matrix{Bool}
    rate::Matrix{Float32}
    omega_rough::Matrix{Float32}
end

"""
    median32!(v)

NumPy's `median` of `Float32` values (`v` is sorted in place): NaN if any value is NaN, else the
middle value, or the mean of the middle two in `Float32`.
"""
function median32!(v::AbstractVector{Float32})
    n = length(v)
    (n == 0 || any(isnan, v)) && return NaN32
    sort!(v)
    return isodd(n) ? v[(n + 1) ÷ 2] : (v[n ÷ 2] + v[n ÷ 2 + 1]) / 2
end

"""
    rough_omega(reads, traces, saturation)

Each fiber's rough light curve `(K, n_fibers)` `Float32`, mean 1 (pyapred's `_rough_omega`). A
fiber's own shape: per trace-center pixel, the differences over their median; per difference,
the median of those ratios over the columns where the fiber is at least half its brightest.
Where its standard error ([`rough_error`](@ref)) exceeds `MAX_ROUGH_ERROR`, the fiber takes the
common shape: per difference, the median of the well-measured fibers' own shapes (ones if there
is none). Excluded (FPI) fibers are flat: their lamp is steady, and extraction models them so.
Non-positive or undefined elements are 1. It shapes the first pass's jump detector and sets the
reference read.
"""
function rough_omega(reads::AbstractArray{<:Real, 3}, traces::Traces, saturation)
    _, ny, N = size(reads)
    K = N - 1
    nc, nf = size(traces.y_center)
    cols = 1:max(1, nc ÷ ROUGH_COLUMNS):nc
    m = length(cols)
    diffs = Array{Float32}(undef, K, m, nf)
    level = Matrix{Float32}(undef, m, nf)
    core = Vector{Float32}(undef, N)
    buf = Vector{Float32}(undef, K)
    for f in 1:nf, (j, x) in enumerate(cols)
        y = Int(clamp(nearest_row(traces.y_center[x, f]), 1.0, Float64(ny)))
        sat = pixel_value(saturation, x, y)
        for i in 1:N
            core[i] = Float32(reads[x, y, i])
        end
        # A read at or above saturation makes it and every later difference undefined.
        hit = core[1] >= sat
        for k in 1:K
            hit |= core[k + 1] >= sat
            diffs[k, j, f] = hit ? NaN32 : core[k + 1] - core[k]
        end
        copyto!(buf, view(diffs, :, j, f))
        level[j, f] = median32!(buf)
    end
    own = Matrix{Float32}(undef, K, nf)
    measured = falses(nf)
    ratio = Vector{Float32}(undef, m)
    shape_error = Vector{Float64}(undef, K)
    for f in 1:nf
        # pyapred: nanmax(where(isfinite(level), level, 0)): 0 stands in for a non-finite
        # level only, so a fiber whose levels are all negative keeps its own (negative) top.
        top = -Inf32
        for j in 1:m
            top = max(top, isfinite(level[j, f]) ? level[j, f] : 0.0f0)
        end
        half = 0.5f0 * top
        for k in 1:K
            n = 0
            for j in 1:m
                r = diffs[k, j, f] / level[j, f]
                if level[j, f] > half && isfinite(r)
                    n += 1
                    ratio[n] = r
                end
            end
            own[k, f] = nanmedian32(view(ratio, 1:n))
            shape_error[k] = rough_error(view(ratio, 1:n), own[k, f])
        end
        measured[f] = !traces.excluded[f] && nanmedian(shape_error) <= MAX_ROUGH_ERROR
    end
    common = ones(Float32, K)
    if any(measured)
        for k in 1:K
            common[k] = nanmedian32(own[k, measured])
        end
    end
    omega = Matrix{Float32}(undef, K, nf)
    for f in 1:nf
        total = 0.0f0
        for k in 1:K
            value = traces.excluded[f] ? 1.0f0 : measured[f] ? own[k, f] : common[k]
            value = isfinite(value) && value > 0 ? value : 1.0f0
            omega[k, f] = value
            total += value
        end
        mean_shape = total / K
        for k in 1:K
            omega[k, f] /= mean_shape
        end
    end
    return omega
end

"""
    nanmedian32(v)

NumPy's median of the non-NaN `Float32` values of `v` (NaN if there is none): the middle value,
or the mean of the middle two in `Float32` (pyapred's `_nanmedian_last_axis`). `v` is not
modified.
"""
function nanmedian32(v::AbstractVector{Float32})
    sorted = sort!(filter(!isnan, v))
    n = length(sorted)
    n == 0 && return NaN32
    return (sorted[(n + 1) ÷ 2] + sorted[n ÷ 2 + 1]) / 2
end

"""
    rough_error(ratio, own)

Standard error of the median `own` of the values `ratio` (pyapred's `_rough_error`, one
difference of one fiber): that of a median of Gaussian values, `1.2533 * 1.4826 * MAD / sqrt(n)`
over the `n = length(ratio)` values, the MAD in `Float32`; `Inf` for none.

# Arguments
- `ratio`: the fiber's finite ratios at one difference, `Float32`.
- `own`: their median.
"""
function rough_error(ratio::AbstractVector{Float32}, own::Float32)
    n = length(ratio)
    n == 0 && return Inf
    deviation = Float32[abs(r - own) for r in ratio]
    mad = nanmedian32(deviation)
    return 1.2533 * 1.4826 * Float64(mad) / sqrt(n)
end

"""
    is_jump(excess, model, inv_gain, var_read, thr2)

`excess > threshold * noise(model)` (`thr2` is the threshold squared), decided on the squares
as pyapred's `_is_jump`: `excess > 0` and `excess^2 > thr2 * noise^2`, with no square root. A
negative or NaN variance is no jump.

# Arguments
- `excess`: the difference less its model, DN.
- `model`: the model difference, DN; its photon noise counts where it is positive.
- `inv_gain`: 1 / gain, DN/e-.
- `var_read`: twice the single-read variance, DN^2.
- `thr2`: the threshold squared, sigmas^2.
"""
@inline function is_jump(excess, model, inv_gain, var_read, thr2)
    variance = thr2 * (max(model, 0.0) * inv_gain + var_read)
    return (excess > 0.0) & (variance >= 0.0) & (excess * excess > variance)
end

"""
    first_pass(chip, shape_index, shapes, threshold)

One pass over every pixel of a chip (threaded over rows, columns gathered in blocks so that each
read plane is read contiguously): the robust rate, saturation and jumps, as pyapred's
`first_pass_kernel`.

# Arguments
- `shape_index`: `(nx, ny)` column of `shapes` giving each pixel's expected light curve.
- `shapes`: `(K, n_shapes)` expected differences per unit rate (mean 1).
- `threshold`: jump threshold in sigmas of a difference.

# Returns
`(rate (nx, ny) Float32, saturated (nx, ny), jumps)`: the rate is the sum of the usable
differences that are not jumps under a rough level (the median of at most 9 evenly spaced
shape-scaled ones) over the sum of their shapes (the rough level if none; 0 if no difference is
usable); a pixel is saturated when a read reached the saturation level or was not finite
(it and every later read are unusable); `jumps` lists `CartesianIndex(x, y, k + 1)` for every
difference `k` that exceeds `rate * shape_k` by `threshold` sigmas.
"""
function first_pass(chip::ChipExposure, shape_index::AbstractMatrix, shapes::AbstractMatrix,
        threshold::Real)
    nx, ny, _ = size(chip.reads)
    rate = Matrix{Float32}(undef, nx, ny)
    saturated = Matrix{Bool}(undef, nx, ny)
    row_jumps = [CartesianIndex{3}[] for _ in 1:ny]
    thr2 = Float64(threshold) * Float64(threshold)
    Threads.@threads for y in 1:ny
        first_pass_row!(rate, saturated, row_jumps[y], chip, shape_index, shapes, thr2, y)
    end
    # Appended row by row: `reduce(vcat, ...; init)` concatenates pairwise, copying the jumps
    # found so far once per row.
    jumps = CartesianIndex{3}[]
    sizehint!(jumps, sum(length, row_jumps; init = 0))
    for row in row_jumps
        append!(jumps, row)
    end
    return rate, saturated, jumps
end

"One row of [`first_pass`](@ref)."
function first_pass_row!(rate, saturated, jumps, chip::ChipExposure, shape_index, shapes, thr2, y)
    reads = chip.reads
    nx, _, N = size(reads)
    K = N - 1
    block = Matrix{Float64}(undef, N, BLOCK)
    d = zeros(K)
    rough_values = zeros(N_ROUGH)
    for x0 in 1:BLOCK:nx
        x1 = min(x0 + BLOCK - 1, nx)
        @inbounds for j in 1:N, x in x0:x1
            block[j, x - x0 + 1] = Float64(reads[x, y, j])
        end
        for x in x0:x1
            ramp = view(block, :, x - x0 + 1)
            sat = pixel_value(chip.saturation, x, y)
            n_good = N  # reads before the first unusable one
            for j in 1:N
                if !isfinite(ramp[j]) || ramp[j] >= sat
                    n_good = j - 1
                    break
                end
            end
            column = shape_index[x, y]
            @inbounds for k in 1:K
                d[k] = ramp[k + 1] - ramp[k]
            end
            # A rough level from the median of at most N_ROUGH evenly spaced differences, each
            # over its shape.
            n_diff = max(n_good - 1, 0)
            n_rough = min(n_diff, N_ROUGH)
            rough = 0.0
            if n_rough > 0
                for m in 0:(n_rough - 1)
                    k = (m * n_diff) ÷ n_rough + 1
                    rough_values[m + 1] = d[k] / shapes[k, column]
                end
                v = sort!(view(rough_values, 1:n_rough))
                rough = isodd(n_rough) ? v[n_rough ÷ 2 + 1] :
                        0.5 * (v[n_rough ÷ 2] + v[n_rough ÷ 2 + 1])
            end
            inv_gain = 1.0 / pixel_value(chip.gain, x, y)
            var_read = 2.0 * pixel_value(chip.read_noise, x, y)^2
            # The usable differences that are not jumps under the rough level, summed over the
            # sum of their shapes: a difference whose shape is near 0 (a thick cloud) counts for
            # little instead of dividing its noise by that shape.
            total = 0.0
            weight = 0.0
            for k in 1:K
                model = rough * shapes[k, column]
                if k < n_good && !is_jump(d[k] - model, model, inv_gain, var_read, thr2)
                    total += d[k]
                    weight += shapes[k, column]
                end
            end
            level = weight > 0 ? total / weight : rough
            rate[x, y] = Float32(level)
            saturated[x, y] = n_good < N
            for k in 1:K
                model = level * shapes[k, column]
                if k < n_good && is_jump(d[k] - model, model, inv_gain, var_read, thr2)
                    push!(jumps, CartesianIndex(x, y, k + 1))
                end
            end
        end
    end
    return nothing
end

"""
    prepare_chip(chip, traces, options = FitOptions())

Stage 1 (pyapred's `prepare_chip`): detect jumps and saturation in one pass over the chip, map
pixels to fibers with this exposure's brightness and choose each fiber's omega-fit pixels.

# Arguments
- `chip`: [`ChipExposure`](@ref), reads `(nx, ny, n_reads)`, `n_reads >= 3`.
- `traces`: [`Traces`](@ref) of its fibers, columns `1:n_columns` traced (`n_columns <= nx`).
- `options`: [`FitOptions`](@ref); `jump_threshold`, `map_halfwidth`, `min_snr`,
  `core_halfwidth`, `min_purity` and `max_fit_pixels` are used.

# Returns
A [`PreparedChip`](@ref).
"""
function prepare_chip(chip::ChipExposure, traces::Traces, options::FitOptions = FitOptions())
    check_options(options)
    reads = chip.reads
    size(reads, 3) >= 3 ||
        throw(ArgumentError("reads: expected (nx, ny, n_reads >= 3), got size $(size(reads))"))
    nx, ny, N = size(reads)
    K = N - 1
    check_geometry(traces, nx, ny)
    nc, nf = size(traces.y_center)
    omega_rough = rough_omega(reads, traces, chip.saturation)
    shapes = hcat(Float64.(omega_rough), ones(K))  # last column: background
    coarse = pixel_fiber_map(traces, ny; halfwidth = options.map_halfwidth)
    shape_index = fill(nf + 1, nx, ny)
    for y in 1:ny, x in 1:nc
        coarse.fiber[x, y] > 0 && (shape_index[x, y] = coarse.fiber[x, y])
    end
    rate, saturated, jumps = first_pass(chip, shape_index, shapes, options.jump_threshold)
    has_jump = zeros(Bool, nx, ny)
    for j in jumps
        has_jump[j[1], j[2]] = true
    end
    # The pixel map with this exposure's brightness, and the fit pixels.
    fiber_map = pixel_fiber_map(traces, ny, trace_brightness(traces, rate);
        halfwidth = options.map_halfwidth)
    snr = zeros(nc, ny)
    bad = zeros(Bool, nc, ny)
    for y in 1:ny, x in 1:nc
        g = pixel_value(chip.gain, x, y)
        inv_gain = 1.0 / g
        var_read = 2.0 * pixel_value(chip.read_noise, x, y)^2
        signal = Float64(max(rate[x, y], 0.0f0)) * g * K
        snr[x, y] = signal / sqrt(signal + var_read / inv_gain^2)
        bad[x, y] = saturated[x, y] || has_jump[x, y]
    end
    selected = select_fit_pixels(traces, fiber_map, snr, bad;
        core_halfwidth = options.core_halfwidth, min_purity = options.min_purity,
        min_snr = options.min_snr, max_pixels = options.max_fit_pixels)
    P = size(selected.x, 1)
    fit_reads = fill(NaN, P, nf, N)
    fit_read_noise, fit_gain = zeros(P, nf), zeros(P, nf)
    for f in 1:nf, p in 1:P
        x, y = selected.x[p, f], selected.y[p, f]
        fit_read_noise[p, f] = pixel_value(chip.read_noise, x, y)
        fit_gain[p, f] = pixel_value(chip.gain, x, y)
        selected.valid[p, f] || continue
        for j in 1:N
            fit_reads[p, f, j] = Float64(reads[x, y, j])
        end
    end
    return PreparedChip(chip.name, traces, fiber_map, selected, fit_reads, fit_read_noise,
        fit_gain, jumps, saturated, rate, omega_rough)
end
