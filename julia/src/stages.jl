# Stage 3, extract a chip, and the driver of the three stages: the twins of
# `pyapred/exposure/extract.py` (`extract_chip`, `_masked_at_jumps`) and of the stage loop of
# `pyapred/exposure/driver.py` (no file I/O: the caller reads and writes).

"""
    ChipResult

Extracted fluxes of one chip (pyapred's `ChipResult`, axes reversed):

- `flux`, `flux_var`, `chi2` `(nx, ny)`: DN per read interval at the exposure-average
  normalisation (omega scaled to mean 1), its variance and chi2; NaN where fewer than 2
  differences are usable;
- `n_diff`, `flags` `(nx, ny)`: usable differences and the pixel flags, with `BACKGROUND` and
  `JUMP_DETECTED` added;
- `fiber` `(nx, ny)`: the fiber whose omega each pixel used (1-based), 0 for background and
  untraced columns;
- `fibers`: the [`FiberFits`](@ref) used; `prepared`: the [`PreparedChip`](@ref).
"""
struct ChipResult
    flux::Matrix{Float64}
    flux_var::Matrix{Float64}
    chi2::Matrix{Float64}
    n_diff::Matrix{Int}
    flags::Matrix{Int}
    fiber::Matrix{Int}
    fibers::FiberFits
    prepared::PreparedChip
end

"""
    extract_chip(chip, prepared, fibers, options = FitOptions())

Stage 3 (pyapred's `extract_chip`): every pixel of the chip with its fiber's omega fixed
(`fibers.omega`, mean 1), background pixels with the constant model, in one
[`extract_fluxes`](@ref) call; the pixels with a detected jump again with the read after each
jump masked. A chromatic fiber's pixels (`MODEL_CHROMATIC`, with `FitOptions.chromatic`) use the
omega of their own column ([`column_omega`](@ref), at the wavelengths of the chip named
`prepared.name`): the omega table gets one column per (chromatic fiber, traced column).

# Returns
A [`ChipResult`](@ref).
"""
function extract_chip(chip::ChipExposure, prepared::PreparedChip, fibers::FiberFits,
        options::FitOptions = FitOptions())
    # Another chip's pixel map and fibers: no shape tells them apart.
    prepared.name == chip.name || throw(ArgumentError(
        "prepared: expected chip $(repr(chip.name))'s, got chip $(repr(prepared.name))'s"))
    nx, ny, N = size(chip.reads)
    K = N - 1
    # Another exposure's stages, as pyapred's extract_chip refuses them: a PreparedChip of other
    # reads (its jumps index those), fits of other fibers or over other read differences (their
    # omega would be used for the wrong pixels, or for the background).
    prepared_shape = (size(prepared.saturated)..., size(prepared.omega_rough, 1) + 1)
    prepared_shape == size(chip.reads) || throw(ArgumentError(
        "prepared: expected the chip's $(size(chip.reads)) reads, was prepared from " *
        "$prepared_shape"))
    nf = size(fibers.omega, 2)
    n_traced = size(prepared.traces.y_center, 2)
    size(fibers.omega) == (K, n_traced) || throw(ArgumentError(
        "fibers: expected the fits of the chip's $n_traced fibers over $K read differences, " *
        "got $nf x $(size(fibers.omega, 1))"))
    nc = size(prepared.pixel_map.fiber, 1)
    fiber = zeros(Int, nx, ny)
    fiber[1:nc, :] .= prepared.pixel_map.fiber
    groups = [fiber[x, y] > 0 ? fiber[x, y] : nf + 1 for x in 1:nx, y in 1:ny]
    table = hcat(fibers.omega, ones(K))  # column nf + 1: background
    if fibers.chromatic !== nothing
        # A chromatic fiber's pixels use the column of the table of their own chip column: omega
        # at its wavelength (columns nf + 1 + (slot - 1) nc + x, slot the fiber's place among
        # the chromatic ones).
        chromatic, per_column = column_omega(fibers, prepared.name, nc)
        if !isempty(chromatic)
            slot = zeros(Int, nf)
            for (s, f) in enumerate(chromatic)
                slot[f] = s
            end
            for y in 1:ny, x in 1:nc
                f = fiber[x, y]
                if f > 0 && slot[f] > 0
                    groups[x, y] = nf + 1 + (slot[f] - 1) * nc + x
                end
            end
            table = hcat(table, reshape(per_column, K, nc * length(chromatic)))
        end
    end
    result = masked_at_jumps(chip, prepared.jumps, groups, table)
    flags = copy(result.flags)
    for y in 1:ny, x in 1:nx
        fiber[x, y] == 0 && (flags[x, y] |= BACKGROUND)
    end
    for j in prepared.jumps
        flags[j[1], j[2]] |= JUMP_DETECTED
    end
    return ChipResult(result.flux, result.flux_var, result.chi2, result.n_diff, flags, fiber,
        fibers, prepared)
end

"""
    masked_at_jumps(chip, jumps, groups, table)

[`extract_fluxes`](@ref) of every pixel of the chip, then of the pixels with a jump again with the
masked reads `jumps` (`CartesianIndex(x, y, read)`): every pixel is fitted on its own, so this is
one masked fit, without a cube-sized mask or writing into the reads.
"""
function masked_at_jumps(chip::ChipExposure, jumps, groups, table)
    result = extract_fluxes(chip.reads, chip.read_noise, table; groups, gain = chip.gain,
        saturation = chip.saturation)
    isempty(jumps) && return result
    N = size(chip.reads, 3)
    pixels = unique([CartesianIndex(j[1], j[2]) for j in jumps])
    slot = Dict(p => i for (i, p) in enumerate(pixels))
    reads = [chip.reads[p[1], p[2], j] for p in pixels, j in 1:N]
    mask = zeros(Bool, length(pixels), N)
    for j in jumps
        mask[slot[CartesianIndex(j[1], j[2])], j[3]] = true
    end
    at_pixels(value) = [pixel_value(value, p[1], p[2]) for p in pixels]
    redo = extract_fluxes(reads, at_pixels(chip.read_noise), table; groups = groups[pixels],
        gain = at_pixels(chip.gain), saturation = at_pixels(chip.saturation), mask)
    for (i, p) in enumerate(pixels), name in (:flux, :flux_var, :chi2, :n_diff, :flags)
        getfield(result, name)[p] = getfield(redo, name)[i]
    end
    return result
end

"""
    with_blas_threads(f, n)

Run `f()` with BLAS on `n` threads, then restore the previous count. The stages thread over fibers
and pixels themselves; BLAS threads inside those threads (the small omega systems) would only
compete with them.
"""
function with_blas_threads(f, n::Integer)
    previous = BLAS.get_num_threads()
    previous == n && return f()
    BLAS.set_num_threads(n)
    try
        return f()
    finally
        BLAS.set_num_threads(previous)
    end
end

"Plausible calibration (pyapred's `CALIBRATION_BOUNDS`): gain in e-/DN, read noise and saturation in DN."
const CALIBRATION_BOUNDS = Dict("gain" => (0.01, 100.0), "read_noise" => (0.01, 1000.0),
    "saturation" => (1.0, 1e6))

"""
    check_chips(chips)

Throw an `ArgumentError` unless the chips are one exposure's, as pyapred's driver checks them
before any stage: a plausible gain, read noise and saturation ([`CALIBRATION_BOUNDS`](@ref); an
infinite saturation means none), one number of reads and one image size.

# Arguments
- `chips`: [`ChipExposure`](@ref)s.
"""
function check_chips(chips::AbstractVector{<:ChipExposure})
    for chip in chips
        for (name, value) in (("gain", chip.gain), ("read_noise", chip.read_noise),
            ("saturation", chip.saturation))
            value === nothing && continue
            low, high = CALIBRATION_BOUNDS[name]
            outside = count(v -> !(low <= v <= high) && !(name == "saturation" && v == Inf), value)
            outside == 0 ||
                throw(ArgumentError("chip $(repr(chip.name)): $name: expected a finite number > 0, within [$low, $high] (plausible for APOGEE), found $outside value(s) outside"))
        end
        size(chip.reads) == size(chips[1].reads) ||
            throw(ArgumentError("chip $(repr(chip.name)): reads: expected the size of chip $(repr(chips[1].name))'s, $(size(chips[1].reads)) (one exposure per call), got $(size(chip.reads))"))
    end
    return nothing
end

"""
    run_chips(chips, traces, options = FitOptions())

The three stages over one exposure's chips, as pyapred's `run_exposure` runs them (in memory):
[`prepare_chip`](@ref) each chip, [`fit_fibers`](@ref) per chip (or once over all chips with
`options.joint_chips`), [`extract_chip`](@ref) each chip, after the driver's checks
([`check_chips`](@ref)). BLAS runs on one thread meanwhile ([`with_blas_threads`](@ref)): not
for two calls at once in one process (the thread count is the process's).

# Arguments
- `chips`: [`ChipExposure`](@ref)s (or one), `traces`: their [`Traces`](@ref) (or one).

# Returns
A NamedTuple `(prepared, fibers, results)` of vectors, one entry per chip (with `joint_chips` every
chip's `fibers` entry is the same [`FiberFits`](@ref)).
"""
function run_chips(chips::AbstractVector{<:ChipExposure}, traces::AbstractVector{Traces},
        options::FitOptions = FitOptions())
    check_options(options)
    length(chips) == length(traces) ||
        throw(ArgumentError("traces: expected one per chip, got $(length(traces)) for $(length(chips))"))
    check_chips(chips)
    return with_blas_threads(1) do
        prepared = [prepare_chip(c, t, options) for (c, t) in zip(chips, traces)]
        fibers = options.joint_chips ? fill(fit_fibers(prepared, options), length(chips)) :
                 [fit_fibers(p, options) for p in prepared]
        results = [extract_chip(c, p, f, options) for (c, p, f) in zip(chips, prepared, fibers)]
        (; prepared, fibers, results)
    end
end

run_chips(chip::ChipExposure, traces::Traces, options::FitOptions = FitOptions()) =
    run_chips([chip], [traces], options)
