# The chips' wavelengths and the normalised wavelength coordinate of the chromatic model: the twin
# of `CHIP_WAVELENGTH_UM`, `chip_wavelength`, `coordinate_span` and `wavelength_coordinate` of
# `pyapred/chromatic.py` (the exposure stages need only these). The chromatic model writes each
# pixel's transparency as `omega_k (1 + gamma_k c)`, with `c` -1 at the bluest and +1 at the
# reddest column of the chips fitted together ([`fit_omega_chromatic`](@ref)).

"""
Vacuum wavelength (micron) at the first and the last science column (1 and 2048) of each chip,
linear in between, as pyapred's `CHIP_WAVELENGTH_UM` (APOGEE's dispersion runs along the columns,
wavelength decreasing with the column).
"""
const CHIP_WAVELENGTH_UM = Dict("R" => (1.6965, 1.6475), "G" => (1.6440, 1.5860),
    "B" => (1.5808, 1.5145))

"""
    chip_wavelength(chip, n_columns = 2048)

Wavelength of each science column of a chip, micron, `(n_columns,)`: linear from the chip's first
to its last wavelength ([`CHIP_WAVELENGTH_UM`](@ref)), computed as NumPy's `linspace` (the last
column exactly the last wavelength); a smaller simulated chip spans the same wavelengths.

# Arguments
- `chip`: `"R"`, `"G"` or `"B"`.
- `n_columns`: the number of science columns.
"""
function chip_wavelength(chip::AbstractString, n_columns::Integer = 2048)
    haskey(CHIP_WAVELENGTH_UM, chip) ||
        throw(ArgumentError("chip: expected one of \"B\", \"G\", \"R\", got $(repr(chip))"))
    n_columns >= 0 || throw(ArgumentError("n_columns: expected >= 0, got $n_columns"))
    first_um, last_um = CHIP_WAVELENGTH_UM[chip]
    n_columns == 1 && return [first_um]
    step = (last_um - first_um) / (n_columns - 1)
    out = [(x - 1) * step + first_um for x in 1:n_columns]
    n_columns > 1 && (out[n_columns] = last_um)
    return out
end

"""
    coordinate_span(chips)

Bluest and reddest wavelength (micron) of the chips named in `chips` (`"R"`, `"G"`, `"B"`):
`(blue, red)`, where the wavelength coordinate `c` is -1 and +1 ([`wavelength_coordinate`](@ref)).
"""
function coordinate_span(chips)
    isempty(chips) && throw(ArgumentError("chips: expected at least one chip"))
    ends = [w for chip in chips for w in chip_wavelength(chip, 2)]
    return reduce(min, ends), reduce(max, ends)
end

"""
    wavelength_coordinate(wavelength, span)

Normalised coordinate `c = 2 (lambda - blue) / (red - blue) - 1` of each wavelength (micron; a
number or an array, the result of the same shape), `span = (blue, red)` from
[`coordinate_span`](@ref).
"""
function wavelength_coordinate(wavelength, span)
    blue, red = Float64(span[1]), Float64(span[2])
    return [2.0 * (Float64(w) - blue) / (red - blue) - 1.0 for w in wavelength]
end

wavelength_coordinate(wavelength::Real, span) =
    2.0 * (Float64(wavelength) - Float64(span[1])) / (Float64(span[2]) - Float64(span[1])) - 1.0
