# Fiber traces on a chip: profiles, the pixel-to-fiber map and the omega-fit pixels. The twin of
# `pyapred/traces/__init__.py` (`Traces`, `trace_brightness`, `pixel_fiber_map`,
# `select_fit_pixels`) and of its Numba kernel `pyapred/traces/_pixel_map.py`.
#
# Julia conventions: per-trace arrays are `(n_columns, n_fibers)`, indexed `[x, fiber]` like
# ApogeeReduction.jl's `trace_params[x, fiberIndx, p]`; images are `(nx, ny)` or `(n_columns, ny)`;
# rows, columns and fibers are 1-based (fiber `f` is ApogeeReduction.jl's `fiberIndx`, pyapred's
# index `f - 1`); y-centers are 1-based (pyapred's 0-based center plus 1). Rounding a center to a
# row follows pyapred's `rint` of the 0-based center (ties to even there), so both languages pick
# the same rows.

"""
    Traces(y_center, sigma, excluded = falses(n_fibers))

Gaussian trace profiles of the fibers of one chip.

# Arguments
- `y_center`: `(n_columns, n_fibers)` 1-based row of each trace's center in columns `1:n_columns`.
- `sigma`: Gaussian width in rows, `> 0`; a number or `(n_columns, n_fibers)`.
- `excluded`: `(n_fibers,)` fibers left out of the omega fits (the FPI fibers): constant model.

See [`traces_from_params`](@ref) and [`traces_from_centers`](@ref) for ApogeeReduction.jl's
arrays.
"""
struct Traces
    y_center::Matrix{Float64}
    sigma::Matrix{Float64}
    excluded::Vector{Bool}
    function Traces(y_center::AbstractMatrix, sigma, excluded = falses(size(y_center, 2)))
        y = Matrix{Float64}(y_center)
        nc, nf = size(y)
        1 <= nf <= N_FIBERS && nc >= 1 ||
            throw(ArgumentError("y_center: expected (n_columns, n_fibers) with 1 to $N_FIBERS fibers and at least one column, got size $(size(y))"))
        s = zeros(size(y))
        s .= sigma
        all(isfinite, y) || throw(ArgumentError("y_center: expected finite values"))
        all(v -> MIN_TRACE_SIGMA <= v <= MAX_TRACE_SIGMA, s) ||  # NaN fails too
            throw(ArgumentError("sigma: expected widths in [$MIN_TRACE_SIGMA, $MAX_TRACE_SIGMA] px"))
        # Fiber 1 (fiberId 300) is the lowest on the chip: centers rise with the index at every
        # column, or fluxes would be attached to the wrong fiberIds.
        for f in 2:nf, x in 1:nc
            y[x, f] > y[x, f - 1] ||
                throw(ArgumentError("y_center: expected centers rising with the fiber index at every column, found fiberId $(N_FIBERS + 1 - f) at $(y[x, f]), not above fiberId $(N_FIBERS + 2 - f) at $(y[x, f - 1]), column $x"))
        end
        length(excluded) == nf ||
            throw(ArgumentError("excluded: expected $nf values, got $(length(excluded))"))
        return new(y, s, Vector{Bool}(excluded))
    end
end

"APOGEE's fibers per chip (pyapred's `N_FIBERS`); fiberId = `N_FIBERS + 1 - fiber`."
const N_FIBERS = 300
"Trace widths (Gaussian sigma, rows) a chip's traces may have (pyapred's `MIN_TRACE_SIGMA`, `MAX_TRACE_SIGMA`)."
const MIN_TRACE_SIGMA = 0.1
const MAX_TRACE_SIGMA = 20.0

"APOGEE chip widths (`nx`, with and without the reference output) and their science columns."
const APOGEE_SCIENCE_COLUMNS = Dict(2048 => 2048, 2560 => 2048)

"fiberIds of the FPI (`fpiguide`) fibers of each telescope, as ApogeeReduction.jl's."
const FPI_FIBER_IDS = Dict("apo" => (75, 225), "lco" => (82, 213))

"`(n_fibers,)` the FPI fibers of `telescope` (`\"apo\"`, `\"lco\"` or `nothing`: none)."
function fpi_fibers(telescope, n_fibers::Integer)
    excluded = falses(n_fibers)
    telescope === nothing && return excluded
    key = lowercase(String(telescope))
    haskey(FPI_FIBER_IDS, key) ||
        throw(ArgumentError("telescope: expected \"apo\" or \"lco\", got $(repr(telescope))"))
    for id in FPI_FIBER_IDS[key]
        index = 301 - id  # ApogeeReduction.jl's fiberIndx
        index <= n_fibers && (excluded[index] = true)
    end
    return excluded
end

"""
    traces_from_params(trace_params; telescope)

[`Traces`](@ref) from ApogeeReduction.jl's `trace_params` or `regularized_trace_params`
(`traceMain_*` files): `(n_columns, n_fibers, 3)` with p = height, 1-based y-center, Gaussian
sigma. `telescope` (`"apo"` or `"lco"`) marks its FPI fibers as excluded; it is required, since
a forgotten one would fit the FPI fibers as steady bright fibers, which set the reference read
and the borrowed omega of the others (`nothing`: no FPI fiber, for a simulated geometry).
"""
function traces_from_params(trace_params::AbstractArray{<:Real, 3}; telescope)
    size(trace_params, 3) == 3 ||
        throw(ArgumentError("trace_params: expected (n_columns, n_fibers, 3), got size $(size(trace_params))"))
    n_fibers = size(trace_params, 2)
    return Traces(view(trace_params, :, :, 2), view(trace_params, :, :, 3),
        fpi_fibers(telescope, n_fibers))
end

"""
    traces_from_centers(centers; sigma = 1.0, telescope)

[`Traces`](@ref) from trace centers alone, `(n_columns, n_fibers)` 1-based (ar1D files'
`extract_trace_centers`), with Gaussian width `sigma` (a number or `(n_columns, n_fibers)`).
`telescope` is required, as in [`traces_from_params`](@ref) (`nothing`: no FPI fiber).
"""
function traces_from_centers(centers::AbstractMatrix; sigma = 1.0, telescope)
    return Traces(centers, sigma, fpi_fibers(telescope, size(centers, 2)))
end

"""
    nearest_row(y)

The row nearest a 1-based center `y`, as a `Float64`: pyapred's `rint` of the 0-based center plus
1, so that a center exactly between two rows goes where pyapred sends it.
"""
nearest_row(y::Float64) = round(y - 1.0) + 1.0

"Fraction of a unit-area Gaussian (center `y`, width `s`) that falls in row `row`."
profile_fraction(y, s, row) = ndtr((row + 0.5 - y) * (1.0 / s)) - ndtr((row - 0.5 - y) * (1.0 / s))

"""
    check_geometry(traces, nx, ny)

Throw an `ArgumentError` unless the traces fit a `(nx, ny)` chip: at most `nx` columns, centers
inside rows `[0.5, ny + 0.5]`. Warns (once a session: a night calls it per chip and exposure)
when traces stop short of an APOGEE chip's 2048 science columns (`nx` 2048, or 2560 with the
reference output): the untraced columns get no fiber (`BACKGROUND`).
"""
function check_geometry(traces::Traces, nx::Integer, ny::Integer)
    nc = size(traces.y_center, 1)
    nc <= nx ||
        throw(ArgumentError("traces: $nc columns, more than the chip's $nx"))
    science = get(APOGEE_SCIENCE_COLUMNS, nx, nc)
    nc >= science ||
        @warn("traces: the traces cover columns 1-$nc of the chip's $science; columns " *
              "$(nc + 1)-$science get no fiber (flagged BACKGROUND)", maxlog = 1)
    low, high = extrema(traces.y_center)
    (low >= 0.5 && high <= ny + 0.5) ||
        throw(ArgumentError("traces: y-centers in [$low, $high], outside the chip's rows [1, $ny] (1-based)"))
    return nothing
end

"""
    trace_brightness(traces, rate)

Rough per-column brightness of every trace, `(n_columns, n_fibers)`: the rate at the row nearest
its center (`rate` is `(>= n_columns, ny)`; NaN and negative values count as 0) divided by the
profile's fraction in that row.
"""
function trace_brightness(traces::Traces, rate::AbstractMatrix)
    nc, nf = size(traces.y_center)
    ny = size(rate, 2)
    out = zeros(nc, nf)
    for f in 1:nf, x in 1:nc
        y = traces.y_center[x, f]
        row = clamp(nearest_row(y), 1.0, Float64(ny))
        peak = rate[x, Int(row)]
        # NumPy's nan_to_num: NaN -> 0, +-Inf -> the type's largest finite value.
        peak = isnan(peak) ? zero(peak) : isinf(peak) ? copysign(floatmax(typeof(peak)), peak) : peak
        out[x, f] = Float64(max(peak, zero(peak))) / profile_fraction(y, traces.sigma[x, f], row)
    end
    return out
end

"""
    PixelMap

The fiber that dominates each pixel of the traced columns: `fiber` `(n_columns, ny)` `Int32`,
1-based (0 for background and inter-fiber pixels), and `purity` `(n_columns, ny)` `Float32`, the
dominant fiber's share of the modelled light (0 for background).
"""
struct PixelMap
    fiber::Matrix{Int32}
    purity::Matrix{Float32}
end

"""
    pixel_fiber_map(traces, ny, brightness = nothing; halfwidth = 3.0)

Assign every pixel of the traced columns to the fiber whose profile dominates it (threaded over
columns). `brightness` `(n_columns, n_fibers)` (default all equal, [`trace_brightness`](@ref))
decides blended pixels and the purity; a pixel further than `halfwidth` sigmas from every trace is
background. Ties go to the fiber seen first, in the order offset from the rounded center (outer),
then fiber, as in pyapred.
"""
function pixel_fiber_map(traces::Traces, ny::Integer, brightness = nothing;
        halfwidth::Real = 3.0)
    nc, nf = size(traces.y_center)
    bright = brightness === nothing ? ones(nc, nf) : Matrix{Float64}(brightness)
    size(bright) == (nc, nf) ||
        throw(ArgumentError("brightness: expected size $((nc, nf)), got $(size(bright))"))
    # A tiny floor so that a dark fiber still owns its core pixels.
    least = 1e-6 * max(maximum(bright; init = 0.0), 1e-300)
    bright .= max.(bright, least)
    reach = ceil(Int, halfwidth * maximum(traces.sigma)) + 1
    fiber = zeros(Int32, nc, ny)
    purity = zeros(Float32, nc, ny)
    Threads.@threads for x in 1:nc
        pixel_map_column!(fiber, purity, traces, bright, x, reach, Float64(halfwidth))
    end
    return PixelMap(fiber, purity)
end

"One column of [`pixel_fiber_map`](@ref): the CDF at each pixel edge is computed once."
function pixel_map_column!(fiber, purity, traces::Traces, bright, x, reach, halfwidth)
    nf = size(traces.y_center, 2)
    ny = size(fiber, 2)
    owner = zeros(Int32, ny)
    best = zeros(ny)
    total = zeros(ny)
    lower = zeros(nf)
    for f in 1:nf
        y = traces.y_center[x, f]
        lower[f] = ndtr((nearest_row(y) - reach - 0.5 - y) * (1.0 / traces.sigma[x, f]))
    end
    for offset in (-reach):reach, f in 1:nf
        center = traces.y_center[x, f]
        s = traces.sigma[x, f]
        row = nearest_row(center) + offset
        upper = ndtr((row + 0.5 - center) * (1.0 / s))
        light = (upper - lower[f]) * bright[x, f]
        lower[f] = upper
        (row < 1 || row > ny) && continue
        r = Int(row)
        total[r] += light
        if abs(row - center) <= halfwidth * s && light > best[r]
            best[r] = light
            owner[r] = f
        end
    end
    for r in 1:ny
        fiber[x, r] = owner[r]
        purity[x, r] = owner[r] > 0 ? Float32(best[r] / total[r]) : 0.0f0
    end
    return nothing
end

"""
    FitPixels

Per-fiber pixel sets of the omega fit, padded to a common length: `x`, `y` `(n_pix, n_fibers)`
1-based coordinates (padding repeats a valid coordinate) and `valid` `(n_pix, n_fibers)`, false for
padding. The order within a fiber is pyapred's: valid pixels by decreasing S/N, then padding.
"""
struct FitPixels
    x::Matrix{Int}
    y::Matrix{Int}
    valid::Matrix{Bool}
end

"Number of pixels selected per fiber."
fit_pixel_count(fp::FitPixels) = vec(sum(fp.valid; dims = 1))

"""
    select_fit_pixels(traces, pixel_map, snr, bad; core_halfwidth = 0.5, min_purity = 0.95,
                      min_snr = 30.0, max_pixels = nothing)

Choose, per fiber, the trace-core pixels of its omega fit: a pixel within `core_halfwidth` rows of
the trace center, owned by the fiber with at least `min_purity` of the light, with S/N at least
`min_snr` and not `bad` (saturated, cosmic ray); excluded fibers get none. With `max_pixels`, only
the highest-S/N pixels are kept.

# Arguments
- `pixel_map`: [`PixelMap`](@ref) with this exposure's brightness.
- `snr`: `(>= n_columns, ny)` S/N of each pixel's total signal (NaN counts as 0).
- `bad`: `(>= n_columns, ny)` `Bool`, or `nothing`.
"""
function select_fit_pixels(traces::Traces, pixel_map::PixelMap, snr::AbstractMatrix, bad;
        core_halfwidth::Real = 0.5, min_purity::Real = 0.95, min_snr::Real = 30.0,
        max_pixels = nothing)
    nc, nf = size(traces.y_center)
    ny = size(pixel_map.fiber, 2)
    reach = ceil(Int, core_halfwidth)
    n_cand = (2 * reach + 1) * nc
    cand_x = zeros(Int, n_cand, nf)
    cand_y = zeros(Int, n_cand, nf)
    cand_ok = zeros(Bool, n_cand, nf)
    key = zeros(n_cand, nf)
    for f in 1:nf, (i, offset) in enumerate((-reach):reach), x in 1:nc
        c = (i - 1) * nc + x  # candidates offset by offset, columns within
        y = traces.y_center[x, f]
        row = nearest_row(y) + offset
        clipped = clamp(row, 1.0, Float64(ny))
        r = Int(clipped)
        value = snr[x, r]
        value = isnan(value) ? 0.0 : Float64(value)
        ok = abs(row - y) <= core_halfwidth && row == clipped && pixel_map.fiber[x, r] == f &&
             pixel_map.purity[x, r] >= min_purity && value >= min_snr &&
             !(bad !== nothing && bad[x, r]) && !traces.excluded[f]
        cand_x[c, f] = x
        cand_y[c, f] = r
        cand_ok[c, f] = ok
        key[c, f] = ok ? -value : Inf
    end
    n_keep = maximum(vec(sum(cand_ok; dims = 1)); init = 0)
    max_pixels === nothing || (n_keep = min(n_keep, Int(max_pixels)))
    n_keep = max(n_keep, 1)
    x_out, y_out, valid = zeros(Int, n_keep, nf), zeros(Int, n_keep, nf), zeros(Bool, n_keep, nf)
    for f in 1:nf
        # Highest S/N first, ties in candidate order (a stable sort, comparing with `<` as NumPy).
        order = sortperm(view(key, :, f); lt = (<), alg = MergeSort)
        for (j, c) in enumerate(view(order, 1:n_keep))
            x_out[j, f] = cand_x[c, f]
            y_out[j, f] = cand_y[c, f]
            valid[j, f] = cand_ok[c, f]
        end
    end
    return FitPixels(x_out, y_out, valid)
end
