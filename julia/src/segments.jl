# Readout segments: the pixels that share one 1/f offset per read (the nuisance term's labels).
# The twin of `pyapred/noise/segments.py`. An APOGEE H2RG chip is read through 4 outputs of 512
# columns each (and the reference output), one row at a time; a segment is one row of `columns`
# consecutive columns within one output, and pixels of a segment share one additive offset per
# read difference in `fit_omega(...; segments)`.

"Columns per output of an APOGEE H2RG chip."
const OUTPUT_COLUMNS = 512
"Outputs per row, the reference output included."
const N_OUTPUTS = 5
"Rows of an APOGEE H2RG chip."
const CHIP_ROWS = 2048

"""
Throw an `ArgumentError` unless `columns` divides an output's 512 columns (no segment spans
two outputs) and is 2 or more: a segment of one column gives each pixel offsets of its own,
which take all of its differences but their mean (the fits are degenerate, chi2 0).
"""
function check_segment_columns(columns::Integer)
    columns >= 2 && OUTPUT_COLUMNS % columns == 0 ||
        throw(ArgumentError("segment_columns: expected a divisor of $OUTPUT_COLUMNS other " *
                            "than 1, got $columns"))
    return columns
end

"""
    readout_key(x, y, chip, columns)

One integer per (chip, row, segment of `columns` columns), the same as pyapred's `readout_keys`:
`(chip * CHIP_ROWS + row) * (N_OUTPUTS * OUTPUT_COLUMNS ÷ columns) + column ÷ columns` with the
0-based row `y - 1`, column `x - 1` and chip `chip - 1`.

# Arguments
- `x`, `y`: 1-based column (fast-read axis) and row.
- `chip`: 1-based index of the chip among those pooled.
- `columns`: columns per segment (a divisor of 512 other than 1).
"""
function readout_key(x::Integer, y::Integer, chip::Integer, columns::Integer)
    per_row = N_OUTPUTS * OUTPUT_COLUMNS ÷ columns
    return ((chip - 1) * CHIP_ROWS + (y - 1)) * per_row + (x - 1) ÷ columns
end

"The span of one chip's keys: `key ÷ keys_per_chip(columns)` is the 0-based chip."
keys_per_chip(columns::Integer) = CHIP_ROWS * (N_OUTPUTS * OUTPUT_COLUMNS ÷ columns)

"""
    readout_segments(keys, valid)

Per-group segment labels `1:S_g` from readout keys, pyapred's `readout_segments` plus 1: equal
labels within a group where the keys are equal, dense and in the order of the keys; padding
(`valid` false) gets label 1.

# Arguments
- `keys`: `(n_pix, n_groups)` [`readout_key`](@ref) of each group's pixels.
- `valid`: `(n_pix, n_groups)`, false for padding.

# Returns
A `(n_pix, n_groups)` `Matrix{Int}`.
"""
function readout_segments(keys::AbstractMatrix{<:Integer}, valid::AbstractMatrix{Bool})
    labels = ones(Int, size(keys))
    for g in axes(keys, 2)
        distinct = sort!(unique(keys[p, g] for p in axes(keys, 1) if valid[p, g]))
        for p in axes(keys, 1)
            valid[p, g] && (labels[p, g] = searchsortedfirst(distinct, keys[p, g]))
        end
    end
    return labels
end
