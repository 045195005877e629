# Stage 2, fit the fibers: one batched omega fit, the model choice per fiber, borrowing and the
# fallback, and with `FitOptions.chromatic` the chromatic model of the time-variable fibers. The
# twin of `pyapred/exposure/fibers.py` (`fit_fibers`, `_scatter`, `choose_models`,
# `_weighted_mean_omega`, `_significance`, `_equivalent_amplitude`, `_fit_pixel_coordinates`,
# `_spread_chromatic`, `choose_chromatic`, `FiberFits.column_omega`, `segment_contrast`,
# `_segment_contrasts`), built on
# [`fit_omega`](@ref), [`fit_omega_chromatic`](@ref) and [`fit_constant`](@ref); the p-values use
# [`chi2_sf`](@ref) where pyapred uses SciPy.

"Per-fiber model codes of [`FiberFits`](@ref)`.model`, as pyapred's (and its products')."
const MODEL_CONSTANT = 0
const MODEL_TIME_VARIABLE = 1
const MODEL_BORROWED = 2
"Time-variable with an omega that changes across wavelength (`FitOptions.chromatic`)."
const MODEL_CHROMATIC = 3
"Model names by code + 1, as pyapred's products write them."
const MODEL_NAMES = ("constant", "time_variable", "borrowed", "time_variable_chromatic")

"""
    FiberFits

Per-fiber omega fits and model decisions (one chip, or all chips jointly); pyapred's
`FiberFits` with the axes reversed and 1-based indices:

- `omega_fit` `(K, n_fibers)`: the fitted omega, `omega_fit[ref_index, f] == 1`; NaN for fibers not
  fitted; `omega_cov` `(K, K, n_fibers)` its covariance (zeros for fibers not fitted);
- `omega` `(K, n_fibers)`: the omega extraction uses, mean 1: ones for constant-model fibers, the
  fit for time-variable ones, the bright-fiber mean for borrowed ones;
- `model` `(n_fibers,)`: `MODEL_CONSTANT`, `MODEL_TIME_VARIABLE`, `MODEL_BORROWED` or
  `MODEL_CHROMATIC` (time-variable with an omega that changes across wavelength; its `omega`
  column is the chromatic fit's omega at the middle of the span, `c = 0`, mean 1, and extraction
  uses each column's own, [`column_omega`](@ref));
- `delta_chi2`, `p_value`, `amplitude`, `chi2_dof_constant`, `chi2_dof_variable`,
  `n_fit_pixels`, `flags` `(n_fibers,)`: the decision statistics, pixel counts and fiber flags
  (the fit's group flags plus `BORROWED_OMEGA`, `FALLBACK_CONSTANT`, `FPI_FIBER`, `NO_OMEGA_FIT`,
  `LOW_SEGMENT_CONTRAST`);
- `ref_index`: the read difference fixed to 1 in every fiber's fit (1-based);
- `bright` `(n_fibers,)`: fibers that constrain their own omega; `borrowed_omega` `(K,)` and
  `borrowed_cov` `(K, K)`: the bright-fiber mean lent to faint fibers (`ref_index` = 1);
- `fit`: the batched [`fit_omega`](@ref) result, fibers as groups (`nothing` with
  `model = "constant"`); `pixel_chi2_constant` `(n_pix, n_fibers)`: the constant-model chi2 of
  each fit pixel (NaN for padding);
- `segment_chip`, `segment_pixels` `(n_segments, n_fibers)`, with the 1/f nuisance term
  (`correct_1f = "nuisance"`; else `nothing`): the chip (1-based among the chips fitted together,
  0 where a fiber has fewer segments) and the number of fit pixels of each of a fiber's readout
  segments, whose offsets are `fit.offsets` `(K, n_segments, n_fibers)`; see [`offset_rms`](@ref);
- `chromatic`, with `FitOptions.chromatic` (else `nothing`): the [`fit_omega_chromatic`](@ref)
  result of every fiber, fibers as groups (`omega`, `gamma` `(K, n_fibers)`, `cov`
  `(2K, 2K, n_fibers)`, `delta_chi2`, `p_value`, `amplitude` `(n_fibers,)`, ...); the fibers not
  tried (those without the time-variable model) are empty groups, their statistics NaN and
  their `ref_index` 0; `model == MODEL_CHROMATIC` where its test was significant
  ([`choose_chromatic`](@ref));
- `coordinate_span`, with `chromatic`: `(blue, red)`, the bluest and reddest wavelength (micron)
  of the chips fitted together, where the wavelength coordinate is -1 and +1
  ([`wavelength_coordinate`](@ref)).

`FiberFits(omega_fit, ..., segment_chip, segment_pixels)` (the first 19 fields) leaves
`chromatic` and `coordinate_span` `nothing`.
"""
struct FiberFits
    omega_fit::Matrix{Float64}
    omega_cov::Array{Float64, 3}
    omega::Matrix{Float64}
    model::Vector{Int}
    delta_chi2::Vector{Float64}
    p_value::Vector{Float64}
    amplitude::Vector{Float64}
    chi2_dof_constant::Vector{Float64}
    chi2_dof_variable::Vector{Float64}
    n_fit_pixels::Vector{Int}
    flags::Vector{Int}
    ref_index::Int
    bright::Vector{Bool}
    borrowed_omega::Vector{Float64}
    borrowed_cov::Matrix{Float64}
    fit::Any
    pixel_chi2_constant::Any
    segment_chip::Any
    segment_pixels::Any
    chromatic::Any
    coordinate_span::Any
end

FiberFits(omega_fit, omega_cov, omega, model, delta_chi2, p_value, amplitude, chi2_dof_constant,
    chi2_dof_variable, n_fit_pixels, flags, ref_index, bright, borrowed_omega, borrowed_cov, fit,
    pixel_chi2_constant, segment_chip, segment_pixels) =
    FiberFits(omega_fit, omega_cov, omega, model, delta_chi2, p_value, amplitude,
        chi2_dof_constant, chi2_dof_variable, n_fit_pixels, flags, ref_index, bright,
        borrowed_omega, borrowed_cov, fit, pixel_chi2_constant, segment_chip, segment_pixels,
        nothing, nothing)

"""
    with_fields(fits; changes...)

A copy of `fits` with the fields named in `changes` replaced (pyapred's `dataclasses.replace`).
"""
function with_fields(fits::FiberFits; changes...)
    for name in keys(changes)
        name in fieldnames(FiberFits) ||
            throw(ArgumentError("$name: expected a field of FiberFits"))
    end
    return FiberFits((haskey(changes, name) ? changes[name] : getfield(fits, name)
                      for name in fieldnames(FiberFits))...)
end

"""
    offset_rms(fits)

RMS of the fitted 1/f offsets per chip, in the units of the reads (DN), `(n_chips,)`, or
`nothing` without the nuisance term (pyapred's `FiberFits.offset_rms`): over the finite offsets
of the fibers whose fit converged, each segment weighted by its number of fit pixels; NaN for a
chip with none.
"""
function offset_rms(fits::FiberFits)
    (fits.segment_chip === nothing || fits.fit === nothing) && return nothing
    offsets = fits.fit.offsets  # (K, S, n_fibers)
    n_chips = maximum(fits.segment_chip; init = 0)
    out = fill(NaN, n_chips)
    for chip in 1:n_chips
        total = weight = 0.0
        for f in axes(offsets, 3), s in axes(offsets, 2), k in axes(offsets, 1)
            c = offsets[k, s, f]
            if fits.segment_chip[s, f] == chip && isfinite(c) && fits.fit.converged[f]
                total += fits.segment_pixels[s, f] * c^2
                weight += fits.segment_pixels[s, f]
            end
        end
        weight > 0 && (out[chip] = sqrt(total / weight))
    end
    return out
end

"""
    product_omega(fits)

Omega as pyapred's products store it, `(omega (K, n_fibers), omega_cov (K, K, n_fibers))`: the fit
at `ref_index` normalisation (`omega[ref_index] = 1`), ones with zero covariance for fibers not
fitted, the bright-fiber mean for borrowed fibers, and for chromatic fibers (`MODEL_CHROMATIC`)
the chromatic fit's omega (at `c = 0`) with the omega block of its covariance.
"""
function product_omega(fits::FiberFits)
    K, nf = size(fits.omega_fit)
    omega = copy(fits.omega_fit)
    cov = copy(fits.omega_cov)
    for f in 1:nf, k in 1:K
        if !isfinite(omega[k, f])
            omega[k, f] = 1.0
            cov[k, :, f] .= 0.0
        end
    end
    for f in 1:nf
        if fits.model[f] == MODEL_BORROWED
            omega[:, f] = fits.borrowed_omega
            cov[:, :, f] = fits.borrowed_cov
        elseif fits.model[f] == MODEL_CHROMATIC && fits.chromatic !== nothing
            omega[:, f] = view(fits.chromatic.omega, :, f)
            cov[:, :, f] = view(fits.chromatic.cov, 1:K, 1:K, f)
        end
    end
    return omega, cov
end

"Concatenate per-chip arrays along the pixel axis (dims 1); one chip is returned as it is."
joined(values) = length(values) == 1 ? values[1] : cat(values...; dims = 1)

"""
    fit_fibers(prepared, options = FitOptions())

Stage 2 (pyapred's `fit_fibers`): one batched omega fit over the fibers from the fit pixels of one
chip, or of every chip in `prepared` (`joint_chips`: the same reads and fibers on each), then the
model choice ([`choose_models`](@ref)). Every fiber is fitted with one `ref_index`: the read
difference where the exposure is most transparent (the largest median of the non-excluded
fibers' rough omega). Only fibers with at least `max(min_fit_pixels, 1)` fit pixels are fitted;
with the nuisance term, only those whose [`segment_contrast`](@ref) (from their constant fit)
reaches `MIN_SEGMENT_CONTRAST`: the others cannot tell omega from their offsets, are flagged
`LOW_SEGMENT_CONTRAST` and are handled as faint fibers.
With `options.chromatic` the fibers given the time-variable model are also fitted with the
chromatic model ([`fit_omega_chromatic`](@ref), from their achromatic fit, each fit pixel at its
column's wavelength coordinate over the chips in `prepared`, which must be named `"R"`, `"G"` or
`"B"`), and given it where it is significant ([`choose_chromatic`](@ref)).

# Arguments
- `prepared`: a [`PreparedChip`](@ref) or a vector of them.
- `options`: [`FitOptions`](@ref); `model`, `min_fit_pixels`, `max_iter`, `jump_search` and
  `correct_1f` / `segment_columns` (the nuisance term: one offset per readout segment,
  [`readout_segments`](@ref)) here, the model choice's settings in [`choose_models`](@ref),
  `chromatic` here and `chromatic_p_value` in [`choose_chromatic`](@ref).

# Returns
A [`FiberFits`](@ref).
"""
fit_fibers(prepared::PreparedChip, options::FitOptions = FitOptions()) =
    fit_fibers([prepared], options)

function fit_fibers(prepared::AbstractVector{PreparedChip}, options::FitOptions = FitOptions())
    check_options(options)
    isempty(prepared) && throw(ArgumentError("prepared: expected at least one chip"))
    # One chip twice counts its pixels twice: omega errors too small by sqrt 2.
    names = [p.name for p in prepared]
    length(unique(names)) == length(names) ||
        throw(ArgumentError("prepared: expected each chip once, got chips $names"))
    first_chip = prepared[1]
    excluded = first_chip.traces.excluded
    N = size(first_chip.fit_reads, 3)
    K = N - 1
    nf = length(excluded)
    all(p -> size(p.fit_reads, 3) == N && length(p.traces.excluded) == nf, prepared) ||
        throw(ArgumentError("joint chips: expected the same number of reads and fibers on every chip"))
    reads = joined([p.fit_reads for p in prepared])
    sigma = joined([p.fit_read_noise for p in prepared])
    gain = joined([p.fit_gain for p in prepared])
    valid = joined([p.fit_pixels.valid for p in prepared])
    # With the chromatic model: every fit pixel's wavelength coordinate, and the chips' span.
    coordinate, span = nothing, nothing
    if options.chromatic && options.model != "constant"
        per_chip, span = fit_pixel_coordinates(prepared)
        coordinate = joined(per_chip)
    end
    # With the nuisance term: the readout segment key of every fit pixel (pyapred's keys).
    segment_keys = !nuisance(options) ? nothing :
           joined([[readout_key(p.fit_pixels.x[j, f], p.fit_pixels.y[j, f], c,
                        options.segment_columns) for j in axes(p.fit_pixels.x, 1),
                    f in axes(p.fit_pixels.x, 2)] for (c, p) in enumerate(prepared)])
    if length(prepared) > 1
        # Each chip's fit pixels come first on its own padded pixel axis, so joined, a fiber's
        # pixels of later chips sit after the earlier chips' padding: put every fiber's valid
        # pixels first (stably, as pyapred), so that the first P entries hold all of them.
        for f in axes(valid, 2)
            order = vcat(findall(view(valid, :, f)), findall(.!view(valid, :, f)))
            valid[:, f] = valid[order, f]
            sigma[:, f] = sigma[order, f]
            gain[:, f] = gain[order, f]
            reads[:, f, :] = reads[order, f, :]
            segment_keys === nothing || (segment_keys[:, f] = segment_keys[order, f])
            coordinate === nothing || (coordinate[:, f] = coordinate[order, f])
        end
    end
    n_pix = vec(sum(valid; dims = 1))
    flags = [excluded[f] ? FPI_FIBER : 0 for f in 1:nf]
    ref_index = reference_read(prepared, excluded)
    if options.model == "constant"
        # No omega fit, so no statistics of one: NaN, and every fiber flagged so.
        flags .|= NO_OMEGA_FIT
        return FiberFits(fill(NaN, K, nf), zeros(K, K, nf), ones(K, nf), zeros(Int, nf),
            fill(NaN, nf), fill(NaN, nf), fill(NaN, nf), fill(NaN, nf), fill(NaN, nf), n_pix,
            flags, ref_index, zeros(Bool, nf), ones(K), zeros(K, K), nothing, nothing, nothing,
            nothing)
    end
    # Only fibers that can be bright are fitted; the others are empty groups.
    todo = [f for f in 1:nf if !excluded[f] && n_pix[f] >= max(options.min_fit_pixels, 1)]
    # As pyapred: the first P entries of the pixel axis (every fit pixel, valid ones first).
    P = max(maximum(n_pix[todo]; init = 1), 1)
    if segment_keys !== nothing && !isempty(todo)
        # With the nuisance term omega is measured only by the flux contrast between the pixels
        # of a segment; a fiber without it has no finite best omega, and its fit wanders
        # (pyapred's docs/noise.md): it is not fitted, and is handled as a faint fiber.
        labels = readout_segments(segment_keys[1:P, todo], valid[1:P, todo])
        contrast = segment_contrasts(reads, valid, sigma, gain, todo, P, labels)
        low = .!(contrast .>= MIN_SEGMENT_CONTRAST)  # NaN (no pixel shares a segment): low
        for f in todo[low]
            flags[f] |= LOW_SEGMENT_CONTRAST
        end
        todo = todo[.!low]
    end
    segments = nothing
    if isempty(todo)
        fit, constant = empty_fits(K, P, 0, ref_index)
        # As pyapred's one fit_omega call for no fibers: the jump search's (empty) jump_mask.
        options.jump_search && (fit = merge(fit, (; jump_mask = zeros(Bool, K, P, 0))))
    else
        segment_keys === nothing ||
            (segments = readout_segments(segment_keys[1:P, todo], valid[1:P, todo]))
        fit, constant = fit_batched(reads, valid, sigma, gain, todo, P, ref_index, options,
            segments)
    end
    full_fit, full_constant = scatter_fits(fit, constant, todo, nf, P, ref_index)
    fits = choose_models(full_fit, full_constant, n_pix, excluded, options, flags)
    if segments !== nothing
        # The chip (1-based; 0: none) and the fit-pixel count of every (segment, fiber).
        S = maximum(segments; init = 1)
        segment_chip = zeros(Int, S, nf)
        segment_pixels = zeros(Int, S, nf)
        chip_keys = keys_per_chip(options.segment_columns)
        for (i, f) in enumerate(todo), p in 1:P
            if valid[p, f]
                segment_chip[segments[p, i], f] = segment_keys[p, f] ÷ chip_keys + 1
                segment_pixels[segments[p, i], f] += 1
            end
        end
        fits = with_fields(fits; segment_chip, segment_pixels)
    end
    coordinate === nothing && return fits
    # The chromatic model is tried where the time-variable one was chosen, from its achromatic
    # fit (the start: its omega, fluxes, reference read, jump mask and chi2).
    tried = [i for (i, f) in enumerate(todo) if fits.model[f] == MODEL_TIME_VARIABLE]
    rows = todo[tried]
    chromatic = empty_chromatic(K, P, nf)
    if !isempty(tried)
        start = map(value -> select_groups(value, rows), full_fit)
        tried_reads, tried_mask = fiber_reads_and_mask(reads, valid, rows, P)
        part = fit_omega_chromatic(tried_reads, sigma[1:P, rows], coordinate[1:P, rows];
            start, gain = gain[1:P, rows], mask = tried_mask, max_iter = options.max_iter)
        spread_chromatic!(chromatic, part, rows)
    end
    return choose_chromatic(fits, chromatic, span, options)
end

"Groups `rows` (the last axis) of one field of a per-group result; `nothing` stays."
select_groups(value, rows) = value === nothing ? nothing :
                             collect(selectdim(value, ndims(value), rows))

"""
    fiber_reads_and_mask(reads, valid, fibers, P)

The reads of the fibers `fibers` (1-based), their first `P` pixels, and the mask the fits take
with them (true = padding), as new arrays (pyapred's `_fit_reads`).

# Arguments
- `reads`: `(n_pix, n_fibers, N)`, every fiber's fit pixels as prepared; `valid`:
  `(n_pix, n_fibers)`, false = padding.

# Returns
`(reads, mask)`, both `(P, length(fibers), N)`.
"""
function fiber_reads_and_mask(reads::AbstractArray{<:Real, 3}, valid::AbstractMatrix{Bool},
        fibers::AbstractVector{<:Integer}, P::Integer)
    return reads[1:P, fibers, :], repeat(.!valid[1:P, fibers], 1, 1, size(reads, 3))
end

"""
With the nuisance term, a fiber is fitted only where its [`segment_contrast`](@ref) reaches this
(pyapred's `MIN_SEGMENT_CONTRAST`): on two simulated chips every nuisance fit that did not
converge had a contrast below 3, and every fiber whose omega error came within the 0.05 a bright
fiber needs had one above 46.
"""
const MIN_SEGMENT_CONTRAST = 10.0

"""
    segment_contrast(flux, flux_var, segments, valid)

How much a group's pixel fluxes differ within their readout segments, beyond their noise
(pyapred's `segment_contrast`). The 1/f nuisance term gives each segment one offset per read
difference, which takes the segment's mean: omega is then measured only by the flux contrast
between the pixels of a segment. This is that contrast's chi2 per degree of freedom, less 1:
about 0 where the pixels differ by their noise alone.

# Arguments
- `flux`, `flux_var`: `(n_pix, n_groups)`, each pixel's flux and its variance (the same units).
- `segments`: `(n_pix, n_groups)` segment labels within each group, 1-based
  ([`readout_segments`](@ref)).
- `valid`: `(n_pix, n_groups)`, false for padding. Pixels whose flux or variance is not finite,
  or whose variance is not positive, are left out too.

# Returns
`(n_groups,)`: `sum_p (f_p - m_s(p))^2 / v_p / (n - S) - 1`, `m_s` the inverse-variance weighted
mean of segment `s`, over the `n` pixels used in `S` segments; NaN where `n <= S`.
"""
function segment_contrast(flux::AbstractMatrix{<:Real}, flux_var::AbstractMatrix{<:Real},
        segments::AbstractMatrix{<:Integer}, valid::AbstractMatrix{Bool})
    usable(p, g) = valid[p, g] && isfinite(flux[p, g]) && isfinite(flux_var[p, g]) &&
                   flux_var[p, g] > 0
    contrast = fill(NaN, size(flux, 2))
    for g in axes(flux, 2)
        S = maximum(segments[p, g] for p in axes(flux, 1) if usable(p, g); init = 0)
        weights = zeros(S)
        sums = zeros(S)
        n = 0
        for p in axes(flux, 1)
            usable(p, g) || continue
            w = 1 / flux_var[p, g]
            weights[segments[p, g]] += w
            sums[segments[p, g]] += w * flux[p, g]
            n += 1
        end
        q = 0.0
        for p in axes(flux, 1)
            usable(p, g) || continue
            s = segments[p, g]
            q += (1 / flux_var[p, g]) * (flux[p, g] - sums[s] / weights[s])^2
        end
        dof = n - count(>(0), weights)
        dof > 0 && (contrast[g] = q / dof - 1)
    end
    return contrast
end

"""
    segment_contrasts(reads, valid, sigma, gain, todo, P, segments;
                      batch_bytes = FIT_BATCH_BYTES)

[`segment_contrast`](@ref) of the fibers `todo` from their [`fit_constant`](@ref) fit, in
batches of fibers as [`fit_batched`](@ref) takes them (pyapred's `_segment_contrasts`).

# Arguments
As [`fit_batched`](@ref)'s; `segments`: `(P, length(todo))` segment labels.

# Returns
`(length(todo),)`.
"""
function segment_contrasts(reads::AbstractArray{<:Real, 3}, valid::AbstractMatrix{Bool},
        sigma::AbstractMatrix, gain::AbstractMatrix, todo::AbstractVector{<:Integer},
        P::Integer, segments::AbstractMatrix{<:Integer}; batch_bytes::Integer = FIT_BATCH_BYTES)
    batch = fibers_per_batch(size(reads, 3) - 1, P, batch_bytes)
    contrast = fill(NaN, length(todo))
    for first_group in 1:batch:length(todo)
        rows = first_group:min(first_group + batch - 1, length(todo))
        fibers = todo[rows]
        batch_reads, mask = fiber_reads_and_mask(reads, valid, fibers, P)
        constant = fit_constant(batch_reads, sigma[1:P, fibers]; gain = gain[1:P, fibers], mask)
        contrast[rows] = segment_contrast(constant.flux, constant.flux_var, segments[:, rows],
            valid[1:P, fibers])
    end
    return contrast
end

"Work-array budget, bytes, of one batch of fibers in [`fit_batched`](@ref) (pyapred's
`FIT_BATCH_BYTES`)."
const FIT_BATCH_BYTES = 64 * 2^20

"With the nuisance term, the offsets' budget of one batch, bytes (about six `(S, K, K)` Float64
arrays per fiber; pyapred's `NUISANCE_BATCH_BYTES`)."
const NUISANCE_BATCH_BYTES = 256 * 2^20

"What the omega fit holds per fiber, pixel and difference at its peak, bytes (the differences,
the normal equations' `e_hat`, the jump search's arrays; pyapred's `FIT_BYTES_PER_ELEMENT`)."
const FIT_BYTES_PER_ELEMENT = 24

"""
    fit_batched(reads, valid, sigma, gain, todo, P, ref_index, options, segments;
                batch_bytes = FIT_BATCH_BYTES)

[`fit_omega`](@ref) and [`fit_constant`](@ref) of the fibers `todo` (their first `P` pixels) in
batches of fibers (pyapred's `_fit_batched`), so that the fit's work arrays (about
`FIT_BYTES_PER_ELEMENT` bytes per fiber, pixel and difference: 0.68 GB for 300 fibers of 2048
pixels and 46 differences at once) stay within `batch_bytes`, and with `segments` the offsets'
blocks within `NUISANCE_BATCH_BYTES`. Each batch's reads and mask are
taken from `reads` as the batch comes, so the fit holds no second copy of every fiber's reads.
The groups and pixels are fitted independently, so the result is the same as that of one call
over all of them.

# Arguments
- `reads`: `(n_pix, n_fibers, N)`, every fiber's fit pixels as prepared (padding last);
  `valid`: `(n_pix, n_fibers)`, false = padding (masked); `sigma`, `gain`: `(n_pix, n_fibers)`.
- `todo`: the `G` fibers to fit (1-based); `P`: the pixels fitted of each (the first `P`).
- `ref_index`: the reference read difference of every fiber (1-based).
- `options`: [`FitOptions`](@ref); `max_iter` and `jump_search` are used.
- `segments`: `(P, G)` segment labels of the nuisance term, or `nothing`.
- `batch_bytes`: the budget of one batch; one fiber per batch at least.

# Returns
`(fit, constant)`: the [`fit_omega`](@ref) and [`fit_constant`](@ref) results of the `G` fibers,
each field joined along its group axis (the last); with `segments`, `offsets` `(K, S, G)` has
NaN for the segments a batch did not have.
"""
function fit_batched(reads::AbstractArray{<:Real, 3}, valid::AbstractMatrix{Bool},
        sigma::AbstractMatrix, gain::AbstractMatrix, todo::AbstractVector{<:Integer},
        P::Integer, ref_index::Integer, options::FitOptions, segments;
        batch_bytes::Integer = FIT_BATCH_BYTES)
    G = length(todo)
    G > 0 || throw(ArgumentError("todo: expected at least one fiber"))
    K = size(reads, 3) - 1
    batch = fibers_per_batch(K, P, batch_bytes)
    if segments !== nothing  # the offsets' blocks grow with the segments, not the pixels
        per_fiber = 6 * 8 * maximum(segments; init = 1) * K * K
        batch = min(batch, max(1, NUISANCE_BATCH_BYTES ÷ per_fiber))
    end
    parts = map(1:batch:G) do first_group
        rows = first_group:min(first_group + batch - 1, G)
        fibers = todo[rows]
        batch_reads, mask = fiber_reads_and_mask(reads, valid, fibers, P)
        batch_sigma, batch_gain = sigma[1:P, fibers], gain[1:P, fibers]
        constant = fit_constant(batch_reads, batch_sigma; gain = batch_gain, mask)
        fit = fit_omega(batch_reads, batch_sigma; gain = batch_gain, mask, ref_index,
            max_iter = options.max_iter, jump_search = options.jump_search,
            segments = segments === nothing ? nothing : segments[:, rows])
        return (fit, constant)
    end
    return join_groups([part[1] for part in parts]), join_groups([part[2] for part in parts])
end

"Fibers of `P` pixels and `K` differences whose fit stays within `batch_bytes`; one at least
(pyapred's `_fibers_per_batch`)."
fibers_per_batch(K::Integer, P::Integer, batch_bytes::Integer) =
    max(1, batch_bytes ÷ (FIT_BYTES_PER_ELEMENT * max(K, 1) * max(P, 1)))

"""
    join_groups(parts)

Per-group results of consecutive batches of groups (named tuples with the same fields) as one:
each field joined along its last axis (the groups), `nothing` kept; `offsets` `(K, S, G)`,
whose `S` is each batch's own number of segments, padded with NaN to the largest.
"""
function join_groups(parts::AbstractVector{<:NamedTuple})
    length(parts) == 1 && return parts[1]
    names = keys(parts[1])
    joined_fields = map(names) do name
        fields = [getfield(part, name) for part in parts]
        fields[1] === nothing && return nothing
        if name == :offsets
            S = maximum(size(v, 2) for v in fields)
            fields = [cat(v, fill(NaN, size(v, 1), S - size(v, 2), size(v, 3)); dims = 2)
                      for v in fields]
        end
        return cat(fields...; dims = ndims(fields[1]))
    end
    return NamedTuple{names}(joined_fields)
end

"""
    fit_pixel_coordinates(prepared)

Each chip's fit pixels' wavelength coordinates `(n_pix, n_fibers)` (a vector, one per chip), and
the span `(blue, red)` of the chips (pyapred's `_fit_pixel_coordinates`): the coordinate of a
pixel is that of its column ([`chip_wavelength`](@ref), [`wavelength_coordinate`](@ref)); the
chips must be named `"R"`, `"G"` or `"B"`.
"""
function fit_pixel_coordinates(prepared::AbstractVector{PreparedChip})
    names = [p.name for p in prepared]
    unknown = [name for name in names if !haskey(CHIP_WAVELENGTH_UM, name)]
    isempty(unknown) ||
        throw(ArgumentError("chromatic: expected chips named R, G or B (their wavelengths give " *
                            "the coordinate), got $(repr(unknown))"))
    span = coordinate_span(names)
    return [column_coordinates(p, span) for p in prepared], span
end

"The wavelength coordinate of each fit pixel of a chip, `(n_pix, n_fibers)`, from its column."
function column_coordinates(p::PreparedChip, span)
    c = wavelength_coordinate(chip_wavelength(p.name, size(p.traces.y_center, 1)), span)
    # Padding entries hold a candidate's column too; their coordinate is never used.
    return [x >= 1 ? c[x] : 0.0 for x in p.fit_pixels.x]
end

"""
    empty_chromatic(K, P, G)

A [`fit_omega_chromatic`](@ref) result of `G` empty groups of `P` pixels (what pyapred's
`_spread_chromatic` fills in for the fibers not tried): NaN omega, gamma, fluxes and statistics,
zero covariance, `ref_index` 0 (none), `flags` `NOT_IN_OMEGA_FIT`, `group_flags` `EMPTY_GROUP`,
`stop_reason` `STOP_EMPTY`.
"""
function empty_chromatic(K, P, G)
    return (; omega = fill(NaN, K, G), gamma = fill(NaN, K, G), cov = zeros(2 * K, 2 * K, G),
        ref_index = zeros(Int, G), flux = fill(NaN, P, G), flux_var = fill(NaN, P, G),
        chi2 = fill(NaN, P, G), n_diff = zeros(Int, P, G), flags = fill(NOT_IN_OMEGA_FIT, P, G),
        group_flags = fill(EMPTY_GROUP, G), n_iter = zeros(Int, G), converged = zeros(Bool, G),
        stop_reason = fill(STOP_EMPTY, G), delta_chi2 = fill(NaN, G), dof = zeros(Int, G),
        p_value = fill(NaN, G), amplitude = fill(NaN, G), inflation = fill(NaN, G))
end

"""
    spread_chromatic!(full, part, rows)

Write the chromatic fit `part` of the fibers `rows` (its groups, in order) into the fit of all
fibers `full` ([`empty_chromatic`](@ref)); pyapred's `_spread_chromatic`.
"""
function spread_chromatic!(full, part, rows)
    for name in keys(full)
        to, from = getfield(full, name), getfield(part, name)
        for (i, f) in enumerate(rows)
            if ndims(to) == 1
                to[f] = from[i]
            elseif ndims(to) == 2
                to[:, f] = view(from, :, i)
            else
                to[:, :, f] = view(from, :, :, i)
            end
        end
    end
    return full
end

"""
    choose_chromatic(fits, chromatic, span, options)

Give the chromatic model to the time-variable fibers whose chromatic test is significant
(pyapred's `choose_chromatic`): a fiber with `MODEL_TIME_VARIABLE` gets `MODEL_CHROMATIC` when
its chromatic fit converged and the likelihood-ratio test against the achromatic fit has
`p_value` below `options.chromatic_p_value`; its `omega` (mean 1) becomes the chromatic fit's
omega at the middle of the span (`c = 0`), and extraction evaluates each pixel's own
([`column_omega`](@ref)).

# Arguments
- `fits`: [`FiberFits`](@ref) after [`choose_models`](@ref).
- `chromatic`: the [`fit_omega_chromatic`](@ref) result of every fiber, `(..., n_fibers)`, empty
  groups for the fibers not tried.
- `span`: `(blue, red)`, the bluest and reddest wavelength of the fitted chips, micron.
- `options`: [`FitOptions`](@ref).

# Returns
A [`FiberFits`](@ref) with `chromatic` and `coordinate_span` set.
"""
function choose_chromatic(fits::FiberFits, chromatic, span, options::FitOptions)
    model = copy(fits.model)
    omega = copy(fits.omega)
    for f in eachindex(model)
        significant = chromatic.p_value[f] < options.chromatic_p_value && chromatic.converged[f]
        if fits.model[f] == MODEL_TIME_VARIABLE && significant
            model[f] = MODEL_CHROMATIC
            column = view(chromatic.omega, :, f)
            finite = [w for w in column if !isnan(w)]
            omega[:, f] = column ./ (sum(finite; init = 0.0) / length(finite))
        end
    end
    return with_fields(fits; model, omega, chromatic,
        coordinate_span = (Float64(span[1]), Float64(span[2])))
end

"""
    column_omega(fits, chip, n_columns)

Each chromatic fiber's omega at every column of a chip, mean 1 per column (pyapred's
`FiberFits.column_omega`).

# Arguments
- `fits`: [`FiberFits`](@ref) with `chromatic` (after [`choose_chromatic`](@ref)).
- `chip`: `"R"`, `"G"` or `"B"`.
- `n_columns`: the chip's science (traced) columns.

# Returns
`(fibers, omega)`: the fibers with `MODEL_CHROMATIC` (1-based, `(n_chromatic,)`), and
`omega` `(K, n_columns, n_chromatic)`: `omega_k (1 + gamma_k c)` at each column's coordinate
(NaN gamma taken as 0), divided by its mean over the non-NaN elements of each column (the
exposure-averaged flux at that wavelength).
"""
function column_omega(fits::FiberFits, chip::AbstractString, n_columns::Integer)
    fibers = [f for f in eachindex(fits.model) if fits.model[f] == MODEL_CHROMATIC]
    K = size(fits.omega, 1)
    isempty(fibers) && return fibers, zeros(K, n_columns, 0)
    c = wavelength_coordinate(chip_wavelength(chip, n_columns), fits.coordinate_span)
    out = zeros(K, n_columns, length(fibers))
    for (s, f) in enumerate(fibers), x in 1:n_columns
        total, n = 0.0, 0
        for k in 1:K
            value = fits.chromatic.omega[k, f] *
                    (1.0 + nan_to_num(fits.chromatic.gamma[k, f]) * c[x])
            out[k, x, s] = value
            if !isnan(value)
                total += value
                n += 1
            end
        end
        mean_value = total / n
        for k in 1:K
            out[k, x, s] /= mean_value
        end
    end
    return fibers, out
end

"""
    reference_read(prepared, excluded)

The read difference fixed to 1 in every fiber's omega: the argmax (first) of the median over the
non-excluded fibers (all, if every fiber is excluded) of the rough omega averaged over the chips,
in `Float32` as pyapred computes it.
"""
function reference_read(prepared::AbstractVector{PreparedChip}, excluded::AbstractVector{Bool})
    K, nf = size(prepared[1].omega_rough)
    rough = zeros(Float32, K, nf)
    for p in prepared
        rough .+= p.omega_rough
    end
    rough ./= length(prepared)
    use = any(.!excluded) ? .!excluded : trues(nf)
    med = [median32!(rough[k, use]) for k in 1:K]
    return argmax(med)
end

"Fits of no group: what [`scatter_fits`](@ref) fills in for the fibers not fitted."
function empty_fits(K, P, G, ref_index)
    fit = (; omega = fill(NaN, K, G), omega_cov = zeros(K, K, G), ref_index = fill(ref_index, G),
        flux = fill(NaN, P, G), flux_var = fill(NaN, P, G), chi2 = fill(NaN, P, G),
        n_diff = zeros(Int, P, G), inflation = fill(NaN, G), n_iter = zeros(Int, G),
        converged = zeros(Bool, G), flags = fill(NOT_IN_OMEGA_FIT, P, G),
        group_flags = fill(EMPTY_GROUP, G), stop_reason = fill(STOP_EMPTY, G),
        step_size = fill(NaN, G), damping = fill(NaN, G))
    constant = (; flux = fill(NaN, P, G), flux_var = fill(NaN, P, G), chi2 = fill(NaN, P, G),
        n_diff = zeros(Int, P, G), flags = zeros(Int, P, G))
    return fit, constant
end

"""
    scatter_fits(fit, constant, todo, n_fibers, P, ref_index)

Full-size fits `(..., n_fibers)` from the fits of fibers `todo`; the other fibers are empty groups
(pyapred's `_scatter`), with the 1/f offsets (NaN) and the jump search's `jump_mask` (`false`)
where `fit` has them.
"""
function scatter_fits(fit, constant, todo, n_fibers, P, ref_index)
    K = size(fit.omega, 1)
    full, full_constant = empty_fits(K, P, n_fibers, ref_index)
    # With the nuisance term: the offsets, NaN for fibers not fitted.
    full_offsets = hasproperty(fit, :offsets) ? fill(NaN, K, size(fit.offsets, 2), n_fibers) :
                   nothing
    full_offsets === nothing || (full = merge(full, (; offsets = full_offsets)))
    # With the jump search: the differences it masked, none for fibers not fitted (the start of
    # the chromatic fit uses them).
    full_jumps = hasproperty(fit, :jump_mask) && fit.jump_mask !== nothing ?
                 zeros(Bool, K, P, n_fibers) : nothing
    full_jumps === nothing || (full = merge(full, (; jump_mask = full_jumps)))
    for (i, f) in enumerate(todo)
        full.omega[:, f] = fit.omega[:, i]
        full.omega_cov[:, :, f] = fit.omega_cov[:, :, i]
        # ref_index stays the common one (empty_fits'), as pyapred's _scatter: a fiber whose fit
        # broke down at another pivot must not change choose_models' reference.
        full.inflation[f] = fit.inflation[i]
        full.n_iter[f] = fit.n_iter[i]
        full.converged[f] = fit.converged[i]
        full.group_flags[f] = fit.group_flags[i]
        full.stop_reason[f] = fit.stop_reason[i]
        full.step_size[f] = fit.step_size[i]
        full.damping[f] = fit.damping[i]
        full_offsets === nothing || (full_offsets[:, :, f] = fit.offsets[:, :, i])
        full_jumps === nothing || (full_jumps[:, :, f] = fit.jump_mask[:, :, i])
        for name in (:flux, :flux_var, :chi2, :n_diff, :flags)
            getfield(full, name)[:, f] = getfield(fit, name)[:, i]
            getfield(full_constant, name)[:, f] = getfield(constant, name)[:, i]
        end
    end
    return full, full_constant
end

"""
    nanmedian(values)

The median of the non-NaN `values` (NaN if there is none), as NumPy's `nanmedian`.
"""
function nanmedian(values)
    v = sort!([Float64(x) for x in values if !isnan(x)])
    n = length(v)
    n == 0 && return NaN
    return isodd(n) ? v[(n + 1) ÷ 2] : (v[n ÷ 2] + v[n ÷ 2 + 1]) / 2
end

"""
    equivalent_amplitude(omega, error)

`sqrt(12 (var(omega / m) - mean((error / m)^2)))`, `m` the mean of the non-NaN `omega`: the
paper's amplitude A of `omega ~ U(1 - A, 1)`, debiased for noise (pyapred's
`_equivalent_amplitude` of one row; NaN values are left out of each mean, the variance has no
degrees-of-freedom correction; NaN when there is no value).
"""
function equivalent_amplitude(omega::AbstractVector, error::AbstractVector)
    finite = [w for w in omega if !isnan(w)]
    n = length(finite)
    n == 0 && return NaN
    m = sum(finite) / n
    center = sum(w / m for w in finite) / n
    variance = sum((w / m - center)^2 for w in finite) / n
    noise = [e / m for e in error if !isnan(e / m)]
    excess = variance - (isempty(noise) ? NaN : sum(e^2 for e in noise) / length(noise))
    return sqrt(12.0 * (isnan(excess) ? NaN : max(excess, 0.0)))
end

"Drop element `ref_index` of a vector."
without(v::AbstractVector, ref_index) = [v[k] for k in eachindex(v) if k != ref_index]

"""
    weighted_mean_omega(omega, omega_cov, use, ref_index)

The inverse-covariance weighted mean of the omegas of the fibers `use` whose omega is finite
everywhere, with its covariance (`ref_index` normalisation; pyapred's `_weighted_mean_omega`);
`(ones(K), zeros(K, K))` without any.
"""
function weighted_mean_omega(omega::AbstractMatrix, omega_cov::AbstractArray{<:Real, 3},
        use::AbstractVector{Bool}, ref_index::Integer)
    K, nf = size(omega)
    free = [k for k in 1:K if k != ref_index]
    ok = [use[f] && all(isfinite, view(omega, :, f)) for f in 1:nf]
    any(ok) || return ones(K), zeros(K, K)
    total = zeros(K - 1, K - 1)
    weighted = zeros(K - 1)
    for f in 1:nf
        ok[f] || continue
        precision = inv(omega_cov[free, free, f])
        total .+= precision
        weighted .+= precision * omega[free, f]
    end
    mean_cov = inv(total)
    out = ones(K)
    out[free] = mean_cov * weighted
    out_cov = zeros(K, K)
    out_cov[free, free] = mean_cov
    return out, out_cov
end

"""
    significance(omega, omega_cov, ref_index)

chi2 of an omega against the ones-vector (the constant model at the same reference read) and its
p-value, `(stat, p)`; `(0.0, 1.0)` when omega is not finite or its covariance is zero (pyapred's
`_significance`).
"""
function significance(omega::AbstractVector, omega_cov::AbstractMatrix, ref_index::Integer)
    free = [k for k in eachindex(omega) if k != ref_index]
    sub = omega_cov[free, free]
    (all(isfinite, omega) && any(!iszero, sub)) || return 0.0, 1.0
    resid = omega[free] .- 1.0
    stat = dot(resid, sub \ resid)
    return stat, chi2_sf(stat, length(free))
end

"""
    choose_models(fit, constant, n_fit_pixels, excluded, options, flags)

Decide per fiber between the constant and the time-variable model and lend faint fibers omega
(pyapred's `choose_models`). A fiber is bright when it has at least `min_fit_pixels` fit pixels,
its fit converged with every omega element constrained, and its median omega error is at most
`max_omega_error`. With `model = "auto"` a bright fiber is time-variable when the p-value of its
chi2 improvement (over the fit pixels where the omega fit's jump search masked nothing) is below
`p_value` and its equivalent amplitude reaches `amplitude_threshold`;
the other fibers (not excluded, not failed) borrow the bright fibers' weighted mean omega when
that mean passes the same tests. A fiber whose fit failed falls back to the constant model
(`FALLBACK_CONSTANT`). `model = "time-variable"` forces it on every bright fiber and lends the
mean to the others whenever a fiber is bright. With the 1/f nuisance offsets (`fit.offsets`)
the decision statistic is the Wald statistic of omega against the ones-vector, and a fit that
did not converge makes its fiber borrow rather than fall back.

# Arguments
- `fit`, `constant`: [`fit_omega`](@ref) and [`fit_constant`](@ref) results, fibers as groups
  (`(n_pix, n_fibers)` pixel arrays), one `ref_index`.
- `n_fit_pixels`, `excluded`, `flags`: `(n_fibers,)`.
"""
function choose_models(fit, constant, n_fit_pixels::AbstractVector, excluded::AbstractVector{Bool},
        options::FitOptions, flags::AbstractVector)
    K, nf = size(fit.omega)
    ref_index = fit.ref_index[1]
    flags = flags .| fit.group_flags
    in_fit = (fit.flags .& NOT_IN_OMEGA_FIT) .== 0
    # The two models are compared on the same data: the constant fit sees the first pass's mask,
    # the omega fit's jump search (4.5 sigma) masks more, so a pixel where it found a jump
    # leaves the comparison (as pyapred's choose_models).
    compared = copy(in_fit)
    if hasproperty(fit, :jump_mask) && fit.jump_mask !== nothing
        for f in axes(compared, 2), p in axes(compared, 1)
            compared[p, f] = compared[p, f] && !any(view(fit.jump_mask, :, p, f))
        end
        # A fiber whose every fit pixel has a jump would compare nothing (p = 1, the constant
        # model whatever its omega): it compares them all, as before (as pyapred).
        for f in axes(compared, 2)
            any(view(compared, :, f)) || (compared[:, f] = view(in_fit, :, f))
        end
    end
    chi2_tv = [sum(compared[p, f] ? fit.chi2[p, f] : 0.0 for p in axes(compared, 1); init = 0.0)
               for f in 1:nf]
    chi2_c = [sum(compared[p, f] ? constant.chi2[p, f] : 0.0 for p in axes(compared, 1);
                  init = 0.0) for f in 1:nf]
    dof = [sum(compared[p, f] ? fit.n_diff[p, f] - 1 : 0 for p in axes(compared, 1); init = 0)
           for f in 1:nf]
    delta = chi2_c .- chi2_tv
    if hasproperty(fit, :offsets)
        # With the 1/f nuisance offsets the time-variable fit has parameters the constant fit
        # lacks: the Wald statistic of omega against the ones-vector instead (as pyapred).
        delta = [all(isfinite, view(fit.omega, :, f)) ?
                 significance(fit.omega[:, f], fit.omega_cov[:, :, f], ref_index)[1] : NaN
                 for f in 1:nf]
    end
    free = [count(isfinite, view(fit.omega, :, f)) - 1 for f in 1:nf]
    p_value = [chi2_sf(delta[f], max(free[f], 1)) for f in 1:nf]
    error = [sqrt(max(fit.omega_cov[k, k, f], 0.0)) for k in 1:K, f in 1:nf]
    median_error = [nanmedian(without(view(error, :, f), ref_index)) for f in 1:nf]
    amplitude = [equivalent_amplitude(without(view(fit.omega, :, f), ref_index),
                     without(view(error, :, f), ref_index)) for f in 1:nf]
    # With the nuisance term a fit that does not converge lacks the flux contrast within
    # segments that tells omega from the offsets: its fiber borrows rather than falls back.
    fail_bits = hasproperty(fit, :offsets) ? OMEGA_ELEMENT_NO_DATA :
                NOT_CONVERGED | OMEGA_ELEMENT_NO_DATA
    failed = [(fit.group_flags[f] & fail_bits) != 0 &&
              n_fit_pixels[f] >= options.min_fit_pixels && !excluded[f] for f in 1:nf]
    for f in 1:nf
        failed[f] && (flags[f] |= FALLBACK_CONSTANT)
    end
    bright = [!excluded[f] && !failed[f] && n_fit_pixels[f] >= options.min_fit_pixels &&
              (fit.group_flags[f] & (EMPTY_GROUP | NOT_CONVERGED)) == 0 &&
              median_error[f] <= options.max_omega_error for f in 1:nf]
    significant = [p_value[f] < options.p_value && amplitude[f] >= options.amplitude_threshold
                   for f in 1:nf]
    borrowed, borrowed_cov = weighted_mean_omega(fit.omega, fit.omega_cov, bright, ref_index)
    _, borrowed_p = significance(borrowed, borrowed_cov, ref_index)
    borrowed_error = [sqrt(max(borrowed_cov[k, k], 0.0)) for k in 1:K]
    borrowed_amp = equivalent_amplitude(without(borrowed, ref_index),
        without(borrowed_error, ref_index))
    borrow_significant = borrowed_p < options.p_value &&
                         borrowed_amp >= options.amplitude_threshold
    faint = [!bright[f] && !excluded[f] && !failed[f] for f in 1:nf]
    model = fill(MODEL_CONSTANT, nf)
    for f in 1:nf
        if options.model == "time-variable"
            bright[f] && (model[f] = MODEL_TIME_VARIABLE)
            faint[f] && any(bright) && (model[f] = MODEL_BORROWED)
        else
            bright[f] && significant[f] && (model[f] = MODEL_TIME_VARIABLE)
            faint[f] && borrow_significant && (model[f] = MODEL_BORROWED)
        end
        model[f] == MODEL_BORROWED && (flags[f] |= BORROWED_OMEGA)
    end
    omega_used = ones(K, nf)
    for f in 1:nf
        if model[f] == MODEL_TIME_VARIABLE
            column = view(fit.omega, :, f)
            finite = [w for w in column if !isnan(w)]
            omega_used[:, f] = column ./ (sum(finite) / length(finite))
        elseif model[f] == MODEL_BORROWED
            omega_used[:, f] = borrowed ./ (sum(borrowed) / K)
        end
    end
    pixel_chi2 = [in_fit[p, f] ? constant.chi2[p, f] : NaN for p in axes(in_fit, 1), f in 1:nf]
    return FiberFits(fit.omega, fit.omega_cov, omega_used, model, delta, p_value, amplitude,
        per_dof(chi2_c, dof), per_dof(chi2_tv, dof), Vector{Int}(n_fit_pixels), flags,
        ref_index, bright, borrowed, borrowed_cov, fit, pixel_chi2, nothing, nothing)
end

"chi2 per degree of freedom, IEEE division as NumPy's (0/0 is NaN, x/0 infinite)."
per_dof(chi2, dof) = [c / d for (c, d) in zip(chi2, dof)]
