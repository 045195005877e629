# The flag bits of `pyapred/solver/_flags.py`; a Python test checks that the two agree.

"Pixel: one or more reads were masked by the caller's `mask`."
const MASKED_READ = 1 << 0
"Pixel: one or more reads were not finite (NaN or Inf); they were masked."
const NONFINITE_READ = 1 << 1
"Pixel: the ramp reached `saturation`; that read and all later ones were masked."
const SATURATED = 1 << 2
"Pixel: fewer than 2 usable read differences; flux, variance and chi2 are NaN."
const TOO_FEW_DIFFS = 1 << 3
"Pixel: left out of the omega fit (padding, or too few usable differences)."
const NOT_IN_OMEGA_FIT = 1 << 4
"Pixel: the jump search flagged one or more differences; they are masked."
const JUMP_DETECTED = 1 << 5
"Pixel: 3 or fewer clean differences were left, too few to search for (more) jumps."
const FEW_CLEAN_DIFFS = 1 << 6
"Pixel (pipeline): background or between traces; extracted with the constant model."
const BACKGROUND = 1 << 7
"Group: the Gauss-Newton iteration reached `max_iter` without converging."
const NOT_CONVERGED = 1 << 8
"Group: at least one omega element had no usable difference in any pixel; it is NaN."
const OMEGA_ELEMENT_NO_DATA = 1 << 9
"Group: no pixel of the group could be fitted; omega is NaN."
const EMPTY_GROUP = 1 << 10
"Fiber (pipeline): too faint to constrain omega; omega borrowed from the bright fibers."
const BORROWED_OMEGA = 1 << 11
"Fiber (pipeline): the omega fit failed (not converged or no data); constant model used."
const FALLBACK_CONSTANT = 1 << 12
"Fiber (pipeline): an FPI fiber, excluded from the omega fits; constant model used."
const FPI_FIBER = 1 << 13
"""Fiber (pipeline): no omega fit was asked for (`model = "constant"`); constant model used, and
the fit's statistics (amplitude, delta_chi2, p_value, chi2 per dof) are NaN."""
const NO_OMEGA_FIT = 1 << 14
"""Fiber (pipeline, 1/f nuisance term): too little flux contrast between the pixels of its
readout segments to tell omega from the offsets ([`segment_contrast`](@ref) below
`MIN_SEGMENT_CONTRAST`); not fitted, handled as a faint fiber."""
const LOW_SEGMENT_CONTRAST = 1 << 15

const FLAG_NAMES = (
    MASKED_READ => "MASKED_READ",
    NONFINITE_READ => "NONFINITE_READ",
    SATURATED => "SATURATED",
    TOO_FEW_DIFFS => "TOO_FEW_DIFFS",
    NOT_IN_OMEGA_FIT => "NOT_IN_OMEGA_FIT",
    JUMP_DETECTED => "JUMP_DETECTED",
    FEW_CLEAN_DIFFS => "FEW_CLEAN_DIFFS",
    BACKGROUND => "BACKGROUND",
    NOT_CONVERGED => "NOT_CONVERGED",
    OMEGA_ELEMENT_NO_DATA => "OMEGA_ELEMENT_NO_DATA",
    EMPTY_GROUP => "EMPTY_GROUP",
    BORROWED_OMEGA => "BORROWED_OMEGA",
    FALLBACK_CONSTANT => "FALLBACK_CONSTANT",
    FPI_FIBER => "FPI_FIBER",
    NO_OMEGA_FIT => "NO_OMEGA_FIT",
    LOW_SEGMENT_CONTRAST => "LOW_SEGMENT_CONTRAST",
)

"""
    describe_flags(value)

Names of the bits set in `value`, lowest bit first, e.g. `["SATURATED", "TOO_FEW_DIFFS"]`; a bit
that no flag names (a product of a newer version) as `"bit 16"` (as pyapred's `describe_flags`).

# Arguments
- `value`: one flag value, an integer >= 0.
"""
function describe_flags(value::Integer)
    (value isa Bool || value < 0) && throw(flag_value_error(value))
    names = String[]
    rest, bit = value, 0
    while rest != 0
        if rest & 1 == 1
            name = "bit $bit"
            for (flag, flag_name) in FLAG_NAMES
                flag == 1 << bit && (name = flag_name)
            end
            push!(names, name)
        end
        rest >>= 1
        bit += 1
    end
    return names
end

# Anything else (a float, an array): refused as pyapred refuses it.
describe_flags(value) = throw(flag_value_error(value))

"The error of [`describe_flags`](@ref) for what is no flag value (pyapred's message)."
flag_value_error(value) =
    ArgumentError("value: expected one flag value, an integer >= 0, got $(repr(value))")
