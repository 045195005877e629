# The settings of the exposure stages: the twin of the fields of pyapred's `FitOptions`
# (`pyapred/exposure/options.py`) that the stages use, with the same names and defaults (a Python
# test compares the two). The Python-only fields choose the backend, the files and what memory
# keeps (`backend`, `gain`, `read_noise`, `saturation`, `keep_constant`, `keep_fit_reads`).
# `correct_1f` is here for its nuisance part only: the stages take reads as they are, so a
# reference-pixel correction of the reads ("refpix", "rowmedian") is done where they are loaded
# (pyapred's `correct_1f`), not by APRampFit.

"""
    FitOptions(; model = "auto", p_value = 1e-3, amplitude_threshold = 0.035,
               chromatic = false, chromatic_p_value = 1e-4, min_fit_pixels = 20,
               max_omega_error = 0.05, min_snr = 30.0, core_halfwidth = 0.5, min_purity = 0.95,
               max_fit_pixels = nothing, map_halfwidth = 2.5, joint_chips = false,
               max_iter = 50, jump_search = true, jump_threshold = 8.0, correct_1f = "none",
               segment_columns = 32)

Settings of the exposure stages ([`prepare_chip`](@ref), [`fit_fibers`](@ref),
[`extract_chip`](@ref)), as pyapred's `FitOptions` (`pyapred fit --help` describes each):

- model choice per fiber: `model` (`"auto"`, `"constant"` or `"time-variable"`), `p_value`,
  `amplitude_threshold`, `min_fit_pixels`, `max_omega_error`;
- the chromatic model: `chromatic` (also fit `omega_k (1 + gamma_k c)`, `c` the pixel's
  wavelength coordinate from -1 to 1 over the fitted chips, [`wavelength_coordinate`](@ref), to
  the time-variable fibers, and give it to those where the likelihood-ratio test against the
  achromatic fit has a p-value below `chromatic_p_value`, [`choose_chromatic`](@ref); extraction
  then evaluates each pixel's own omega, [`column_omega`](@ref); the chips must be named `"R"`,
  `"G"` or `"B"`; not with the nuisance term) and `chromatic_p_value` (in (0, 1));
- omega-fit pixels: `min_snr`, `core_halfwidth`, `min_purity`, `max_fit_pixels` (`nothing`: all),
  `map_halfwidth`;
- solver: `joint_chips` (one omega per fiber from all chips), `max_iter`, `jump_search` (the omega
  fit's own jump search), `jump_threshold` (the first pass's cosmic-ray threshold, sigma);
- 1/f noise: `correct_1f` (`"none"` or `"nuisance"`: one additive offset per readout segment and
  read difference fitted with omega, [`readout_segments`](@ref); pyapred's `"refpix..."` and
  `"rowmedian..."` routes correct the reads where they are loaded, before the stages) and
  `segment_columns` (columns per segment, a divisor of 512 other than 1).
"""
Base.@kwdef struct FitOptions
    model::String = "auto"
    p_value::Float64 = 1e-3
    amplitude_threshold::Float64 = 0.035
    chromatic::Bool = false
    chromatic_p_value::Float64 = 1e-4
    min_fit_pixels::Int = 20
    max_omega_error::Float64 = 0.05
    min_snr::Float64 = 30.0
    core_halfwidth::Float64 = 0.5
    min_purity::Float64 = 0.95
    max_fit_pixels::Union{Nothing, Int} = nothing
    map_halfwidth::Float64 = 2.5
    joint_chips::Bool = false
    max_iter::Int = 50
    jump_search::Bool = true
    jump_threshold::Float64 = 8.0
    correct_1f::String = "none"
    segment_columns::Int = 32
end

# Every field by name, so that the record a product or an ar2D file keeps (`repr(options)`)
# says which number is which, and reads back as Julia.
function Base.show(io::IO, options::FitOptions)
    fields = ("$name = $(repr(getfield(options, name)))" for name in fieldnames(FitOptions))
    print(io, "FitOptions(", join(fields, ", "), ")")
end

"Whether the omega fit carries the 1/f nuisance offsets (`correct_1f` ends in `nuisance`)."
nuisance(options::FitOptions) = endswith(options.correct_1f, "nuisance")

"Largest half-width of the pixel map (trace sigmas) and of the fit pixels (rows) (`MAX_HALFWIDTH` of pyapred's options)."
const MAX_HALFWIDTH = 10.0

"Throw an `ArgumentError` naming the first setting of `options` out of range."
function check_options(options::FitOptions)
    # In the order of pyapred's FitOptions fields, then the settings that cannot go together,
    # so that both name the same setting first when several are wrong.
    options.model in ("auto", "constant", "time-variable") ||
        throw(ArgumentError("model: expected \"auto\", \"constant\" or \"time-variable\", got $(repr(options.model))"))
    0 < options.p_value < 1 ||
        throw(ArgumentError("p_value: expected a probability between 0 and 1, got $(options.p_value)"))
    isfinite(options.amplitude_threshold) && options.amplitude_threshold >= 0 ||
        throw(ArgumentError("amplitude_threshold: expected a finite number >= 0, got $(options.amplitude_threshold)"))
    0 < options.chromatic_p_value < 1 ||
        throw(ArgumentError("chromatic_p_value: expected a probability between 0 and 1, got " *
                            "$(options.chromatic_p_value)"))
    options.min_fit_pixels >= 0 ||
        throw(ArgumentError("min_fit_pixels: expected >= 0, got $(options.min_fit_pixels)"))
    isfinite(options.max_omega_error) && options.max_omega_error > 0 ||
        throw(ArgumentError("max_omega_error: expected a finite number > 0, got $(options.max_omega_error)"))
    isfinite(options.min_snr) && options.min_snr >= 0 ||
        throw(ArgumentError("min_snr: expected a finite number >= 0, got $(options.min_snr)"))
    0 < options.core_halfwidth <= MAX_HALFWIDTH ||
        throw(ArgumentError("core_halfwidth: expected a number in (0, $MAX_HALFWIDTH], got $(options.core_halfwidth)"))
    0 < options.min_purity <= 1 ||
        throw(ArgumentError("min_purity: expected a fraction in (0, 1], got $(options.min_purity)"))
    options.max_fit_pixels === nothing || options.max_fit_pixels >= 1 ||
        throw(ArgumentError("max_fit_pixels: expected nothing or an integer >= 1, got $(options.max_fit_pixels)"))
    0 < options.map_halfwidth <= MAX_HALFWIDTH ||
        throw(ArgumentError("map_halfwidth: expected a number in (0, $MAX_HALFWIDTH], got $(options.map_halfwidth)"))
    options.max_iter >= 1 ||
        throw(ArgumentError("max_iter: expected an integer >= 1, got $(options.max_iter)"))
    isfinite(options.jump_threshold) && options.jump_threshold > 0 ||
        throw(ArgumentError("jump_threshold: expected a finite number > 0, got $(options.jump_threshold)"))
    options.correct_1f in ("none", "nuisance") ||
        throw(ArgumentError("correct_1f: expected \"none\" or \"nuisance\" (a reference " *
                            "correction of the reads comes before the stages), got " *
                            repr(options.correct_1f)))
    check_segment_columns(options.segment_columns)
    options.chromatic && nuisance(options) &&
        throw(ArgumentError("correct_1f: expected no nuisance term with chromatic (the " *
                            "chromatic fit has no offsets), got $(repr(options.correct_1f))"))
    options.chromatic && options.model == "constant" &&
        throw(ArgumentError("chromatic: expected no chromatic fit with the constant model " *
                            "forced on every fiber, got true"))
    # Settings that would do nothing, yet be recorded: the nuisance term with no omega fitted,
    # a chromatic p-value without the chromatic model, segments without the nuisance term.
    nuisance(options) && options.model == "constant" &&
        throw(ArgumentError("correct_1f: expected no nuisance term with the constant model " *
                            "forced on every fiber (no omega is fitted): \"none\", got " *
                            repr(options.correct_1f)))
    default_p = FitOptions().chromatic_p_value
    options.chromatic || options.chromatic_p_value == default_p ||
        throw(ArgumentError("chromatic_p_value: expected the default $default_p without " *
                            "chromatic (it chooses the chromatic model), got " *
                            "$(options.chromatic_p_value)"))
    default_columns = FitOptions().segment_columns
    nuisance(options) || options.segment_columns == default_columns ||
        throw(ArgumentError("segment_columns: expected the default $default_columns without a " *
                            "nuisance route (correct_1f ...nuisance): the segments are the " *
                            "nuisance offsets' columns, got $(options.segment_columns)"))
    # No fiber would be fitted: each needs min_fit_pixels.
    options.max_fit_pixels === nothing || options.max_fit_pixels >= options.min_fit_pixels ||
        throw(ArgumentError("max_fit_pixels: expected at least min_fit_pixels " *
                            "($(options.min_fit_pixels)): with fewer no fiber is fitted, got " *
                            "$(options.max_fit_pixels)"))
    return options
end
